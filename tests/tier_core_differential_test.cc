// Differential test of the tier core's two users: the same seeded random sequence of requests
// (lookup, read the cached prefix in order, put the rest, with partial chunks that later
// turns extend and supersede) and hints (window + prefetch) runs through a real embedded
// Store (temp dir, T2 on) and through kvault replay's ReplayTiers. Every lookup must find the
// same chunks in the same tiers, every read and put must succeed or fail alike, and T1
// evictions and partial supersedes must agree, for every policy the store runs.
//
// Determinism: each put is flushed before the next operation (so no entry is ever waiting
// for the write-behind, as replay's WriteToT2 models it) and each hint waits for its
// prefetches. T2 is large enough never to evict: the store frees whole segments there, which
// replay's record-granular T2 does not model (not compared). T1 is a few dozen 4 KiB pages,
// so evictions happen all the time.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "replay/replay_tiers.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChunkReader;
using kvault::ChunkSpan;
using kvault::Entry;
using kvault::LookupResult;
using kvault::StoreOptions;
using kvault::Tier;
using kvault::replay::ReplayTiers;
using kvault::replay::TraceChunk;
using Tokens = std::vector<uint32_t>;

constexpr uint32_t kChunkTokens = 16;
constexpr uint32_t kPageBytes = 4096;
constexpr uint32_t kT1Pages = 40;     // a full chunk is 4 pages (16 KiB), a partial one 1..4
constexpr uint32_t kSystemTokens = 32;  // every conversation starts with one of 3 system prompts
const KvLayout kLayout = MakeLayout();

// One conversation: its token stream and how much of it the next prompt covers.
struct Conversation {
  uint64_t stream = 0;
  Tokens tokens;
  size_t length = 0;
};

// The two sides, driven in lock step.
class Differential {
 public:
  Differential(const std::string& dir, const std::string& policy) : ns_(MakeNamespace(kLayout)) {
    StoreOptions o = SmallOptions(dir);
    o.page_bytes = kPageBytes;
    o.t1_bytes = uint64_t{kT1Pages} * kPageBytes;
    o.policy = policy;
    o.prefetch_bytes = 1ull << 30;  // the budget never binds (replay's is the simulator's)
    auto s = Store::Open(o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s.value());
    auto t = ReplayTiers::Create(o.t1_bytes, o.t2_bytes, kPageBytes, kLayout.token_bytes(), kChunkTokens, policy,
                                 {&window_, nullptr});
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    tiers_ = std::move(t.value());
  }

  Store& store() { return *store_; }
  ReplayTiers& tiers() { return *tiers_; }

  // The prompt's chunks as the store keys them and as replay's trace describes them (the
  // chain's first parent is ChunkKey{} in a trace, ns.id() in the store).
  std::vector<ChunkSpan> Spans(const Tokens& prompt) const { return kvault::ChunkKeys(ns_, prompt); }
  std::vector<TraceChunk> Chain(const Conversation& c, const Tokens& prompt) const {
    std::vector<TraceChunk> chain;
    for (const ChunkSpan& s : Spans(prompt)) {
      TraceChunk t;
      t.key = s.key;
      t.tokens = s.tokens;
      // Chunks inside the shared system prompt belong to its stream (no partial chunk ever
      // falls there: every prompt is longer).
      t.stream = s.begin < kSystemTokens ? 1000 + c.stream % 3 : c.stream;
      t.stream_begin = s.begin;
      chain.push_back(t);
    }
    return chain;
  }

  // One request: lookup (compared), read the cached prefix in order, put every chunk, release.
  void Request(const Conversation& c, const std::string& where) {
    const Tokens prompt(c.tokens.begin(), c.tokens.begin() + c.length);
    const std::vector<ChunkSpan> spans = Spans(prompt);
    const std::vector<TraceChunk> chain = Chain(c, prompt);

    const LookupResult r = store_->Lookup(ns_, prompt);
    std::vector<Entry*> hits = tiers_->LookupPrefix(chain);
    ExpectSameHits(r, hits, where + " lookup");

    // Reads, in chunk order, each pinned until the request ends (as an engine loads them).
    std::vector<ChunkReader> readers;
    std::vector<Entry*> pinned;
    for (size_t k = 0; k < r.chunks.size() && k < hits.size(); ++k) {
      auto reader = store_->OpenChunk(ns_, r.chunks[k].key);
      const bool replay_read = tiers_->Read(hits[k]);
      EXPECT_EQ(reader.ok(), replay_read) << where << " read " << k << ": "
                                          << (reader.ok() ? "ok" : reader.status().ToString());
      if (reader.ok()) readers.push_back(std::move(reader.value()));
      if (replay_read) {
        tiers_->Pin(hits[k]);
        pinned.push_back(hits[k]);
      }
    }
    // Puts of the whole chain (chunks already stored are deduplicated on both sides).
    for (size_t k = 0; k < spans.size(); ++k) {
      const ChunkSpan& s = spans[k];
      auto w = store_->BeginPut(ns_, s.parent, std::span(prompt).subspan(s.begin, s.tokens));
      bool store_created = false;
      if (w.ok() && !w->exists()) {
        ASSERT_TRUE(w->WriteRange(0, PayloadFor(s.key, w->size())).ok());
        ASSERT_TRUE(w->Commit().ok());
        ASSERT_TRUE(store_->Flush().ok());
        store_created = true;
      }
      bool replay_created = false;
      Entry* e = tiers_->Put(chain[k], k == 0 ? kvault::ChunkKey{} : chain[k - 1].key, &replay_created);
      if (e != nullptr && replay_created) tiers_->WriteToT2(e);
      EXPECT_EQ(w.ok(), e != nullptr) << where << " put " << k << ": " << (w.ok() ? "ok" : w.status().ToString());
      EXPECT_EQ(store_created, replay_created) << where << " put " << k;
    }
    readers.clear();
    for (Entry* e : pinned) tiers_->Unpin(e);
    ExpectSameCounters(where);
  }

  // A hint: the store's window and prefetch, and replay's emulation of them with the core.
  void Hint(const std::vector<Tokens>& prompts, const std::vector<const Conversation*>& convs, const std::string& where) {
    std::vector<std::span<const uint32_t>> spans(prompts.begin(), prompts.end());
    store_->Hint(ns_, spans);
    store_->WaitForPrefetch();

    // As StoreImpl::Hint: each prompt's cached prefix, then its uncached whole chunks.
    std::vector<std::vector<Entry*>> cached;
    std::vector<std::vector<kvault::ChunkKey>> chains;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<TraceChunk> chain = Chain(*convs[i], prompts[i]);
      cached.push_back(tiers_->LookupPrefix(chain));
      std::vector<kvault::ChunkKey> keys;
      size_t whole = 0;
      for (const Entry* e : cached.back()) {
        keys.push_back(e->key);
        whole += e->tokens == kChunkTokens;
      }
      for (size_t k = whole; k < chain.size(); ++k) {
        if (chain[k].tokens == kChunkTokens) keys.push_back(chain[k].key);
      }
      chains.push_back(std::move(keys));
    }
    tiers_->WindowChanged(window_.Set(chains));
    // As the store's prefetcher: the T2-only cached chunks in window order, never evicting a
    // window entry or one without a T2 copy; the first that finds no room ends the prefetch.
    auto may_evict = [&](const Entry* v) { return v->on_t2 && !window_.Contains(v->key); };
    std::vector<kvault::ChunkKey> queue;
    for (const auto& prefix : cached) {
      for (const Entry* e : prefix) {
        if (!e->in_t1) queue.push_back(e->key);
      }
    }
    for (const kvault::ChunkKey& k : queue) {
      Entry* e = tiers_->Find(k);
      if (e == nullptr || e->in_t1 || !e->on_t2) continue;
      if (!tiers_->Promote(e, may_evict)) break;
    }
    ExpectSameCounters(where);
  }

  // Every conversation's whole stream is looked up on both sides (lookups change nothing).
  void ExpectSameState(const std::vector<Conversation>& convs, const std::string& where) {
    for (const Conversation& c : convs) {
      const Tokens all(c.tokens.begin(), c.tokens.begin() + std::max<size_t>(c.length, kSystemTokens + 1));
      ExpectSameHits(store_->Lookup(ns_, all), tiers_->LookupPrefix(Chain(c, all)),
                     where + " state of conversation " + std::to_string(c.stream));
    }
  }

  void ExpectSameHits(const LookupResult& r, const std::vector<Entry*>& hits, const std::string& where) {
    std::string store_side, replay_side;
    for (const auto& ch : r.chunks) store_side += Describe(ch.key, ch.tokens, ch.tier);
    for (const Entry* e : hits) replay_side += Describe(e->key, e->tokens, e->in_t1 ? Tier::kT1 : Tier::kT2);
    EXPECT_EQ(store_side, replay_side) << where;
    ++compared_;
    for (const auto& ch : r.chunks) ++tier_hits_[ch.tier == Tier::kT1 ? "t1" : "t2"];
  }

  void ExpectSameCounters(const std::string& where) {
    const kvault::StoreStats s = store_->Stats();
    EXPECT_EQ(s.t1_evictions + s.t1_dropped_unpersisted, tiers_->counters().t1_evictions) << where;
    EXPECT_EQ(s.partials_superseded, tiers_->core().counters().partials_superseded) << where;
  }

  size_t compared() const { return compared_; }
  const std::map<std::string, uint64_t>& tier_hits() const { return tier_hits_; }

 private:
  static std::string Describe(const kvault::ChunkKey& key, uint32_t tokens, Tier tier) {
    return key.ShortHex() + "+" + std::to_string(tokens) + kvault::TierName(tier) + " ";
  }

  const Namespace ns_;
  kvault::AccessWindow window_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<ReplayTiers> tiers_;
  size_t compared_ = 0;
  std::map<std::string, uint64_t> tier_hits_;
};

class TierCoreDifferentialTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TierCoreDifferentialTest, StoreAndReplayAgreeOnARandomSequence) {
  TempDir dir;
  Differential d(dir.path(), GetParam());
  std::mt19937_64 rng(20261203);
  auto uniform = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); };

  // 14 conversations of up to 8 chunks: about 3 times what T1 holds.
  std::vector<Conversation> convs(14);
  for (size_t i = 0; i < convs.size(); ++i) {
    Conversation& c = convs[i];
    c.stream = i + 1;
    c.tokens = MakeTokens(900 + i % 3, kSystemTokens);  // the shared system prompt
    const Tokens own = MakeTokens(i + 1, 8 * kChunkTokens - kSystemTokens);
    c.tokens.insert(c.tokens.end(), own.begin(), own.end());
    c.length = kSystemTokens;
  }
  for (int op = 0; op < 600; ++op) {
    const std::string where = GetParam() + " op " + std::to_string(op);
    if (uniform(0, 9) < 8) {
      Conversation& c = convs[uniform(0, convs.size() - 1)];
      // The next turn: 1..24 more tokens (a conversation that is full starts over).
      c.length += uniform(1, 24);
      if (c.length > c.tokens.size()) c.length = kSystemTokens + uniform(1, 24);
      d.Request(c, where);
    } else {
      std::vector<Tokens> prompts;
      std::vector<const Conversation*> which;
      for (uint64_t n = uniform(1, 3); n > 0; --n) {
        const Conversation& c = convs[uniform(0, convs.size() - 1)];
        const size_t len = std::min(c.tokens.size(), c.length + uniform(0, 16));
        prompts.emplace_back(c.tokens.begin(), c.tokens.begin() + std::max<size_t>(len, kSystemTokens + 1));
        which.push_back(&c);
      }
      d.Hint(prompts, which, where);
    }
    if (op % 50 == 49) d.ExpectSameState(convs, where);
    if (::testing::Test::HasFailure()) break;  // the first divergence is the one to read
  }
  if (HasFailure()) return;
  // The sequence must have exercised what it compares.
  const kvault::StoreStats s = d.store().Stats();
  EXPECT_GT(s.t1_evictions, 100u) << s.ToJson();
  EXPECT_GT(s.promotions, 20u) << s.ToJson();
  EXPECT_GT(s.prefetches, 5u) << s.ToJson();
  EXPECT_GT(s.partials_superseded, 10u) << s.ToJson();
  EXPECT_GT(d.tier_hits().count("t1") ? d.tier_hits().at("t1") : 0, 100u);
  EXPECT_GT(d.tier_hits().count("t2") ? d.tier_hits().at("t2") : 0, 100u);
}

INSTANTIATE_TEST_SUITE_P(Policies, TierCoreDifferentialTest, ::testing::Values("lru", "fifo", "s3fifo", "aware"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace kvtest

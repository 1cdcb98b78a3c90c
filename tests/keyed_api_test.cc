// The keyed store API (KeyTokens, Store::LookupKeyed / HintKeyed / BeginPutKeyed): a prompt
// keyed once gives exactly what the token methods give. The same operations are run on two
// stores, one through the token methods and one through the keyed ones, and every lookup
// (keys, begins, token counts, tiers), every read and the final counters must agree; the
// Store's default keyed methods (what kvault::Client inherits) are checked the same way
// through a forwarding Store that overrides only the token methods.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChunkSpan;
using kvault::Code;
using kvault::KeyedTokens;
using kvault::LookupResult;
using kvault::StoreOptions;
using kvault::StoreStats;
using Tokens = std::vector<uint32_t>;

constexpr uint32_t kChunkTokens = 16;
const KvLayout kLayout = MakeLayout();

std::unique_ptr<Store> OpenStore(const StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

// Overrides only the pure token methods: its keyed methods are Store's defaults.
class ForwardingStore final : public Store {
 public:
  explicit ForwardingStore(std::unique_ptr<Store> inner) : inner_(std::move(inner)) {}
  LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> t) override { return inner_->Lookup(ns, t); }
  LookupResult LookupFrom(const Namespace& ns, const ChunkKey& p, std::span<const uint32_t> t) override {
    return inner_->LookupFrom(ns, p, t);
  }
  kvault::Result<kvault::ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& p,
                                               std::span<const uint32_t> t) override {
    return inner_->BeginPut(ns, p, t);
  }
  kvault::Result<kvault::ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& k) override {
    return inner_->OpenChunk(ns, k);
  }
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& p) override { inner_->Hint(ns, p); }
  kvault::Status Flush() override { return inner_->Flush(); }
  void WaitForPrefetch() override { inner_->WaitForPrefetch(); }
  StoreStats Stats() const override { return inner_->Stats(); }

 private:
  std::unique_ptr<Store> inner_;
};

std::string Describe(const LookupResult& r) {
  std::string s = std::to_string(r.cached_tokens);
  s += '/';
  s += std::to_string(r.total_tokens);
  for (const auto& c : r.chunks) {
    s += ' ';
    s += c.key.ShortHex();
    s += '@';
    s += std::to_string(c.begin);
    s += '+';
    s += std::to_string(c.tokens);
    s += kvault::TierName(c.tier);
  }
  return s;
}

// Puts every chunk of `tokens` after `parent` (a trailing partial chunk too), by the token
// method or by the keyed one, each flushed to T2 before the next.
void PutStream(Store& store, const Namespace& ns, const ChunkKey& parent, const Tokens& tokens, bool keyed) {
  std::vector<ChunkSpan> spans = kvault::ChunkKeysFrom(ns, parent, tokens, /*include_partial=*/true);
  for (const ChunkSpan& c : spans) {
    std::span<const uint32_t> chunk_tokens = std::span(tokens).subspan(c.begin, c.tokens);
    auto w = keyed ? store.BeginPutKeyed(ns, c, chunk_tokens) : store.BeginPut(ns, c.parent, chunk_tokens);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ(w->key(), c.key);
    if (w->exists()) continue;
    ASSERT_TRUE(w->WriteRange(0, PayloadFor(c.key, w->size())).ok());
    ASSERT_TRUE(w->Commit().ok());
    ASSERT_TRUE(store.Flush().ok());  // on T2 before anything can evict it: deterministic
  }
}

LookupResult LookupStream(Store& store, const Namespace& ns, const ChunkKey& parent, const Tokens& tokens, bool keyed) {
  if (keyed) {
    const KeyedTokens k = parent == ns.id() ? kvault::KeyTokens(ns, tokens) : kvault::KeyTokensFrom(ns, parent, tokens);
    return store.LookupKeyed(ns, k);
  }
  return parent == ns.id() ? store.Lookup(ns, tokens) : store.LookupFrom(ns, parent, tokens);
}

TEST(KeyedApi, KeyTokensKeysTheWholeChunksOnce) {
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens t = MakeTokens(1, 3 * kChunkTokens + 5);
  const KeyedTokens k = kvault::KeyTokens(ns, t);
  EXPECT_EQ(k.first_parent, ns.id());
  EXPECT_EQ(k.tokens.data(), t.data());
  EXPECT_EQ(k.tokens.size(), t.size());
  const auto expect = kvault::ChunkKeys(ns, t, /*include_partial=*/false);
  ASSERT_EQ(k.full.size(), 3u);
  for (size_t i = 0; i < expect.size(); ++i) {
    EXPECT_EQ(k.full[i].key, expect[i].key);
    EXPECT_EQ(k.full[i].parent, expect[i].parent);
    EXPECT_EQ(k.full[i].begin, expect[i].begin);
    EXPECT_EQ(k.full[i].tokens, kChunkTokens);
  }
  const KeyedTokens from = kvault::KeyTokensFrom(ns, expect[0].key, std::span(t).subspan(kChunkTokens));
  EXPECT_EQ(from.first_parent, expect[0].key);
  ASSERT_EQ(from.full.size(), 2u);
  EXPECT_EQ(from.full[0].key, expect[1].key);
  EXPECT_EQ(from.full[0].begin, 0u);
  EXPECT_EQ(from.full[1].key, expect[2].key);
}

// The same scenario on three stores: token methods, the embedded store's keyed methods, and
// Store's default keyed methods. Partial chunks (stored, reused, superseded), LookupFrom, T2
// hits after eviction and prefetch by hints are all covered.
TEST(KeyedApi, KeyedAndTokenPathsGiveIdenticalResults) {
  enum Path { kTokens, kKeyed, kDefaults };
  TempDir dirs[3];
  std::unique_ptr<Store> stores[3];
  for (int p = 0; p < 3; ++p) {
    StoreOptions o = SmallOptions(dirs[p].path());
    o.t1_bytes = 8 * o.page_bytes;  // 8 full chunks
    stores[p] = OpenStore(o);
    ASSERT_TRUE(stores[p]);
  }
  stores[kDefaults] = std::make_unique<ForwardingStore>(std::move(stores[kDefaults]));
  const Namespace ns = MakeNamespace(kLayout);

  const Tokens turn1 = MakeTokens(7, 2 * kChunkTokens + 5);  // 2 whole chunks + a 5-token partial
  Tokens turn2 = turn1;                                      // continues turn 1: reuses the partial
  for (uint32_t t : MakeTokens(8, 2 * kChunkTokens)) turn2.push_back(t);
  const Tokens other = MakeTokens(9, 10 * kChunkTokens);    // evicts turn 1 from T1
  std::vector<std::string> seen[3];
  for (int p = 0; p < 3; ++p) {
    Store& s = *stores[p];
    const bool keyed = p != kTokens;
    auto look = [&](const ChunkKey& parent, const Tokens& t) {
      seen[p].push_back(Describe(LookupStream(s, ns, parent, t, keyed)));
    };
    look(ns.id(), turn1);
    PutStream(s, ns, ns.id(), turn1, keyed);
    look(ns.id(), turn1);
    look(ns.id(), turn2);  // whole chunks then the stored 5-token partial chunk
    PutStream(s, ns, ns.id(), turn2, keyed);  // supersedes the partial chunk
    look(ns.id(), turn1);
    look(ns.id(), turn2);
    const auto head = kvault::ChunkKeys(ns, turn2, false);
    look(head[0].key, Tokens(turn2.begin() + kChunkTokens, turn2.end()));  // LookupFrom
    ASSERT_TRUE(s.Flush().ok());
    PutStream(s, ns, ns.id(), other, keyed);
    ASSERT_TRUE(s.Flush().ok());
    look(ns.id(), turn2);  // on T2 now
    const Tokens hinted = turn2;
    if (keyed) {
      const KeyedTokens k = kvault::KeyTokens(ns, hinted);
      s.HintKeyed(ns, {&k});
    } else {
      s.Hint(ns, {std::span<const uint32_t>(hinted)});
    }
    s.WaitForPrefetch();
    look(ns.id(), turn2);  // prefetched back into T1
    for (const auto& c : kvault::ChunkKeys(ns, turn2)) {
      std::string why;
      EXPECT_EQ(CheckChunk(s, ns, c.key, c.tokens, nullptr, &why), Check::kMatch) << why;
    }
  }
  EXPECT_EQ(seen[kKeyed], seen[kTokens]);
  EXPECT_EQ(seen[kDefaults], seen[kTokens]);
  EXPECT_NE(seen[kTokens][2].find("+5t"), std::string::npos) << seen[kTokens][2];  // the partial chunk is reused

  const StoreStats a = stores[kTokens]->Stats(), b = stores[kKeyed]->Stats(), c = stores[kDefaults]->Stats();
  EXPECT_EQ(a.ToJson(), b.ToJson());
  EXPECT_EQ(a.ToJson(), c.ToJson());
  EXPECT_EQ(a.partials_superseded, 1u);
  EXPECT_GT(a.prefetches, 0u);
}

// A prompt keyed after a gap (KeyTokensFrom: the engine dropped the middle of a conversation)
// is hinted by its original keys: the stored partial chunk right after the gap, only on T2,
// is found under the given first parent and prefetched.
TEST(KeyedApi, HintKeyedHonoursTheFirstParent) {
  TempDir dir;
  StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 4 * o.page_bytes;  // 4 chunks
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens conv = MakeTokens(11, 3 * kChunkTokens + 5);
  PutStream(*store, ns, ns.id(), conv, /*keyed=*/true);
  PutStream(*store, ns, ns.id(), MakeTokens(12, 4 * kChunkTokens), /*keyed=*/true);  // conv goes to T2
  const auto spans = kvault::ChunkKeys(ns, conv);
  ASSERT_EQ(spans.size(), 4u);
  const Tokens tail(conv.begin() + 3 * kChunkTokens, conv.end());  // the 5 tokens after chunk 2
  const KeyedTokens after_gap = kvault::KeyTokensFrom(ns, spans[2].key, tail);
  EXPECT_TRUE(after_gap.full.empty());
  LookupResult r = store->LookupKeyed(ns, after_gap);
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].key, spans[3].key);
  EXPECT_EQ(r.chunks[0].tier, kvault::Tier::kT2);
  store->HintKeyed(ns, {&after_gap});
  store->WaitForPrefetch();
  EXPECT_EQ(store->Stats().prefetches, 1u) << store->Stats().ToJson();
  r = store->LookupKeyed(ns, after_gap);
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].tier, kvault::Tier::kT1);
}

TEST(KeyedApi, BeginPutKeyedChecksTheSpanAgainstTheTokens) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens t = MakeTokens(3, kChunkTokens);
  const auto spans = kvault::ChunkKeys(ns, t);
  auto w = store->BeginPutKeyed(ns, spans[0], std::span(t).first(kChunkTokens - 1));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  // A keyed put is found by a token lookup, under the key it was given.
  PutStream(*store, ns, ns.id(), t, /*keyed=*/true);
  const LookupResult r = store->Lookup(ns, t);
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].key, spans[0].key);
}

// Keys are the caller's: a stream whose keys lack KeyTokens' shape is keyed again by the store
// (the answer equals the token lookup's), and a put under a key of another namespace's entry
// is refused rather than reported as already stored.
TEST(KeyedApi, MisshapenKeysAreRekeyedAndForeignKeysRefused) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace alice = MakeNamespace(kLayout, "alice");
  const Namespace bob = MakeNamespace(kLayout, "bob");
  const Tokens t = MakeTokens(5, 3 * kChunkTokens + 5);
  PutStream(*store, alice, alice.id(), t, /*keyed=*/true);
  const std::string want = Describe(store->Lookup(alice, t));
  ASSERT_EQ(store->Lookup(alice, t).cached_tokens, t.size());

  KeyedTokens k = kvault::KeyTokens(alice, t);
  KeyedTokens extra = k;  // one key too many: a tokens span cut after keying
  extra.tokens = std::span(t).first(2 * kChunkTokens);
  EXPECT_FALSE(kvault::HasWholeChunkKeys(extra, kChunkTokens));
  EXPECT_EQ(Describe(store->LookupKeyed(alice, extra)), Describe(store->Lookup(alice, extra.tokens)));
  KeyedTokens swapped = k;  // chunks out of order
  std::swap(swapped.full[0], swapped.full[1]);
  EXPECT_FALSE(kvault::HasWholeChunkKeys(swapped, kChunkTokens));
  EXPECT_EQ(Describe(store->LookupKeyed(alice, swapped)), want);
  EXPECT_TRUE(kvault::HasWholeChunkKeys(k, kChunkTokens));

  // Bob names Alice's first chunk by its key: not "exists", an error; and Bob's lookups with
  // Alice's keys find nothing.
  auto w = store->BeginPutKeyed(bob, k.full[0], std::span(t).first(kChunkTokens));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  KeyedTokens forged = k;
  EXPECT_EQ(store->LookupKeyed(bob, forged).cached_tokens, 0u);
}

}  // namespace
}  // namespace kvtest

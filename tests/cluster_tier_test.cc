// The cluster tier (T3) wired into the store: write-behind publishing, read-through lookups,
// fetches into T1, and what a failing, slow or lying tier does to the store (nothing but
// misses and counters). Most tests run on an in-memory fake tier with fault switches; one
// runs on the real shared-directory backend.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <gtest/gtest.h>

#include "store/embedded_store.h"
#include "store/remote_record.h"
#include "store/remote_tier.h"
#include "store/remote_tier_factory.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChunkSpan;
using kvault::Code;
using kvault::EmbeddedStore;
using kvault::LookupResult;
using kvault::RecordHeader;
using kvault::RemoteTier;
using kvault::RemoteTierStats;
using kvault::Result;
using kvault::Status;
using kvault::StoreStats;
using kvault::Tier;

// An in-memory RemoteTier: a thread-safe map, with switches that make it fail, time out,
// corrupt what it returns, hold puts at a gate, or slow gets down.
class FakeTier final : public RemoteTier {
 public:
  std::atomic<bool> fail{false};          // every call fails at once
  std::atomic<bool> time_out{false};      // every call waits timeout_ms, then fails
  std::atomic<bool> corrupt{false};       // Get flips a payload byte
  std::atomic<int> get_delay_ms{0};       // Get sleeps first (widens races)
  int timeout_ms = 50;

  std::string name() const override { return "fake"; }

  Status Put(const ChunkKey& key, std::span<const std::byte> record) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++at_gate_;
      gate_cv_.notify_all();
      gate_cv_.wait(lock, [&] { return !gate_closed_; });
      --at_gate_;
    }
    if (Status st = Fault(); !st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.puts;
    stats_.bytes_put += record.size();
    values_[key].assign(record.begin(), record.end());
    return Status::OK();
  }

  Result<std::vector<std::byte>> Get(const ChunkKey& key) override {
    if (get_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(get_delay_ms.load()));
    if (Status st = Fault(); !st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.gets;
    auto it = values_.find(key);
    if (it == values_.end()) return Status::NotFound("fake: no value");
    ++stats_.get_hits;
    std::vector<std::byte> v = it->second;
    if (corrupt && !v.empty()) v.back() ^= std::byte{1};
    return v;
  }

  std::vector<bool> Contains(std::span<const ChunkKey> keys) override {
    if (Status st = Fault(); !st.ok()) return std::vector<bool>(keys.size(), false);
    std::lock_guard<std::mutex> lock(mu_);
    ++contains_calls_;
    stats_.contains_queries += keys.size();
    std::vector<bool> out;
    for (const ChunkKey& k : keys) out.push_back(values_.contains(k));
    return out;
  }

  RemoteTierStats Stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  // Puts wait at the gate while it is closed.
  void ClosePutGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_closed_ = true;
  }
  // Returns when a Put is waiting at the closed gate.
  void WaitForPutAtGate() {
    std::unique_lock<std::mutex> lock(mu_);
    gate_cv_.wait(lock, [&] { return at_gate_ > 0; });
  }
  void OpenPutGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_closed_ = false;
    }
    gate_cv_.notify_all();
  }

  void Set(const ChunkKey& key, std::vector<std::byte> value) {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = std::move(value);
  }
  std::optional<std::vector<std::byte>> Value(const ChunkKey& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = values_.find(key);
    if (it == values_.end()) return std::nullopt;
    return it->second;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return values_.size();
  }
  uint64_t contains_calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return contains_calls_;
  }

 private:
  Status Fault() {
    if (time_out) {
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.errors;
      ++stats_.timeouts;
      return Status::Unavailable("fake: timed out");
    }
    if (fail) {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.errors;
      return Status::Unavailable("fake: down");
    }
    return Status::OK();
  }

  mutable std::mutex mu_;
  std::condition_variable gate_cv_;
  bool gate_closed_ = false;
  int at_gate_ = 0;
  std::unordered_map<ChunkKey, std::vector<std::byte>, kvault::DigestHash> values_;
  RemoteTierStats stats_;
  uint64_t contains_calls_ = 0;
};

kvault::StoreOptions T3Options(const std::string& dir, RemoteTier* tier) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.t3_tier = tier;
  return o;
}

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

void WaitForT3(Store& store) { static_cast<EmbeddedStore&>(store).WaitForClusterWrites(); }

// Every looked-up token and chunk is a T1, T2 or T3 hit or a miss (stats.h).
void ExpectLookupCountersAddUpWithT3(const StoreStats& s) {
  EXPECT_EQ(s.hit_tokens_t1 + s.hit_tokens_t2 + s.hit_tokens_t3 + s.miss_tokens, s.lookup_tokens) << s.ToJson();
  EXPECT_EQ(s.hit_chunks_t1 + s.hit_chunks_t2 + s.hit_chunks_t3 + s.miss_chunks, s.lookup_chunks) << s.ToJson();
}

std::vector<Tier> TiersOf(const LookupResult& r) {
  std::vector<Tier> out;
  for (const auto& c : r.chunks) out.push_back(c.tier);
  return out;
}

// The record `value` re-encoded with `edit` applied to its header (the payload checksum
// stays right, so only the header's claims differ).
std::vector<std::byte> Reforge(const std::vector<std::byte>& value, const std::function<void(RecordHeader*)>& edit) {
  RecordHeader h;
  EXPECT_TRUE(kvault::DecodeHeader(reinterpret_cast<const uint8_t*>(value.data()), &h).ok());
  edit(&h);
  std::span<const std::byte> payload = std::span(value).subspan(kvault::kHeaderBytes);
  return kvault::EncodeRemoteRecord(h, {&payload, 1});
}

// Proves two stores with different directories and T1s share whole chunks through T3 byte
// for byte: the first publishes each whole chunk once (partial chunks stay local) as a checked
// record; the second's lookup finds them as t3, OpenChunk serves them as t3 with the right
// bytes and inserts them into T1 (the next lookup says t1) and T2 (a reopened store without T3
// finds them on disk); nothing fetched is published back.
TEST(ClusterTier, TwoStoresShareChunksByteIdentically) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  const std::vector<uint32_t> tokens = MakeTokens(1, 3 * 16 + 5);  // 3 whole chunks + a partial
  std::vector<ChunkSpan> spans;
  {
    auto a = OpenStore(T3Options(dir.Sub("a"), &tier));
    ASSERT_TRUE(a);
    ASSERT_TRUE(PutChain(*a, ns, tokens, &spans).ok());
    WaitForT3(*a);
    const StoreStats sa = a->Stats();
    EXPECT_EQ(sa.t3_puts, 3u) << sa.ToJson();
    EXPECT_EQ(sa.bytes_t1_to_t3, 3 * ns.layout().chunk_bytes(16));
    EXPECT_EQ(sa.t3_queue_entries, 0u);
    EXPECT_EQ(sa.err_t3, 0u);
  }
  ASSERT_EQ(spans.size(), 4u);
  EXPECT_EQ(tier.size(), 3u);  // the partial chunk stayed local
  EXPECT_FALSE(tier.Value(kvault::ClusterKey(ns.id(), spans[3].key)).has_value());
  for (size_t i = 0; i < 3; ++i) {
    auto v = tier.Value(kvault::ClusterKey(ns.id(), spans[i].key));  // named by namespace and key
    ASSERT_TRUE(v.has_value());
    RecordHeader h;
    std::span<const std::byte> payload;
    ASSERT_TRUE(kvault::DecodeRemoteRecord(*v, spans[i].key, &h, &payload).ok());
    EXPECT_EQ(h.ns_id, ns.id());
    EXPECT_EQ(h.parent, spans[i].parent);
    const std::vector<std::byte> want = PayloadFor(spans[i].key, ns.layout().chunk_bytes(16));
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), want.begin(), want.end()));
  }
  const uint64_t puts_before = tier.Stats().puts;

  {
    auto b = OpenStore(T3Options(dir.Sub("b"), &tier));
    ASSERT_TRUE(b);
    LookupResult r = b->Lookup(ns, tokens);
    EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT3, Tier::kT3, Tier::kT3}));
    EXPECT_EQ(r.cached_tokens, 48u);
    EXPECT_EQ(tier.contains_calls(), 1u);  // one batch at the first local miss
    for (size_t i = 0; i < 3; ++i) {
      Tier from = Tier::kNone;
      std::string why;
      EXPECT_EQ(CheckChunk(*b, ns, spans[i].key, 16, &from, &why), Check::kMatch) << why;
      EXPECT_EQ(from, Tier::kT3);
    }
    r = b->Lookup(ns, tokens);
    EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT1, Tier::kT1, Tier::kT1}));
    EXPECT_EQ(tier.contains_calls(), 1u);  // every whole chunk local: T3 is not asked
    Tier from = Tier::kNone;
    EXPECT_EQ(CheckChunk(*b, ns, spans[0].key, 16, &from), Check::kMatch);
    EXPECT_EQ(from, Tier::kT1);
    ASSERT_TRUE(b->Flush().ok());
    WaitForT3(*b);
    const StoreStats sb = b->Stats();
    EXPECT_EQ(sb.t3_fetches, 3u) << sb.ToJson();
    EXPECT_EQ(sb.bytes_t3_to_t1, 3 * ns.layout().chunk_bytes(16));
    EXPECT_EQ(sb.hit_chunks_t3, 3u);
    EXPECT_EQ(sb.hit_chunks_t1, 3u);
    EXPECT_EQ(sb.t3_puts, 0u);  // fetched chunks are not published back
    EXPECT_EQ(sb.t2_entries, 3u);
    ExpectLookupCountersAddUpWithT3(sb);
  }
  EXPECT_EQ(tier.Stats().puts, puts_before);
  // The node kept its own copy: reopened without T3, b finds the chunks on T2.
  auto b = OpenStore(SmallOptions(dir.Sub("b")));
  ASSERT_TRUE(b);
  LookupResult r = b->Lookup(ns, tokens);
  EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT2, Tier::kT2, Tier::kT2}));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(CheckChunk(*b, ns, spans[i].key, 16), Check::kMatch);
}

// Proves a T3 value that is not exactly the requested chunk is a miss, counted as corruption
// and a T3 error, and never data: another namespace's record (other tenant, other model),
// another layout, a wrong token count, a flipped payload byte, another key's record, a
// truncated value, garbage. Also: another tenant's lookup of the same tokens finds nothing.
TEST(ClusterTier, MismatchedOrCorruptValuesAreCountedMisses) {
  TempDir dir;
  FakeTier tier;
  const KvLayout layout = MakeLayout();
  const Namespace ns = MakeNamespace(layout);
  const Namespace other_tenant = MakeNamespace(layout, "tenant-b");
  const Namespace other_model = MakeNamespace(layout, "tenant-a", "model-b");
  const KvLayout other_layout = MakeLayout(kvault::DType::kF16);
  const std::vector<uint32_t> tokens = MakeTokens(2, 2 * 16);
  std::vector<ChunkSpan> spans;
  {
    auto a = OpenStore(T3Options(dir.Sub("a"), &tier));
    ASSERT_TRUE(a);
    ASSERT_TRUE(PutChain(*a, ns, tokens, &spans).ok());
    WaitForT3(*a);
  }
  const ChunkKey target = spans[0].key;
  const ChunkKey target_name = kvault::ClusterKey(ns.id(), target);  // its name in T3
  const std::vector<std::byte> good = *tier.Value(target_name);
  const std::vector<std::byte> other = *tier.Value(kvault::ClusterKey(ns.id(), spans[1].key));

  struct Case {
    const char* what;
    std::vector<std::byte> value;
  };
  std::vector<Case> cases = {
      {"other tenant", Reforge(good, [&](RecordHeader* h) { h->ns_id = other_tenant.id(); })},
      {"other model", Reforge(good, [&](RecordHeader* h) { h->ns_id = other_model.id(); })},
      {"other layout", Reforge(good, [&](RecordHeader* h) { h->layout = other_layout; })},
      {"wrong token count", Reforge(good, [&](RecordHeader* h) { h->tokens = 8; })},
      {"another key's record", other},
      {"truncated", std::vector<std::byte>(good.begin(), good.end() - 1)},
      {"garbage", std::vector<std::byte>(good.size(), std::byte{0x5a})},
  };
  std::vector<std::byte> flipped = good;
  flipped[kvault::kHeaderBytes + 100] ^= std::byte{0x80};
  cases.push_back({"flipped payload byte", flipped});

  auto b = OpenStore(T3Options(dir.Sub("b"), &tier));
  ASSERT_TRUE(b);
  uint64_t corruption = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    tier.Set(target_name, c.value);
    Status st;
    EXPECT_EQ(CheckChunk(*b, ns, target, 16, nullptr, nullptr, &st), Check::kMissing);
    EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
    const StoreStats s = b->Stats();
    EXPECT_EQ(s.err_corruption, ++corruption) << s.ToJson();
    EXPECT_EQ(s.err_t3, corruption);
    EXPECT_EQ(s.t3_fetches, 0u);
    EXPECT_EQ(s.t1_entries, 0u);
  }
  // The corrupt switch (a byte flipped on the way) too.
  tier.Set(target_name, good);
  tier.corrupt = true;
  EXPECT_EQ(CheckChunk(*b, ns, target, 16), Check::kMissing);
  EXPECT_EQ(b->Stats().err_corruption, corruption + 1);
  tier.corrupt = false;
  Tier from = Tier::kNone;
  EXPECT_EQ(CheckChunk(*b, ns, target, 16, &from), Check::kMatch);  // the good value is served
  EXPECT_EQ(from, Tier::kT3);

  // Isolation: other tenants' and models' chains never reach ns's values.
  for (const Namespace* o : {&other_tenant, &other_model}) {
    LookupResult r = b->Lookup(*o, tokens);
    EXPECT_EQ(r.cached_tokens, 0u);
    EXPECT_EQ(CheckChunk(*b, *o, target, 16), Check::kMissing);
  }
  ExpectLookupCountersAddUpWithT3(b->Stats());
}

// Proves a down or slow tier never fails a put or a lookup: puts succeed, lookups answer
// from the local tiers, opens of T3-only chunks are kNotFound, the failures are counted
// (err_t3, the tier's own errors), slow calls cost about one timeout each; and that
// everything works again when the tier recovers.
TEST(ClusterTier, FailingTierNeverFailsPutsOrLookups) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  auto a = OpenStore(T3Options(dir.Sub("a"), &tier));
  auto b = OpenStore(T3Options(dir.Sub("b"), &tier));
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> shared = MakeTokens(3, 4 * 16);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*a, ns, shared, &spans).ok());
  WaitForT3(*a);

  for (int mode = 0; mode < 2; ++mode) {
    SCOPED_TRACE(mode == 0 ? "down" : "timing out");
    (mode == 0 ? tier.fail : tier.time_out) = true;
    const std::vector<uint32_t> mine = MakeTokens(10 + mode, 3 * 16);
    ASSERT_TRUE(PutChain(*a, ns, mine).ok());  // puts land in T1 regardless
    LookupResult r = a->Lookup(ns, mine);
    EXPECT_EQ(r.cached_tokens, 48u);
    EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT1, Tier::kT1, Tier::kT1}));
    const auto start = std::chrono::steady_clock::now();
    r = b->Lookup(ns, shared);  // T3 holds it, but cannot say so
    EXPECT_EQ(r.cached_tokens, 0u);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
    Status st;
    EXPECT_EQ(CheckChunk(*b, ns, spans[0].key, 16, nullptr, nullptr, &st), Check::kMissing);
    EXPECT_EQ(st.code(), Code::kNotFound);
    WaitForT3(*a);
    (mode == 0 ? tier.fail : tier.time_out) = false;
  }
  const StoreStats sa = a->Stats(), sb = b->Stats();
  EXPECT_EQ(sa.err_t3, 6u) << sa.ToJson();  // the 3 + 3 whole chunks put while it failed
  EXPECT_EQ(sa.t3_puts, 4u);
  EXPECT_EQ(sb.err_t3, 2u) << sb.ToJson();  // one failed get per mode
  EXPECT_EQ(sb.err_corruption, 0u);
  const RemoteTierStats ts = *static_cast<EmbeddedStore&>(*b).ClusterStats();
  EXPECT_GE(ts.errors, 10u);  // puts, contains, gets
  EXPECT_GE(ts.timeouts, 5u);

  // Recovered: new puts are published and found.
  const std::vector<uint32_t> later = MakeTokens(20, 2 * 16);
  ASSERT_TRUE(PutChain(*a, ns, later).ok());
  WaitForT3(*a);
  LookupResult r = b->Lookup(ns, later);
  EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT3, Tier::kT3}));
  r = b->Lookup(ns, shared);
  EXPECT_EQ(r.cached_tokens, 64u);
  EXPECT_EQ(CheckChunk(*b, ns, spans[0].key, 16), Check::kMatch);
  ExpectLookupCountersAddUpWithT3(a->Stats());
  ExpectLookupCountersAddUpWithT3(b->Stats());
}

// Proves the T3 write-behind never back-pressures: with the tier's puts held at a gate (the
// first chunk's put stuck in it), a small T1 (64 pages, T2 off) takes 199 more chunks,
// evicting, while the queue drops what exceeds its cap; the chunk whose put is in flight is
// not pinned (it was evicted like any other); the queue stays under its cap; when the gate
// opens, the stuck put lands and the queued chunks, evicted since, are dropped: every chunk
// was published or dropped.
TEST(ClusterTier, WriteBehindDropsUnderItsCapInsteadOfBlocking) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  const uint64_t record = kvault::kHeaderBytes + ns.layout().chunk_bytes(16);
  kvault::StoreOptions o = T3Options(dir.path(), &tier);
  o.t2_bytes = 0;
  o.t1_bytes = 64 * o.page_bytes;
  o.t3.queue_bytes = 4 * record;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  tier.ClosePutGate();
  const std::vector<uint32_t> tokens = MakeTokens(4, 200 * 16);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*store, ns, std::span(tokens).first(16)).ok());
  tier.WaitForPutAtGate();
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(PutChain(*store, ns, tokens, &spans).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  StoreStats s = store->Stats();
  EXPECT_EQ(s.puts, 200u);
  EXPECT_EQ(s.t3_put_drops, 196u) << s.ToJson();  // 1 in flight + 3 queued fill the cap
  EXPECT_LE(s.t3_queue_bytes, o.t3.queue_bytes);
  EXPECT_GE(s.t1_evictions, 200u - 64u);
  // The first chunk was taken by the T3 writer (now stuck in Put) and has since been evicted:
  // not pinned across the network call.
  EXPECT_EQ(store->Lookup(ns, std::span(tokens).first(16)).cached_tokens, 0u);
  tier.OpenPutGate();
  WaitForT3(*store);
  s = store->Stats();
  EXPECT_EQ(s.t3_puts, 1u) << s.ToJson();
  EXPECT_EQ(s.t3_put_drops, 199u);
  EXPECT_EQ(s.t3_queue_bytes, 0u);
  EXPECT_EQ(tier.size(), s.t3_puts);
}

// Proves the lookup counters add up when a prefix mixes tiers: t1 (put locally), t2 (after a
// restart), t3 (another store's), then misses; and that a fully local lookup never asks T3.
TEST(ClusterTier, LookupCountersAddUpAcrossTiers) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  const std::vector<uint32_t> tokens = MakeTokens(5, 6 * 16 + 3);
  const std::vector<ChunkSpan> spans = kvault::ChunkKeys(ns, tokens);
  {
    auto a = OpenStore(T3Options(dir.Sub("a"), &tier));
    ASSERT_TRUE(a);
    ASSERT_TRUE(PutChain(*a, ns, std::span(tokens).first(4 * 16)).ok());
    WaitForT3(*a);
  }
  {  // b holds chunk 0 on its disk only
    auto b = OpenStore(SmallOptions(dir.Sub("b")));
    ASSERT_TRUE(PutChain(*b, ns, std::span(tokens).first(16)).ok());
    ASSERT_TRUE(b->Flush().ok());
  }
  auto b = OpenStore(T3Options(dir.Sub("b"), &tier));
  ASSERT_TRUE(b);
  ASSERT_TRUE(b->Put(ns, spans[0].key, std::span(tokens).subspan(16, 16),
                     PayloadFor(spans[1].key, ns.layout().chunk_bytes(16)))
                  .ok());
  LookupResult r = b->Lookup(ns, tokens);
  EXPECT_EQ(TiersOf(r), (std::vector<Tier>{Tier::kT2, Tier::kT1, Tier::kT3, Tier::kT3}));
  EXPECT_EQ(r.cached_tokens, 64u);
  EXPECT_EQ(tier.contains_calls(), 1u);
  // A fully local prefix asks nothing.
  r = b->Lookup(ns, std::span(tokens).first(32));
  EXPECT_EQ(r.cached_tokens, 32u);
  EXPECT_EQ(tier.contains_calls(), 1u);
  const StoreStats s = b->Stats();
  EXPECT_EQ(s.lookup_tokens, 6u * 16 + 3 + 32);
  EXPECT_EQ(s.lookup_chunks, 7u + 2);
  EXPECT_EQ(s.hit_tokens_t3, 32u);
  EXPECT_EQ(s.hit_chunks_t3, 2u);
  EXPECT_EQ(s.hit_chunks_t2, 2u);
  EXPECT_EQ(s.hit_chunks_t1, 2u);
  EXPECT_EQ(s.miss_chunks, 3u);
  EXPECT_EQ(s.miss_tokens, 2u * 16 + 3);
  ExpectLookupCountersAddUpWithT3(s);
}

// Proves concurrent opens and lookups of the same T3 chunks insert each once: one Get per
// chunk, one T1 entry per chunk, every reader gets the right bytes (as t3 or t1), and the
// lookups' counters add up while the fetches run.
TEST(ClusterTier, ConcurrentOpensFetchAndInsertOnce) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  const std::vector<uint32_t> tokens = MakeTokens(6, 8 * 16);
  std::vector<ChunkSpan> spans;
  {
    auto a = OpenStore(T3Options(dir.Sub("a"), &tier));
    ASSERT_TRUE(a);
    ASSERT_TRUE(PutChain(*a, ns, tokens, &spans).ok());
    WaitForT3(*a);
  }
  tier.get_delay_ms = 20;
  auto b = OpenStore(T3Options(dir.Sub("b"), &tier));
  ASSERT_TRUE(b);
  const uint64_t gets_before = tier.Stats().gets;
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < spans.size(); ++k) {
        const ChunkSpan& c = spans[(k + t) % spans.size()];
        LookupResult r = b->Lookup(ns, tokens);
        if (r.cached_tokens != tokens.size()) ++bad;
        if (CheckChunk(*b, ns, c.key, 16) != Check::kMatch) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  const StoreStats s = b->Stats();
  EXPECT_EQ(s.t3_fetches, spans.size()) << s.ToJson();
  EXPECT_EQ(tier.Stats().gets - gets_before, spans.size());
  EXPECT_EQ(s.t1_entries, spans.size());
  ExpectLookupCountersAddUpWithT3(s);
}

// Proves the movers stay consistent under concurrency: two stores with small T1s (evicting
// all the time) share one tier while threads put overlapping chains into both, look them up
// and open what the lookups report, so the T3 writers, fetches, the T2 write-behind and
// evictions all race. Every open yields the right bytes or a miss, never others; the
// counters add up.
TEST(ClusterTier, ConcurrentPutsLookupsAndFetchesStayConsistent) {
  TempDir dir;
  FakeTier tier;
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<std::unique_ptr<Store>> stores;
  for (const char* name : {"a", "b"}) {
    kvault::StoreOptions o = T3Options(dir.Sub(name), &tier);
    o.t1_bytes = 32 * o.page_bytes;
    stores.push_back(OpenStore(o));
    ASSERT_TRUE(stores.back());
  }
  std::atomic<int> mismatches{0}, put_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Store& mine = *stores[t % 2];
      std::mt19937_64 rng(t);
      for (int i = 0; i < 60; ++i) {
        const std::vector<uint32_t> tokens = MakeTokens(rng() % 16, 4 * 16 + rng() % 16);
        if (rng() % 2 == 0) {
          const Status st = PutChainMixed(mine, ns, tokens, rng, 3, 0);
          if (!st.ok() && st.code() != Code::kResourceExhausted) ++put_errors;
          continue;
        }
        LookupResult r = mine.Lookup(ns, tokens);
        for (const auto& c : r.chunks) {
          std::string why;
          if (CheckChunk(mine, ns, c.key, c.tokens, nullptr, &why) == Check::kMismatch) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(put_errors.load(), 0);
  for (auto& st : stores) {
    WaitForT3(*st);
    const StoreStats s = st->Stats();
    ExpectLookupCountersAddUpWithT3(s);
    EXPECT_EQ(s.err_corruption, 0u) << s.ToJson();
    EXPECT_EQ(s.err_t3, 0u);
    EXPECT_LE(s.t1_used_bytes, s.t1_capacity_bytes);
  }
  EXPECT_GT(stores[0]->Stats().t3_puts + stores[1]->Stats().t3_puts, 0u);
}

// Proves the factory refuses bad configurations and Store::Open with them, splits seeds, and
// that a store whose tier is unreachable at open runs without it.
TEST(ClusterTier, FactoryChecksItsOptions) {
  kvault::T3Options o;
  EXPECT_EQ(kvault::OpenRemoteTier(o).status().code(), Code::kInvalidArgument);
  o.kind = "memcached";
  EXPECT_EQ(kvault::OpenRemoteTier(o).status().code(), Code::kInvalidArgument);
  o.kind = "redis";
  EXPECT_EQ(kvault::OpenRemoteTier(o).status().code(), Code::kInvalidArgument);  // no seeds
  o.kind = "shared-dir";
  EXPECT_EQ(kvault::OpenRemoteTier(o).status().code(), Code::kInvalidArgument);  // no directory
  TempDir dir;
  kvault::StoreOptions so = SmallOptions(dir.path());
  so.t3.kind = "memcached";
  EXPECT_EQ(Store::Open(so).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(kvault::SplitSeeds({"a:1, b:2", "", "c:3,"}), (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  // An unreachable tier is no configuration error: the store opens without T3 (counted).
  so.t3.kind = "redis";
  so.t3.redis_seeds = {"127.0.0.1:1"};
  auto store = OpenStore(so);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().err_t3, 1u);
  EXPECT_FALSE(static_cast<EmbeddedStore&>(*store).ClusterStats().has_value());
  const Namespace ns = MakeNamespace(MakeLayout());
  const std::vector<uint32_t> tokens = MakeTokens(8, 2 * 16);
  ASSERT_TRUE(PutChain(*store, ns, tokens).ok());
  EXPECT_EQ(store->Lookup(ns, tokens).cached_tokens, 32u);
}

// Proves two stores share chunks through a real shared directory (the "shared-dir" backend,
// opened by the store from its options): published once, found as t3, served byte for byte.
TEST(ClusterTier, TwoStoresShareThroughASharedDirectory) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout());
  kvault::StoreOptions oa = SmallOptions(dir.Sub("a")), ob = SmallOptions(dir.Sub("b"));
  for (kvault::StoreOptions* o : {&oa, &ob}) {
    o->t3.kind = "shared-dir";
    o->t3.shared_dir = dir.Sub("shared");
    o->t3.shared_dir_sync = false;
  }
  const std::vector<uint32_t> tokens = MakeTokens(7, 5 * 16 + 9);
  std::vector<ChunkSpan> spans;
  auto a = OpenStore(oa);
  ASSERT_TRUE(a);
  ASSERT_TRUE(PutChain(*a, ns, tokens, &spans).ok());
  WaitForT3(*a);
  EXPECT_EQ(a->Stats().t3_puts, 5u);
  auto b = OpenStore(ob);
  ASSERT_TRUE(b);
  LookupResult r = b->Lookup(ns, tokens);
  EXPECT_EQ(TiersOf(r), std::vector<Tier>(5, Tier::kT3));
  for (size_t i = 0; i < 5; ++i) {
    Tier from = Tier::kNone;
    std::string why;
    EXPECT_EQ(CheckChunk(*b, ns, spans[i].key, 16, &from, &why), Check::kMatch) << why;
    EXPECT_EQ(from, Tier::kT3);
  }
  r = b->Lookup(ns, tokens);
  EXPECT_EQ(TiersOf(r), std::vector<Tier>(5, Tier::kT1));
  const auto ts = static_cast<EmbeddedStore&>(*b).ClusterStats();
  ASSERT_TRUE(ts.has_value());
  EXPECT_EQ(ts->get_hits, 5u);
  EXPECT_EQ(b->Stats().err_t3, 0u);
  ExpectLookupCountersAddUpWithT3(b->Stats());
}

}  // namespace
}  // namespace kvtest

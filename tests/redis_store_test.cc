// The store's cluster tier (T3) on a real 3-master Redis Cluster on loopback: two stores
// ("two nodes": own directories, own T1, own Redis clients) share chunks through it, and a
// Redis master killed mid-run costs misses, never a failed request or wrong data.
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "local_cluster/local_redis_cluster.h"
#include "store/embedded_store.h"
#include "store/redis_cluster.h"
#include "store/redis_tier.h"
#include "store/remote_record.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::local_cluster::LocalRedisCluster;
using kvault::local_cluster::LocalRedisClusterOptions;
using kvault::local_cluster::LocalRedisReply;

using kvault::ChunkSpan;
using kvault::Code;
using kvault::EmbeddedStore;
using kvault::LookupResult;
using kvault::StoreStats;
using kvault::Tier;
using Clock = std::chrono::steady_clock;

constexpr char kPrefix[] = "kvs-test:";
constexpr uint32_t kChunk = 16;
constexpr size_t kChunksPerChain = 3;

int64_t MillisSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// The slot of chunk `key` of `ns`: T3 names it by namespace and key (remote_record.h).
uint16_t SlotOf(const Namespace& ns, const ChunkKey& key) {
  return kvault::RedisCluster::KeySlot(kvault::RedisHeadKey(kPrefix, kvault::ClusterKey(ns.id(), key)));
}

void ExpectLookupCountersAddUpWithT3(const StoreStats& s) {
  EXPECT_EQ(s.hit_tokens_t1 + s.hit_tokens_t2 + s.hit_tokens_t3 + s.miss_tokens, s.lookup_tokens) << s.ToJson();
  EXPECT_EQ(s.hit_chunks_t1 + s.hit_chunks_t2 + s.hit_chunks_t3 + s.miss_chunks, s.lookup_chunks) << s.ToJson();
}

struct Chain {
  std::vector<uint32_t> tokens;
  std::vector<ChunkSpan> spans;
  std::vector<int> node;  // the Redis master serving each chunk's slot
};

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    cluster_ = LocalRedisCluster::Start({}, &error);
    ASSERT_TRUE(cluster_) << "cannot start a Redis Cluster: " << error;
  }

  // A store of its own "node": its directory, T1, T2 and Redis connections. `joined` passes
  // the seeds as one comma-separated string.
  std::unique_ptr<Store> OpenNode(const std::string& dir, bool joined) {
    kvault::StoreOptions o = SmallOptions(dir);
    o.t3.kind = "redis";
    if (joined) {
      std::string seeds;
      for (const std::string& s : cluster_->Seeds()) seeds += (seeds.empty() ? "" : ",") + s;
      o.t3.redis_seeds = {seeds};
    } else {
      o.t3.redis_seeds = cluster_->Seeds();
    }
    o.t3.redis_key_prefix = kPrefix;
    o.t3.timeout_ms = 200;
    auto s = Store::Open(o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s.value()) : nullptr;
  }

  Chain MakeChain(const Namespace& ns, uint64_t seed) {
    Chain c;
    c.tokens = MakeTokens(seed, kChunksPerChain * kChunk);
    c.spans = kvault::ChunkKeys(ns, c.tokens);
    for (const ChunkSpan& s : c.spans) c.node.push_back(cluster_->NodeOfSlot(SlotOf(ns, s.key)));
    return c;
  }

  std::unique_ptr<LocalRedisCluster> cluster_;
};

void WaitForT3(Store& store) { static_cast<EmbeddedStore&>(store).WaitForClusterWrites(); }

// Proves, on a real cluster: (1) chunks one store puts are found by the other as t3 and served
// byte for byte; (2) with one master killed, every lookup and open of the other store answers
// within about the timeout: the chunks on live masters are served, the ones on the dead
// master are misses (kNotFound), never wrong data; puts keep succeeding; the failures are
// counted; (3) once the master is back (empty: no persistence), new chunks in its slots are
// shared again.
TEST_F(RedisStoreTest, TwoNodesShareAndSurviveAKilledMaster) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout(kvault::DType::kBF16, 4, 2, 32, kChunk));
  auto a = OpenNode(dir.Sub("a"), /*joined=*/true);
  auto b = OpenNode(dir.Sub("b"), /*joined=*/false);
  ASSERT_TRUE(a && b);

  // (1) Sharing.
  std::vector<Chain> before;
  for (uint64_t i = 0; i < 24; ++i) {
    before.push_back(MakeChain(ns, 100 + i));
    ASSERT_TRUE(PutChain(*a, ns, before.back().tokens).ok());
  }
  WaitForT3(*a);
  EXPECT_EQ(a->Stats().t3_puts, 24 * kChunksPerChain) << a->Stats().ToJson();
  EXPECT_EQ(a->Stats().err_t3, 0u);
  for (const Chain& c : before) {
    LookupResult r = b->Lookup(ns, c.tokens);
    ASSERT_EQ(r.chunks.size(), kChunksPerChain);
    for (const auto& ch : r.chunks) EXPECT_EQ(ch.tier, Tier::kT3);
    Tier from = Tier::kNone;
    std::string why;
    EXPECT_EQ(CheckChunk(*b, ns, c.spans[0].key, kChunk, &from, &why), Check::kMatch) << why;
    EXPECT_EQ(from, Tier::kT3);
  }

  // (2) A master dies.
  const int victim = 1;
  int on_victim = 0;
  for (const Chain& c : before) on_victim += c.node[1] == victim || c.node[2] == victim;
  ASSERT_GT(on_victim, 0);
  cluster_->KillNode(victim);
  const uint64_t b_err_before = b->Stats().err_t3;
  int served = 0, missed = 0;
  for (const Chain& c : before) {
    const Clock::time_point start = Clock::now();
    LookupResult r = b->Lookup(ns, c.tokens);
    EXPECT_LT(MillisSince(start), 2000) << "lookup hung";
    // Chunk 0 is local now; then T3 up to the first chunk on the dead master.
    size_t want = 1;
    while (want < kChunksPerChain && c.node[want] != victim) ++want;
    ASSERT_EQ(r.chunks.size(), want);
    EXPECT_EQ(r.chunks[0].tier, Tier::kT1);
    for (size_t j = 1; j < kChunksPerChain; ++j) {
      kvault::Status st;
      std::string why;
      const Clock::time_point open = Clock::now();
      const Check got = CheckChunk(*b, ns, c.spans[j].key, kChunk, nullptr, &why, &st);
      EXPECT_LT(MillisSince(open), 2000) << "open hung";
      if (c.node[j] == victim) {
        EXPECT_EQ(got, Check::kMissing) << why;
        EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
        ++missed;
      } else {
        EXPECT_EQ(got, Check::kMatch) << why;
        ++served;
      }
    }
  }
  EXPECT_GT(served, 0);
  EXPECT_GT(missed, 0);
  EXPECT_GE(b->Stats().err_t3, b_err_before + missed) << b->Stats().ToJson();
  EXPECT_GT(static_cast<EmbeddedStore&>(*b).ClusterStats()->errors, 0u);
  // Puts never fail; the chunks for the dead master are not published (counted).
  const uint64_t a_err_before = a->Stats().err_t3;
  int to_victim = 0;
  for (uint64_t i = 0; i < 8; ++i) {
    Chain c = MakeChain(ns, 500 + i);
    ASSERT_TRUE(PutChain(*a, ns, c.tokens).ok());
    for (int n : c.node) to_victim += n == victim;
  }
  WaitForT3(*a);
  EXPECT_EQ(a->Stats().err_t3, a_err_before + to_victim) << a->Stats().ToJson();

  // (3) It comes back, empty.
  std::string error;
  ASSERT_TRUE(cluster_->RestartNode(victim, &error)) << error;
  const Clock::time_point restarted = Clock::now();
  bool recovered = false;
  for (uint64_t i = 0; !recovered && MillisSince(restarted) < 10000; ++i) {
    Chain c = MakeChain(ns, 900 + i);
    if (c.node[0] != victim) continue;
    const uint64_t err = a->Stats().err_t3;
    ASSERT_TRUE(PutChain(*a, ns, c.tokens).ok());
    WaitForT3(*a);
    recovered = a->Stats().err_t3 == err;
    if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(recovered) << "the restarted master never took puts again";
  std::vector<Chain> after;
  for (uint64_t i = 0; i < 12; ++i) {
    after.push_back(MakeChain(ns, 2000 + i));
    ASSERT_TRUE(PutChain(*a, ns, after.back().tokens).ok());
  }
  WaitForT3(*a);
  int after_on_victim = 0;
  for (const Chain& c : after) {
    LookupResult r = b->Lookup(ns, c.tokens);
    ASSERT_EQ(r.chunks.size(), kChunksPerChain);
    for (size_t j = 0; j < kChunksPerChain; ++j) {
      EXPECT_EQ(r.chunks[j].tier, Tier::kT3);
      Tier from = Tier::kNone;
      std::string why;
      EXPECT_EQ(CheckChunk(*b, ns, c.spans[j].key, kChunk, &from, &why), Check::kMatch) << why;
      EXPECT_EQ(from, Tier::kT3);
      after_on_victim += c.node[j] == victim;
    }
  }
  EXPECT_GT(after_on_victim, 0);
  // What the dead master held is gone: misses, never wrong data.
  for (const Chain& c : before) {
    for (size_t j = 1; j < kChunksPerChain; ++j) {
      if (c.node[j] != victim) continue;
      EXPECT_EQ(CheckChunk(*b, ns, c.spans[j].key, kChunk), Check::kMissing);
    }
  }
  ExpectLookupCountersAddUpWithT3(a->Stats());
  ExpectLookupCountersAddUpWithT3(b->Stats());
  EXPECT_EQ(b->Stats().err_corruption, 0u);
}

}  // namespace
}  // namespace kvtest

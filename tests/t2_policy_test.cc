// The disk tier evicts by policy, record by record: the T2 policy picks which record dies,
// sealed segments with nothing live are deleted, and segments at least half dead are
// compacted (their live records copied forward). Everything read back stays intact, the cap
// holds after every operation, and a restart finds the compacted copies.
#include <gtest/gtest.h>

#include "stats_checks.h"
#include "test_util.h"

namespace kvtest {
namespace {

constexpr uint32_t kChunkTokens = 16;
constexpr uint32_t kChainChunks = 4;

kvault::StoreOptions DiskHeavyOptions(const std::string& dir, const std::string& policy) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.t1_bytes = 6ull * o.page_bytes;  // a chain and a half: nearly everything lives on T2
  o.segment_bytes = 128u << 10;        // 5 records of 20 KiB per segment
  o.t2_bytes = 8 * o.segment_bytes;
  o.policy = policy;
  return o;
}

std::vector<uint32_t> Chain(int i) { return MakeTokens(1000 + i, kChainChunks * kChunkTokens); }

void PutAndFlush(Store& store, const Namespace& ns, const std::vector<uint32_t>& tokens) {
  ASSERT_TRUE(PutChain(store, ns, tokens).ok());
  const kvault::Status st = store.Flush();
  ASSERT_TRUE(st.ok()) << st.ToString() << " " << store.Stats().ToJson();
}

void ReadAll(Store& store, const Namespace& ns, const std::vector<uint32_t>& tokens) {
  for (const auto& s : kvault::ChunkKeys(ns, tokens)) ASSERT_NE(CheckChunk(store, ns, s.key, s.tokens), Check::kMismatch);
}

// Chain 0 is read again and again while 40 other chains stream through a disk tier that holds
// about 8: with "lru" it survives on T2 though it is the oldest record; with "fifo" it goes.
uint32_t CachedTokensOfAReadChain(const std::string& policy) {
  TempDir dir;
  const kvault::StoreOptions o = DiskHeavyOptions(dir.path(), policy);
  const Namespace ns = MakeNamespace(MakeLayout());
  auto opened = Store::Open(o);
  EXPECT_TRUE(opened.ok()) << opened.status().ToString();
  if (!opened.ok()) return 0;
  Store& store = **opened;
  PutAndFlush(store, ns, Chain(0));
  for (int i = 1; i <= 40; ++i) {
    PutAndFlush(store, ns, Chain(i));
    if (i % 2 == 0) ReadAll(store, ns, Chain(0));
    EXPECT_LE(DirBytes(dir.path()), o.t2_bytes) << "after chain " << i;
    ExpectWithinCaps(store.Stats());
  }
  const kvault::StoreStats st = store.Stats();
  EXPECT_GT(st.t2_evictions, 0u) << st.ToJson();
  ExpectLookupCountersAddUp(st);
  return store.Lookup(ns, Chain(0)).cached_tokens;
}

TEST(T2Policy, TheDiskTierKeepsWhatIsUsedUnderLru) {
  EXPECT_EQ(CachedTokensOfAReadChain("lru"), kChainChunks * kChunkTokens);
}

TEST(T2Policy, TheDiskTierDropsTheOldestUnderFifo) {
  EXPECT_LT(CachedTokensOfAReadChain("fifo"), kChainChunks * kChunkTokens);
}

// After each even chain, the even chains among the last seven are read; odd ones never are:
// the odd ones' records die one by one, spread over every segment, so segments end up half
// dead and are compacted. Every chunk still cached
// reads back byte for byte, before and after a restart.
TEST(T2Policy, CompactionMovesLiveRecordsIntact) {
  TempDir dir;
  const kvault::StoreOptions o = DiskHeavyOptions(dir.path(), "lru");
  const Namespace ns = MakeNamespace(MakeLayout());
  uint64_t compactions = 0;
  {
    auto opened = Store::Open(o);
    ASSERT_TRUE(opened.ok());
    Store& store = **opened;
    for (int i = 0; i < 60; ++i) {
      PutAndFlush(store, ns, Chain(i));
      for (int j = std::max(0, i - 6); j <= i; j += 2) {
        if (j % 2 == 0) ReadAll(store, ns, Chain(j));
      }
      ASSERT_LE(DirBytes(dir.path()), o.t2_bytes) << "after chain " << i;
    }
    const kvault::StoreStats st = store.Stats();
    compactions = st.t2_compactions;
    EXPECT_GT(st.t2_compactions, 0u) << st.ToJson();
    EXPECT_GT(st.bytes_compacted, 0u) << st.ToJson();
    EXPECT_EQ(st.err_corruption, 0u);
    EXPECT_EQ(st.err_io, 0u);
    for (int i = 0; i < 60; ++i) ReadAll(store, ns, Chain(i));
  }
  ASSERT_GT(compactions, 0u);
  auto reopened = Store::Open(o);
  ASSERT_TRUE(reopened.ok());
  Store& store = **reopened;
  ExpectWithinCaps(store.Stats());
  uint64_t found = 0;
  for (int i = 0; i < 60; ++i) {
    for (const auto& s : kvault::ChunkKeys(ns, Chain(i))) {
      const Check c = CheckChunk(store, ns, s.key, s.tokens);
      ASSERT_NE(c, Check::kMismatch) << "chain " << i;
      found += c == Check::kMatch;
    }
  }
  EXPECT_GT(found, 0u);
  EXPECT_EQ(store.Stats().err_torn, 0u);
}

// "aware": the chunks of a hinted (queued) request outlive everything else on the disk tier.
TEST(T2Policy, AwareKeepsTheWindowOnDisk) {
  TempDir dir;
  const kvault::StoreOptions o = DiskHeavyOptions(dir.path(), "aware");
  const Namespace ns = MakeNamespace(MakeLayout());
  auto opened = Store::Open(o);
  ASSERT_TRUE(opened.ok());
  Store& store = **opened;
  const std::vector<uint32_t> queued = Chain(0);
  PutAndFlush(store, ns, queued);
  const std::vector<uint32_t> extended = [&] {
    std::vector<uint32_t> t = queued;
    for (uint32_t x : MakeTokens(77, kChunkTokens)) t.push_back(x);  // the next turn: history + new message
    return t;
  }();
  for (int i = 1; i <= 40; ++i) {
    store.Hint(ns, {std::span<const uint32_t>(extended)});
    PutAndFlush(store, ns, Chain(i));
  }
  store.WaitForPrefetch();
  EXPECT_EQ(store.Lookup(ns, extended).cached_tokens, kChainChunks * kChunkTokens);
  ReadAll(store, ns, queued);
  EXPECT_GT(store.Stats().t2_evictions, 0u);
}

}  // namespace
}  // namespace kvtest

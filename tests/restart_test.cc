// Restarts: what a store put and flushed (or drained in its destructor) is found again,
// byte-identical, by a new store on the same directory, with O_DIRECT or the buffered
// fallback, and after the disk cap was lowered.
#include <gtest/gtest.h>

#include "fault_env.h"
#include "stats_checks.h"
#include "store/inspect.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::LookupResult;
using kvault::Tier;

constexpr size_t kChainTokens = 40;  // 2 full chunks + an 8-token partial

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

void PutChains(Store& store, const Namespace& ns, uint64_t first_seed, int count) {
  for (int i = 0; i < count; ++i) {
    std::vector<uint32_t> tokens = MakeTokens(first_seed + i, kChainTokens);
    ASSERT_TRUE(PutChain(store, ns, tokens).ok());
  }
}

// Every chain is found whole by Lookup on `expected_tier` and reads back byte-identical.
void ExpectChains(Store& store, const Namespace& ns, uint64_t first_seed, int count, Tier expected_tier) {
  for (int i = 0; i < count; ++i) {
    std::vector<uint32_t> tokens = MakeTokens(first_seed + i, kChainTokens);
    LookupResult r = store.Lookup(ns, tokens);
    ASSERT_EQ(r.cached_tokens, kChainTokens) << "chain " << first_seed + i;
    for (const auto& c : r.chunks) {
      EXPECT_EQ(c.tier, expected_tier);
      Tier from = Tier::kNone;
      std::string why;
      ASSERT_EQ(CheckChunk(store, ns, c.key, c.tokens, &from, &why), Check::kMatch) << why;
      if (expected_tier == Tier::kT2) {
        EXPECT_EQ(from, Tier::kT2);
      }
    }
  }
}

// Proves the durability contract across a clean restart: 180 entries over many 256 KiB
// segments, flushed, are all found again on T2 by a new store and read back identical; the
// directory inspects clean with every segment sealed.
TEST(Restart, FlushedEntriesSurviveReopen) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout());
  kvault::StoreOptions o = SmallOptions(dir.path());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns, 1, 60);
    ASSERT_TRUE(store->Flush().ok());
    kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t2_entries, 180u);
    EXPECT_GE(st.t2_segments, 5u);
    EXPECT_EQ(st.err_io + st.err_no_space + st.err_corruption + st.err_torn, 0u);
  }
  auto report = kvault::InspectDir(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_EQ(report->records.size(), 180u);
  for (const auto& seg : report->segments) EXPECT_TRUE(seg.indexed) << seg.name;

  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.t2_entries, 180u);
  EXPECT_EQ(st.t1_entries, 0u);
  EXPECT_EQ(st.err_torn, 0u);
  ExpectChains(*store, ns, 1, 60, Tier::kT2);
  EXPECT_EQ(store->Stats().promotions, 180u);
  ExpectWithinCaps(store->Stats());
}

// Proves the destructor drains the write-behind queue: entries put and never flushed are
// all on disk after the store is destroyed.
TEST(Restart, DestructorDrainsWithoutFlush) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout());
  const kvault::StoreOptions o = SmallOptions(dir.path());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns, 500, 40);
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().t2_entries, 120u);
  ExpectChains(*store, ns, 500, 40, Tier::kT2);
}

// Proves the buffered + fdatasync fallback (a file system that refuses O_DIRECT) keeps the
// same contract, and that segments written either way are read by the other way.
TEST(Restart, BufferedFallbackAndMixedModes) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout(kvault::DType::kF32, 3, 2, 20, 16));  // 7.5 KiB
  FaultEnv buffered;
  buffered.SetForceNoDirect(true);
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.env = &buffered;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    EXPECT_FALSE(store->Stats().t2_direct_io);
    PutChains(*store, ns, 1000, 30);
    ASSERT_TRUE(store->Flush().ok());
  }
  EXPECT_EQ(buffered.files_opened_direct(), 0u);
  {
    kvault::StoreOptions d = o;
    d.env = nullptr;  // the default env: O_DIRECT where the file system allows it
    auto store = OpenStore(d);
    ASSERT_TRUE(store);
    ExpectChains(*store, ns, 1000, 30, Tier::kT2);
    PutChains(*store, ns, 2000, 30);
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(o);  // buffered again
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->Stats().t2_direct_io);
  EXPECT_EQ(store->Stats().t2_entries, 180u);
  ExpectChains(*store, ns, 1000, 30, Tier::kT2);
  ExpectChains(*store, ns, 2000, 30, Tier::kT2);
}

// Proves a reopened store keeps working: new puts go to new segments after the old ones,
// and a second restart finds old and new entries alike.
TEST(Restart, ContinueAfterReopen) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout());
  const kvault::StoreOptions o = SmallOptions(dir.path());
  for (int run = 0; run < 3; ++run) {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->Stats().t2_entries, 3u * 20 * run);
    for (int prev = 0; prev < run; ++prev) ExpectChains(*store, ns, 100 * prev, 20, Tier::kT2);
    PutChains(*store, ns, 100 * run, 20);
    // Chunks already stored are deduplicated, not written twice.
    PutChains(*store, ns, 0, 20);
    ASSERT_TRUE(store->Flush().ok());
  }
  auto report = kvault::InspectDir(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_EQ(report->records.size(), 180u);
}

// Proves that reopening with a lower disk cap gives back the oldest segments at once: usage
// and the directory's size fit the new cap, and what is left is intact.
TEST(Restart, LoweredCapReclaimsOldestSegments) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout());
  kvault::StoreOptions o = SmallOptions(dir.path());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns, 1, 60);  // about 3.4 MiB on disk
    ASSERT_TRUE(store->Flush().ok());
  }
  const uint64_t before = DirBytes(dir.path());
  o.t2_bytes = 1ull << 20;
  ASSERT_GT(before, o.t2_bytes);
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  kvault::StoreStats st = store->Stats();
  ExpectWithinCaps(st);
  EXPECT_LE(DirBytes(dir.path()), o.t2_bytes);
  EXPECT_GT(st.t2_evictions, 0u);
  EXPECT_GT(st.t2_entries, 0u);
  // The newest chains survive; whatever is found is intact.
  ExpectChains(*store, ns, 58, 3, Tier::kT2);
  size_t found = 0;
  for (int i = 1; i <= 60; ++i) {
    for (const auto& c : kvault::ChunkKeys(ns, MakeTokens(i, kChainTokens))) {
      Check r = CheckChunk(*store, ns, c.key, c.tokens);
      EXPECT_NE(r, Check::kMismatch);
      found += r == Check::kMatch;
    }
  }
  EXPECT_EQ(found, st.t2_entries);
}

// Proves one directory belongs to one open store: a second Open of the same directory is
// refused (it would reuse segment ids and reclaim the first one's segments) until the first
// store closes.
TEST(Restart, SecondStoreOnTheSameDirectoryIsRefused) {
  TempDir dir;
  const kvault::StoreOptions o = SmallOptions(dir.path());
  auto first = Store::Open(o);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = Store::Open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), kvault::Code::kUnavailable);
  first = kvault::Status::OK();  // close
  auto third = Store::Open(o);
  EXPECT_TRUE(third.ok()) << third.status().ToString();
}

}  // namespace
}  // namespace kvtest

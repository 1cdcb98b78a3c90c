// The disk tier evicts by policy, record by record: the T2 policy picks which record dies,
// sealed segments with nothing live are deleted, and segments at least half dead are
// compacted (their live records copied forward). Everything read back stays intact, the cap
// holds after every operation, and a restart finds the compacted copies.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <gtest/gtest.h>

#include "fault_env.h"
#include "stats_checks.h"
#include "store/segment_log.h"
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

// Reopens the store (after the test's one closed) and reads `a`: its exact bytes, from T2.
void ExpectReadFromT2AfterReopen(const kvault::StoreOptions& o, const Namespace& ns, const kvault::ChunkSpan& a) {
  auto reopened = Store::Open(o);
  ASSERT_TRUE(reopened.ok());
  kvault::Tier from = kvault::Tier::kNone;
  std::string why;
  EXPECT_EQ(CheckChunk(**reopened, ns, a.key, a.tokens, &from, &why), Check::kMatch) << why;
  EXPECT_EQ(from, kvault::Tier::kT2);
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

// The lowest and highest segment ids in `dir` ({0, 0} when none).
std::pair<uint32_t, uint32_t> SegmentIds(const std::string& dir) {
  std::pair<uint32_t, uint32_t> ids{0, 0};
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    uint32_t id = 0;
    if (!kvault::SegmentLog::ParseSegmentName(f.path().filename(), &id)) continue;
    ids.first = ids.first == 0 ? id : std::min(ids.first, id);
    ids.second = std::max(ids.second, id);
  }
  return ids;
}

// A chunk a reader holds keeps its disk copy. Chunk A (the head of chain 0, flushed to the
// first segment) is opened and its reader kept while 4-chunk chains stream through a disk tier
// that holds about 10 of them: A is the least recently used record on T2 long before the first
// segment goes, so only the pin keeps the victim rule off it. The stream goes on until every
// segment that held a copy of A has been reclaimed or compacted at least once: A is rewritten
// from DRAM or moved by compaction, never dropped. The reader returns A's exact bytes
// throughout; after the reader is gone and the store reopened (T1 empty), A is read from its
// disk copy. Without the pin check in the T2 victim rule, A's copy is given up while it is
// read, its record goes with the first segment, and after the restart A is a miss.
TEST(T2Policy, AChunkAReaderHoldsIsNeverDroppedFromT2) {
  TempDir dir;
  const kvault::StoreOptions o = DiskHeavyOptions(dir.path(), "lru");
  const Namespace ns = MakeNamespace(MakeLayout());
  const kvault::ChunkSpan a = kvault::ChunkKeys(ns, Chain(0)).front();
  const std::vector<std::byte> want = PayloadFor(a.key, ns.layout().chunk_bytes(a.tokens));
  {
    auto opened = Store::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    Store& store = **opened;
    PutAndFlush(store, ns, Chain(0));
    ASSERT_EQ(SegmentIds(dir.path()).first, 1u);
    auto reader = store.OpenChunk(ns, a.key);
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    std::vector<std::byte> got(reader->size());
    // Set when the first segment is gone: A's copy then goes (rewritten) to the active
    // segment or the next one, so every segment up to this id must go too.
    uint32_t last_with_a = 0;
    bool all_gone = false;
    for (int chain = 1; chain <= 80 && !all_gone; ++chain) {
      PutAndFlush(store, ns, Chain(chain));
      ASSERT_TRUE(reader->ReadRange(0, got).ok());
      ASSERT_TRUE(got == want) << "the pinned chunk changed after chain " << chain;
      const auto [lowest, highest] = SegmentIds(dir.path());
      if (last_with_a == 0 && lowest > 1) last_with_a = highest + 1;
      all_gone = last_with_a != 0 && lowest > last_with_a;
    }
    ASSERT_TRUE(all_gone) << "the disk tier never gave back the segments that held A";
    const kvault::StoreStats st = store.Stats();
    EXPECT_GT(st.t2_evictions, 0u) << st.ToJson();
    EXPECT_GT(st.t2_compactions, 0u) << st.ToJson();
    EXPECT_LE(DirBytes(dir.path()), o.t2_bytes);
  }  // the reader is released here, then the store closes
  ExpectReadFromT2AfterReopen(o, ns, a);
}

// Compaction leaves no live record behind: a chunk whose promotion (the read of its record into
// T1) is in flight when its segment is compacted is moved like the others. Chunk A (only on
// T2) is opened on a thread whose disk read is held in FaultEnv's read hook while chains stream
// through the disk tier until A's segment is gone; then the read finishes, and the reader gets
// A's exact bytes. After a restart A is still on T2. Before, compaction skipped a chunk being
// promoted and the segment's removal took its only disk copy: A ended in T1 alone, a miss
// after the restart (a prefetch in flight lost a hinted chunk the same way).
TEST(T2Policy, CompactionMovesAChunkWhosePromotionIsInFlight) {
  TempDir dir;
  FaultEnv env;
  kvault::StoreOptions o = DiskHeavyOptions(dir.path(), "lru");
  o.env = &env;
  const Namespace ns = MakeNamespace(MakeLayout());
  const kvault::ChunkSpan a = kvault::ChunkKeys(ns, Chain(0)).front();
  const std::vector<std::byte> want = PayloadFor(a.key, ns.layout().chunk_bytes(a.tokens));
  const std::string first_segment = dir.Sub(kvault::SegmentLog::SegmentName(1));
  {
    auto opened = Store::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    Store& store = **opened;
    for (int chain = 0; chain < 4; ++chain) PutAndFlush(store, ns, Chain(chain));  // T1 holds 1.5 chains
    ASSERT_EQ(store.Lookup(ns, Chain(0)).chunks.at(0).tier, kvault::Tier::kT2);

    std::mutex mu;
    std::condition_variable cv;
    bool entered = false, released = false;
    std::atomic<std::thread::id> held{};
    env.SetReadHook([&](const std::string&, uint64_t) {
      if (std::this_thread::get_id() != held.load()) return;
      std::unique_lock<std::mutex> lock(mu);
      entered = true;
      cv.notify_all();
      cv.wait(lock, [&] { return released; });
    });
    std::optional<kvault::Result<kvault::ChunkReader>> reader;
    std::thread opener([&] {
      held = std::this_thread::get_id();
      reader.emplace(store.OpenChunk(ns, a.key));
    });
    // Lets the held read go and joins the opener; on every way out of this scope, so that a
    // failed ASSERT below leaves no joinable thread (std::terminate) and no blocked read.
    auto release = [&] {
      {
        std::lock_guard<std::mutex> lock(mu);
        released = true;
      }
      cv.notify_all();
      if (opener.joinable()) opener.join();
      env.SetReadHook(nullptr);
    };
    struct OnExit {
      std::function<void()> fn;
      ~OnExit() { fn(); }
    } release_on_exit{release};
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return entered; })) << "no promotion read";
    }
    for (int chain = 4; chain <= 40 && std::filesystem::exists(first_segment); ++chain) {
      PutAndFlush(store, ns, Chain(chain));
    }
    const bool segment_gone = !std::filesystem::exists(first_segment);
    release();
    ASSERT_TRUE(segment_gone) << "the disk tier never gave back A's segment";
    ASSERT_TRUE(reader && reader->ok()) << (reader ? reader->status().ToString() : "no result");
    EXPECT_EQ((*reader)->served_from(), kvault::Tier::kT2);
    std::vector<std::byte> got((*reader)->size());
    ASSERT_TRUE((*reader)->ReadRange(0, got).ok());
    EXPECT_TRUE(got == want);
    EXPECT_GT(store.Stats().t2_compactions, 0u) << store.Stats().ToJson();
  }
  ExpectReadFromT2AfterReopen(o, ns, a);
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

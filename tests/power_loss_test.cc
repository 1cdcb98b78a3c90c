// Power loss (include/kvault/store.h: "Flush() returns when everything put before it is on T2;
// after a crash, reopening finds every flushed entry and only intact entries"). A kill -9
// (crash_test) keeps everything the kernel has; a power cut keeps only what was synced.
// FaultEnv models the cut: what was written since a file's last successful sync is dropped,
// and a file whose directory was not synced since it was created is gone. So these tests
// fail if Flush stops syncing the segments (or their directory) or if a failed sync is taken
// for a durable one; the last test checks that the real Env's Sync reaches the kernel, which
// FaultEnv (a wrapper) cannot see.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "fault_env.h"
#include "stats_checks.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;
using kvault::Tier;

constexpr size_t kChainTokens = 48;  // 3 full chunks of 16 KiB: 60 KiB of records per chain

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

// 256 KiB segments (a few chains each, so puts roll segments), T1 large enough to hold every
// chunk put here, T2 (64 MiB) large enough that nothing is ever evicted from it.
kvault::StoreOptions Options(const std::string& dir, FaultEnv* env) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.t1_bytes = 32ull << 20;
  o.env = env;
  return o;
}

std::vector<uint32_t> ChainTokens(uint64_t seed) { return MakeTokens(seed, kChainTokens); }

void PutChains(Store& store, const Namespace& ns, uint64_t first_seed, int count) {
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(PutChain(store, ns, ChainTokens(first_seed + i)).ok()) << "chain " << first_seed + i;
  }
}

// Waits until the write-behind has written every chunk put so far: on the disk, not synced.
void WaitForWriteBehind(Store& store) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);  // a hang, not a speed
  for (;;) {
    const kvault::StoreStats s = store.Stats();
    if (s.bytes_t1_to_t2 >= s.bytes_put) return;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "write-behind stuck: " << s.ToJson();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Checks every chunk of chain `seed`: each must read back identical, served from `tier`
// (kNone: anywhere); with `may_be_lost`, a chunk may be missing instead, never wrong. Returns
// the number of chunks missing.
int CheckChain(Store& store, const Namespace& ns, uint64_t seed, bool may_be_lost, Tier tier = Tier::kNone) {
  int missing = 0;
  for (const auto& c : kvault::ChunkKeys(ns, ChainTokens(seed))) {
    Tier from = Tier::kNone;
    std::string why;
    kvault::Status st;
    const Check got = CheckChunk(store, ns, c.key, c.tokens, &from, &why, &st);
    if (got == Check::kMissing) ++missing;
    if (may_be_lost) {
      EXPECT_NE(got, Check::kMismatch) << "chain " << seed << " chunk " << c.key.ShortHex() << ": " << why;
    } else {
      EXPECT_EQ(got, Check::kMatch) << "chain " << seed << " chunk " << c.key.ShortHex() << ": " << CheckName(got)
                                    << " " << why << " " << st.ToString();
      if (got == Check::kMatch && tier != Tier::kNone) {
        EXPECT_EQ(from, tier) << "chain " << seed;
      }
    }
  }
  return missing;
}

// Nothing damaged was found: a power cut leaves the synced prefix of every file, so no record
// is torn or corrupt.
void ExpectNoDamage(const kvault::StoreStats& s) {
  EXPECT_EQ(s.err_corruption, 0u) << s.ToJson();
  EXPECT_EQ(s.err_torn, 0u) << s.ToJson();
}

class PowerLoss : public ::testing::TestWithParam<bool> {  // param: force buffered I/O
 protected:
  void SetUp() override { env_.SetForceNoDirect(GetParam()); }
  TempDir dir_;
  FaultEnv env_;
  const Namespace ns_ = MakeNamespace(MakeLayout());
};

// Proves flushed chunks survive a power cut: 20 chains (about 5 segments) are put and
// flushed, 10 more are put and written by the write-behind but not flushed; the power is cut
// with the store open. Reopened, every flushed chunk reads back identical from T2; the
// unflushed ones were on disk, unsynced, and are gone (misses, never wrong bytes); nothing
// torn or corrupt is reported; the store goes on writing.
TEST_P(PowerLoss, FlushedChunksSurviveAPowerCut) {
  const kvault::StoreOptions o = Options(dir_.path(), &env_);
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns_, 1, 20);
    const kvault::Status flushed = store->Flush();
    ASSERT_TRUE(flushed.ok()) << flushed.ToString();
    PutChains(*store, ns_, 100, 10);
    WaitForWriteBehind(*store);
    ASSERT_TRUE(env_.SimulatePowerLoss().ok());
    // The unflushed records had reached the files: the cut took them.
    EXPECT_GT(env_.bytes_lost(), 0u);
  }  // closed with the power off: its seal and final sync write nothing
  env_.RestorePower();
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  for (uint64_t seed = 1; seed <= 20; ++seed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false, Tier::kT2);
  int lost = 0;
  for (uint64_t seed = 100; seed < 110; ++seed) lost += CheckChain(*store, ns_, seed, /*may_be_lost=*/true);
  EXPECT_GT(lost, 0) << "the power cut was expected to take unflushed chunks";
  ExpectNoDamage(store->Stats());
  PutChains(*store, ns_, 200, 3);
  ASSERT_TRUE(store->Flush().ok());
  for (uint64_t seed = 200; seed < 203; ++seed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false);
}

// Proves the same with the power cut at random moments while a thread puts chains and
// flushes every 4 of them, over 6 power cuts on one directory: every chain whose Flush()
// returned OK before the cut reads back identical after every later restart; a chain not
// flushed reads back identical or is missing.
TEST_P(PowerLoss, PowerCutsAtRandomMomentsNeverLoseAFlushedChunk) {
  const kvault::StoreOptions o = Options(dir_.path(), &env_);
  std::mt19937_64 rng(16);
  std::vector<uint64_t> flushed, unflushed;
  uint64_t next_seed = 1;
  for (int round = 0; round < 6; ++round) {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    for (uint64_t seed : flushed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false);
    for (uint64_t seed : unflushed) CheckChain(*store, ns_, seed, /*may_be_lost=*/true);
    ExpectNoDamage(store->Stats());
    if (HasFailure()) return;

    std::atomic<bool> stop{false};
    std::vector<uint64_t> round_flushed, pending;
    std::thread writer([&] {
      // At most 60 chains a round (T2 never fills); then one more, written by the write-behind
      // but not flushed (so that a cut after the 60 still finds unsynced bytes to take), and
      // it waits for the cut.
      bool powered = true;
      while (!stop.load() && round_flushed.size() + pending.size() < 60) {
        const uint64_t seed = next_seed++;
        if (!PutChain(*store, ns_, ChainTokens(seed)).ok()) {
          powered = false;
          break;
        }
        pending.push_back(seed);
        if (pending.size() == 4) {
          if (!store->Flush().ok()) {  // the power went during it: not flushed
            powered = false;
            break;
          }
          round_flushed.insert(round_flushed.end(), pending.begin(), pending.end());
          pending.clear();
        }
      }
      if (!powered || stop.load()) return;
      const uint64_t seed = next_seed++;
      if (!PutChain(*store, ns_, ChainTokens(seed)).ok()) return;
      pending.push_back(seed);
      for (;;) {  // until written or cut (then the write-behind's writes fail)
        const kvault::StoreStats s = store->Stats();
        if (stop.load() || s.bytes_t1_to_t2 >= s.bytes_put) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    // The cut comes at a random moment after the write-behind first wrote to the disk this
    // round (before that, the cut could take nothing: a loaded machine once saw six such).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);  // a hang, not a speed
    while (store->Stats().bytes_t1_to_t2 == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
    ASSERT_TRUE(env_.SimulatePowerLoss().ok());
    stop = true;
    writer.join();
    store.reset();
    env_.RestorePower();
    flushed.insert(flushed.end(), round_flushed.begin(), round_flushed.end());
    unflushed.insert(unflushed.end(), pending.begin(), pending.end());
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  for (uint64_t seed : flushed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false, Tier::kT2);
  for (uint64_t seed : unflushed) CheckChain(*store, ns_, seed, /*may_be_lost=*/true);
  ExpectNoDamage(store->Stats());
  EXPECT_GT(flushed.size(), 0u);
  EXPECT_GT(env_.files_lost() + env_.bytes_lost(), 0u);
}

// Proves a failing sync (the device refuses to flush its cache; writes still succeed) is
// reported, not taken for durability: Flush returns kIOError and counts err_io, while every
// chunk is still served from T1. Once syncs work again the next Flush succeeds, and then a
// power cut loses nothing put before it: the segments sealed while syncs failed (20 chains
// roll several) are synced by that Flush, not forgotten.
TEST_P(PowerLoss, AFailedSyncIsReportedAndRetriedByTheNextFlush) {
  const kvault::StoreOptions o = Options(dir_.path(), &env_);
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns_, 1, 5);
    ASSERT_TRUE(store->Flush().ok());

    env_.SetSyncError(EIO);
    PutChains(*store, ns_, 10, 20);
    const kvault::Status failed = store->Flush();
    EXPECT_EQ(failed.code(), Code::kIOError) << failed.ToString();
    const kvault::StoreStats s = store->Stats();
    EXPECT_GE(s.err_io, 1u) << s.ToJson();
    EXPECT_GT(env_.syncs_failed(), 0u);
    EXPECT_EQ(env_.writes_failed(), 0u);
    for (uint64_t seed = 10; seed < 30; ++seed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false);

    env_.SetSyncError(0);
    const kvault::Status retried = store->Flush();
    ASSERT_TRUE(retried.ok()) << retried.ToString();
    ASSERT_TRUE(env_.SimulatePowerLoss().ok());
  }
  env_.RestorePower();
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  for (uint64_t seed = 1; seed <= 5; ++seed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false, Tier::kT2);
  for (uint64_t seed = 10; seed < 30; ++seed) CheckChain(*store, ns_, seed, /*may_be_lost=*/false, Tier::kT2);
  ExpectNoDamage(store->Stats());
}

// Proves a Flush whose sync fails while the power is cut is not reported as a success: a
// put, then the cut, then Flush must fail.
TEST_P(PowerLoss, AFlushAfterTheCutFails) {
  const kvault::StoreOptions o = Options(dir_.path(), &env_);
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  PutChains(*store, ns_, 1, 2);
  WaitForWriteBehind(*store);
  ASSERT_TRUE(env_.SimulatePowerLoss().ok());
  EXPECT_FALSE(store->Flush().ok());
  store.reset();
  env_.RestorePower();
}

INSTANTIATE_TEST_SUITE_P(DirectAndBuffered, PowerLoss, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "Buffered" : "Direct"; });

// Proves the power-loss model itself on plain files: synced bytes survive, bytes written
// after the last sync do not (appended ones are cut off, overwritten synced ones get their
// old contents back), a file whose directory was not synced since it was created is gone, a
// rename not yet made durable is undone, and while the power is off nothing changes.
TEST(FaultEnvPowerLoss, DropsExactlyWhatWasNotSynced) {
  TempDir dir;
  FaultEnv env;
  const kvault::FileOpenOptions create{.create = true, .writable = true, .direct_io = false, .use_io_uring = false};
  auto write = [](kvault::File& f, uint64_t offset, char c, size_t n) {
    std::vector<char> bytes(n, c);
    kvault::WriteOp op{offset, {kvault::IoSlice{bytes.data(), n}}};
    return f.WriteBatch({&op, 1});
  };
  auto contents = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto a = env.OpenFile(dir.Sub("a"), create);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(write(**a, 0, 'a', 8192).ok());
  ASSERT_TRUE((*a)->Sync().ok());
  auto c = env.OpenFile(dir.Sub("c"), create);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(write(**c, 0, 'c', 100).ok());
  ASSERT_TRUE((*c)->Sync().ok());
  ASSERT_TRUE(env.SyncDir(dir.path()).ok());  // a and c are durable, names and bytes
  ASSERT_TRUE(write(**a, 8192, 'x', 4096).ok());  // appended, never synced
  ASSERT_TRUE(write(**a, 1000, 'y', 10).ok());    // overwrites synced bytes, never synced
  auto b = env.OpenFile(dir.Sub("b"), create);    // synced, but its name is not
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(write(**b, 0, 'b', 100).ok());
  ASSERT_TRUE((*b)->Sync().ok());
  ASSERT_TRUE(env.RenameFile(dir.Sub("c"), dir.Sub("d")).ok());  // not made durable

  ASSERT_TRUE(env.SimulatePowerLoss().ok());
  EXPECT_EQ(contents(dir.Sub("a")), std::string(8192, 'a'));
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("b")));
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("d")));
  EXPECT_EQ(contents(dir.Sub("c")), std::string(100, 'c'));
  EXPECT_EQ(env.files_lost(), 1u);
  EXPECT_EQ(env.bytes_lost(), 4096u + 10u + 100u);
  // The power is off: nothing changes, every mutation fails with EIO.
  EXPECT_EQ(write(**a, 0, 'z', 10).code(), Code::kIOError);
  EXPECT_EQ((*a)->Sync().code(), Code::kIOError);
  EXPECT_EQ(env.OpenFile(dir.Sub("e"), create).status().code(), Code::kIOError);
  EXPECT_EQ(env.RemoveFile(dir.Sub("a")).code(), Code::kIOError);
  EXPECT_EQ(contents(dir.Sub("a")), std::string(8192, 'a'));
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("e")));

  env.RestorePower();
  ASSERT_TRUE(write(**a, 8192, 'w', 4096).ok());
  ASSERT_TRUE((*a)->Sync().ok());
  ASSERT_TRUE(env.SimulatePowerLoss().ok());  // synced this time: kept
  EXPECT_EQ(contents(dir.Sub("a")), std::string(8192, 'a') + std::string(4096, 'w'));
  env.RestorePower();
}

// Proves the real Env's File::Sync asks the kernel to sync (what FaultEnv, a wrapper, takes on
// trust) and reports its error: fdatasync of a FIFO fails with EINVAL, so a Sync that syncs
// nothing (returns OK without the system call) fails this test. A regular file syncs fine.
TEST(PosixEnvSync, ReachesTheKernelAndReportsItsError) {
  TempDir dir;
  kvault::Env* env = kvault::Env::Default();
  const std::string fifo = dir.Sub("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  for (bool uring : {false, true}) {
    auto f = env->OpenFile(fifo, {.create = false, .writable = true, .direct_io = true, .use_io_uring = uring});
    ASSERT_TRUE(f.ok()) << f.status().ToString();  // O_RDWR: a FIFO opens without a peer
    const kvault::Status st = (*f)->Sync();
    EXPECT_FALSE(st.ok()) << "Sync of a FIFO returned OK: it did not reach fdatasync";
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  }
  auto file = env->OpenFile(dir.Sub("file"), {.create = true, .writable = true, .direct_io = true, .use_io_uring = false});
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE((*file)->Sync().ok());
}

}  // namespace
}  // namespace kvtest

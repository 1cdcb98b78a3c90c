// A full or failing disk (DESIGN.md §4.2 "degrade, don't fail"): puts keep succeeding into
// T1, the failure is counted and reported by Flush, nothing crashes or hangs, and once the
// disk has room (or works) again new puts reach T2 and survive a restart. Read errors turn
// entries into counted misses.
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "fault_env.h"
#include "stats_checks.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;
using kvault::Tier;

constexpr size_t kChainTokens = 48;  // 3 full chunks of 16 KiB

// The store waits this long after a failed disk write before it tries the disk again.
constexpr auto kPastBackoff = std::chrono::milliseconds(300);

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

kvault::StoreOptions Options(const std::string& dir) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.t1_bytes = 32ull << 20;  // holds everything put here: T1 never drops data
  return o;
}

void PutChains(Store& store, const Namespace& ns, uint64_t first_seed, int count) {
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(PutChain(store, ns, MakeTokens(first_seed + i, kChainTokens)).ok()) << "chain " << i;
  }
}

// Every chunk of the chains reads back identical (from wherever the store has it); `tier`
// says where it must come from when not kNone.
void ExpectChains(Store& store, const Namespace& ns, uint64_t first_seed, int count, Tier tier = Tier::kNone) {
  for (int i = 0; i < count; ++i) {
    for (const auto& c : kvault::ChunkKeys(ns, MakeTokens(first_seed + i, kChainTokens))) {
      Tier from = Tier::kNone;
      std::string why;
      ASSERT_EQ(CheckChunk(store, ns, c.key, c.tokens, &from, &why), Check::kMatch) << why;
      if (tier != Tier::kNone) {
        EXPECT_EQ(from, tier);
      }
    }
  }
}

// The shared scenario. `fill` makes the disk full, `make_room` gives space back.
// 1. the disk is full: 50 chains (~3 MiB of records) are put; every put succeeds into T1,
//    Flush fails, err_no_space is counted, every chunk is still served (from T1);
// 2. room again: 20 new chains are put, and the 50 old ones again (as an engine would for
//    a hot prefix); Flush succeeds: all of them are on T2 (flush covers every chunk put
//    before it, a put that found the chunk already in T1 included);
// 3. restart: old and new chains are on T2, identical.
void DiskFullScenario(const kvault::StoreOptions& o, const std::function<void()>& fill,
                      const std::function<void()>& make_room) {
  const Namespace ns = MakeNamespace(MakeLayout());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    fill();
    PutChains(*store, ns, 1, 50);
    kvault::Status st = store->Flush();
    EXPECT_FALSE(st.ok());
    kvault::StoreStats s = store->Stats();
    EXPECT_GT(s.err_no_space, 0u) << s.ToJson();
    EXPECT_EQ(s.puts, 150u);
    ExpectWithinCaps(s);
    ExpectChains(*store, ns, 1, 50, Tier::kT1);

    make_room();
    std::this_thread::sleep_for(kPastBackoff);
    PutChains(*store, ns, 1000, 20);
    PutChains(*store, ns, 1, 50);
    st = store->Flush();
    EXPECT_TRUE(st.ok()) << st.ToString();
    ExpectChains(*store, ns, 1000, 20);
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  ExpectChains(*store, ns, 1000, 20, Tier::kT2);
  ExpectChains(*store, ns, 1, 50, Tier::kT2);
  // And the store goes on writing.
  PutChains(*store, ns, 2000, 5);
  EXPECT_TRUE(store->Flush().ok());
}

// A tmpfs of 8 MiB mounted for the test; skipped where mounting is not permitted.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& dir) : dir_(dir) {
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=8m") == 0) {
      mounted_ = true;
    } else {
      errno_ = errno;
    }
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  int error() const { return errno_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  int errno_ = 0;
};

// Proves the scenario on a real full file system (ENOSPC from the kernel): an 8 MiB tmpfs
// with a filler file, under a store whose t2_bytes cap is far larger than the file system.
TEST(DiskFull, RealTmpfs) {
  TempDir dir;
  TmpfsMount mount(dir.path());
  if (!mount.mounted()) {
    if (mount.error() == EPERM) GTEST_SKIP() << "mounting a tmpfs is not permitted here";
    FAIL() << "mount tmpfs: " << std::strerror(mount.error());
  }
  const std::string filler = dir.Sub("filler");
  kvault::StoreOptions o = Options(dir.Sub("store"));
  o.t2_bytes = 1ull << 30;
  DiskFullScenario(
      o,
      [&] {
        std::ofstream f(filler, std::ios::binary);
        std::vector<char> mib(1 << 20, 'x');
        for (int i = 0; i < 6; ++i) f.write(mib.data(), static_cast<std::streamsize>(mib.size()));
        f.write(mib.data(), 512 << 10);
        ASSERT_TRUE(f.good());
      },
      [&] { ASSERT_EQ(::unlink(filler.c_str()), 0); });
}

// Proves the same scenario with an injected quota (always runs, no mount needed): writes
// past 1.5 MiB fail with ENOSPC until the quota is lifted.
TEST(DiskFull, InjectedQuota) {
  TempDir dir;
  FaultEnv env;
  kvault::StoreOptions o = Options(dir.path());
  o.env = &env;
  DiskFullScenario(
      o, [&] { env.SetQuota(3ull << 19); }, [&] { env.SetQuota(FaultEnv::kNoQuota); });
  EXPECT_GT(env.writes_failed(), 0u);
}

// Proves EIO on writes is survived like ENOSPC, but counted as err_io.
TEST(DiskErrors, WriteEio) {
  TempDir dir;
  FaultEnv env;
  kvault::StoreOptions o = Options(dir.path());
  o.env = &env;
  const Namespace ns = MakeNamespace(MakeLayout());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    env.SetWriteError(EIO);
    PutChains(*store, ns, 1, 10);
    EXPECT_EQ(store->Flush().code(), Code::kIOError);
    kvault::StoreStats s = store->Stats();
    EXPECT_GT(s.err_io, 0u);
    EXPECT_EQ(s.err_no_space, 0u);
    ExpectChains(*store, ns, 1, 10, Tier::kT1);

    env.SetWriteError(0);
    std::this_thread::sleep_for(kPastBackoff);
    PutChains(*store, ns, 100, 10);
    PutChains(*store, ns, 1, 10);  // put again: now they must reach the disk too
    kvault::Status st = store->Flush();
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  ExpectChains(*store, ns, 100, 10, Tier::kT2);
  ExpectChains(*store, ns, 1, 10, Tier::kT2);
}

// Proves EIO on a T2 read makes that entry a counted miss without a crash, leaves other
// entries readable once the device recovers, and destroys nothing on disk: after a restart
// the entry is back.
TEST(DiskErrors, ReadEio) {
  TempDir dir;
  FaultEnv env;
  kvault::StoreOptions o = Options(dir.path());
  o.env = &env;
  const Namespace ns = MakeNamespace(MakeLayout());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns, 1, 10);
    ASSERT_TRUE(store->Flush().ok());
  }
  const std::vector<uint32_t> tokens = MakeTokens(1, kChainTokens);
  const auto spans = kvault::ChunkKeys(ns, tokens);
  {
    auto store = OpenStore(o);  // everything is on T2 only now
    ASSERT_TRUE(store);
    env.SetReadError(EIO);
    kvault::Status st;
    EXPECT_EQ(CheckChunk(*store, ns, spans[1].key, 16, nullptr, nullptr, &st), Check::kMissing);
    EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
    kvault::StoreStats s = store->Stats();
    EXPECT_GE(s.err_io, 1u);
    EXPECT_GE(s.err_load_miss, 1u);
    EXPECT_EQ(s.err_corruption, 0u);
    EXPECT_GT(env.reads_failed(), 0u);
    env.SetReadError(0);
    // The failed entry is a miss from now on in this process; the rest reads fine.
    EXPECT_EQ(store->Lookup(ns, tokens).cached_tokens, 16u);
    EXPECT_EQ(CheckChunk(*store, ns, spans[0].key, 16), Check::kMatch);
    EXPECT_EQ(CheckChunk(*store, ns, spans[2].key, 16), Check::kMatch);
    ExpectChains(*store, ns, 2, 9);
    ExpectLookupCountersAddUp(store->Stats());
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  ExpectChains(*store, ns, 1, 10, Tier::kT2);
}

// Proves a device that fails every read while the store opens does not stop it: the store
// opens (its segments unreadable, counted as torn), serves misses, and a later open with a
// working device finds everything.
TEST(DiskErrors, ReadEioWhileOpening) {
  TempDir dir;
  FaultEnv env;
  kvault::StoreOptions o = Options(dir.path());
  o.env = &env;
  const Namespace ns = MakeNamespace(MakeLayout());
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutChains(*store, ns, 1, 10);
    ASSERT_TRUE(store->Flush().ok());
  }
  {
    env.SetReadError(EIO);
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    kvault::StoreStats s = store->Stats();
    EXPECT_GE(s.err_torn, 1u);
    EXPECT_EQ(s.t2_entries, 0u);
    EXPECT_EQ(store->Lookup(ns, MakeTokens(1, kChainTokens)).cached_tokens, 0u);
    env.SetReadError(0);
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  ExpectChains(*store, ns, 1, 10, Tier::kT2);
}

}  // namespace
}  // namespace kvtest

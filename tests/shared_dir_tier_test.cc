// The shared-directory backend of the cluster tier (src/store/shared_dir_tier.h).
//
// Values are real chunk records (EncodeRemoteRecord) whose payloads derive from their keys
// (PayloadFor), so every value read back is checked byte for byte: a torn, mixed-up or stale
// value can never pass for right. Several tiers on one directory stand for several nodes;
// forked processes stand for writer processes on one or many nodes.
#include "store/shared_dir_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "fault_env.h"
#include "store/remote_record.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;
using kvault::RecordHeader;
using kvault::SharedDirTier;
using kvault::SharedDirTierOptions;

struct Chunk {
  ChunkKey key;
  std::vector<std::byte> record;
};

Chunk MakeChunk(const Namespace& ns, const kvault::ChunkSpan& span) {
  RecordHeader h;
  h.key = span.key;
  h.parent = span.parent;
  h.ns_id = ns.id();
  h.layout = ns.layout();
  h.tokens = span.tokens;
  h.payload_bytes = ns.layout().chunk_bytes(span.tokens);
  const std::vector<std::byte> payload = PayloadFor(span.key, h.payload_bytes);
  h.payload_checksum = kvault::Checksum(payload);
  h.seq = 1;
  const std::span<const std::byte> pieces[] = {payload};
  return {span.key, kvault::EncodeRemoteRecord(h, pieces)};
}

// The chunks of a chain of `tokens` tokens (full 16-token chunks unless `partial`).
std::vector<Chunk> MakeChunks(const Namespace& ns, uint64_t seed, size_t tokens, bool partial = false) {
  std::vector<Chunk> out;
  for (const auto& span : kvault::ChunkKeys(ns, MakeTokens(seed, tokens), partial)) out.push_back(MakeChunk(ns, span));
  return out;
}

// True when `value` is the intact record of `key` with the payload PayloadFor(key) gives.
bool Verifies(const ChunkKey& key, std::span<const std::byte> value) {
  RecordHeader h;
  std::span<const std::byte> payload;
  if (!kvault::DecodeRemoteRecord(value, key, &h, &payload).ok()) return false;
  const std::vector<std::byte> want = PayloadFor(key, h.payload_bytes);
  return payload.size() == want.size() && std::equal(payload.begin(), payload.end(), want.begin());
}

std::string RootOf(const std::string& dir) { return dir + "/kvault-t3-v1"; }

// Options for a test: GC only when asked (CollectGarbage), no fsync (speed).
SharedDirTierOptions QuietOptions(const std::string& dir) {
  SharedDirTierOptions o;
  o.dir = dir;
  o.sync = false;
  o.background_gc = false;
  o.scan_interval_ms = 0;
  o.min_gc_interval_ms = 0;
  return o;
}

std::unique_ptr<SharedDirTier> OpenOrDie(const SharedDirTierOptions& o) {
  auto t = SharedDirTier::Open(o);
  if (!t.ok()) {
    ADD_FAILURE() << t.status().ToString();
    return nullptr;
  }
  return std::move(t.value());
}

struct DirListing {
  std::vector<std::string> values, temps, other;  // full paths
  uint64_t bytes = 0;                             // of values and temps
};

DirListing ListTree(const std::string& dir) {
  DirListing out;
  for (int shard = 0; shard < 256; ++shard) {
    char name[4];
    std::snprintf(name, sizeof name, "%02x", shard);
    const std::string sub = RootOf(dir) + "/" + name;
    DIR* d = ::opendir(sub.c_str());
    if (d == nullptr) continue;
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      const std::string path = sub + "/" + n;
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) continue;
      if (SharedDirTier::IsTempName(n)) {
        out.temps.push_back(path);
        out.bytes += static_cast<uint64_t>(st.st_size);
      } else if (n.size() == 68 && n.ends_with(".kvr")) {
        out.values.push_back(path);
        out.bytes += static_cast<uint64_t>(st.st_size);
      } else {
        out.other.push_back(path);
      }
    }
    ::closedir(d);
  }
  return out;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Sets a file's mtime to `seconds_ago` before now.
void SetAge(const std::string& path, int64_t seconds_ago) {
  timespec times[2];
  clock_gettime(CLOCK_REALTIME, &times[0]);
  times[0].tv_sec -= seconds_ago;
  times[1] = times[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

void FlipByte(const std::string& path, off_t at) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << path;
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, at), 1);
  b ^= 0x40;
  ASSERT_EQ(::pwrite(fd, &b, 1, at), 1);
  ::close(fd);
}

void WriteFile(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

class SharedDirTierTest : public ::testing::Test {
 protected:
  TempDir tmp_{"kvault-sdir"};
  Namespace ns_ = MakeNamespace(MakeLayout());
};

TEST_F(SharedDirTierTest, RoundTripIsByteIdentical) {
  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.sync = true;
  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);
  EXPECT_EQ(tier->name(), "shared-dir");
  // 10 full chunks and a trailing 9-token partial one (16 KiB and 9 KiB payloads).
  const std::vector<Chunk> chunks = MakeChunks(ns_, 1, 169, /*partial=*/true);
  ASSERT_EQ(chunks.size(), 11u);
  for (const Chunk& c : chunks) ASSERT_TRUE(tier->Put(c.key, c.record).ok());
  for (const Chunk& c : chunks) {
    auto got = tier->Get(c.key);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, c.record);
    EXPECT_TRUE(Verifies(c.key, *got));
    EXPECT_TRUE(Exists(SharedDirTier::ValuePath(RootOf(tmp_.path()), c.key)));
  }
  const Chunk absent = MakeChunks(ns_, 2, 16)[0];
  EXPECT_EQ(tier->Get(absent.key).status().code(), Code::kNotFound);
  std::vector<ChunkKey> keys = {chunks[0].key, absent.key, chunks[10].key};
  EXPECT_EQ(tier->Contains(keys), (std::vector<bool>{true, false, true}));

  const DirListing l = ListTree(tmp_.path());
  EXPECT_EQ(l.values.size(), chunks.size());
  EXPECT_TRUE(l.temps.empty());
  EXPECT_TRUE(l.other.empty());
  const auto s = tier->Stats();
  EXPECT_EQ(s.puts, 11u);
  EXPECT_EQ(s.gets, 12u);
  EXPECT_EQ(s.get_hits, 11u);
  EXPECT_EQ(s.contains_queries, 3u);
  EXPECT_EQ(s.errors, 0u);
  EXPECT_EQ(s.bytes_put, l.bytes);
  EXPECT_EQ(s.bytes_got, l.bytes);
  EXPECT_EQ(s.used_bytes, l.bytes);  // no scan yet: its own puts

  // A second node sees the values the first one wrote.
  auto other = OpenOrDie(QuietOptions(tmp_.path()));
  ASSERT_TRUE(other);
  for (const Chunk& c : chunks) {
    auto got = other->Get(c.key);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, c.record);
  }
}

TEST_F(SharedDirTierTest, PutReplacesTheValueAndRecreatesAMissingShard) {
  auto tier = OpenOrDie(QuietOptions(tmp_.path()));
  ASSERT_TRUE(tier);
  const Chunk c = MakeChunks(ns_, 3, 16)[0];
  const Chunk d = MakeChunks(ns_, 4, 16)[0];
  // A value under the wrong name (a mix-up) is replaced by the right one.
  ASSERT_TRUE(tier->Put(c.key, d.record).ok());
  EXPECT_FALSE(Verifies(c.key, tier->Get(c.key).value()));
  ASSERT_TRUE(tier->Put(c.key, c.record).ok());
  EXPECT_TRUE(Verifies(c.key, tier->Get(c.key).value()));
  EXPECT_EQ(ListTree(tmp_.path()).values.size(), 1u);

  // Someone removed the shard directory: Put makes it again.
  const std::string path = SharedDirTier::ValuePath(RootOf(tmp_.path()), c.key);
  const std::string shard = path.substr(0, path.rfind('/'));
  std::filesystem::remove_all(shard);
  EXPECT_EQ(tier->Get(c.key).status().code(), Code::kNotFound);
  ASSERT_TRUE(tier->Put(c.key, c.record).ok());
  EXPECT_TRUE(Verifies(c.key, tier->Get(c.key).value()));
  EXPECT_EQ(tier->Stats().errors, 0u);

  // A shard that cannot hold files: the error is returned and counted, nothing thrown.
  std::filesystem::remove_all(shard);
  WriteFile(shard, std::as_bytes(std::span("not a directory", 15)));
  kvault::Status st = tier->Put(c.key, c.record);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.code(), Code::kNotFound);
  EXPECT_EQ(tier->Stats().errors, 1u);
  EXPECT_EQ(tier->Get(c.key).status().code(), Code::kNotFound);
  EXPECT_EQ(tier->Contains(std::span(&c.key, 1)), std::vector<bool>{false});

  // Nonsense values are refused.
  EXPECT_EQ(tier->Put(d.key, {}).code(), Code::kInvalidArgument);
}

TEST_F(SharedDirTierTest, CorruptedFilesFailDecode) {
  auto tier = OpenOrDie(QuietOptions(tmp_.path()));
  ASSERT_TRUE(tier);
  const std::vector<Chunk> chunks = MakeChunks(ns_, 5, 64);
  for (const Chunk& c : chunks) ASSERT_TRUE(tier->Put(c.key, c.record).ok());
  const std::string root = RootOf(tmp_.path());
  RecordHeader h;
  std::span<const std::byte> payload;

  // A byte flipped in the payload: the payload checksum catches it.
  FlipByte(SharedDirTier::ValuePath(root, chunks[0].key), static_cast<off_t>(kvault::kHeaderBytes + 100));
  auto got = tier->Get(chunks[0].key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(kvault::DecodeRemoteRecord(*got, chunks[0].key, &h, &payload).code(), Code::kCorruption);

  // A byte flipped in the header (inside the key): the header checksum catches it.
  FlipByte(SharedDirTier::ValuePath(root, chunks[1].key), 20);
  got = tier->Get(chunks[1].key);
  EXPECT_TRUE(!got.ok() || kvault::DecodeRemoteRecord(*got, chunks[1].key, &h, &payload).code() == Code::kCorruption);

  // Truncated (a file system that lost its tail).
  ASSERT_EQ(::truncate(SharedDirTier::ValuePath(root, chunks[2].key).c_str(), 5000), 0);
  got = tier->Get(chunks[2].key);
  EXPECT_TRUE(!got.ok() || kvault::DecodeRemoteRecord(*got, chunks[2].key, &h, &payload).code() == Code::kCorruption);

  // Another chunk's intact record under this name.
  WriteFile(SharedDirTier::ValuePath(root, chunks[3].key), chunks[0].record);
  got = tier->Get(chunks[3].key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(kvault::DecodeRemoteRecord(*got, chunks[3].key, &h, &payload).code(), Code::kCorruption);

  // The untouched ones still verify, and a Put repairs a damaged one.
  for (size_t i = 4; i < chunks.size(); ++i) EXPECT_TRUE(Verifies(chunks[i].key, tier->Get(chunks[i].key).value()));
  ASSERT_TRUE(tier->Put(chunks[0].key, chunks[0].record).ok());
  EXPECT_TRUE(Verifies(chunks[0].key, tier->Get(chunks[0].key).value()));
}

TEST_F(SharedDirTierTest, CrashedWritersTempFilesAreInvisibleAndCollectedOnceOld) {
  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.stale_temp_seconds = 60;
  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);
  const std::vector<Chunk> chunks = MakeChunks(ns_, 6, 32);
  const Chunk& never_published = chunks[0];
  const Chunk& published = chunks[1];
  // What writers on another node left when they died between create and rename: half a
  // record, and a whole one.
  const std::string root = RootOf(tmp_.path());
  auto temp_for = [&](const Chunk& c, const std::string& tail) {
    const std::string v = SharedDirTier::ValuePath(root, c.key);
    return v.substr(0, v.rfind('/')) + "/." + c.key.Hex() + ".deadnode.4242.4243." + tail + ".tmp";
  };
  const std::string old_half = temp_for(never_published, "7");
  const std::string young_whole = temp_for(never_published, "8");
  WriteFile(old_half, std::span(never_published.record).first(never_published.record.size() / 2));
  WriteFile(young_whole, never_published.record);
  SetAge(old_half, 120);
  ASSERT_TRUE(tier->Put(published.key, published.record).ok());

  EXPECT_EQ(tier->Get(never_published.key).status().code(), Code::kNotFound);
  std::vector<ChunkKey> keys = {never_published.key, published.key};
  EXPECT_EQ(tier->Contains(keys), (std::vector<bool>{false, true}));

  ASSERT_TRUE(tier->CollectGarbage().ok());
  EXPECT_FALSE(Exists(old_half));  // older than stale_temp_seconds: its writer is gone
  EXPECT_TRUE(Exists(young_whole));  // its writer may still be renaming it
  EXPECT_EQ(tier->GcStats().stale_temps_removed, 1u);
  EXPECT_EQ(tier->GcStats().files_seen, 1u);  // temp files are not values
  EXPECT_EQ(tier->Get(never_published.key).status().code(), Code::kNotFound);
  EXPECT_TRUE(Verifies(published.key, tier->Get(published.key).value()));

  SetAge(young_whole, 61);
  ASSERT_TRUE(tier->CollectGarbage().ok());
  EXPECT_FALSE(Exists(young_whole));
  EXPECT_EQ(tier->GcStats().stale_temps_removed, 2u);
  EXPECT_TRUE(ListTree(tmp_.path()).temps.empty());
  EXPECT_TRUE(Exists(SharedDirTier::ValuePath(root, published.key)));
}

TEST_F(SharedDirTierTest, GcKeepsTheBudgetDeletingOldestFirst) {
  const std::vector<Chunk> chunks = MakeChunks(ns_, 7, 40 * 16);
  ASSERT_EQ(chunks.size(), 40u);
  const uint64_t size = chunks[0].record.size();
  // Another node wrote them; this one's GC learns of them by its scan.
  auto writer = OpenOrDie(QuietOptions(tmp_.path()));
  ASSERT_TRUE(writer);
  for (const Chunk& c : chunks) ASSERT_TRUE(writer->Put(c.key, c.record).ok());
  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.budget_bytes = 20 * size;
  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);
  EXPECT_EQ(tier->Stats().used_bytes, 0u);  // nothing scanned, nothing put yet
  // Distinct ages: chunk i was written 1000 - i seconds ago. Key order disagrees with age
  // order, so only the mtime order can give the expected survivors.
  const std::string root = RootOf(tmp_.path());
  for (size_t i = 0; i < chunks.size(); ++i) SetAge(SharedDirTier::ValuePath(root, chunks[i].key), 1000 - static_cast<int64_t>(i));

  ASSERT_TRUE(tier->CollectGarbage().ok());
  // Down to 90% of the budget: the newest 18 whole values stay.
  const size_t keep = static_cast<size_t>(0.9 * static_cast<double>(o.budget_bytes)) / size;
  ASSERT_EQ(keep, 18u);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const bool newest = i >= chunks.size() - keep;
    EXPECT_EQ(tier->Get(chunks[i].key).ok(), newest) << "chunk " << i;
  }
  const DirListing l = ListTree(tmp_.path());
  EXPECT_EQ(l.values.size(), keep);
  EXPECT_LE(l.bytes, o.budget_bytes);
  const auto s = tier->Stats();
  EXPECT_EQ(s.evictions, chunks.size() - keep);
  EXPECT_EQ(s.used_bytes, l.bytes);
  EXPECT_EQ(s.capacity_bytes, o.budget_bytes);
  EXPECT_EQ(tier->GcStats().files_seen, chunks.size());

  // Inline GC (no thread): each Put that finds the estimate over budget runs a pass.
  SharedDirTierOptions inline_o = o;
  inline_o.dir = tmp_.Sub("inline");
  auto inline_tier = OpenOrDie(inline_o);
  ASSERT_TRUE(inline_tier);
  for (const Chunk& c : chunks) ASSERT_TRUE(inline_tier->Put(c.key, c.record).ok());
  EXPECT_LE(ListTree(inline_o.dir).bytes, o.budget_bytes);
  EXPECT_GE(inline_tier->Stats().evictions, chunks.size() - 20);
  EXPECT_GE(inline_tier->GcStats().passes, 1u);
}

TEST_F(SharedDirTierTest, BackgroundGcKeepsABudgetSharedWithOtherNodes) {
  const std::vector<Chunk> chunks = MakeChunks(ns_, 8, 60 * 16);
  const uint64_t size = chunks[0].record.size();
  // Node A has no budget of its own; node B's GC watches the whole directory.
  auto a = OpenOrDie(QuietOptions(tmp_.path()));
  ASSERT_TRUE(a);
  SharedDirTierOptions ob = QuietOptions(tmp_.path());
  ob.budget_bytes = 25 * size;
  ob.background_gc = true;
  ob.scan_interval_ms = 20;
  auto b = OpenOrDie(ob);
  ASSERT_TRUE(b);
  for (const Chunk& c : chunks) ASSERT_TRUE(a->Put(c.key, c.record).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (ListTree(tmp_.path()).bytes > ob.budget_bytes && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(ListTree(tmp_.path()).bytes, ob.budget_bytes);
  EXPECT_GE(b->Stats().evictions, chunks.size() - 25);
  EXPECT_EQ(a->Stats().evictions, 0u);
  EXPECT_LE(b->Stats().used_bytes, ob.budget_bytes);
  // B's own puts push its estimate over budget and wake its GC without waiting for a scan.
  for (const Chunk& c : MakeChunks(ns_, 9, 40 * 16)) ASSERT_TRUE(b->Put(c.key, c.record).ok());
  while (ListTree(tmp_.path()).bytes > ob.budget_bytes && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(ListTree(tmp_.path()).bytes, ob.budget_bytes);
}

TEST_F(SharedDirTierTest, TtlExpiredValuesAreMissesAndDeleted) {
  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.ttl_seconds = 60;
  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);
  const std::vector<Chunk> chunks = MakeChunks(ns_, 10, 10 * 16);
  for (const Chunk& c : chunks) ASSERT_TRUE(tier->Put(c.key, c.record).ok());
  const std::string root = RootOf(tmp_.path());
  auto path = [&](size_t i) { return SharedDirTier::ValuePath(root, chunks[i].key); };
  for (size_t i = 0; i < 5; ++i) SetAge(path(i), 120);
  std::vector<ChunkKey> keys;
  for (const Chunk& c : chunks) keys.push_back(c.key);
  EXPECT_EQ(tier->Contains(keys), (std::vector<bool>{false, false, false, false, false, true, true, true, true, true}));
  for (size_t i = 0; i < 5; ++i) EXPECT_FALSE(Exists(path(i)));  // Contains deleted them

  SetAge(path(5), 61);
  SetAge(path(6), 61);
  SetAge(path(7), 59);  // not yet
  EXPECT_EQ(tier->Get(chunks[5].key).status().code(), Code::kNotFound);
  EXPECT_FALSE(Exists(path(5)));
  ASSERT_TRUE(tier->CollectGarbage().ok());
  EXPECT_FALSE(Exists(path(6)));
  EXPECT_EQ(tier->GcStats().expired, 7u);
  for (size_t i = 7; i < chunks.size(); ++i) EXPECT_TRUE(Verifies(chunks[i].key, tier->Get(chunks[i].key).value()));
  EXPECT_EQ(tier->Stats().evictions, 0u);  // expiry is not eviction
  EXPECT_EQ(tier->Stats().errors, 0u);
}

TEST_F(SharedDirTierTest, UnusableDirectoryIsAClearError) {
  SharedDirTierOptions o;
  EXPECT_EQ(SharedDirTier::Open(o).status().code(), Code::kInvalidArgument);  // no directory

  // A path through a regular file.
  WriteFile(tmp_.Sub("file"), std::as_bytes(std::span("x", 1)));
  o.dir = tmp_.Sub("file") + "/cache";
  auto r = kvault::OpenSharedDirTier(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find(o.dir), std::string::npos) << r.status().ToString();

  // A directory nobody can create files in, not even root.
  o.dir = "/proc";
  r = kvault::OpenSharedDirTier(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/proc/kvault-t3-v1"), std::string::npos) << r.status().ToString();

  // A read-only tree (permissions bind only non-root users).
  if (::geteuid() != 0) {
    o.dir = tmp_.Sub("ro");
    ASSERT_TRUE(kvault::OpenSharedDirTier(o).ok());
    ASSERT_EQ(::chmod((RootOf(o.dir) + "/00").c_str(), 0555), 0);
    r = kvault::OpenSharedDirTier(o);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("not writable"), std::string::npos) << r.status().ToString();
    ::chmod((RootOf(o.dir) + "/00").c_str(), 0755);
  }
}

TEST_F(SharedDirTierTest, ThreadsWriteAndReadWhileGcDeletes) {
  const std::vector<Chunk> shared = MakeChunks(ns_, 11, 24 * 16);
  std::vector<std::vector<Chunk>> own;
  for (uint64_t w = 0; w < 3; ++w) own.push_back(MakeChunks(ns_, 100 + w, 12 * 16));
  std::vector<const Chunk*> all;
  for (const Chunk& c : shared) all.push_back(&c);
  for (const auto& v : own) for (const Chunk& c : v) all.push_back(&c);
  const uint64_t size = shared[0].record.size();

  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.budget_bytes = 30 * size;  // about half of what is written: the GC deletes all along
  o.background_gc = true;
  o.scan_interval_ms = 5;
  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);

  std::atomic<uint64_t> bad{0}, hits{0}, failures{0};
  auto check = [&](const Chunk& c) {
    auto got = tier->Get(c.key);
    if (got.ok()) {
      if (Verifies(c.key, *got)) ++hits; else ++bad;
    } else if (got.status().code() != Code::kNotFound) {
      ++failures;
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 0; w < own.size(); ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(w);
      for (int round = 0; round < 15; ++round) {
        for (const Chunk& c : own[w]) if (!tier->Put(c.key, c.record).ok()) ++failures;
        for (int i = 0; i < 8; ++i) {
          const Chunk& c = shared[rng() % shared.size()];
          if (!tier->Put(c.key, c.record).ok()) ++failures;
        }
      }
    });
  }
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(1000 + r);
      for (int i = 0; i < 1500; ++i) {
        check(*all[rng() % all.size()]);
        if (i % 50 == 0) {
          std::vector<ChunkKey> keys;
          for (int k = 0; k < 8; ++k) keys.push_back(all[rng() % all.size()]->key);
          (void)tier->Contains(keys);
        }
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 20; ++i) (void)tier->CollectGarbage();  // manual passes race the thread's
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_GT(hits.load(), 0u);
  ASSERT_TRUE(tier->CollectGarbage().ok());
  EXPECT_LE(ListTree(tmp_.path()).bytes, o.budget_bytes);
  EXPECT_GT(tier->Stats().evictions, 0u);
  EXPECT_EQ(tier->Stats().errors, 0u);
  EXPECT_TRUE(ListTree(tmp_.path()).temps.empty());
  for (const std::string& p : ListTree(tmp_.path()).values) EXPECT_EQ(p.substr(p.size() - 4), ".kvr");
}

// ---------------------------------------------------------------------------------------
// Several processes. The children are forked before this process starts any thread, and
// each opens its own tier (with no GC thread) after the fork.

struct ChildReport {
  uint64_t hits = 0, misses = 0, bad = 0, failures = 0, evictions = 0;
};

void WriteReport(const std::string& path, const ChildReport& r) {
  std::ofstream f(path);
  f << r.hits << ' ' << r.misses << ' ' << r.bad << ' ' << r.failures << ' ' << r.evictions << '\n';
}

ChildReport ReadReport(const std::string& path) {
  ChildReport r;
  std::ifstream f(path);
  f >> r.hits >> r.misses >> r.bad >> r.failures >> r.evictions;
  return r;
}

void ReadOne(kvault::RemoteTier& tier, const Chunk& c, ChildReport* r) {
  auto got = tier.Get(c.key);
  if (got.ok()) {
    if (Verifies(c.key, *got)) ++r->hits; else ++r->bad;
  } else if (got.status().code() == Code::kNotFound) {
    ++r->misses;
  } else {
    ++r->failures;
  }
}

enum class Role { kWriter, kReader, kCollector };

// The body of one child process; returns its exit code.
int RunChild(Role role, int index, const std::string& dir, uint64_t budget, const std::vector<Chunk>& shared,
             const std::vector<Chunk>& mine, const std::vector<const Chunk*>& all, int go_fd,
             const std::string& report) {
  char byte;
  while (::read(go_fd, &byte, 1) < 0 && errno == EINTR) {
  }  // returns 0 once the parent closes its end: everyone starts together
  SharedDirTierOptions o = QuietOptions(dir);
  o.sync = index == 0;  // one writer pays for fsync, the others race it
  if (role == Role::kCollector) o.budget_bytes = budget;
  auto tier = SharedDirTier::Open(o);
  if (!tier.ok()) return 3;
  ChildReport r;
  std::mt19937_64 rng(static_cast<uint64_t>(index) * 7919 + static_cast<uint64_t>(role));
  switch (role) {
    case Role::kWriter:
      for (int round = 0; round < 6; ++round) {
        for (const Chunk& c : mine) if (!(*tier)->Put(c.key, c.record).ok()) ++r.failures;
        for (size_t i = 0; i < shared.size(); ++i) {
          const Chunk& c = shared[(i + static_cast<size_t>(index) * 5) % shared.size()];
          if (!(*tier)->Put(c.key, c.record).ok()) ++r.failures;
          ReadOne(**tier, *all[rng() % all.size()], &r);
        }
      }
      break;
    case Role::kReader:
      for (int i = 0; i < 1500; ++i) ReadOne(**tier, *all[rng() % all.size()], &r);
      break;
    case Role::kCollector:
      for (int i = 0; i < 60; ++i) {
        if (!(*tier)->CollectGarbage().ok()) ++r.failures;
        ::usleep(2000);
      }
      break;
  }
  r.evictions = (*tier)->Stats().evictions;
  r.failures += (*tier)->Stats().errors;
  WriteReport(report, r);
  return 0;
}

TEST_F(SharedDirTierTest, ProcessesWriteSameAndDifferentKeysWhileOthersReadAndCollect) {
  constexpr int kWriters = 4, kReaders = 2;
  const std::string dir = tmp_.Sub("shared");
  const std::vector<Chunk> shared = MakeChunks(ns_, 12, 24 * 16, /*partial=*/false);
  std::vector<std::vector<Chunk>> own;
  for (int w = 0; w < kWriters; ++w) own.push_back(MakeChunks(ns_, 200 + static_cast<uint64_t>(w), 10 * 16 + 5, true));
  std::vector<const Chunk*> all;
  uint64_t total_bytes = 0;
  for (const Chunk& c : shared) all.push_back(&c), total_bytes += c.record.size();
  for (const auto& v : own) for (const Chunk& c : v) all.push_back(&c), total_bytes += c.record.size();
  const uint64_t budget = total_bytes / 2;  // the collector deletes while the others work

  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  struct Child {
    pid_t pid;
    std::string report;
  };
  std::vector<Child> children;
  auto spawn = [&](Role role, int index, const std::vector<Chunk>& mine) {
    const std::string report = tmp_.Sub("report-" + std::to_string(children.size()));
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(go[1]);
      int code = 99;
      try {
        code = RunChild(role, index, dir, budget, shared, mine, all, go[0], report);
      } catch (...) {
      }
      ::_exit(code);
    }
    children.push_back({pid, report});
  };
  for (int w = 0; w < kWriters; ++w) spawn(Role::kWriter, w, own[static_cast<size_t>(w)]);
  for (int r = 0; r < kReaders; ++r) spawn(Role::kReader, r, {});
  spawn(Role::kCollector, 0, {});
  ::close(go[0]);

  // This process reads too, while the children run.
  auto tier = OpenOrDie(QuietOptions(dir));
  ::close(go[1]);  // go
  ASSERT_TRUE(tier);
  ChildReport mine;
  std::mt19937_64 rng(77);
  size_t running = children.size();
  std::vector<int> status(children.size(), -1);
  while (running > 0) {
    for (int i = 0; i < 20; ++i) ReadOne(*tier, *all[rng() % all.size()], &mine);
    for (size_t i = 0; i < children.size(); ++i) {
      if (status[i] != -1) continue;
      int st = 0;
      if (::waitpid(children[i].pid, &st, WNOHANG) == children[i].pid) {
        status[i] = st;
        --running;
      }
    }
  }
  ChildReport sum = mine;
  for (size_t i = 0; i < children.size(); ++i) {
    ASSERT_TRUE(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0) << "child " << i << " status " << status[i];
    const ChildReport r = ReadReport(children[i].report);
    sum.hits += r.hits, sum.misses += r.misses, sum.bad += r.bad, sum.failures += r.failures;
    sum.evictions += r.evictions;
  }
  EXPECT_EQ(sum.bad, 0u) << "a Get returned bytes that are not the record of its key";
  EXPECT_EQ(sum.failures, 0u);
  EXPECT_GT(sum.hits, 0u);
  EXPECT_GT(sum.evictions, 0u);  // the collector did delete values under the readers
  // Every writer finished: no temp file is left, and whatever is there is whole.
  const DirListing l = ListTree(dir);
  EXPECT_TRUE(l.temps.empty());
  EXPECT_TRUE(l.other.empty());
  for (const Chunk* c : all) {
    auto got = tier->Get(c->key);
    if (got.ok()) EXPECT_TRUE(Verifies(c->key, *got));
    else EXPECT_EQ(got.status().code(), Code::kNotFound);
  }
}

// Every file operation goes through the Env: faults injected there reach the tier, which
// turns them into failed puts, errors counted and misses, leaves no temp file, and works
// again once the faults stop.
TEST_F(SharedDirTierTest, EnvFaultsFailCleanlyAndAreCounted) {
  FaultEnv env;
  SharedDirTierOptions o = QuietOptions(tmp_.path());
  o.sync = true;
  o.env = &env;

  // A disk that refuses writes: Open's writability probe fails.
  env.SetWriteError(EIO);
  auto refused = SharedDirTier::Open(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kIOError);
  EXPECT_NE(refused.status().message().find("not writable"), std::string::npos) << refused.status().ToString();
  env.SetWriteError(0);

  auto tier = OpenOrDie(o);
  ASSERT_TRUE(tier);
  const std::vector<Chunk> chunks = MakeChunks(ns_, 21, 4 * 16);
  ASSERT_TRUE(tier->Put(chunks[0].key, chunks[0].record).ok());

  // A failed write (EIO, then ENOSPC): the put fails with the errno's code and nothing is
  // published or left behind.
  const uint64_t writes_failed = env.writes_failed();
  env.SetWriteError(EIO);
  EXPECT_EQ(tier->Put(chunks[1].key, chunks[1].record).code(), Code::kIOError);
  env.SetWriteError(ENOSPC);
  EXPECT_EQ(tier->Put(chunks[2].key, chunks[2].record).code(), Code::kNoSpace);
  env.SetWriteError(0);
  EXPECT_EQ(env.writes_failed(), writes_failed + 2);
  EXPECT_EQ(tier->Stats().errors, 2u);

  // A failed rename (the publishing step): the put fails, the temp file is removed.
  env.SetRenameError(EIO);
  EXPECT_EQ(tier->Put(chunks[3].key, chunks[3].record).code(), Code::kIOError);
  env.SetRenameError(0);
  EXPECT_EQ(env.renames_failed(), 1u);
  EXPECT_EQ(tier->Stats().errors, 3u);

  for (size_t i = 1; i < 4; ++i) EXPECT_EQ(tier->Get(chunks[i].key).status().code(), Code::kNotFound) << i;
  std::vector<ChunkKey> keys = {chunks[0].key, chunks[1].key, chunks[2].key, chunks[3].key};
  EXPECT_EQ(tier->Contains(keys), (std::vector<bool>{true, false, false, false}));
  DirListing l = ListTree(tmp_.path());
  EXPECT_EQ(l.values.size(), 1u);
  EXPECT_TRUE(l.temps.empty());

  // A failed read is an error (counted), never a hit with partial data.
  env.SetReadError(EIO);
  auto got = tier->Get(chunks[0].key);
  EXPECT_EQ(got.status().code(), Code::kIOError);
  env.SetReadError(0);
  EXPECT_EQ(env.reads_failed(), 1u);
  EXPECT_EQ(tier->Stats().errors, 4u);
  EXPECT_EQ(tier->Stats().get_hits, 0u);

  // The faults gone, the tier works again.
  for (size_t i = 1; i < 4; ++i) ASSERT_TRUE(tier->Put(chunks[i].key, chunks[i].record).ok()) << i;
  for (const Chunk& c : chunks) {
    got = tier->Get(c.key);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(Verifies(c.key, *got));
  }
  EXPECT_EQ(tier->Stats().puts, 4u);
  EXPECT_EQ(tier->Stats().errors, 4u);
  l = ListTree(tmp_.path());
  EXPECT_EQ(l.values.size(), 4u);
  EXPECT_TRUE(l.temps.empty());
  EXPECT_TRUE(tier->CollectGarbage().ok());
}

}  // namespace
}  // namespace kvtest

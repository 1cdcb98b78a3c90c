// Concurrency: 8 threads put, look up, open, read and flush overlapping chains (shared
// system prompts, so the same chunks are put and read from many threads at once) for about
// 2 s, with a T1 small enough that chunks are evicted, written behind and promoted back all
// the time. Every byte read is verified; the run must finish (a watchdog turns a deadlock
// into a failure instead of a hang), and the counters must stay consistent.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "stats_checks.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;

constexpr int kThreads = 8;
constexpr auto kRunFor = std::chrono::seconds(2);
constexpr auto kWatchdog = std::chrono::seconds(90);

std::vector<std::vector<uint32_t>> MakeChains() {
  std::vector<std::vector<uint32_t>> chains;
  for (uint64_t i = 0; i < 40; ++i) {
    std::vector<uint32_t> t = MakeTokens(7000 + i % 4, 32);  // one of 4 shared 2-chunk prompts
    std::vector<uint32_t> own = MakeTokens(8000 + i, 16 + (i * 7) % 41);
    t.insert(t.end(), own.begin(), own.end());
    chains.push_back(std::move(t));
  }
  return chains;
}

struct Counters {
  std::atomic<uint64_t> ops{0}, verified{0}, mismatches{0}, bad_status{0};
};

// Opening may miss (evicted, or every page pinned right now) but never returns wrong bytes.
void VerifyOpen(Store& store, const Namespace& ns, const ChunkKey& key, uint32_t tokens, Counters& n) {
  std::string why;
  kvault::Status st;
  Check c = CheckChunk(store, ns, key, tokens, nullptr, &why, &st);
  if (c == Check::kMismatch) {
    ++n.mismatches;
    ADD_FAILURE() << "wrong bytes for " << key.ShortHex() << ": " << why;
  } else if (c == Check::kMissing && st.code() != Code::kNotFound && st.code() != Code::kResourceExhausted) {
    ++n.bad_status;
    ADD_FAILURE() << "OpenChunk: " << st.ToString();
  } else if (c == Check::kMatch) {
    ++n.verified;
  }
}

void Worker(Store& store, const Namespace& ns, const std::vector<std::vector<uint32_t>>& chains, int id,
            std::chrono::steady_clock::time_point until, Counters& n) {
  std::mt19937_64 rng(1234 + id);
  while (std::chrono::steady_clock::now() < until) {
    const auto& tokens = chains[rng() % chains.size()];
    const unsigned op = rng() % 100;
    if (op < 35) {
      kvault::Status st = PutChainMixed(store, ns, tokens, rng, /*layered_one_in=*/2, /*abandon_one_in=*/8);
      if (!st.ok() && st.code() != Code::kResourceExhausted) {
        ++n.bad_status;
        ADD_FAILURE() << "put: " << st.ToString();
      }
    } else if (op < 70) {
      kvault::LookupResult r = store.Lookup(ns, tokens);
      for (const auto& ch : r.chunks) VerifyOpen(store, ns, ch.key, ch.tokens, n);
    } else if (op < 90) {
      // Hold one chunk pinned while reading others.
      const auto spans = kvault::ChunkKeys(ns, tokens);
      const auto& held = spans[rng() % spans.size()];
      auto reader = store.OpenChunk(ns, held.key);
      const auto& other = chains[rng() % chains.size()];
      for (const auto& s : kvault::ChunkKeys(ns, other)) VerifyOpen(store, ns, s.key, s.tokens, n);
      if (reader.ok()) {
        const std::vector<std::byte> want = PayloadFor(held.key, reader->size());
        const uint32_t layer = static_cast<uint32_t>(rng() % ns.layout().num_layers);
        const kvault::ByteRange r = ns.layout().layer_range(layer, held.tokens);
        std::vector<std::byte> got(r.size);
        if (!reader->ReadLayer(layer, got).ok() || std::memcmp(got.data(), want.data() + r.offset, r.size) != 0) {
          ++n.mismatches;
          ADD_FAILURE() << "held reader returned wrong bytes for " << held.key.ShortHex();
        } else {
          ++n.verified;
        }
      }
    } else if (op < 95) {
      kvault::Status st = store.Flush();
      // IOError: chunks were dropped from the full T1 before the write-behind got to them.
      if (!st.ok() && st.code() != Code::kIOError) {
        ++n.bad_status;
        ADD_FAILURE() << "flush: " << st.ToString();
      }
    } else {
      kvault::StoreStats s = store.Stats();
      if (s.t1_used_bytes > s.t1_capacity_bytes || s.t2_used_bytes > s.t2_capacity_bytes ||
          s.hit_chunks_t1 + s.hit_chunks_t2 + s.miss_chunks != s.lookup_chunks) {
        ++n.bad_status;
        ADD_FAILURE() << "inconsistent stats: " << s.ToJson();
      }
    }
    ++n.ops;
  }
}

TEST(Concurrency, EightThreadsOverlappingChains) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 48 * o.page_bytes;  // 48 chunks of 16 KiB; the chains hold about 130
  o.segment_bytes = 256ull << 10;
  o.t2_bytes = 1ull << 20;          // 4 segments: T2 reclaims (and rewrites hot chunks) too
  const Namespace ns = MakeNamespace(MakeLayout());
  const auto chains = MakeChains();
  Counters n;
  {
    auto opened = Store::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    Store& store = **opened;

    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    const auto until = std::chrono::steady_clock::now() + kRunFor;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Worker(store, ns, chains, t, until, n);
        std::lock_guard<std::mutex> lock(mu);
        ++done;
        cv.notify_all();
      });
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_until(lock, until + kWatchdog, [&] { return done == kThreads; })) {
        std::fprintf(stderr, "deadlock: %d of %d threads still running after the watchdog\n", kThreads - done,
                     kThreads);
        std::abort();  // cannot join deadlocked threads; fail loudly instead of hanging
      }
    }
    for (auto& t : threads) t.join();

    EXPECT_EQ(n.mismatches.load(), 0u);
    EXPECT_EQ(n.bad_status.load(), 0u);
    EXPECT_GT(n.ops.load(), 100u);
    EXPECT_GT(n.verified.load(), 100u);
    kvault::StoreStats st = store.Stats();
    ExpectLookupCountersAddUp(st);
    ExpectWithinCaps(st);
    EXPECT_GT(st.t1_evictions + st.t1_dropped_unpersisted, 0u) << st.ToJson();
    EXPECT_GT(st.promotions, 0u) << st.ToJson();
    EXPECT_GT(st.t2_evictions, 0u) << st.ToJson();
    EXPECT_EQ(st.err_corruption, 0u);
    EXPECT_EQ(st.err_io, 0u);
    (void)store.Flush();
    ::testing::Test::RecordProperty("ops", std::to_string(n.ops.load()));
    ::testing::Test::RecordProperty("verified_reads", std::to_string(n.verified.load()));
    ::testing::Test::RecordProperty("stats", store.Stats().ToJson());
  }
  // After a restart, everything that can be opened is intact.
  auto reopened = Store::Open(o);
  ASSERT_TRUE(reopened.ok());
  for (const auto& tokens : chains) {
    for (const auto& s : kvault::ChunkKeys(ns, tokens)) {
      EXPECT_NE(CheckChunk(**reopened, ns, s.key, s.tokens), Check::kMismatch);
    }
  }
  EXPECT_EQ((*reopened)->Stats().err_corruption, 0u);
}

}  // namespace
}  // namespace kvtest

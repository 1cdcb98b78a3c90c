// Scheduler hints (Store::Hint, Store::WaitForPrefetch) and the T1 eviction policies in the
// store: the prefetcher brings a hinted prompt's T2-only chunks back to T1 in window order,
// stays within its budget (options.prefetch_bytes), never evicts a window entry nor one that
// is not yet on disk, and never makes Hint wait for I/O; "aware" keeps window chunks in DRAM
// where "lru" does not; every policy name but "opt" opens a store. Everything read back is
// checked byte for byte against PayloadFor.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fault_env.h"
#include "kvault/env.h"
#include "stats_checks.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;
using kvault::StoreOptions;
using kvault::StoreStats;
using kvault::Tier;
using Tokens = std::vector<uint32_t>;

// 4 layers x 2 kv heads x 32 dims in bf16, 16 tokens: a full chunk is 16 KiB, exactly one
// 16 KiB page of SmallOptions, so a DRAM tier of N pages holds exactly N full chunks.
constexpr uint32_t kChunkTokens = 16;
const KvLayout kLayout = MakeLayout();
const uint64_t kChunkBytes = kLayout.chunk_bytes(kChunkTokens);

StoreOptions HintOptions(const std::string& dir, uint32_t dram_chunks, const std::string& policy = "lru",
                         uint32_t prefetch_chunks = 64) {
  StoreOptions o = SmallOptions(dir);
  o.t1_bytes = uint64_t{dram_chunks} * o.page_bytes;
  o.policy = policy;
  o.prefetch_bytes = uint64_t{prefetch_chunks} * kChunkBytes;
  return o;
}

std::unique_ptr<Store> OpenStore(const StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << o.policy << ": " << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

// A chain of `chunks` whole chunks.
Tokens Chain(uint64_t seed, uint32_t chunks, uint32_t extra_tokens = 0) {
  return MakeTokens(seed, size_t{chunks} * kChunkTokens + extra_tokens);
}

// The tier of every chunk of `tokens` (a trailing partial chunk included): kNone past the
// cached prefix.
std::vector<Tier> Tiers(Store& store, const Namespace& ns, const Tokens& tokens) {
  const size_t n = (tokens.size() + kChunkTokens - 1) / kChunkTokens;
  std::vector<Tier> out(n, Tier::kNone);
  kvault::LookupResult r = store.Lookup(ns, tokens);
  for (size_t i = 0; i < r.chunks.size() && i < n; ++i) out[i] = r.chunks[i].tier;
  return out;
}

std::string TierString(const std::vector<Tier>& tiers) {
  std::string s;
  for (Tier t : tiers) s += t == Tier::kT1 ? 'H' : t == Tier::kT2 ? 'D' : '-';
  return s;
}

// "HHDD": tiers by letter (H = T1, D = T2 only, - = not cached), for readable expectations.
std::string TiersOf(Store& store, const Namespace& ns, const Tokens& tokens) {
  return TierString(Tiers(store, ns, tokens));
}

void Hint(Store& store, const Namespace& ns, const std::vector<const Tokens*>& prompts) {
  std::vector<std::span<const uint32_t>> spans;
  for (const Tokens* p : prompts) spans.emplace_back(*p);
  store.Hint(ns, spans);
}

// Hint, then wait until its prefetches are done.
void HintAndWait(Store& store, const Namespace& ns, const std::vector<const Tokens*>& prompts) {
  Hint(store, ns, prompts);
  store.WaitForPrefetch();
}

// Puts the chain and waits until it is on T2.
void PutFlushed(Store& store, const Namespace& ns, const Tokens& tokens) {
  kvault::Status st = PutChain(store, ns, tokens);
  ASSERT_TRUE(st.ok()) << st.ToString();
  st = store.Flush();
  ASSERT_TRUE(st.ok()) << st.ToString();
}

// Reads every chunk of `tokens` and checks its bytes; returns the tiers they were served from.
std::string ReadAll(Store& store, const Namespace& ns, const Tokens& tokens) {
  std::string served;
  for (const kvault::ChunkSpan& s : kvault::ChunkKeys(ns, tokens)) {
    Tier from = Tier::kNone;
    std::string why;
    Check c = CheckChunk(store, ns, s.key, s.tokens, &from, &why);
    EXPECT_EQ(c, Check::kMatch) << "chunk at " << s.begin << ": " << why;
    served += c != Check::kMatch ? '!' : from == Tier::kT1 ? 'H' : 'D';
  }
  return served;
}

// An Env whose file writes and/or reads can be held at a gate: a thread that reaches a closed
// gate waits there until it opens. Lets a test keep entries dirty (a write in flight) or a
// prefetch read in flight for as long as it needs.
class Gate {
 public:
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = false;
    }
    cv_.notify_all();
  }
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !closed_; });
    --waiting_;
  }
  // True once `n` threads wait at the gate (false after 10 s).
  bool WaitForWaiters(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return waiting_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  int waiting_ = 0;
};

class GateEnv final : public kvault::Env {
 public:
  Gate writes, reads;

  kvault::Result<std::unique_ptr<kvault::File>> OpenFile(const std::string& path,
                                                         const kvault::FileOpenOptions& options) override {
    auto f = base_->OpenFile(path, options);
    if (!f.ok()) return f.status();
    return std::unique_ptr<kvault::File>(new GateFile(this, std::move(f.value())));
  }
  kvault::Status CreateDirs(const std::string& path) override { return base_->CreateDirs(path); }
  kvault::Result<std::vector<std::string>> ListDir(const std::string& path) override { return base_->ListDir(path); }
  kvault::Status RemoveFile(const std::string& path) override { return base_->RemoveFile(path); }
  kvault::Status RenameFile(const std::string& from, const std::string& to) override {
    return base_->RenameFile(from, to);
  }
  kvault::Status SyncDir(const std::string& path) override { return base_->SyncDir(path); }

 private:
  class GateFile final : public kvault::File {
   public:
    GateFile(GateEnv* env, std::unique_ptr<kvault::File> base) : env_(env), base_(std::move(base)) {}
    kvault::Status WriteBatch(std::span<const kvault::WriteOp> ops) override {
      env_->writes.Pass();
      return base_->WriteBatch(ops);
    }
    kvault::Status Read(uint64_t offset, std::span<const kvault::IoSlice> slices) override {
      env_->reads.Pass();
      return base_->Read(offset, slices);
    }
    kvault::Status Sync() override { return base_->Sync(); }
    kvault::Result<uint64_t> Size() override { return base_->Size(); }
    kvault::Result<kvault::FileInfo> Info() override { return base_->Info(); }
    bool direct() const override { return base_->direct(); }

   private:
    GateEnv* const env_;
    std::unique_ptr<kvault::File> base_;
  };

  kvault::Env* const base_ = kvault::Env::Default();
};

// Opens the gates when the test leaves, even on a failed assertion, so the store can close:
// declare it after the store.
struct OpenGatesAtExit {
  GateEnv& env;
  ~OpenGatesAtExit() {
    env.writes.Open();
    env.reads.Open();
  }
};

// ---------------------------------------------------------------------------------------
// Prefetch

// Proves a hint brings every chunk of the prompt's cached prefix that is only on T2 (its
// trailing partial chunk included) back into T1, counted as hints / prefetches /
// bytes_prefetched / promotions, and that the chunks then read back byte-identical from T1
// without another disk read.
TEST(Hint, PrefetchBringsT2OnlyChunksBackToT1) {
  TempDir dir;
  auto store = OpenStore(HintOptions(dir.path(), 16));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 4, 5);  // 4 whole chunks and a 5-token partial one
  PutFlushed(*store, ns, a);
  ASSERT_EQ(TiersOf(*store, ns, a), "HHHHH");
  PutFlushed(*store, ns, Chain(2, 16));  // fills DRAM: A (least recently used) goes
  ASSERT_EQ(TiersOf(*store, ns, a), "DDDDD");

  const StoreStats before = store->Stats();
  EXPECT_EQ(before.hints, 0u);
  EXPECT_EQ(before.prefetches, 0u);
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHHHH");

  const StoreStats after = store->Stats();
  const uint64_t a_bytes = 4 * kChunkBytes + kLayout.chunk_bytes(5);
  EXPECT_EQ(after.hints, 1u);
  EXPECT_EQ(after.prefetches, 5u) << after.ToJson();
  EXPECT_EQ(after.bytes_prefetched, a_bytes) << after.ToJson();
  EXPECT_EQ(after.promotions - before.promotions, 5u) << after.ToJson();
  EXPECT_EQ(after.bytes_t2_to_t1 - before.bytes_t2_to_t1, a_bytes) << after.ToJson();
  ExpectWithinCaps(after);

  // Served from T1, byte-identical, and no second read from disk.
  EXPECT_EQ(ReadAll(*store, ns, a), "HHHHH");
  EXPECT_EQ(store->Stats().promotions, after.promotions);
  // A second hint for chunks already in T1 prefetches nothing.
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(store->Stats().prefetches, 5u);
  EXPECT_EQ(store->Stats().hints, 2u);
}

// Proves the budget: with prefetch_bytes = 2 chunks, a hint for a 6-chunk T2-only prompt
// prefetches exactly its first 2 chunks; hinting again before they are read brings nothing
// more; reading them (OpenChunk) frees the budget for the next 2; and prefetched chunks that
// are evicted unread free it too.
TEST(Hint, PrefetchStopsAtTheBudgetAndResumesWhenChunksAreRead) {
  TempDir dir;
  auto store = OpenStore(HintOptions(dir.path(), 16, "lru", /*prefetch_chunks=*/2));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 6);
  PutFlushed(*store, ns, a);
  PutFlushed(*store, ns, Chain(2, 16));
  ASSERT_EQ(TiersOf(*store, ns, a), "DDDDDD");

  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHDDDD");
  EXPECT_EQ(store->Stats().prefetches, 2u);
  EXPECT_EQ(store->Stats().bytes_prefetched, 2 * kChunkBytes);

  // Unread: the budget is still used up.
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHDDDD");
  EXPECT_EQ(store->Stats().prefetches, 2u);

  // Read the two prefetched chunks (readers released at once): the next two come in.
  const auto spans = kvault::ChunkKeys(ns, a);
  for (int i = 0; i < 2; ++i) {
    Tier from = Tier::kNone;
    EXPECT_EQ(CheckChunk(*store, ns, spans[i].key, spans[i].tokens, &from), Check::kMatch);
    EXPECT_EQ(from, Tier::kT1);
  }
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHHHDD");
  EXPECT_EQ(store->Stats().prefetches, 4u);

  // Chunks 2 and 3 stay unread but leave T1: the budget they held is free again.
  Hint(*store, ns, {});
  PutFlushed(*store, ns, Chain(3, 16));
  ASSERT_EQ(TiersOf(*store, ns, a), "DDDDDD");
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHDDDD");
  EXPECT_EQ(store->Stats().prefetches, 6u);
  EXPECT_EQ(store->Stats().bytes_prefetched, 6 * kChunkBytes);
  EXPECT_EQ(ReadAll(*store, ns, a), "HHDDDD");  // chunks 2..5 promoted on read
}

// Proves prefetch_bytes = 0 means a quarter of t1_bytes: 4 chunks of a 16-chunk tier.
TEST(Hint, DefaultBudgetIsAQuarterOfDram) {
  TempDir dir;
  StoreOptions o = HintOptions(dir.path(), 16);
  o.prefetch_bytes = 0;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 8);
  PutFlushed(*store, ns, a);
  PutFlushed(*store, ns, Chain(2, 16));
  ASSERT_EQ(TiersOf(*store, ns, a), "DDDDDDDD");
  HintAndWait(*store, ns, {&a});
  EXPECT_EQ(TiersOf(*store, ns, a), "HHHHDDDD");
  EXPECT_EQ(store->Stats().prefetches, 4u);
}

// Proves the prefetch follows window order across prompts (the first prompt's chunks before
// the second's): with a budget of 2 chunks, {B, A} brings B0 and A0, {A, B} brings A0, A1.
TEST(Hint, PrefetchFollowsWindowOrder) {
  for (bool b_first : {true, false}) {
    SCOPED_TRACE(b_first ? "hint {B, A}" : "hint {A, B}");
    TempDir dir;
    auto store = OpenStore(HintOptions(dir.path(), 16, "lru", /*prefetch_chunks=*/2));
    ASSERT_TRUE(store);
    const Namespace ns = MakeNamespace(kLayout);
    const Tokens a = Chain(1, 3), b = Chain(2, 1);
    PutFlushed(*store, ns, a);
    PutFlushed(*store, ns, b);
    PutFlushed(*store, ns, Chain(3, 16));
    ASSERT_EQ(TiersOf(*store, ns, a), "DDD");
    ASSERT_EQ(TiersOf(*store, ns, b), "D");
    if (b_first) {
      Hint(*store, ns, {&b, &a});
    } else {
      Hint(*store, ns, {&a, &b});
    }
    store->WaitForPrefetch();
    EXPECT_EQ(TiersOf(*store, ns, a), b_first ? "HDD" : "HHD");
    EXPECT_EQ(TiersOf(*store, ns, b), b_first ? "H" : "D");
    EXPECT_EQ(store->Stats().prefetches, 2u);
  }
}

// Proves the prefetcher never evicts a window entry: DRAM holds 8 chunks, the window is
// {P1 (4 chunks, all in T1), P2 (6 chunks, only on T2)} and only 4 non-window chunks can
// make room. Whatever the policy, P2's first 4 chunks come in, then the prefetch stops:
// P1 stays whole in T1 (with lru, P1 is the least recently used), P2's last 2 stay on T2.
TEST(Hint, PrefetchNeverEvictsAWindowEntry) {
  for (const char* policy : {"lru", "fifo", "s3fifo", "aware"}) {
    SCOPED_TRACE(policy);
    TempDir dir;
    auto store = OpenStore(HintOptions(dir.path(), 8, policy));
    ASSERT_TRUE(store);
    const Namespace ns = MakeNamespace(kLayout);
    const Tokens p1 = Chain(1, 4), p2 = Chain(2, 6), filler = Chain(3, 8);
    PutFlushed(*store, ns, p2);
    PutFlushed(*store, ns, filler);  // P2, the only clean entries, all go
    ASSERT_EQ(TiersOf(*store, ns, p2), "DDDDDD");
    PutFlushed(*store, ns, p1);  // 4 filler chunks go
    ASSERT_EQ(TiersOf(*store, ns, p1), "HHHH");

    Hint(*store, ns, {&p1, &p2});
    store->WaitForPrefetch();
    EXPECT_EQ(TiersOf(*store, ns, p1), "HHHH");
    EXPECT_EQ(TiersOf(*store, ns, p2), "HHHHDD");
    EXPECT_EQ(store->Stats().prefetches, 4u);
    const auto f = Tiers(*store, ns, filler);
    EXPECT_EQ(std::count(f.begin(), f.end(), Tier::kT1), 0) << TierString(f);
    EXPECT_EQ(ReadAll(*store, ns, p1), "HHHH");
    ExpectWithinCaps(store->Stats());
  }
}

// Proves the prefetcher never evicts a dirty entry (put, not yet on T2): the write-behind is
// held at a gate, so DRAM holds one chunk in flight and 7 queued, and the hinted prompt's
// T2-only chunks cannot come in. Once the gate opens, every held chunk reaches the disk
// (Flush succeeds: none was dropped unwritten) and reads back intact.
TEST(Hint, PrefetchNeverEvictsADirtyEntry) {
  TempDir dir;
  GateEnv env;
  StoreOptions o = HintOptions(dir.path(), 8);
  o.env = &env;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  OpenGatesAtExit open_at_exit{env};  // destroyed before the store
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens p = Chain(1, 2), x = Chain(2, 1), d = Chain(3, 7);
  PutFlushed(*store, ns, p);
  PutFlushed(*store, ns, Chain(4, 8));
  ASSERT_EQ(TiersOf(*store, ns, p), "DD");

  env.writes.Close();
  ASSERT_TRUE(PutChain(*store, ns, x).ok());
  ASSERT_TRUE(env.writes.WaitForWaiters(1)) << "the write-behind never wrote";
  ASSERT_TRUE(PutChain(*store, ns, d).ok());  // queued behind X: dirty
  ASSERT_EQ(TiersOf(*store, ns, d), "HHHHHHH");

  HintAndWait(*store, ns, {&p});
  EXPECT_EQ(TiersOf(*store, ns, p), "DD");
  EXPECT_EQ(TiersOf(*store, ns, d), "HHHHHHH");
  EXPECT_EQ(TiersOf(*store, ns, x), "H");
  EXPECT_EQ(store->Stats().prefetches, 0u);
  EXPECT_EQ(store->Stats().t1_dropped_unpersisted, 0u);

  env.writes.Open();
  kvault::Status st = store->Flush();
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(ReadAll(*store, ns, d), "HHHHHHH");
  EXPECT_EQ(ReadAll(*store, ns, x), "H");
  // Now clean: a new hint may make room with them.
  HintAndWait(*store, ns, {&p});
  EXPECT_EQ(TiersOf(*store, ns, p), "HH");
  EXPECT_EQ(store->Stats().prefetches, 2u);
}

// Proves the prefetcher does not evict a chunk that is not on disk because its write
// failed (store.h: a hint never evicts "one not yet on disk"): such a chunk's only copy is
// in T1, so dropping it for a speculative prefetch would lose it. W's write fails; the
// disk recovers; the other T1 entries are read so that W is the least recently used; a hint
// needs room. W must still read back intact.
TEST(Hint, PrefetchNeverEvictsAChunkWhoseWriteFailed) {
  TempDir dir;
  FaultEnv env;
  StoreOptions o = HintOptions(dir.path(), 8);
  o.env = &env;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens p = Chain(1, 2), filler = Chain(2, 8), w = Chain(3, 2);
  PutFlushed(*store, ns, p);
  PutFlushed(*store, ns, filler);
  ASSERT_EQ(TiersOf(*store, ns, p), "DD");

  env.SetWriteError(EIO);
  ASSERT_TRUE(PutChain(*store, ns, w).ok());  // evicts 2 filler chunks
  EXPECT_FALSE(store->Flush().ok());          // W did not reach the disk
  env.SetWriteError(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // past the store's back-off
  ASSERT_EQ(TiersOf(*store, ns, w), "HH");
  // Read the filler chunks still in T1 (only those: a promotion would evict), so that W is
  // the least recently used.
  const auto filler_spans = kvault::ChunkKeys(ns, filler);
  const std::vector<Tier> filler_tiers = Tiers(*store, ns, filler);
  ASSERT_EQ(TierString(filler_tiers), "DDHHHHHH");
  for (size_t i = 0; i < filler_spans.size(); ++i) {
    if (filler_tiers[i] != Tier::kT1) continue;
    auto r = store->OpenChunk(ns, filler_spans[i].key);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->served_from(), Tier::kT1);
  }
  const StoreStats before = store->Stats();
  ASSERT_EQ(TiersOf(*store, ns, w), "HH");

  HintAndWait(*store, ns, {&p});
  const StoreStats after = store->Stats();
  EXPECT_EQ(TiersOf(*store, ns, w), "HH") << "before the hint: " << before.ToJson() << "\nafter: " << after.ToJson();
  EXPECT_EQ(ReadAll(*store, ns, w), "HH");
  // What the prefetch could use: the 6 filler chunks, on T2 and out of the window.
  EXPECT_EQ(after.prefetches, 2u);
  EXPECT_EQ(TiersOf(*store, ns, p), "HH");
}

// Proves Hint never waits for I/O and a new hint replaces the old one: with the disk reads
// held at a gate, the prefetcher is stuck reading A0, yet Hint returns at once (twice),
// lookups and puts go on, and WaitForPrefetch does not return until the read is done. The
// second hint ({B}) replaced the first: after the gate opens, A0 (already in flight) and B
// are in T1, A1..A3 are not.
TEST(Hint, HintNeverWaitsForIoAndReplacesThePreviousHint) {
  TempDir dir;
  GateEnv env;
  StoreOptions o = HintOptions(dir.path(), 16);
  o.env = &env;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  OpenGatesAtExit open_at_exit{env};  // destroyed before the store
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 4), b = Chain(2, 2);
  PutFlushed(*store, ns, a);
  PutFlushed(*store, ns, b);
  PutFlushed(*store, ns, Chain(3, 16));
  ASSERT_EQ(TiersOf(*store, ns, a), "DDDD");
  ASSERT_EQ(TiersOf(*store, ns, b), "DD");

  env.reads.Close();
  auto t0 = std::chrono::steady_clock::now();
  Hint(*store, ns, {&a});
  ASSERT_TRUE(env.reads.WaitForWaiters(1)) << "the prefetcher never read";
  auto t1 = std::chrono::steady_clock::now();
  Hint(*store, ns, {&b});
  const auto second_hint = std::chrono::steady_clock::now() - t1;
  EXPECT_LT(second_hint, std::chrono::seconds(1));
  EXPECT_LT(t1 - t0, std::chrono::seconds(9));
  // The store goes on while the read is in flight.
  EXPECT_EQ(TiersOf(*store, ns, a), "DDDD");  // A0 is being read: still a T2 hit
  ASSERT_TRUE(PutChain(*store, ns, Chain(4, 2)).ok());
  auto waiter = std::async(std::launch::async, [&] { store->WaitForPrefetch(); });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
      << "WaitForPrefetch returned while a prefetch read was in flight";
  env.reads.Open();
  waiter.get();
  store->WaitForPrefetch();
  EXPECT_EQ(TiersOf(*store, ns, a), "HDDD");
  EXPECT_EQ(TiersOf(*store, ns, b), "HH");
  EXPECT_EQ(store->Stats().prefetches, 3u);
  EXPECT_EQ(store->Stats().hints, 2u);
  EXPECT_EQ(ReadAll(*store, ns, a), "HDDD");
  EXPECT_EQ(ReadAll(*store, ns, b), "HH");
}

// Proves a store closes cleanly with prefetch work pending or in flight (the destructor
// stops the prefetcher), and a reopened store holds every chunk intact.
TEST(Hint, CloseWithPrefetchPending) {
  TempDir dir;
  const StoreOptions o = HintOptions(dir.path(), 16);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 12), filler = Chain(2, 16);
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    PutFlushed(*store, ns, a);
    PutFlushed(*store, ns, filler);
    ASSERT_EQ(TiersOf(*store, ns, a), std::string(12, 'D'));
    Hint(*store, ns, {&a});
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(ReadAll(*store, ns, a).find('!'), std::string::npos);
  EXPECT_EQ(ReadAll(*store, ns, filler).find('!'), std::string::npos);
}

// Proves a hint's window covers the stored partial chunk that a longer prompt's lookup
// finds: the next request's prompt extends a stored conversation (4 chunks + a 5-token
// partial) with a new turn; Lookup counts that partial in the cached prefix, so the hint
// should prefetch it with the whole chunks.
TEST(Hint, PrefetchCoversTheStoredPartialChunkALongerPromptUses) {
  TempDir dir;
  auto store = OpenStore(HintOptions(dir.path(), 16));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens conversation = Chain(1, 4, 5);
  Tokens next = conversation;
  const Tokens turn = MakeTokens(99, 30);
  next.insert(next.end(), turn.begin(), turn.end());
  PutFlushed(*store, ns, conversation);
  PutFlushed(*store, ns, Chain(2, 16));
  kvault::LookupResult r = store->Lookup(ns, next);
  ASSERT_EQ(r.cached_tokens, conversation.size());
  ASSERT_EQ(r.chunks.size(), 5u);
  ASSERT_EQ(r.chunks.back().tokens, 5u);
  ASSERT_EQ(r.chunks.back().tier, Tier::kT2);

  HintAndWait(*store, ns, {&next});
  r = store->Lookup(ns, next);
  std::vector<Tier> tiers;
  for (const auto& c : r.chunks) tiers.push_back(c.tier);
  EXPECT_EQ(TierString(tiers), "HHHHH");
  EXPECT_EQ(store->Stats().prefetches, 5u);
}

// ---------------------------------------------------------------------------------------
// Policies in the store

// Puts A (4 chunks) into an 8-chunk DRAM tier, hints {A}, then puts 6 more 2-chunk chains
// (12 chunks), each flushed; returns A's tiers.
std::string WindowSurvivesPuts(const std::string& policy, bool clear_hint, StoreStats* stats) {
  TempDir dir;
  auto store = OpenStore(HintOptions(dir.path(), 8, policy));
  if (!store) return "open failed";
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 4);
  PutFlushed(*store, ns, a);
  HintAndWait(*store, ns, {&a});
  if (clear_hint) Hint(*store, ns, {});
  for (int i = 0; i < 6; ++i) PutFlushed(*store, ns, Chain(10 + i, 2));
  *stats = store->Stats();
  const std::string tiers = TiersOf(*store, ns, a);
  EXPECT_EQ(ReadAll(*store, ns, a).find('!'), std::string::npos);
  return tiers;
}

// Proves the policy matters: under the same puts after a hint naming A, "aware" evicts
// every other chunk before A's (A stays in T1 while 8 others go to disk), "lru" evicts A
// (its least recently used chunks) first.
TEST(Hint, AwareKeepsWindowChunksInDramWhereLruDoesNot) {
  StoreStats aware_stats, lru_stats;
  EXPECT_EQ(WindowSurvivesPuts("aware", false, &aware_stats), "HHHH");
  EXPECT_EQ(aware_stats.t1_evictions, 8u) << aware_stats.ToJson();
  EXPECT_EQ(WindowSurvivesPuts("lru", false, &lru_stats), "DDDD");
  EXPECT_EQ(lru_stats.t1_evictions, 8u) << lru_stats.ToJson();
}

// Proves keys of another namespace protect nothing: HintKeyed takes the caller's keys (kvaultd
// passes a client's on), so Bob naming Alice's chain A by her keys must leave A unprotected —
// "aware" evicts it under the same puts as if nothing were hinted — while Alice's own keyed
// hint keeps it in T1.
TEST(Hint, KeysOfAnotherNamespaceDoNotEnterTheWindow) {
  for (const bool own : {false, true}) {
    TempDir dir;
    auto store = OpenStore(HintOptions(dir.path(), 8, "aware"));
    ASSERT_TRUE(store);
    const Namespace alice = MakeNamespace(kLayout, "alice");
    const Namespace bob = MakeNamespace(kLayout, "bob");
    const Tokens a = Chain(1, 4);
    PutFlushed(*store, alice, a);
    const kvault::KeyedTokens keyed = kvault::KeyTokens(alice, a);
    store->HintKeyed(own ? alice : bob, {&keyed});
    store->WaitForPrefetch();
    for (int i = 0; i < 6; ++i) PutFlushed(*store, alice, Chain(10 + i, 2));
    EXPECT_EQ(TiersOf(*store, alice, a), own ? "HHHH" : "DDDD") << (own ? "Alice's hint" : "Bob's hint");
  }
}

// Proves an empty hint clears the window: after Hint({A}) then Hint({}), "aware" evicts A
// under the same puts (its chunks are no longer protected).
TEST(Hint, EmptyHintClearsTheWindow) {
  StoreStats stats;
  EXPECT_EQ(WindowSurvivesPuts("aware", true, &stats), "DDDD");
  EXPECT_EQ(stats.hints, 2u);
}

// Proves "aware" evicts, among window entries, the one needed latest: DRAM holds A (3
// chunks, request 0) and B (3 chunks, request 1), both hinted; a put of one 2-page chunk
// evicts B's tail chunks B2 then B1, so B0 and all of A stay. "lru" instead evicts A0, A1.
TEST(Hint, AwareEvictsTheWindowEntryNeededLatestFirst) {
  const KvLayout big_layout = MakeLayout(kvault::DType::kBF16, 8, 2, 32, kChunkTokens);  // 32 KiB
  ASSERT_EQ(big_layout.chunk_bytes(kChunkTokens), 2 * kChunkBytes);
  for (const char* policy : {"aware", "lru"}) {
    SCOPED_TRACE(policy);
    TempDir dir;
    auto store = OpenStore(HintOptions(dir.path(), 6, policy));
    ASSERT_TRUE(store);
    const Namespace ns = MakeNamespace(kLayout);
    const Namespace big = MakeNamespace(big_layout, "tenant-a", "model-big");
    const Tokens a = Chain(1, 3), b = Chain(2, 3);
    PutFlushed(*store, ns, a);
    PutFlushed(*store, ns, b);
    Hint(*store, ns, {&a, &b});
    store->WaitForPrefetch();
    PutFlushed(*store, big, Chain(3, 1));
    if (std::string(policy) == "aware") {
      EXPECT_EQ(TiersOf(*store, ns, a), "HHH");
      EXPECT_EQ(TiersOf(*store, ns, b), "HDD");
    } else {
      EXPECT_EQ(TiersOf(*store, ns, a), "DDH");
      EXPECT_EQ(TiersOf(*store, ns, b), "HHH");
    }
  }
}

// Proves MakePolicy's rules reach Store::Open: "opt" (no oracle outside replay) and an unknown
// name are refused with kInvalidArgument; lru, fifo, s3fifo and aware open, and chains put
// through an 8-chunk DRAM tier (so each policy picks victims and chunks are promoted back)
// read back intact.
TEST(Hint, OpenChecksThePolicyName) {
  for (const char* bad : {"opt", "belady", ""}) {
    TempDir dir;
    auto s = Store::Open(HintOptions(dir.path(), 8, bad));
    ASSERT_FALSE(s.ok()) << "policy '" << bad << "' opened";
    EXPECT_EQ(s.status().code(), Code::kInvalidArgument) << s.status().ToString();
  }
  for (const char* policy : {"lru", "fifo", "s3fifo", "aware"}) {
    SCOPED_TRACE(policy);
    TempDir dir;
    auto store = OpenStore(HintOptions(dir.path(), 8, policy));
    ASSERT_TRUE(store);
    const Namespace ns = MakeNamespace(kLayout);
    std::vector<Tokens> chains;
    for (int i = 0; i < 4; ++i) chains.push_back(Chain(20 + i, 4, i));
    for (const Tokens& c : chains) PutFlushed(*store, ns, c);
    for (const Tokens& c : chains) {
      const std::string served = ReadAll(*store, ns, c);
      EXPECT_EQ(served.find('!'), std::string::npos) << served;
    }
    const StoreStats st = store->Stats();
    EXPECT_GT(st.t1_evictions, 0u) << st.ToJson();
    EXPECT_GT(st.promotions, 0u) << st.ToJson();
    ExpectLookupCountersAddUp(st);
    ExpectWithinCaps(st);
  }
}

// Proves hints that name nothing useful are harmless: chunks never stored, an empty prompt,
// a prompt of another namespace, a prompt whose first chunk is missing (its later chunks,
// stored after a gap and only on T2, are not part of a cached prefix, so they are not
// prefetched), many prompts, and repeated prompts. The store still works afterwards.
TEST(Hint, HintsForUncachedChunksAreHarmless) {
  TempDir dir;
  auto store = OpenStore(HintOptions(dir.path(), 8, "aware"));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Namespace other = MakeNamespace(kLayout, "tenant-b");
  const Tokens gap = Chain(1, 4);
  // Store chunks 2 and 3 of `gap` only (after chunk 1's key, which is never stored).
  const auto spans = kvault::ChunkKeys(ns, gap);
  for (int i = 2; i < 4; ++i) {
    const auto payload = PayloadFor(spans[i].key, kChunkBytes);
    ASSERT_TRUE(store->Put(ns, spans[i].parent, std::span(gap).subspan(spans[i].begin, kChunkTokens), payload).ok());
  }
  ASSERT_TRUE(store->Flush().ok());
  const Tokens other_chain = Chain(2, 2);
  PutFlushed(*store, other, other_chain);
  PutFlushed(*store, ns, Chain(3, 8));  // everything above leaves T1
  ASSERT_EQ(TiersOf(*store, ns, gap), "----");
  ASSERT_EQ(TiersOf(*store, other, other_chain), "DD");

  const Tokens never = Chain(4, 3, 7), empty;
  std::vector<const Tokens*> many(50, &never);
  many.push_back(&gap);
  Hint(*store, ns, {&never});
  Hint(*store, ns, {&empty});
  Hint(*store, ns, {&empty, &never, &gap, &other_chain});  // other_chain under the wrong ns
  HintAndWait(*store, ns, many);
  EXPECT_EQ(store->Stats().hints, 4u);
  EXPECT_EQ(store->Stats().prefetches, 0u) << store->Stats().ToJson();
  EXPECT_EQ(TiersOf(*store, other, other_chain), "DD");
  auto r = store->LookupFrom(ns, spans[1].key, std::span(gap).subspan(2 * kChunkTokens));
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].tier, Tier::kT2);
  EXPECT_EQ(r.chunks[1].tier, Tier::kT2);

  // Still a working store: the other namespace's hint prefetches its chain.
  HintAndWait(*store, other, {&other_chain});
  EXPECT_EQ(TiersOf(*store, other, other_chain), "HH");
  EXPECT_EQ(ReadAll(*store, other, other_chain), "HH");
  const Tokens fresh = Chain(5, 2);
  PutFlushed(*store, ns, fresh);
  EXPECT_EQ(ReadAll(*store, ns, fresh), "HH");
  ExpectLookupCountersAddUp(store->Stats());
}

// Proves a store without a disk tier (t2_bytes = 0) accepts hints: they are counted,
// WaitForPrefetch returns, nothing is prefetched, and "aware" still keeps the window's
// chunks in DRAM (everything else is dropped first).
TEST(Hint, StoreWithoutDiskTierAcceptsHints) {
  TempDir dir;
  StoreOptions o = HintOptions(dir.path(), 8, "aware");
  o.t2_bytes = 0;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens a = Chain(1, 4), never = Chain(2, 2);
  ASSERT_TRUE(PutChain(*store, ns, a).ok());
  HintAndWait(*store, ns, {&a, &never});
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(PutChain(*store, ns, Chain(10 + i, 2)).ok());
  EXPECT_EQ(TiersOf(*store, ns, a), "HHHH");
  EXPECT_EQ(ReadAll(*store, ns, a), "HHHH");
  HintAndWait(*store, ns, {});
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.hints, 2u);
  EXPECT_EQ(st.prefetches, 0u);
  EXPECT_EQ(st.t1_evictions, 8u) << st.ToJson();
}

// ---------------------------------------------------------------------------------------
// Concurrency

// Proves hints are safe under load: 4 threads put, look up and read chains (sharing a
// first chunk) through a 12-chunk DRAM tier and a small disk tier, while a fifth hints
// random prompts (and sometimes clears the hint or waits for the prefetch) in a loop. Every
// chunk read has the right bytes, the lookup counters add up, every hint is counted, the
// prefetch counters agree, and everything flushed at the end still reads back intact.
void RunConcurrent(const std::string& policy, std::chrono::milliseconds duration) {
  TempDir dir;
  StoreOptions o = HintOptions(dir.path(), 12, policy, /*prefetch_chunks=*/4);
  o.t2_bytes = 2ull << 20;  // 8 segments: reclaims happen too
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(kLayout);
  const Tokens system = Chain(7, 1);
  std::vector<Tokens> chains;
  for (int i = 0; i < 24; ++i) {
    Tokens t = system;
    const Tokens own = Chain(100 + i, 1 + i % 4);
    t.insert(t.end(), own.begin(), own.end());
    chains.push_back(std::move(t));
  }

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, hints{0};
  std::mutex failures_mu;
  std::vector<std::string> failures;
  auto fail = [&](const std::string& what) {
    std::lock_guard<std::mutex> lock(failures_mu);
    if (failures.size() < 10) failures.push_back(what);
  };
  auto check = [&](const ChunkKey& key, uint32_t tokens) {
    std::string why;
    kvault::Status st;
    Check c = CheckChunk(*store, ns, key, tokens, nullptr, &why, &st);
    if (c == Check::kMismatch) fail("mismatch: " + why);
    if (c == Check::kMissing && st.code() != Code::kNotFound && st.code() != Code::kResourceExhausted) {
      fail("open failed: " + st.ToString());
    }
    if (c == Check::kMatch) ++reads;
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      while (!stop.load()) {
        const Tokens& tokens = chains[rng() % chains.size()];
        const unsigned kind = rng() % 10;
        if (kind < 4) {
          kvault::Status st = PutChain(*store, ns, tokens);
          if (!st.ok() && st.code() != Code::kResourceExhausted) fail("put: " + st.ToString());
        } else if (kind < 7) {
          for (const auto& ch : store->Lookup(ns, tokens).chunks) check(ch.key, ch.tokens);
        } else if (kind < 9) {
          const auto spans = kvault::ChunkKeys(ns, tokens);
          const auto& s = spans[rng() % spans.size()];
          check(s.key, s.tokens);
        } else {
          (void)store->Flush();  // may report chunks dropped from T1 before they were written
        }
      }
    });
  }
  threads.emplace_back([&] {
    std::mt19937_64 rng(7);
    while (!stop.load()) {
      std::vector<const Tokens*> prompts;
      const unsigned n = rng() % 4;  // 0: clears the hint
      for (unsigned i = 0; i < n; ++i) prompts.push_back(&chains[rng() % chains.size()]);
      Hint(*store, ns, prompts);
      ++hints;
      if (rng() % 8 == 0) store->WaitForPrefetch();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::this_thread::sleep_for(duration);
  stop = true;
  for (auto& th : threads) th.join();

  for (const std::string& f : failures) ADD_FAILURE() << f;
  store->WaitForPrefetch();
  const StoreStats st = store->Stats();
  ExpectLookupCountersAddUp(st);
  ExpectWithinCaps(st);
  EXPECT_EQ(st.hints, hints.load());
  EXPECT_EQ(st.bytes_prefetched, st.prefetches * kChunkBytes) << st.ToJson();
  EXPECT_LE(st.prefetches, st.promotions) << st.ToJson();
  EXPECT_EQ(st.err_corruption, 0u);
  EXPECT_EQ(st.err_io, 0u);
  EXPECT_GT(reads.load(), 0u);
  ::testing::Test::RecordProperty(policy + "_prefetches", std::to_string(st.prefetches));

  (void)store->Flush();
  for (const Tokens& tokens : chains) {
    for (const auto& s : kvault::ChunkKeys(ns, tokens)) {
      std::string why;
      ASSERT_NE(CheckChunk(*store, ns, s.key, s.tokens, nullptr, &why), Check::kMismatch) << why;
    }
  }
}

TEST(Hint, ConcurrentHintsPutsAndReadsLru) { RunConcurrent("lru", std::chrono::milliseconds(500)); }
TEST(Hint, ConcurrentHintsPutsAndReadsAware) { RunConcurrent("aware", std::chrono::milliseconds(500)); }

}  // namespace
}  // namespace kvtest

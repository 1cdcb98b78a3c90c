// CachedAttention end to end: logits computed over restored KV equal a full recompute;
// context overflow; continuous batching; look-ahead.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <random>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/weights.h"
#include "fault_env.h"
#include "small_model.h"

namespace kvault::engine {
namespace {

using testing_model::RandomTokens;
using testing_model::SmallConfig;

std::vector<uint32_t> Concat(std::vector<uint32_t> a, const std::vector<uint32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    dir_ = std::filesystem::temp_directory_path() / ("kvault-engine-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    config_ = SmallConfig();
    model_ = std::make_shared<LlamaModel>(config_, RandomWeights(config_, 7, torch::kFloat32), torch::kCPU);
    OpenStore();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void OpenStore(uint64_t dram = 64ull << 20, kvault::Env* env = nullptr) {
    StoreOptions o;
    if (env != nullptr) o.env = env;
    o.dir = dir_.string();
    o.t1_bytes = dram;
    o.t2_bytes = 256ull << 20;
    o.page_bytes = 4096;
    o.segment_bytes = 4ull << 20;
    auto s = Store::Open(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s.value());
  }
  // Saves the prompts' KV through an engine, then restarts the store (over `env`, if given):
  // DRAM empty, the KV on the SSD only.
  void SaveThenRestart(const std::vector<std::vector<uint32_t>>& prompts, kvault::Env* env = nullptr) {
    {
      Engine e(model_, Options());
      for (const auto& p : prompts) ASSERT_TRUE(e.Generate(p, Params(1)).status.ok());
      e.WaitForSaves();
      ASSERT_TRUE(store_->Flush().ok());
    }
    store_.reset();
    OpenStore(64ull << 20, env);
  }
  EngineOptions Options() {
    EngineOptions o;
    o.chunk_tokens = 16;
    o.kv_pool_tokens = 4096;
    o.store = store_.get();
    return o;
  }
  SamplingParams Params(int64_t new_tokens = 1, bool logits = false) {
    SamplingParams p;
    p.max_new_tokens = new_tokens;
    p.return_prompt_logits = logits;
    return p;
  }
  // Logits of the prompt's computed positions must equal rows of a full recompute.
  void ExpectMatchesRecompute(const std::vector<uint32_t>& prompt, const RequestResult& r) {
    ExpectRowsMatchRecompute(prompt, r, 0);
  }
  // prompt_logits rows are positions [0, head) then [start, end): both equal a full recompute.
  void ExpectRowsMatchRecompute(const std::vector<uint32_t>& prompt, const RequestResult& r, int64_t head,
                                float tolerance = 1e-4) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    std::vector<int64_t> ids(prompt.begin(), prompt.end());
    auto full = model_->ForwardNoCache(torch::tensor(ids, torch::kInt64));
    const int64_t rest = r.computed_tokens - head;
    auto rows = torch::cat({full.narrow(0, 0, head), full.narrow(0, r.prompt_tokens - rest, rest)});
    ASSERT_EQ(r.prompt_logits.sizes(), rows.sizes());
    EXPECT_LT((r.prompt_logits.cpu() - rows).abs().max().item<float>(), tolerance);
  }

  std::filesystem::path dir_;
  ModelConfig config_;
  std::shared_ptr<LlamaModel> model_;
  std::unique_ptr<kvtest::FaultEnv> env_;  // a store's env when a test sets one: outlives store_
  std::unique_ptr<Store> store_;
};

TEST_F(EngineTest, NoStoreEqualsFullRecompute) {
  EngineOptions o = Options();
  o.store = nullptr;
  Engine e(model_, o);
  auto prompt = RandomTokens(1, 50);
  auto r = e.Generate(prompt, Params(1, true));
  EXPECT_EQ(r.hit_tokens, 0);
  EXPECT_EQ(r.computed_tokens, 50);
  ExpectMatchesRecompute(prompt, r);
}

// The cached prefix ends inside a chunk (a stored partial chunk), exactly on a chunk
// boundary, and covers the whole prompt (the last token is recomputed).
TEST_F(EngineTest, RestoredKvGivesTheSameLogits) {
  Engine e(model_, Options());
  auto first = RandomTokens(2, 40);  // 2 chunks + 8 tokens (a partial chunk)
  auto r1 = e.Generate(first, Params(1));
  ASSERT_TRUE(r1.status.ok());
  e.WaitForSaves();

  auto inside = Concat(first, RandomTokens(3, 30));
  auto r2 = e.Generate(inside, Params(1, true));
  EXPECT_EQ(r2.hit_tokens, 40);  // partial chunk reused
  EXPECT_EQ(r2.tier, Tier::kT1);
  ExpectMatchesRecompute(inside, r2);
  e.WaitForSaves();

  auto boundary = Concat(std::vector<uint32_t>(inside.begin(), inside.begin() + 64), RandomTokens(4, 10));
  auto r3 = e.Generate(boundary, Params(1, true));
  EXPECT_EQ(r3.hit_tokens, 64);  // 4 whole chunks saved by r2
  ExpectMatchesRecompute(boundary, r3);
  e.WaitForSaves();

  auto r4 = e.Generate(boundary, Params(1, true));  // everything cached
  EXPECT_EQ(r4.hit_tokens, static_cast<int64_t>(boundary.size()) - 1);
  EXPECT_EQ(r4.hit_tokens_t1 + r4.hit_tokens_t2, r4.hit_tokens);
  EXPECT_EQ(r4.computed_tokens, 1);
  ExpectMatchesRecompute(boundary, r4);
}

TEST_F(EngineTest, SharedSystemPromptAcrossSessions) {
  Engine e(model_, Options());
  auto system = RandomTokens(10, 48);  // 3 chunks
  auto a = Concat(system, RandomTokens(11, 20));
  auto b = Concat(system, RandomTokens(12, 25));
  ASSERT_TRUE(e.Generate(a, Params(1)).status.ok());
  e.WaitForSaves();
  auto rb = e.Generate(b, Params(1, true));
  EXPECT_EQ(rb.hit_tokens, 48);
  ExpectMatchesRecompute(b, rb);
}

TEST_F(EngineTest, SsdHitAfterStoreRestart) {
  auto prompt = RandomTokens(20, 70);
  ASSERT_NO_FATAL_FAILURE(SaveThenRestart({prompt}));
  EngineOptions o = Options();
  o.hint_window = 0;  // no prefetch racing the lookup: every chunk comes from the SSD
  Engine e(model_, o);
  auto longer = Concat(prompt, RandomTokens(21, 9));
  auto r = e.Generate(longer, Params(1, true));
  EXPECT_EQ(r.hit_tokens, 70);
  EXPECT_EQ(r.tier, Tier::kT2);
  EXPECT_EQ(r.hit_tokens_t2, 70);
  ExpectMatchesRecompute(longer, r);
  // The engine measured what the planner needs: the SSD reads, the copies, the prefills.
  auto rates = e.load_planner().Plan({}, 1);
  EXPECT_GT(rates.t2_read_gbps, 0);
  EXPECT_GT(rates.copy_gbps, 0);
  EXPECT_TRUE(e.load_planner().prefill_model().known());
}

// The planner over a prefix on SSD only (after a restart), with fixed rates: a prefill costs
// 1 ms per token (16 ms a chunk) and reading a chunk `chunk_read_ms`.
class EnginePlannerTest : public EngineTest {
 protected:
  RequestResult SsdHit(double chunk_read_ms, const std::vector<uint32_t>& history,
                       const std::vector<uint32_t>& prompt) {
    SaveThenRestart({history});
    if (HasFatalFailure()) return {};
    EngineOptions o = Options();
    o.hint_window = 0;
    const double chunk_bytes = static_cast<double>(LayoutFor(config_, torch::kFloat32, 16).chunk_bytes(16));
    o.planner.fixed_prefill.per_token_s = 1e-3;
    o.planner.fixed_t2_read_gbps = chunk_bytes / (chunk_read_ms / 1e3) / 1e9;
    o.planner.fixed_copy_gbps = 100;
    Engine e(model_, o);
    return e.Generate(prompt, Params(1, true));
  }
};

TEST_F(EnginePlannerTest, SplitRecomputesTheHeadWhileTheTailLoads) {
  // 5 chunks, 16 ms to compute and 15 ms to read each, then 9 new tokens: recompute 2 while
  // 3 load (54 ms predicted, against 84 ms to load all and 89 ms to recompute all).
  auto history = RandomTokens(50, 80);
  auto prompt = Concat(history, RandomTokens(51, 9));
  auto r = SsdHit(15, history, prompt);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.plan.kind, kvault::planner::PlanKind::kSplit) << r.plan.ToJson();
  EXPECT_EQ(r.plan.recompute_tokens, 32);
  EXPECT_NEAR(r.plan.predicted_ms, 54, 0.5);
  EXPECT_NEAR(r.plan.load_all_ms, 84, 0.5);
  EXPECT_NEAR(r.plan.recompute_all_ms, 89, 0.5);
  EXPECT_EQ(r.hit_tokens, 48);
  EXPECT_EQ(r.hit_tokens_t2, 48);
  EXPECT_EQ(r.computed_tokens, 32 + 9);
  ExpectRowsMatchRecompute(prompt, r, r.plan.recompute_tokens);
}

TEST_F(EnginePlannerTest, RecomputesInsteadOfReadingASlowDisk) {
  auto history = RandomTokens(52, 80);
  auto prompt = Concat(history, RandomTokens(53, 9));
  auto r = SsdHit(1000, history, prompt);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.plan.kind, kvault::planner::PlanKind::kRecompute) << r.plan.ToJson();
  EXPECT_EQ(r.hit_tokens, 0);
  EXPECT_EQ(r.computed_tokens, 89);
  ExpectRowsMatchRecompute(prompt, r, 0);
}

// A T1 lead followed by a T2 tail on a slow disk: the planner loads the lead and recomputes the
// tail with the new tokens (LoadPlan::tail_recompute_chunks); the engine honours it, and the
// output equals recomputing the whole prompt.
TEST_F(EnginePlannerTest, LoadsTheT1LeadAndRecomputesASlowT2Tail) {
  auto history = RandomTokens(56, 80);  // 5 chunks of 16
  auto prompt = Concat(history, RandomTokens(57, 9));
  ASSERT_NO_FATAL_FAILURE(SaveThenRestart({history}));
  {
    // A request over the first two chunks (planner off: load) promotes them into T1.
    EngineOptions warm = Options();
    warm.hint_window = 0;
    warm.plan = PlanMode::kLoad;
    Engine w(model_, warm);
    auto lead = w.Generate(std::vector<uint32_t>(history.begin(), history.begin() + 33), Params(1));
    ASSERT_TRUE(lead.status.ok()) << lead.status.ToString();
    ASSERT_EQ(lead.hit_tokens, 32);
  }
  EngineOptions o = Options();
  o.hint_window = 0;
  const double chunk_bytes = static_cast<double>(LayoutFor(config_, torch::kFloat32, 16).chunk_bytes(16));
  o.planner.fixed_prefill.per_token_s = 1e-3;
  o.planner.fixed_t2_read_gbps = chunk_bytes / 1.0 / 1e9;  // a second per chunk
  o.planner.fixed_copy_gbps = 100;
  Engine e(model_, o);
  auto r = e.Generate(prompt, Params(1, true));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.plan.kind, kvault::planner::PlanKind::kLoad) << r.plan.ToJson();
  EXPECT_EQ(r.plan.tail_recompute_chunks, 3u) << r.plan.ToJson();
  EXPECT_EQ(r.hit_tokens, 32);
  EXPECT_EQ(r.hit_tokens_t2, 0);
  EXPECT_EQ(r.computed_tokens, 48 + 9);
  ExpectRowsMatchRecompute(prompt, r, 0);
}

TEST_F(EnginePlannerTest, LoadsAFastDisk) {
  auto history = RandomTokens(54, 80);
  auto prompt = Concat(history, RandomTokens(55, 9));
  auto r = SsdHit(0.1, history, prompt);
  EXPECT_EQ(r.plan.kind, kvault::planner::PlanKind::kLoad) << r.plan.ToJson();
  EXPECT_EQ(r.hit_tokens, 80);
  ExpectRowsMatchRecompute(prompt, r, 0);
}

// The planner on its own measurements: over a disk reading 0.25 MB/s (about 25 ms per
// chunk here, against well under a millisecond to compute one), the first SSD hit is loaded
// (nothing measured yet) and teaches the planner the disk's rate and the prefill speed; the
// second conversation's history, also on the SSD only, is then recomputed, with the same output.
TEST_F(EnginePlannerTest, LearnsASlowDiskAndRecomputes) {
  auto a = RandomTokens(70, 80), b = RandomTokens(71, 80);
  env_ = std::make_unique<kvtest::FaultEnv>();
  env_->SetReadBandwidth(0.25e6);
  // DRAM empty: both histories on the slow SSD only.
  ASSERT_NO_FATAL_FAILURE(SaveThenRestart({a, b}, env_.get()));
  EngineOptions o = Options();
  o.hint_window = 0;  // no prefetch: every T2 chunk is read by the request itself
  Engine e(model_, o);
  auto first = e.Generate(Concat(a, RandomTokens(72, 9)), Params(1, true));
  ASSERT_TRUE(first.status.ok()) << first.status.ToString();
  EXPECT_EQ(first.plan.kind, kvault::planner::PlanKind::kLoad) << first.plan.ToJson();
  EXPECT_EQ(first.hit_tokens_t2, 80);
  auto prompt = Concat(b, RandomTokens(73, 9));
  auto second = e.Generate(prompt, Params(1, true));
  ASSERT_TRUE(second.status.ok()) << second.status.ToString();
  EXPECT_EQ(second.plan.kind, kvault::planner::PlanKind::kRecompute) << second.plan.ToJson();
  EXPECT_GT(second.plan.load_all_ms, 10 * second.plan.recompute_all_ms) << second.plan.ToJson();
  EXPECT_LT(second.plan.t2_read_gbps, 0.001) << second.plan.ToJson();
  EXPECT_EQ(second.hit_tokens, 0);
  ExpectRowsMatchRecompute(prompt, second, 0);
}

// The GPU path (skipped without a CUDA device): the pool on the GPU, loads and saves by DMA
// between the store's page-locked DRAM and the GPU pages, layer by layer on side streams.
// Turn 2 hits T1, turn 3 (after a restart) hits T2, turn 4 splits (head recomputed on the
// GPU while the tail loads); every computed row equals a full recompute on the CPU.
TEST_F(EnginePlannerTest, CudaPoolLoadsAndSavesThroughPinnedMemory) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA GPU (LibTorch sees none)";
  auto gpu_model = std::make_shared<LlamaModel>(config_, RandomWeights(config_, 7, torch::kFloat32), torch::kCUDA);
  auto expect_rows = [&](const std::vector<uint32_t>& prompt, const RequestResult& r, int64_t head) {
    ExpectRowsMatchRecompute(prompt, r, head, 2e-3);  // GPU fp32 GEMMs round differently
  };
  auto history = RandomTokens(60, 70);
  auto prompt = Concat(history, RandomTokens(61, 9));
  EngineOptions o = Options();
  o.plan = PlanMode::kLoad;
  o.hint_window = 0;
  {
    Engine e(gpu_model, o);
    auto first = e.Generate(history, Params(4, true));
    expect_rows(history, first, 0);
    e.WaitForSaves();
    auto r = e.Generate(prompt, Params(1, true));
    EXPECT_EQ(r.hit_tokens_t1, 70);
    expect_rows(prompt, r, 0);
    e.WaitForSaves();
    ASSERT_TRUE(store_->Flush().ok());
  }
  store_.reset();
  OpenStore();
  {
    Engine e(gpu_model, o);
    auto r = e.Generate(prompt, Params(1, true));
    EXPECT_EQ(r.hit_tokens_t2, 70);
    expect_rows(prompt, r, 0);
  }
  store_.reset();
  OpenStore();
  EngineOptions split = o;
  split.plan = PlanMode::kAuto;
  split.planner.fixed_prefill.per_token_s = 1e-3;
  split.planner.fixed_t2_read_gbps =
      static_cast<double>(LayoutFor(config_, torch::kFloat32, 16).chunk_bytes(16)) / 15e-3 / 1e9;
  split.planner.fixed_copy_gbps = 100;
  Engine e(gpu_model, split);
  auto r = e.Generate(prompt, Params(1, true));
  EXPECT_EQ(r.plan.kind, kvault::planner::PlanKind::kSplit) << r.plan.ToJson();
  EXPECT_GT(r.hit_tokens_t2, 0);
  expect_rows(prompt, r, r.plan.recompute_tokens);
}

// Scheduler-aware prefetch: while request B prefills, the engine hints the store with the
// queued request A2; its history, on SSD only after a restart, is in DRAM when A2 runs.
TEST_F(EngineTest, QueuedRequestsHistoryIsPrefetched) {
  auto history = RandomTokens(40, 64);  // 4 chunks
  ASSERT_NO_FATAL_FAILURE(SaveThenRestart({history}));  // DRAM empty: the history is on SSD only
  EngineOptions o = Options();
  o.max_batch = 1;  // B decodes alone first, so A2 waits in the queue
  Engine e(model_, o);
  RequestResult rb, ra;
  e.Submit(RandomTokens(41, 30), Params(3), [&](RequestResult r) { rb = std::move(r); });
  auto a2 = Concat(history, RandomTokens(42, 10));
  e.Submit(a2, Params(1, true), [&](RequestResult r) { ra = std::move(r); });
  ASSERT_TRUE(e.Step());  // prefills B and hints [B, A2]
  store_->WaitForPrefetch();
  EXPECT_GE(store_->Stats().prefetches, 4u);
  e.RunUntilIdle();
  ASSERT_TRUE(rb.status.ok() && ra.status.ok());
  EXPECT_EQ(ra.hit_tokens, 64);
  EXPECT_EQ(ra.hit_tokens_t1, 64);  // prefetched: no SSD read on A2's critical path
  ExpectMatchesRecompute(a2, ra);
}

// Generated tokens' KV is saved too: the next turn only prefills its new message.
TEST_F(EngineTest, NextTurnReusesGeneratedTokens) {
  Engine e(model_, Options());
  auto turn1 = RandomTokens(30, 35);
  auto r1 = e.Generate(turn1, Params(6));
  ASSERT_EQ(r1.output_tokens.size(), 6u);
  e.WaitForSaves();
  auto turn2 = Concat(Concat(turn1, r1.output_tokens), RandomTokens(31, 12));
  auto r2 = e.Generate(turn2, Params(1, true));
  // KV exists for the prompt and all but the last generated token (never fed back).
  EXPECT_EQ(r2.hit_tokens, 35 + 5);
  ExpectMatchesRecompute(turn2, r2);
}

// Continuous batching gives each request the tokens it gets alone (greedy).
TEST_F(EngineTest, BatchedDecodeMatchesSequential) {
  EngineOptions o = Options();
  o.store = nullptr;
  std::vector<std::vector<uint32_t>> prompts = {RandomTokens(40, 20), RandomTokens(41, 33), RandomTokens(42, 7)};
  std::vector<std::vector<uint32_t>> alone;
  {
    Engine e(model_, o);
    for (auto& p : prompts) alone.push_back(e.Generate(p, Params(8)).output_tokens);
  }
  Engine e(model_, o);
  std::vector<std::vector<uint32_t>> batched(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    e.Submit(prompts[i], Params(8), [&, i](RequestResult r) { batched[i] = r.output_tokens; });
  }
  auto ahead = e.LookAhead(2);
  ASSERT_EQ(ahead.size(), 2u);
  EXPECT_EQ(ahead[0], prompts[0]);
  EXPECT_EQ(ahead[1], prompts[1]);
  e.RunUntilIdle();
  EXPECT_EQ(batched, alone);
}

// Chunked prefill computes a prompt in pieces of prefill_chunk_tokens over several steps: the
// logits equal a full recompute whatever the piece size (aligned to the store's chunks or not),
// with and without a cached prefix, and the KV each piece saves is exact: an engine that
// prefills whole finds it and computes the same logits over it.
TEST_F(EngineTest, ChunkedPrefillComputesAndSavesTheSameKv) {
  const auto system = RandomTokens(60, 37);  // 2 chunks + 5 tokens
  for (int64_t piece : {1, 5, 16, 23, 64}) {
    SCOPED_TRACE("prefill_chunk_tokens " + std::to_string(piece));
    store_.reset();
    std::filesystem::remove_all(dir_);
    OpenStore();
    EngineOptions o = Options();
    o.prefill_chunk_tokens = piece;
    o.plan = PlanMode::kLoad;  // load every cached chunk: no planner split (timing) in the counts
    std::vector<uint32_t> first = Concat(system, RandomTokens(61, 50));
    std::vector<uint32_t> second = Concat(system, RandomTokens(62, 29));
    {
      Engine chunked(model_, o);
      auto r1 = chunked.Generate(first, Params(3, true));
      EXPECT_EQ(r1.hit_tokens, 0);
      EXPECT_EQ(r1.computed_tokens, 87);
      ExpectMatchesRecompute(first, r1);
      chunked.WaitForSaves();
      auto r2 = chunked.Generate(second, Params(3, true));  // the system prompt's 2 whole chunks cached
      EXPECT_EQ(r2.hit_tokens, 32);
      ExpectMatchesRecompute(second, r2);
      chunked.WaitForSaves();
    }
    EngineOptions w = Options();
    w.plan = PlanMode::kLoad;
    Engine whole(model_, w);
    auto again = whole.Generate(first, Params(1, true));
    EXPECT_EQ(again.hit_tokens, 86);  // every chunk the pieces saved, the partial last one too
    ExpectMatchesRecompute(first, again);
  }
}

// While a long prompt prefills in pieces, the running request keeps decoding: one of its
// tokens between pieces. Prefilled whole, the long prompt's first token comes before the
// running request's next one.
TEST_F(EngineTest, ChunkedPrefillKeepsRunningRequestsDecoding) {
  for (int64_t piece : {0, 32}) {
    SCOPED_TRACE("prefill_chunk_tokens " + std::to_string(piece));
    EngineOptions o = Options();
    o.store = nullptr;
    o.prefill_chunk_tokens = piece;
    Engine e(model_, o);
    std::vector<std::string> events;  // "a" per token of the running request, "B" for the long one's first
    SamplingParams running = Params(40);
    running.on_token = [&](uint32_t) { events.push_back("a"); };
    e.Submit(RandomTokens(63, 10), running);
    ASSERT_TRUE(e.Step());  // prefilled and decoding
    SamplingParams longp = Params(2);
    longp.on_token = [&](uint32_t) { events.push_back("B"); };
    RequestResult long_result;
    e.Submit(RandomTokens(64, 300), longp, [&](RequestResult r) { long_result = std::move(r); });
    const size_t before = events.size();
    e.RunUntilIdle();
    ASSERT_TRUE(long_result.status.ok());
    const auto first_b = std::find(events.begin() + static_cast<long>(before), events.end(), "B");
    ASSERT_NE(first_b, events.end());
    const auto decoded_meanwhile = std::count(events.begin() + static_cast<long>(before), first_b, "a");
    if (piece == 0) {
      EXPECT_EQ(decoded_meanwhile, 0);
    } else {
      EXPECT_EQ(decoded_meanwhile, 300 / 32);  // 10 pieces: a decode step after each of the first 9
    }
  }
}

// A request whose client went away while its prompt prefills in pieces ends at the next piece,
// with no tokens, and the requests behind it go on.
TEST_F(EngineTest, ACancelledPrefillEndsBetweenPieces) {
  EngineOptions o = Options();
  o.store = nullptr;
  o.prefill_chunk_tokens = 16;
  Engine e(model_, o);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  SamplingParams p = Params(4);
  p.cancel = cancel;
  RequestResult cancelled, next;
  bool cancelled_done = false;
  e.Submit(RandomTokens(65, 200), p, [&](RequestResult r) {
    cancelled = std::move(r);
    cancelled_done = true;
  });
  e.Submit(RandomTokens(66, 20), Params(3), [&](RequestResult r) { next = std::move(r); });
  ASSERT_TRUE(e.Step());
  EXPECT_FALSE(cancelled_done);
  cancel->store(true);
  e.RunUntilIdle();
  ASSERT_TRUE(cancelled_done);
  EXPECT_TRUE(cancelled.status.ok());
  EXPECT_TRUE(cancelled.output_tokens.empty());
  ASSERT_TRUE(next.status.ok()) << next.status.ToString();
  EXPECT_EQ(next.output_tokens.size(), 3u);
}

// Rotating pre-RoPE keys at shifted positions equals computing the keys at those positions:
// the property that lets stored KV move when the context is truncated.
TEST_F(EngineTest, RopeAtNewPositionsEqualsComputingThere) {
  auto tokens = RandomTokens(50, 24);
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  const auto& w = model_->weights();
  auto x = w.embed.index_select(0, torch::tensor(ids, torch::kInt64));
  auto k_pre = torch::nn::functional::linear(x, w.layers[0].k_proj).view({24, config_.num_kv_heads, config_.head_dim});
  auto at_10 = model_->ApplyRope(k_pre, torch::arange(10, 34, torch::kInt64));
  auto at_0 = model_->ApplyRope(k_pre, torch::arange(0, 24, torch::kInt64));
  // Scores between a query and keys depend only on relative positions.
  auto q = torch::randn({1, config_.num_kv_heads, config_.head_dim});
  auto s10 = (model_->ApplyRope(q, torch::tensor({40}, torch::kInt64)) * at_10).sum(-1);
  auto s0 = (model_->ApplyRope(q, torch::tensor({30}, torch::kInt64)) * at_0).sum(-1);
  EXPECT_LT((s10 - s0).abs().max().item<float>(), 1e-4);
  // And rotating by 0 is the identity.
  EXPECT_LT((model_->ApplyRope(k_pre, torch::zeros({24}, torch::kInt64)) - k_pre).abs().max().item<float>(), 1e-6);
}

// Context overflow: the oldest chunks after the kept head are dropped; without a store the
// result equals a full recompute of the kept tokens; with one, the kept chunks' stored KV is
// reused at their new positions (an approximation: see docs/ENGINE.md), close to it.
TEST_F(EngineTest, ContextOverflowKeepsHeadAndReusesTail) {
  auto history = RandomTokens(60, 100);
  auto prompt = Concat(history, RandomTokens(61, 20));  // 120 tokens
  EngineOptions o = Options();
  o.max_context = 80;
  o.keep_head_tokens = 16;
  // Kept: head [0,16) + tail [64,120) -> 72 tokens (fits 80 - 1 new token).
  std::vector<uint32_t> kept(prompt.begin(), prompt.begin() + 16);
  kept.insert(kept.end(), prompt.begin() + 64, prompt.end());
  {
    o.store = nullptr;
    Engine e(model_, o);
    auto r = e.Generate(prompt, Params(1, true));
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.dropped_tokens, 48);
    EXPECT_EQ(r.prompt_tokens, 72);
    ExpectMatchesRecompute(kept, r);
  }
  o.store = store_.get();
  Engine e(model_, o);
  // Turn 1 stores the untruncated history (it fits a wider window).
  EngineOptions wide = Options();
  Engine w(model_, wide);
  ASSERT_TRUE(w.Generate(history, Params(1)).status.ok());
  w.WaitForSaves();
  auto r = e.Generate(prompt, Params(1, true));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.dropped_tokens, 48);
  EXPECT_EQ(r.hit_tokens, 16 + 36);  // head + tail chunks [64, 96) and the partial [96, 100)
  std::vector<int64_t> ids(kept.begin(), kept.end());
  auto full = model_->ForwardNoCache(torch::tensor(ids, torch::kInt64));
  auto rows = full.narrow(0, r.prompt_tokens - r.computed_tokens, r.computed_tokens);
  const float diff = (r.prompt_logits - rows).abs().max().item<float>();
  RecordProperty("truncation_max_abs_logit_diff", std::to_string(diff));
  EXPECT_TRUE(std::isfinite(diff));
  EXPECT_GT(diff, 0.0f);  // the tail's KV saw the dropped tokens: not exact, by design
}

// A conversation that overflowed from its first turn never computed the dropped chunks; its
// next turn still finds the head. The tail computed after the gap is not saved under the
// original keys (it did not see the dropped tokens), so it is not reused.
TEST_F(EngineTest, LaterTurnsAfterOverflowFindTheHead) {
  EngineOptions o = Options();
  o.max_context = 80;
  o.keep_head_tokens = 16;
  Engine e(model_, o);
  auto t1 = RandomTokens(80, 100);  // keeps [0,16) + [48,100): chunks 1 and 2 are never computed
  auto r1 = e.Generate(t1, Params(4));
  ASSERT_TRUE(r1.status.ok()) << r1.status.ToString();
  EXPECT_EQ(r1.dropped_tokens, 32);
  e.WaitForSaves();
  auto t2 = Concat(Concat(t1, r1.output_tokens), RandomTokens(81, 8));  // 112: keeps [0,16) + [64,112)
  auto r2 = e.Generate(t2, Params(1, true));
  ASSERT_TRUE(r2.status.ok()) << r2.status.ToString();
  EXPECT_EQ(r2.dropped_tokens, 48);
  EXPECT_EQ(r2.hit_tokens, 16);
  EXPECT_EQ(r2.hit_tokens_t1 + r2.hit_tokens_t2, r2.hit_tokens);
}

// KV computed after a context overflow must never be served to a request that fits: that
// request must get exactly the logits of a full recompute.
TEST_F(EngineTest, OverflowedRunDoesNotPoisonExactRequests) {
  EngineOptions o = Options();
  o.max_context = 128;
  o.keep_head_tokens = 16;
  auto prompt = RandomTokens(90, 120);
  Engine e(model_, o);
  ASSERT_TRUE(e.Generate(std::vector<uint32_t>(prompt.begin(), prompt.begin() + 48), Params(1)).status.ok());
  e.WaitForSaves();
  auto overflowed = e.Generate(prompt, Params(40));  // 120 + 40 > 128: drops chunks
  ASSERT_TRUE(overflowed.status.ok());
  EXPECT_GT(overflowed.dropped_tokens, 0);
  e.WaitForSaves();
  auto exact = e.Generate(prompt, Params(1, true));  // fits: no truncation
  ASSERT_TRUE(exact.status.ok());
  EXPECT_EQ(exact.dropped_tokens, 0);
  ExpectMatchesRecompute(prompt, exact);
}

TEST_F(EngineTest, BadRequestsAreClearErrors) {
  Engine e(model_, Options());
  EXPECT_EQ(e.Generate(RandomTokens(91, 20), Params(0)).status.code(), Code::kInvalidArgument);
  EXPECT_EQ(e.Generate(RandomTokens(91, 20), Params(-20)).status.code(), Code::kInvalidArgument);
  auto bad = RandomTokens(92, 20);
  bad[7] = 100000;  // vocab is 128
  EXPECT_EQ(e.Generate(bad, Params(1)).status.code(), Code::kInvalidArgument);
  EXPECT_EQ(e.Generate({}, Params(1)).status.code(), Code::kInvalidArgument);
  EXPECT_TRUE(e.Generate(RandomTokens(93, 20), Params(1)).status.ok());  // still serving
  EngineOptions zero = Options();
  zero.chunk_tokens = 0;
  EXPECT_THROW(Engine(model_, zero), std::invalid_argument);
}

// Log-probabilities are the model's own: log_softmax of the logits (before temperature and
// top_p), for the prefill's token and every decode step's, equal to a full recompute's.
TEST_F(EngineTest, LogprobsAreLogSoftmaxOfTheLogits) {
  EngineOptions o = Options();
  o.plan = PlanMode::kLoad;  // the second request loads its cached prompt
  Engine e(model_, o);
  const auto prompt = RandomTokens(100, 40);
  auto expect_model_logprobs = [&](const RequestResult& r, size_t k) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    ASSERT_EQ(r.logprobs.size(), r.output_tokens.size());
    // Row prompt.size() - 1 + i of a recompute over the prompt and the outputs before i
    // predicts output i.
    auto all = Concat(prompt, std::vector<uint32_t>(r.output_tokens.begin(), r.output_tokens.end() - 1));
    std::vector<int64_t> ids(all.begin(), all.end());
    auto lsm = torch::log_softmax(model_->ForwardNoCache(torch::tensor(ids, torch::kInt64)), -1);
    for (size_t i = 0; i < r.logprobs.size(); ++i) {
      const TokenLogprobs& lp = r.logprobs[i];
      auto row = lsm[static_cast<int64_t>(prompt.size() - 1 + i)];
      EXPECT_EQ(lp.token, r.output_tokens[i]);
      EXPECT_NEAR(lp.logprob, row[lp.token].item<float>(), 1e-4) << "token " << i;
      EXPECT_LE(lp.logprob, 0.0f);
      ASSERT_EQ(lp.top.size(), k);
      if (k == 0) continue;
      auto best = std::get<0>(row.topk(static_cast<int64_t>(k)));
      for (size_t j = 0; j < k; ++j) {
        EXPECT_NEAR(lp.top[j].second, best[static_cast<int64_t>(j)].item<float>(), 1e-4);
        EXPECT_NEAR(lp.top[j].second, row[lp.top[j].first].item<float>(), 1e-4);
        if (j > 0) {
          EXPECT_GE(lp.top[j - 1].second, lp.top[j].second);
        }
      }
    }
  };
  // Greedy: the sampled token is the most likely one.
  SamplingParams greedy = Params(6);
  greedy.top_logprobs = 5;
  std::vector<TokenLogprobs> streamed;
  greedy.on_logprobs = [&](const TokenLogprobs& lp) { streamed.push_back(lp); };
  auto r = e.Generate(prompt, greedy);
  expect_model_logprobs(r, 5);
  ASSERT_EQ(streamed.size(), r.logprobs.size());
  for (size_t i = 0; i < r.logprobs.size(); ++i) {
    EXPECT_EQ(r.logprobs[i].top[0].first, r.output_tokens[i]);
    EXPECT_EQ(r.logprobs[i].top[0].second, r.logprobs[i].logprob);
    EXPECT_EQ(streamed[i].token, r.logprobs[i].token);
    EXPECT_EQ(streamed[i].logprob, r.logprobs[i].logprob);
  }
  // Sampled at a temperature with top_p (from the cached prompt now): still the raw model's.
  e.WaitForSaves();
  SamplingParams hot = Params(6);
  hot.temperature = 1.7f;
  hot.top_p = 0.9f;
  hot.seed = 3;
  hot.fixed_seed = true;
  hot.top_logprobs = 0;
  auto h = e.Generate(prompt, hot);
  EXPECT_GT(h.hit_tokens, 0);
  expect_model_logprobs(h, 0);
  // Not asked: none.
  EXPECT_TRUE(e.Generate(prompt, Params(2)).logprobs.empty());
}

// Equal log-probabilities are listed by id: with a zero LM head every token ties.
TEST_F(EngineTest, LogprobTiesAreOrderedById) {
  ModelWeights w = RandomWeights(config_, 7, torch::kFloat32);
  w.lm_head = torch::zeros_like(w.lm_head);
  auto flat = std::make_shared<LlamaModel>(config_, std::move(w), torch::kCPU);
  EngineOptions o = Options();
  o.store = nullptr;
  Engine e(flat, o);
  SamplingParams p = Params(2);
  p.top_logprobs = 20;
  auto r = e.Generate(RandomTokens(101, 10), p);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_EQ(r.logprobs.size(), 2u);
  for (const TokenLogprobs& lp : r.logprobs) {
    EXPECT_EQ(lp.token, 0u);  // argmax: the first of the equal
    EXPECT_NEAR(lp.logprob, -std::log(static_cast<float>(config_.vocab_size)), 1e-5);
    ASSERT_EQ(lp.top.size(), 20u);
    for (uint32_t j = 0; j < 20; ++j) EXPECT_EQ(lp.top[j].first, j);
  }
}

TEST_F(EngineTest, PromptThatCannotFitIsAClearError) {
  EngineOptions o = Options();
  o.max_context = 32;
  o.keep_head_tokens = 32;
  Engine e(model_, o);
  auto r = e.Generate(RandomTokens(70, 100), Params(1));
  EXPECT_EQ(r.status.code(), Code::kInvalidArgument);
}

// A store that counts which entry points the engine uses: the token methods would hash the
// stream again, the keyed ones take the keys the engine computed once. It checks every key it
// is given against a hash of the tokens, and forwards everything to `inner`.
class KeyCountingStore final : public Store {
 public:
  explicit KeyCountingStore(Store* inner) : inner_(inner) {}

  LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> tokens) override {
    ++token_calls;
    return inner_->Lookup(ns, tokens);
  }
  LookupResult LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) override {
    ++token_calls;
    return inner_->LookupFrom(ns, parent, tokens);
  }
  LookupResult LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) override {
    ++keyed_lookups;
    if (prompt.first_parent != ns.id()) ++keyed_lookups_after_a_gap;
    CheckKeys(ns, prompt);
    return inner_->LookupKeyed(ns, prompt);
  }
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) override {
    ++token_calls;
    return inner_->BeginPut(ns, parent, tokens);
  }
  Result<ChunkWriter> BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk,
                                    std::span<const uint32_t> chunk_tokens) override {
    ++keyed_puts;
    if (chunk.key != ChainKey(ns, chunk.parent, chunk_tokens) || chunk.tokens != chunk_tokens.size()) ++wrong_keys;
    return inner_->BeginPutKeyed(ns, chunk, chunk_tokens);
  }
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key) override { return inner_->OpenChunk(ns, key); }
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) override {
    ++token_calls;
    inner_->Hint(ns, prompts);
  }
  void HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) override {
    hints.push_back(prompts);  // addresses only: compared, never read after the call
    for (const KeyedTokens* p : prompts) {
      if (p->first_parent != ns.id()) ++wrong_keys;
      CheckKeys(ns, *p);
    }
    inner_->HintKeyed(ns, prompts);
  }
  Status Flush() override { return inner_->Flush(); }
  void WaitForPrefetch() override { inner_->WaitForPrefetch(); }
  StoreStats Stats() const override { return inner_->Stats(); }
  std::vector<std::span<std::byte>> HostMemory() const override { return inner_->HostMemory(); }

  // Calls from the engine loop's thread (lookups, hints, puts begun) and the loader's (opens).
  std::atomic<int> token_calls{0}, keyed_lookups{0}, keyed_lookups_after_a_gap{0}, keyed_puts{0}, wrong_keys{0};
  std::vector<std::vector<const KeyedTokens*>> hints;

 private:
  void CheckKeys(const Namespace& ns, const KeyedTokens& k) {
    const auto expected = ChunkKeysFrom(ns, k.first_parent, k.tokens, /*include_partial=*/false);
    bool same = expected.size() == k.full.size();
    for (size_t i = 0; same && i < expected.size(); ++i) {
      same = expected[i].key == k.full[i].key && expected[i].parent == k.full[i].parent &&
             expected[i].begin == k.full[i].begin && expected[i].tokens == k.full[i].tokens;
    }
    if (!same) ++wrong_keys;
  }
  Store* inner_;
};

// A prompt is keyed once, at Submit: the engine looks it up (once per prefill; the head and
// the tail after an overflow), hints it and saves it by those keys, through the store's keyed
// entry points, which hash nothing again; a queued prompt's keys are the same object at every
// admission that hints it, not keyed again.
TEST_F(EngineTest, APromptIsKeyedOnceAndTheStoreGetsKeys) {
  KeyCountingStore counting(store_.get());
  EngineOptions o = Options();
  o.store = &counting;
  o.max_batch = 1;  // admitted one at a time: each admission hints the requests behind it
  Engine e(model_, o);
  auto history = RandomTokens(110, 40);
  ASSERT_TRUE(e.Generate(history, Params(4)).status.ok());  // saves the prompt, then generated KV
  e.WaitForSaves();
  EXPECT_EQ(counting.keyed_lookups, 1);
  EXPECT_GE(counting.keyed_puts, 4);  // 2 whole chunks and a partial one, then the generated tail
  const std::vector<std::vector<uint32_t>> prompts = {Concat(history, RandomTokens(111, 20)), RandomTokens(112, 33),
                                                      RandomTokens(113, 50)};
  std::vector<RequestResult> results(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    e.Submit(prompts[i], Params(3, i == 0), [&, i](RequestResult r) { results[i] = std::move(r); });
  }
  e.RunUntilIdle();
  e.WaitForSaves();
  EXPECT_EQ(results[0].hit_tokens, 40);
  ExpectMatchesRecompute(prompts[0], results[0]);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(counting.keyed_lookups, 4);  // one per prefill
  // Hints at each admission: [history], then [p0, p1, p2], [p1, p2], [p2].
  ASSERT_EQ(counting.hints.size(), 4u);
  ASSERT_EQ(counting.hints[1].size(), 3u);
  ASSERT_EQ(counting.hints[2].size(), 2u);
  ASSERT_EQ(counting.hints[3].size(), 1u);
  EXPECT_EQ(counting.hints[1][1], counting.hints[2][0]);
  EXPECT_EQ(counting.hints[1][2], counting.hints[2][1]);
  EXPECT_EQ(counting.hints[1][2], counting.hints[3][0]);

  // Context overflow: the head and the tail after the dropped chunks are looked up by the
  // prompt's own keys, the tail's chain continuing after the last dropped chunk.
  EngineOptions narrow = o;
  narrow.max_context = 80;
  narrow.keep_head_tokens = 16;
  Engine n(model_, narrow);
  auto r = n.Generate(Concat(Concat(history, RandomTokens(114, 60)), RandomTokens(115, 20)), Params(1));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_GT(r.dropped_tokens, 0);
  EXPECT_EQ(r.hit_tokens, 16);  // the head: the history's first chunk
  EXPECT_EQ(counting.keyed_lookups, 6);
  EXPECT_EQ(counting.keyed_lookups_after_a_gap, 1);

  EXPECT_EQ(counting.token_calls, 0);
  EXPECT_EQ(counting.wrong_keys, 0);
}

}  // namespace
}  // namespace kvault::engine

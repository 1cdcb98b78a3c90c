// Engine: requests in, tokens out, over a LlamaModel, a paged KV pool and (optionally) a
// kvault::Store — CachedAttention: reuse the stored KV of a request's longest cached prefix,
// loaded layer by layer while the new tokens compute, and save the new KV asynchronously,
// layer by layer, as it is produced. The engine meets the store through a connector
// (kv_connector.h): a scheduler side that keys a prompt once, hints the queue, matches the
// cached prefix once and plans it, and a worker side that loads and saves layer by layer.
//
// Thread-safety: Submit/LookAhead/Stats may be called from any thread; Step/RunUntilIdle
// and Generate from one thread at a time (the engine loop).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/model.h"
#include "kvault/store.h"
#include "planner/load_planner.h"

namespace kvault::engine {

// How a prefill treats the cached prefix its lookup found.
enum class PlanMode : uint8_t {
  kAuto,       // the LoadPlanner decides per request: load, recompute, or both split (default)
  kLoad,       // always load what is cached
  kRecompute,  // never load (benchmarks; a store used for saving only)
};

struct EngineOptions {
  int64_t max_context = 4096;       // context window; longer prompts are truncated
  int64_t keep_head_tokens = 0;     // kept at the front on overflow (rounded up to a chunk)
  int64_t chunk_tokens = 256;       // store chunk = KV page size
  int64_t kv_pool_tokens = 1 << 16; // KV pool capacity
  int64_t max_batch = 16;           // decode batch (continuous batching)
  // Chunked prefill: each Step computes at most this many prompt tokens (one prefill at a time,
  // in arrival order), then runs one decode step for the running requests, so a long prompt
  // never stalls their decoding for longer than this many tokens' compute. A cached prefix
  // loaded from the store costs nothing from it; a recomputed head (the planner's split) is
  // one pass and may overrun it. 0: no limit (every admitted prompt prefills whole first).
  int64_t prefill_chunk_tokens = 0;
  Store* store = nullptr;           // nullptr: store off, every prefill is a full recompute
  std::string tenant = "default";
  bool save_prompt = true;          // save the prompt's new KV
  bool save_generated = true;       // also save generated tokens' KV
  bool load = true;                 // reuse cached KV (false: save only)
  // Before each prefill, hint the store with the prompts of this many queued requests
  // (scheduler-aware eviction and prefetch; Store::Hint). 0: no hints.
  size_t hint_window = 8;
  PlanMode plan = PlanMode::kAuto;
  // The planner's options; `layers` is set from the model. Fixed rates pin it for tests.
  planner::LoadPlanner::Options planner;
};

// One output token's log-probabilities (natural log) under the model's distribution at that
// step: log_softmax of the raw fp32 logits, before temperature and top_p.
struct TokenLogprobs {
  uint32_t token = 0;   // the sampled token
  float logprob = 0;    // its log-probability
  // The top_logprobs most likely tokens, most likely first; equal log-probabilities by id.
  std::vector<std::pair<uint32_t, float>> top;
};

struct SamplingParams {
  int64_t max_new_tokens = 16;
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool fixed_seed = false;  // true: sample with exactly `seed` (reproducible); else seed ^ request id
  std::vector<uint32_t> stop_tokens;
  bool return_prompt_logits = false;  // RequestResult::prompt_logits of the computed positions
  // Log-probabilities of the output tokens (RequestResult::logprobs): -1 off (no cost); k >= 0
  // the sampled token's and the k most likely tokens' (capped at the vocabulary). They are the
  // model's own: log_softmax of the step's fp32 logits, before temperature and top_p.
  int top_logprobs = -1;
  // Streaming: called on the engine loop's thread with each output token as it is sampled
  // (the stop token included), before the request's `done`.
  std::function<void(uint32_t token)> on_token;
  // With top_logprobs >= 0: called on the same thread with each output token's
  // log-probabilities, just before on_token for that token.
  std::function<void(const TokenLogprobs&)> on_logprobs;
  // Set (from any thread) to stop the request after its current step: it finishes with the
  // tokens so far (a client that went away).
  std::shared_ptr<const std::atomic<bool>> cancel;
  // The store tenant of this request ("" = EngineOptions::tenant): its cached KV is found and
  // saved in that tenant's namespace only.
  std::string tenant;
};

struct RequestResult {
  uint64_t id = 0;
  std::vector<uint32_t> output_tokens;
  Status status;
  double ttft_ms = 0, total_ms = 0;
  double lookup_ms = 0;          // lookup, then waiting for the loader to open (pin; T2/T3: read and verify) the chunks to load, beyond a recomputed head
  double forward_ms = 0;         // the prefill forward passes (a recomputed head and the rest, its waits for loaded KV included)
  double load_wait_ms = 0;       // time the compute waited for cached KV to land
  double load_copy_ms = 0;       // the loader's copies into the pool, first to last landed
  uint64_t loaded_bytes = 0;     // KV bytes those copies moved
  int64_t prompt_tokens = 0;     // after truncation
  int64_t hit_tokens = 0;        // cached prefix reused (loaded, not recomputed)
  int64_t hit_tokens_t1 = 0, hit_tokens_t2 = 0, hit_tokens_t3 = 0;  // by the tier that served them
  int64_t computed_tokens = 0;   // prefilled (a recomputed cached head included)
  int64_t dropped_tokens = 0;    // removed by context overflow
  Tier tier = Tier::kNone;       // the slowest tier that served the prefix
  // [computed_tokens, vocab] fp32 when asked, else [1, vocab]. Rows are positions in order:
  // a head the planner recomputed ([0, plan.recompute_tokens) on a split), then the rest.
  torch::Tensor prompt_logits;
  planner::LoadPlan plan;        // what the planner chose for the cached prefix, and why
  // With SamplingParams::top_logprobs >= 0: one per output token, in order; else empty.
  std::vector<TokenLogprobs> logprobs;
};

class Engine {
 public:
  Engine(std::shared_ptr<const LlamaModel> model, EngineOptions options);
  ~Engine();  // waits for pending saves

  // Queues a request; `done` runs on the engine loop's thread when it finishes.
  uint64_t Submit(std::vector<uint32_t> prompt, SamplingParams params,
                  std::function<void(RequestResult)> done = nullptr);
  // One scheduler iteration: prefill queued requests (at most prefill_chunk_tokens computed
  // tokens of them, when set), then one decode step for all running ones. Returns false when
  // there is nothing to do.
  bool Step();
  void RunUntilIdle();
  // Submit + RunUntilIdle for one request.
  RequestResult Generate(std::vector<uint32_t> prompt, SamplingParams params);

  // The next `n` queued requests' prompts, in order (for scheduler-aware prefetch).
  std::vector<std::vector<uint32_t>> LookAhead(size_t n) const;
  // Waits until every asynchronous save has reached the store.
  void WaitForSaves();

  const Namespace& ns() const { return ns_; }
  // The planner with the rates it measured so far (thread-safe).
  const planner::LoadPlanner& load_planner() const;
  const EngineOptions& options() const { return options_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Namespace ns_;
  EngineOptions options_;
};

// The KV layout the engine stores for `config` (pre-RoPE K).
KvLayout LayoutFor(const ModelConfig& config, torch::ScalarType dtype, int64_t chunk_tokens);

}  // namespace kvault::engine

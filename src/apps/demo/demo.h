// `kvault demo`: the project's main job. It replays a few multi-turn conversations through
// the engine twice — once with the store off (every turn recomputes its whole prompt) and
// once with the store on (DRAM + SSD: a returning conversation prefills only its new
// tokens) — and reports, per turn, time to first token (TTFT) of both, the cached prefix
// and the tier that served it, and how far the cached run's logits are from recompute.
//
// The conversations (a real model, SmolLM2-135M-Instruct by default): `sessions` users each
// talk about a document that every Debian machine has (the license texts under
// /usr/share/common-licenses, cut to about `document_tokens`; sessions 1 and 3 share one, so
// the second finds the first's KV of it): turn 1 sends the document and a question, later
// turns one more question each; the prompt of every turn is the whole conversation so far,
// rendered with the model's chat template, as chat clients send it. The model's answers are
// greedy. With --random-model the old synthetic conversations run instead: a shared system
// prompt of `system_tokens` pseudo-random ids and user messages of pseudo-random ids.
// Turns of different sessions interleave (turn 1 of every session, then turn 2, ...). The
// answers are generated in the first run and replayed verbatim in the second, so both runs
// see exactly the same prompts; the second run's answers must be identical.
//
// This header does not include LibTorch, so the CLI compiles without it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvault/status.h"

namespace kvault::demo {

struct DemoOptions {
  // Model: smollm2 (SmolLM2-135M-Instruct), a .gguf file or a Hugging Face directory
  // (models/model_loader.h); random_model: ModelConfig::DemoTiny() with RandomWeights(seed)
  // and synthetic token conversations.
  std::string model = "smollm2";
  bool random_model = false;
  std::string save_model_dir;  // also write the model used there (config.json + safetensors)
  uint64_t seed = 0;           // weights (tiny model) and conversation tokens
  std::string dtype = "fp32";  // fp32 | bf16
  std::string device = "cpu";  // cpu | cuda
  int threads = 0;             // torch::set_num_threads; 0: every core but one

  // Conversations. 0: the default of the model kind (real: 3 sessions x 4 turns, 32 new
  // tokens; random: 3 x 8, 16).
  int sessions = 0;
  int turns = 0;
  int max_new_tokens = 0;
  int document_tokens = 1900;  // real model: each session's document, about this many tokens
  int system_tokens = 512;     // random model: the shared system prompt
  int user_min_tokens = 128, user_max_tokens = 320;  // random model: each user message
  int64_t chunk_tokens = 256;

  // Store.
  std::string data_dir = "./kvault-data/demo";
  bool keep_data = false;  // false: remove the store's files under data_dir first
  double t1_mib = 0;     // 0: automatic (about 1.5 sessions of final history)
  bool evict_t1 = false; // DRAM cap just above one request: returning sessions come from SSD
  double t2_mib = 2048;

  // Output.
  std::string chart_path = "kvault-demo.svg";  // "" or "-": no chart
  bool json = false;
  bool quiet = false;              // no progress on stderr
  double max_logit_diff = -1;      // fail above this; < 0: 1e-3 for fp32, 0.25 for bf16
};

struct DemoTurn {
  int session = 0;  // 1-based
  int turn = 0;     // 1-based
  int64_t history_tokens = 0;  // conversation so far: system prompt + earlier turns
  int64_t new_tokens = 0;      // this turn's user message
  int64_t prompt_tokens = 0;   // what the engine prefilled or reused (after truncation)
  double ttft_recompute_ms = 0, ttft_cached_ms = 0;
  int64_t hit_tokens = 0, hit_tokens_t1 = 0, hit_tokens_t2 = 0, hit_tokens_t3 = 0;
  int64_t computed_tokens = 0;       // prefilled in the cached run
  int64_t dropped_tokens = 0;        // context overflow (cached run)
  double load_wait_ms = 0;           // cached run: compute waiting for KV to land
  double lookup_ms = 0;              // cached run: lookup + pinning (T2: read + verify)
  double forward_ms = 0;             // cached run: the prefill forward (KV load overlapped inside)
  std::string tier = "none";         // "t1", "t2" or "none": the slowest tier that served
  double max_abs_logit_diff = 0;     // last prompt position, cached vs recompute
  bool first_token_equal = true;     // cached run's first generated token == recompute's
  bool answer_equal = true;          // every generated token equal
  std::string question;              // real model: this turn's user question (without the document)
  std::string answer;                // real model: the answer's text (recompute run)
  double ratio() const { return ttft_recompute_ms > 0 ? ttft_cached_ms / ttft_recompute_ms : 0; }
};

struct DemoReport {
  std::string model_name;         // e.g. "SmolLM2-135M-Instruct", "DemoTiny"
  std::string model_description;
  std::string model_config_json;  // ModelConfig::ToJson()
  std::string model_source;       // "DemoTiny random weights, seed 0" or the file / directory
  double model_load_s = 0;
  std::string dtype, device;
  int64_t params = 0;
  int64_t kv_bytes_per_token = 0;
  int threads = 0;
  int64_t system_tokens = 0;      // tokens every session's first prompt starts with

  DemoOptions options;            // with the defaults filled in
  uint64_t t1_bytes = 0, t2_bytes = 0;
  std::string t1_reason;  // how the DRAM cap was chosen

  std::vector<DemoTurn> turns;  // in replay order (round by round)
  double max_abs_logit_diff = 0;
  bool answers_identical = true;    // every turn's cached answer equals the recompute's
  double last_turn_ttft_ratio = 0;  // mean over sessions of cached / recompute on the last turn
  // Cached turns with a hit: share of TTFT outside the forward pass and the KV transfer
  // (lookup, pinning/promotion), i.e. queueing, sampling, page allocation, save setup.
  double engine_overhead_fraction = 0;
  double logit_tolerance = 0;
  std::string store_stats_json;     // StoreStats::ToJson() after the cached run
  double run_recompute_s = 0, run_cached_s = 0, total_s = 0;
  std::string chart_path;           // where the chart went ("" if none)
};

// Runs both replays. Progress goes to stderr unless options.quiet. Errors (bad options, a
// model that does not load, a store that does not open, a failed request) are a Status.
Result<DemoReport> RunDemo(const DemoOptions& options);

// The per-turn table and the summary, for people.
std::string DemoTable(const DemoReport& report);
// One JSON object (see `kvault demo --help`).
std::string DemoJson(const DemoReport& report);
// The chart: TTFT of recompute vs cached per turn, grouped by session.
std::string DemoChartSvg(const DemoReport& report);

// The whole command: RunDemo, the chart, then the table or JSON on stdout. Returns the exit
// code: 0, 1 on a failure (message on stderr), 2 on bad options.
int DemoMain(const DemoOptions& options);

}  // namespace kvault::demo

#include "apps/demo/demo.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apps/demo/demo_plan.h"
#include "apps/demo/demo_text.h"
#include "apps/runtime_setup.h"
#include "engine/engine.h"
#include "engine/kv_pool.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/weights.h"
#include "kvault/options.h"
#include "kvault/store.h"
#include "models/model_loader.h"

namespace kvault::demo {
namespace {

using engine::Engine;
using engine::EngineOptions;
using engine::LlamaModel;
using engine::ModelConfig;
using engine::ModelWeights;
using engine::RequestResult;
using engine::SamplingParams;
using apps::SetComputeThreads;
using apps::WipeStoreDir;

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The options with the model kind's defaults filled in (zeros).
DemoOptions WithDefaults(DemoOptions o) {
  if (o.sessions == 0) o.sessions = 3;
  if (o.turns == 0) o.turns = o.random_model ? 8 : 4;
  if (o.max_new_tokens == 0) o.max_new_tokens = o.random_model ? 16 : 32;
  return o;
}

// Every option's range, checked before anything slow runs.
Status ValidateOptions(const DemoOptions& options) {
  const DemoOptions o = WithDefaults(options);
  auto bad = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (o.random_model && o.model != "smollm2") return bad("give --model or --random-model, not both");
  if (o.document_tokens < 64 || o.document_tokens > 1 << 20) return bad("--document-tokens must be in [64, 1048576]");
  if (o.sessions < 1 || o.sessions > 64) return bad("--sessions must be in [1, 64]");
  if (o.turns < 1 || o.turns > 64) return bad("--turns must be in [1, 64]");
  if (o.system_tokens < 1 || o.system_tokens > 1 << 20) return bad("--system-tokens must be in [1, 1048576]");
  if (o.user_min_tokens < 1 || o.user_max_tokens < o.user_min_tokens || o.user_max_tokens > 1 << 20) {
    return bad("--user-tokens must be MIN,MAX with 1 <= MIN <= MAX");
  }
  if (o.max_new_tokens < 1 || o.max_new_tokens > 4096) return bad("--max-new-tokens must be in [1, 4096]");
  if (o.chunk_tokens < 1 || o.chunk_tokens > 65536) return bad("--chunk-tokens must be in [1, 65536]");
  if (o.threads < 0 || o.threads > 1024) return bad("--threads must be in [0, 1024] (0: LibTorch's default)");
  if (o.dtype != "fp32" && o.dtype != "bf16") return bad("--dtype must be fp32 or bf16, not '" + o.dtype + "'");
  if (o.device != "cpu" && o.device != "cuda") return bad("--device must be cpu or cuda, not '" + o.device + "'");
  if (!(o.t1_mib >= 0) || o.t1_mib > (1 << 24)) return bad("--t1-mib must be >= 0 (0: automatic)");
  if (!(o.t2_mib >= 0) || o.t2_mib > (1 << 30)) return bad("--t2-mib must be >= 0 (0: no SSD tier)");
  if (o.evict_t1 && o.t1_mib > 0) return bad("--evict-t1 picks the T1 cap itself; do not combine it with --t1-mib");
  if (o.data_dir.empty()) return bad("--data-dir must not be empty");
  return Status::OK();
}

int64_t CountParams(const ModelWeights& w) {
  int64_t n = 0;
  auto add = [&](const torch::Tensor& t) {
    if (t.defined()) n += t.numel();
  };
  add(w.embed);
  for (const auto& l : w.layers) {
    for (const auto* t : {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.q_bias, &l.k_bias,
                          &l.v_bias, &l.post_norm, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      add(*t);
    }
  }
  add(w.final_norm);
  if (w.lm_head.defined() && !(w.embed.defined() && w.lm_head.is_same(w.embed))) add(w.lm_head);
  return n;
}

std::string ParamsString(int64_t n) {
  if (n >= 1000000000) return Printf("%.2fB", n / 1e9);
  if (n >= 1000000) return Printf("%.1fM", n / 1e6);
  return Printf("%.1fK", n / 1e3);
}

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet) {}
  void operator()(const std::string& line) const {
    if (quiet_) return;
    std::fprintf(stderr, "[demo] %s\n", line.c_str());
    std::fflush(stderr);
  }

 private:
  bool quiet_;
};

// Runs one turn and checks that it succeeded.
Result<RequestResult> RunTurn(Engine& engine, const std::vector<uint32_t>& prompt, int max_new_tokens,
                              const std::vector<uint32_t>& stop_tokens, const std::string& what) {
  SamplingParams sp;
  sp.max_new_tokens = max_new_tokens;
  sp.stop_tokens = stop_tokens;
  sp.temperature = 0.0f;  // greedy
  sp.return_prompt_logits = false;  // logits of the last prompt position only
  RequestResult r = engine.Generate(prompt, sp);
  if (!r.status.ok()) return Status(r.status.code(), what + ": " + r.status.message());
  if (r.output_tokens.empty()) return Status::Unavailable(what + ": the engine generated no token");
  return r;
}

int64_t CommonPrefix(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

torch::Tensor LastLogits(const RequestResult& r) {
  if (!r.prompt_logits.defined() || r.prompt_logits.dim() != 2 || r.prompt_logits.size(0) < 1) return {};
  return r.prompt_logits.select(0, r.prompt_logits.size(0) - 1).to(torch::kCPU, torch::kFloat).clone();
}

Result<DemoReport> RunDemoImpl(const DemoOptions& options) {
  KVAULT_RETURN_IF_ERROR(ValidateOptions(options));
  const DemoOptions o = WithDefaults(options);
  const Progress progress(o.quiet);
  const auto t_start = Clock::now();
  // Before anything slow: a --data-dir that cannot be used fails at once.
  if (!o.keep_data) KVAULT_RETURN_IF_ERROR(WipeStoreDir(o.data_dir));
  torch::NoGradGuard no_grad;

  DemoReport rep;
  rep.options = o;
  // Default: every core but one, which the engine's loader and saver threads and the store's
  // write-behind use while the model computes (on 2 cores: 1 compute thread; a second one
  // contends with them and slows the cached run down).
  rep.threads = SetComputeThreads(o.threads);
  const torch::ScalarType dtype = o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  rep.dtype = o.dtype;
  rep.device = o.device;
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    return Status::Unavailable("--device cuda: LibTorch sees no CUDA device (this build or machine is CPU only)");
  }
  const torch::Device device = o.device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);

  // --- The model.
  ModelConfig config;
  ModelWeights weights;
  std::optional<models::LoadedModel> loaded;  // real models: tokenizer and chat template
  if (o.random_model) {
    config = ModelConfig::DemoTiny();
    KVAULT_RETURN_IF_ERROR(config.Validate());
    progress(Printf("building the demo model (DemoTiny, random weights, seed %llu, %s)",
                    static_cast<unsigned long long>(o.seed), o.dtype.c_str()));
    weights = engine::RandomWeights(config, o.seed, dtype);
    rep.model_name = "DemoTiny";
    rep.model_source = Printf("DemoTiny, random weights (seed %llu)", static_cast<unsigned long long>(o.seed));
  } else {
    progress("loading " + o.model + " (" + o.dtype + ")");
    auto m = models::LoadModel(o.model, dtype, rep.threads);
    if (!m.ok()) return Status(m.status().code(), "--model " + o.model + ": " + m.status().message());
    if (!m->chat_template) return Status::InvalidArgument("--model " + o.model + ": the model has no chat template");
    config = m->config;
    weights = std::move(m->weights);
    rep.model_name = m->location.name;
    rep.model_source = m->location.path;
    rep.model_load_s = m->load_seconds;
    progress(Printf("loaded %s in %.2f s", m->description.c_str(), m->load_seconds));
    loaded = std::move(m.value());
  }
  if (!o.save_model_dir.empty()) {
    progress("saving the model to " + o.save_model_dir);
    Status st = engine::SaveWeights(config, weights, o.save_model_dir);
    if (!st.ok()) return Status(st.code(), "--save-model " + o.save_model_dir + ": " + st.message());
  }
  rep.params = CountParams(weights);
  rep.model_config_json = config.ToJson();
  const KvLayout layout = engine::LayoutFor(config, dtype, o.chunk_tokens);
  KVAULT_RETURN_IF_ERROR(layout.Validate());
  rep.kv_bytes_per_token = static_cast<int64_t>(layout.token_bytes());
  const int64_t head_dim = config.head_dim > 0 ? config.head_dim : config.hidden_size / std::max<int64_t>(1, config.num_heads);
  rep.model_description = Printf(
      "%s: %s, %lld layers, hidden %lld, %lld heads / %lld kv heads, head_dim %lld, ffn %lld, vocab %lld, "
      "%s params, %s, KV %s/token",
      rep.model_name.c_str(), config.model_type.c_str(), static_cast<long long>(config.num_layers),
      static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_heads),
      static_cast<long long>(config.num_kv_heads > 0 ? config.num_kv_heads : config.num_heads),
      static_cast<long long>(head_dim), static_cast<long long>(config.intermediate_size),
      static_cast<long long>(config.vocab_size), ParamsString(rep.params).c_str(), o.dtype.c_str(),
      Bytes(layout.token_bytes()).c_str());
  auto model = std::make_shared<const LlamaModel>(config, std::move(weights), device);
  progress("model " + rep.model_description);

  // --- The conversations.
  Plan plan;
  if (loaded) {
    auto real = MakeRealPlan(o, *loaded);
    if (!real.ok()) return real.status();
    plan = std::move(real.value());
  } else {
    plan = MakeRandomPlan(o, config.vocab_size);
  }
  // Tokens every session's first prompt starts with (the system prompt): the first turn's
  // history.
  const std::vector<uint32_t> first0 = Prompt(plan, 0, 0, {});
  int64_t system_tokens = static_cast<int64_t>(plan.system.size());
  if (loaded) {
    const std::vector<uint32_t> other = Prompt(plan, std::min(1, o.sessions - 1), 0, {});
    system_tokens = 0;  // one session: its whole first prompt (nothing to compare with)
    while (system_tokens < static_cast<int64_t>(std::min(first0.size(), other.size())) &&
           first0[system_tokens] == other[system_tokens]) {
      ++system_tokens;
    }
  }
  rep.system_tokens = system_tokens;
  const int64_t max_context = config.max_position_embeddings;
  if (plan.max_prompt + o.max_new_tokens > max_context) {
    progress(Printf("note: the longest prompt (%lld tokens + %d generated) exceeds the context window (%lld); "
                    "the engine drops the oldest tokens",
                    static_cast<long long>(plan.max_prompt), o.max_new_tokens, static_cast<long long>(max_context)));
  }
  const int64_t chunk = o.chunk_tokens;
  auto round_up = [](int64_t v, int64_t m) { return (v + m - 1) / m * m; };
  EngineOptions eo;
  eo.max_context = max_context;
  // On context overflow the engine keeps the system prompt and drops the oldest turns.
  eo.keep_head_tokens = system_tokens < max_context / 2 ? system_tokens : 0;
  eo.chunk_tokens = chunk;
  eo.kv_pool_tokens = 2 * (round_up(std::min(plan.max_prompt, max_context) + o.max_new_tokens, chunk) + 2 * chunk);
  eo.max_batch = 1;

  // --- The store's caps.
  const StoreOptions defaults;
  const uint64_t page = defaults.page_bytes;
  const uint64_t chunk_alloc = (layout.chunk_bytes(static_cast<uint32_t>(chunk)) + page - 1) / page * page;
  // One request pins its whole cached prefix in DRAM and writes its new chunks there.
  const uint64_t one_request_chunks = (std::min(plan.max_prompt, max_context) + o.max_new_tokens + chunk - 1) / chunk + 4;
  if (o.t1_mib > 0) {
    rep.t1_bytes = static_cast<uint64_t>(o.t1_mib * 1024 * 1024);
    rep.t1_reason = "--t1-mib";
  } else if (o.evict_t1) {
    rep.t1_bytes = one_request_chunks * chunk_alloc;
    rep.t1_reason = Printf("--evict-t1: room for one request (%llu chunks of %s), so a returning session "
                             "is served from SSD (T2)",
                             static_cast<unsigned long long>(one_request_chunks), Bytes(chunk_alloc).c_str());
  } else {
    uint64_t want = static_cast<uint64_t>(std::ceil(1.5 * plan.mean_final_tokens / chunk));
    uint64_t chunks = std::max(want, one_request_chunks);
    rep.t1_bytes = chunks * chunk_alloc;
    rep.t1_reason = Printf("auto: about 1.5 sessions of final history (1.5 x %s tokens at %s/token = %llu chunks "
                             "of %s), so older sessions' chunks are demoted to SSD (T2)",
                             Thousands(static_cast<int64_t>(plan.mean_final_tokens)).c_str(),
                             Bytes(layout.token_bytes()).c_str(), static_cast<unsigned long long>(chunks),
                             Bytes(chunk_alloc).c_str());
  }
  rep.t2_bytes = static_cast<uint64_t>(o.t2_mib * 1024 * 1024);

  rep.logit_tolerance = o.max_logit_diff >= 0 ? o.max_logit_diff : (o.dtype == "bf16" ? 0.25 : 1e-3);

  // --- Run 1: store off, every turn recomputes its whole prompt; the answers are kept.
  std::vector<std::vector<std::vector<uint32_t>>> answers(o.sessions, std::vector<std::vector<uint32_t>>(o.turns));
  std::vector<torch::Tensor> logits1;
  rep.turns.reserve(o.sessions * o.turns);
  {
    const auto t0 = Clock::now();
    Engine engine(model, eo);
    progress("run 1/2 (recompute, store off): warm-up");
    auto w = RunTurn(engine, plan.warmup, 2, plan.stop_tokens, "warm-up");
    if (!w.ok()) return w.status();
    // Each session's previous prompt + answer: what the next turn's history should match.
    std::vector<std::vector<uint32_t>> previous(o.sessions);
    for (int t = 0; t < o.turns; ++t) {
      for (int s = 0; s < o.sessions; ++s) {
        const std::vector<uint32_t> prompt = Prompt(plan, s, t, answers[s]);
        if (prompt.empty()) return Status::Unavailable(Printf("session %d turn %d: empty prompt", s + 1, t + 1));
        auto r = RunTurn(engine, prompt, o.max_new_tokens, plan.stop_tokens,
                         Printf("run 1 (recompute) session %d turn %d", s + 1, t + 1));
        if (!r.ok()) return r.status();
        DemoTurn d;
        d.session = s + 1;
        d.turn = t + 1;
        d.history_tokens = t == 0 ? system_tokens : CommonPrefix(prompt, previous[s]);
        d.new_tokens = static_cast<int64_t>(prompt.size()) - d.history_tokens;
        d.prompt_tokens = r->prompt_tokens;
        d.ttft_recompute_ms = r->ttft_ms;
        answers[s][t] = r->output_tokens;
        if (loaded) {
          d.question = plan.questions[s][t];
          d.answer = tokenizer::SanitizeUtf8(AnswerText(*loaded, answers[s][t], plan.stop_tokens));
        }
        rep.turns.push_back(d);
        logits1.push_back(LastLogits(*r));
        progress(Printf("run 1/2 (recompute) session %d turn %d: prompt %s tokens, TTFT %.1f ms", s + 1, t + 1,
                        Thousands(r->prompt_tokens).c_str(), r->ttft_ms));
        if (loaded) progress("  Q: " + d.question + "\n  A: " + d.answer);
        previous[s] = prompt;
        previous[s].insert(previous[s].end(), answers[s][t].begin(), answers[s][t].end());
      }
    }
    rep.run_recompute_s = SecondsSince(t0);
  }

  // --- Run 2: store on, the same prompts (run 1's answers replayed).
  {
    StoreOptions so;
    so.dir = o.data_dir;
    so.t1_bytes = rep.t1_bytes;
    so.t2_bytes = rep.t2_bytes;
    auto opened = Store::Open(so);
    if (!opened.ok()) {
      return Status(opened.status().code(), "opening the store at " + o.data_dir + ": " + opened.status().message());
    }
    std::unique_ptr<Store> store = std::move(opened.value());
    progress(Printf("store at %s: DRAM cap %s (%s), SSD cap %s", o.data_dir.c_str(), Bytes(rep.t1_bytes).c_str(),
                    rep.t1_reason.c_str(), Bytes(rep.t2_bytes).c_str()));
    const auto t0 = Clock::now();
    EngineOptions eo2 = eo;
    eo2.store = store.get();
    {
      Engine engine(model, eo2);
      progress("run 2/2 (cached, store on): warm-up");
      auto w = RunTurn(engine, plan.warmup, 2, plan.stop_tokens, "warm-up");
      if (!w.ok()) return w.status();
      engine.WaitForSaves();
      size_t index = 0;
      for (int t = 0; t < o.turns; ++t) {
        for (int s = 0; s < o.sessions; ++s, ++index) {
          const std::vector<uint32_t> prompt = Prompt(plan, s, t, answers[s]);
          auto r = RunTurn(engine, prompt, o.max_new_tokens, plan.stop_tokens,
                           Printf("run 2 (cached) session %d turn %d", s + 1, t + 1));
          if (!r.ok()) return r.status();
          DemoTurn& d = rep.turns[index];
          d.ttft_cached_ms = r->ttft_ms;
          d.hit_tokens = r->hit_tokens;
          d.hit_tokens_t1 = r->hit_tokens_t1;
          d.hit_tokens_t2 = r->hit_tokens_t2;
          d.hit_tokens_t3 = r->hit_tokens_t3;
          d.computed_tokens = r->computed_tokens;
          d.dropped_tokens = r->dropped_tokens;
          d.load_wait_ms = r->load_wait_ms;
          d.lookup_ms = r->lookup_ms;
          d.forward_ms = r->forward_ms;
          d.tier = TierName(r->tier);
          torch::Tensor l2 = LastLogits(*r);
          const torch::Tensor& l1 = logits1[index];
          if (l1.defined() && l2.defined() && l1.sizes() == l2.sizes()) {
            d.max_abs_logit_diff = (l1 - l2).abs().max().item<double>();
          } else {
            d.max_abs_logit_diff = std::numeric_limits<double>::quiet_NaN();
          }
          d.first_token_equal = r->output_tokens.front() == answers[s][t].front();
          d.answer_equal = r->output_tokens == answers[s][t];
          progress(Printf("run 2/2 (cached) session %d turn %d: prompt %s tokens, hit %s (%s), TTFT %.1f ms "
                          "(recompute %.1f ms, ratio %.3f)",
                          s + 1, t + 1, Thousands(r->prompt_tokens).c_str(), Thousands(r->hit_tokens).c_str(),
                          d.tier.c_str(), r->ttft_ms, d.ttft_recompute_ms, d.ratio()));
          if (!d.answer_equal && loaded) {
            progress("  cached answer differs: " +
                     tokenizer::SanitizeUtf8(AnswerText(*loaded, r->output_tokens, plan.stop_tokens)));
          }
          // Between turns a user reads and types: let the saves and the write-behind finish,
          // so that the next turn's TTFT measures only that turn.
          engine.WaitForSaves();
          Status fl = store->Flush();
          if (!fl.ok()) progress("warning: store flush failed: " + fl.ToString() + " (the demo goes on)");
        }
      }
    }  // the engine waits for pending saves
    rep.run_cached_s = SecondsSince(t0);
    rep.store_stats_json = store->Stats().ToJson();
  }

  // --- Summary figures.
  double ratio_sum = 0;
  int ratio_n = 0;
  bool missing_logits = false;
  for (const DemoTurn& d : rep.turns) {
    if (std::isnan(d.max_abs_logit_diff)) {
      missing_logits = true;
    } else {
      rep.max_abs_logit_diff = std::max(rep.max_abs_logit_diff, d.max_abs_logit_diff);
    }
    rep.answers_identical = rep.answers_identical && d.answer_equal;
    if (d.turn == o.turns) {
      ratio_sum += d.ratio();
      ++ratio_n;
    }
  }
  if (missing_logits) {
    progress("warning: the engine returned no prompt logits for some turns; their logit diff is unknown");
    rep.max_abs_logit_diff = std::numeric_limits<double>::quiet_NaN();
  }
  rep.last_turn_ttft_ratio = ratio_n > 0 ? ratio_sum / ratio_n : 0;
  double overhead = 0, ttft = 0;
  for (const DemoTurn& d : rep.turns) {
    if (d.hit_tokens == 0) continue;
    overhead += std::max(0.0, d.ttft_cached_ms - d.forward_ms - d.lookup_ms);
    ttft += d.ttft_cached_ms;
  }
  rep.engine_overhead_fraction = ttft > 0 ? overhead / ttft : 0;
  rep.total_s = SecondsSince(t_start);
  return rep;
}

}  // namespace

Result<DemoReport> RunDemo(const DemoOptions& options) {
  try {
    return RunDemoImpl(options);
  } catch (const std::exception& e) {
    // LibTorch reports shape, memory and device errors as exceptions (c10::Error).
    std::string what = e.what();
    if (what.size() > 2000) what = what.substr(0, 2000) + "...";
    return Status::Unavailable(std::string("LibTorch error: ") + what);
  }
}

int DemoMain(const DemoOptions& options) {
  Status valid = ValidateOptions(options);
  if (!valid.ok()) {
    std::fprintf(stderr, "kvault demo: %s\n", valid.message().c_str());
    return 2;
  }
  auto result = RunDemo(options);
  if (!result.ok()) {
    std::fprintf(stderr, "kvault demo: error: %s\n", result.status().ToString().c_str());
    return 1;
  }
  DemoReport& rep = result.value();
  int code = 0;
  if (!options.chart_path.empty() && options.chart_path != "-") {
    std::ofstream f(options.chart_path, std::ios::binary | std::ios::trunc);
    f << DemoChartSvg(rep);
    f.close();
    if (!f) {
      std::fprintf(stderr, "kvault demo: error: cannot write the chart to %s\n", options.chart_path.c_str());
      code = 1;
    } else {
      rep.chart_path = options.chart_path;
      if (!options.quiet) std::fprintf(stderr, "[demo] chart written to %s\n", options.chart_path.c_str());
    }
  }
  if (options.json) {
    std::printf("%s\n", DemoJson(rep).c_str());
  } else {
    std::printf("%s", DemoTable(rep).c_str());
  }
  std::fflush(stdout);
  if (std::isnan(rep.max_abs_logit_diff) || rep.max_abs_logit_diff > rep.logit_tolerance) {
    std::fprintf(stderr,
                 "kvault demo: error: cached logits differ from full recompute by %s, above the tolerance %.1e: the "
                 "restored KV is not equivalent to recomputing it\n",
                 std::isnan(rep.max_abs_logit_diff) ? "an unknown amount (no logits returned)"
                                                    : Printf("%.3e", rep.max_abs_logit_diff).c_str(),
                 rep.logit_tolerance);
    code = 1;
  }
  if (!rep.answers_identical) {
    std::fprintf(stderr, "kvault demo: error: a cached run's answer differs from the recompute's (see the table)\n");
    code = 1;
  }
  return code;
}

}  // namespace kvault::demo

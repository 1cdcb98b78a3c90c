#include "engine/demo.h"

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

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/runtime_setup.h"
#include "engine/svg_chart.h"
#include "engine/weights.h"
#include "kvault/options.h"
#include "kvault/store.h"

namespace kvault::engine {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string Printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Printf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// 12345 -> "12,345".
std::string Thousands(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

std::string Bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return Printf("%.2f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return Printf("%.1f MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return Printf("%.1f KiB", b / 1024.0);
  return Printf("%.0f B", b);
}

// Deterministic on every machine and standard library (no std:: distributions).
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t Next() { return SplitMix64(state); }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
};

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t s = a ^ (b * 0xD6E8FEB86659FD93ull);
  return SplitMix64(s);
}

std::vector<uint32_t> RandomTokens(Rng& rng, int64_t n, int64_t vocab) {
  std::vector<uint32_t> out(n);
  for (auto& t : out) t = static_cast<uint32_t>(rng.Below(vocab));
  return out;
}

// The conversations of the demo: the shared system prompt and every user message.
struct Plan {
  std::vector<uint32_t> system;
  std::vector<std::vector<std::vector<uint32_t>>> user;  // [session][turn]
  std::vector<uint32_t> warmup;
  int64_t max_prompt = 0;          // longest prompt of any turn
  double mean_final_tokens = 0;    // a session's conversation after its last answer
};

Plan MakePlan(const DemoOptions& o, int64_t vocab) {
  Plan p;
  Rng sys(Mix(o.seed, 0x5157E4));
  p.system = RandomTokens(sys, o.system_tokens, vocab);
  Rng warm(Mix(o.seed, 0x3A53));
  p.warmup = RandomTokens(warm, 384, vocab);
  p.user.resize(o.sessions);
  double total_final = 0;
  for (int s = 0; s < o.sessions; ++s) {
    int64_t history = o.system_tokens;
    for (int t = 0; t < o.turns; ++t) {
      Rng rng(Mix(Mix(o.seed, 1000 + s), 1 + t));
      int64_t len = o.user_min_tokens + static_cast<int64_t>(rng.Below(o.user_max_tokens - o.user_min_tokens + 1));
      p.user[s].push_back(RandomTokens(rng, len, vocab));
      p.max_prompt = std::max(p.max_prompt, history + len);
      history += len + o.max_new_tokens;
    }
    total_final += history;
  }
  p.mean_final_tokens = o.sessions > 0 ? total_final / o.sessions : 0;
  return p;
}

// Every option's range, checked before anything slow runs.
Status ValidateOptions(const DemoOptions& o) {
  auto bad = [](const std::string& m) { return Status::InvalidArgument(m); };
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
  if (!(o.dram_mib >= 0) || o.dram_mib > (1 << 24)) return bad("--dram-mib must be >= 0 (0: automatic)");
  if (!(o.ssd_mib >= 0) || o.ssd_mib > (1 << 30)) return bad("--ssd-mib must be >= 0 (0: no SSD tier)");
  if (o.evict_dram && o.dram_mib > 0) return bad("--evict-dram picks the DRAM cap itself; do not combine it with --dram-mib");
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
                              const std::string& what) {
  SamplingParams sp;
  sp.max_new_tokens = max_new_tokens;
  sp.temperature = 0.0f;  // greedy
  sp.return_prompt_logits = false;  // logits of the last prompt position only
  RequestResult r = engine.Generate(prompt, sp);
  if (!r.status.ok()) return Status(r.status.code(), what + ": " + r.status.message());
  if (r.output_tokens.empty()) return Status::Unavailable(what + ": the engine generated no token");
  return r;
}

torch::Tensor LastLogits(const RequestResult& r) {
  if (!r.prompt_logits.defined() || r.prompt_logits.dim() != 2 || r.prompt_logits.size(0) < 1) return {};
  return r.prompt_logits.select(0, r.prompt_logits.size(0) - 1).to(torch::kCPU, torch::kFloat).clone();
}

Result<DemoReport> RunDemoImpl(const DemoOptions& o) {
  KVAULT_RETURN_IF_ERROR(ValidateOptions(o));
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
  if (o.model_dir.empty()) {
    config = ModelConfig::DemoTiny();
    KVAULT_RETURN_IF_ERROR(config.Validate());
    progress(Printf("building the demo model (DemoTiny, random weights, seed %llu, %s)",
                    static_cast<unsigned long long>(o.seed), o.dtype.c_str()));
    weights = RandomWeights(config, o.seed, dtype);
    rep.model_source = Printf("DemoTiny, random weights (seed %llu)", static_cast<unsigned long long>(o.seed));
  } else {
    const std::string cfg_path = (fs::path(o.model_dir) / "config.json").string();
    auto cfg = ModelConfig::FromFile(cfg_path);
    if (!cfg.ok()) return Status(cfg.status().code(), "--model " + o.model_dir + ": " + cfg.status().message());
    config = std::move(cfg.value());
    progress("loading " + o.model_dir + " (" + o.dtype + ")");
    auto w = LoadWeights(config, o.model_dir, dtype);
    if (!w.ok()) return Status(w.status().code(), "--model " + o.model_dir + ": " + w.status().message());
    weights = std::move(w.value());
    rep.model_source = o.model_dir;
  }
  if (!o.save_model_dir.empty()) {
    progress("saving the model to " + o.save_model_dir);
    Status st = SaveWeights(config, weights, o.save_model_dir);
    if (!st.ok()) return Status(st.code(), "--save-model " + o.save_model_dir + ": " + st.message());
  }
  rep.params = CountParams(weights);
  rep.model_config_json = config.ToJson();
  const KvLayout layout = LayoutFor(config, dtype, o.chunk_tokens);
  KVAULT_RETURN_IF_ERROR(layout.Validate());
  rep.kv_bytes_per_token = static_cast<int64_t>(layout.token_bytes());
  const int64_t head_dim = config.head_dim > 0 ? config.head_dim : config.hidden_size / std::max<int64_t>(1, config.num_heads);
  rep.model_description = Printf(
      "%s: %s, %lld layers, hidden %lld, %lld heads / %lld kv heads, head_dim %lld, ffn %lld, vocab %lld, "
      "%s params, %s, KV %s/token",
      rep.model_source.c_str(), config.model_type.c_str(), static_cast<long long>(config.num_layers),
      static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_heads),
      static_cast<long long>(config.num_kv_heads > 0 ? config.num_kv_heads : config.num_heads),
      static_cast<long long>(head_dim), static_cast<long long>(config.intermediate_size),
      static_cast<long long>(config.vocab_size), ParamsString(rep.params).c_str(), o.dtype.c_str(),
      Bytes(layout.token_bytes()).c_str());
  auto model = std::make_shared<const LlamaModel>(config, std::move(weights), device);
  progress("model " + rep.model_description);

  // --- The conversations.
  const Plan plan = MakePlan(o, config.vocab_size);
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
  eo.keep_head_tokens = o.system_tokens < max_context / 2 ? o.system_tokens : 0;
  eo.chunk_tokens = chunk;
  eo.kv_pool_tokens = 2 * (round_up(std::min(plan.max_prompt, max_context) + o.max_new_tokens, chunk) + 2 * chunk);
  eo.max_batch = 1;

  // --- The store's caps.
  const StoreOptions defaults;
  const uint64_t page = defaults.page_bytes;
  const uint64_t chunk_alloc = (layout.chunk_bytes(static_cast<uint32_t>(chunk)) + page - 1) / page * page;
  // One request pins its whole cached prefix in DRAM and writes its new chunks there.
  const uint64_t one_request_chunks = (std::min(plan.max_prompt, max_context) + o.max_new_tokens + chunk - 1) / chunk + 4;
  if (o.dram_mib > 0) {
    rep.dram_bytes = static_cast<uint64_t>(o.dram_mib * 1024 * 1024);
    rep.dram_reason = "--dram-mib";
  } else if (o.evict_dram) {
    rep.dram_bytes = one_request_chunks * chunk_alloc;
    rep.dram_reason = Printf("--evict-dram: room for one request (%llu chunks of %s), so a returning session "
                             "is served from SSD (T2)",
                             static_cast<unsigned long long>(one_request_chunks), Bytes(chunk_alloc).c_str());
  } else {
    uint64_t want = static_cast<uint64_t>(std::ceil(1.5 * plan.mean_final_tokens / chunk));
    uint64_t chunks = std::max(want, one_request_chunks);
    rep.dram_bytes = chunks * chunk_alloc;
    rep.dram_reason = Printf("auto: about 1.5 sessions of final history (1.5 x %s tokens at %s/token = %llu chunks "
                             "of %s), so older sessions' chunks are demoted to SSD (T2)",
                             Thousands(static_cast<int64_t>(plan.mean_final_tokens)).c_str(),
                             Bytes(layout.token_bytes()).c_str(), static_cast<unsigned long long>(chunks),
                             Bytes(chunk_alloc).c_str());
  }
  rep.ssd_bytes = static_cast<uint64_t>(o.ssd_mib * 1024 * 1024);

  rep.logit_tolerance = o.max_logit_diff >= 0 ? o.max_logit_diff : (o.dtype == "bf16" ? 0.25 : 1e-3);

  // --- Run 1: store off, every turn recomputes its whole prompt; the answers are kept.
  std::vector<std::vector<std::vector<uint32_t>>> answers(o.sessions, std::vector<std::vector<uint32_t>>(o.turns));
  std::vector<torch::Tensor> logits1;
  rep.turns.reserve(o.sessions * o.turns);
  {
    const auto t0 = Clock::now();
    Engine engine(model, eo);
    progress("run 1/2 (recompute, store off): warm-up");
    auto w = RunTurn(engine, plan.warmup, 2, "warm-up");
    if (!w.ok()) return w.status();
    std::vector<std::vector<uint32_t>> history(o.sessions, plan.system);
    for (int t = 0; t < o.turns; ++t) {
      for (int s = 0; s < o.sessions; ++s) {
        std::vector<uint32_t> prompt = history[s];
        prompt.insert(prompt.end(), plan.user[s][t].begin(), plan.user[s][t].end());
        auto r = RunTurn(engine, prompt, o.max_new_tokens,
                         Printf("run 1 (recompute) session %d turn %d", s + 1, t + 1));
        if (!r.ok()) return r.status();
        DemoTurn d;
        d.session = s + 1;
        d.turn = t + 1;
        d.history_tokens = static_cast<int64_t>(history[s].size());
        d.new_tokens = static_cast<int64_t>(plan.user[s][t].size());
        d.prompt_tokens = r->prompt_tokens;
        d.ttft_recompute_ms = r->ttft_ms;
        rep.turns.push_back(d);
        logits1.push_back(LastLogits(*r));
        answers[s][t] = r->output_tokens;
        progress(Printf("run 1/2 (recompute) session %d turn %d: prompt %s tokens, TTFT %.1f ms", s + 1, t + 1,
                        Thousands(r->prompt_tokens).c_str(), r->ttft_ms));
        history[s] = std::move(prompt);
        history[s].insert(history[s].end(), answers[s][t].begin(), answers[s][t].end());
      }
    }
    rep.run_recompute_s = SecondsSince(t0);
  }

  // --- Run 2: store on, the same prompts (run 1's answers replayed).
  {
    StoreOptions so;
    so.dir = o.data_dir;
    so.dram_bytes = rep.dram_bytes;
    so.ssd_bytes = rep.ssd_bytes;
    auto opened = Store::Open(so);
    if (!opened.ok()) {
      return Status(opened.status().code(), "opening the store at " + o.data_dir + ": " + opened.status().message());
    }
    std::unique_ptr<Store> store = std::move(opened.value());
    progress(Printf("store at %s: DRAM cap %s (%s), SSD cap %s", o.data_dir.c_str(), Bytes(rep.dram_bytes).c_str(),
                    rep.dram_reason.c_str(), Bytes(rep.ssd_bytes).c_str()));
    const auto t0 = Clock::now();
    EngineOptions eo2 = eo;
    eo2.store = store.get();
    {
      Engine engine(model, eo2);
      progress("run 2/2 (cached, store on): warm-up");
      auto w = RunTurn(engine, plan.warmup, 2, "warm-up");
      if (!w.ok()) return w.status();
      engine.WaitForSaves();
      std::vector<std::vector<uint32_t>> history(o.sessions, plan.system);
      size_t index = 0;
      for (int t = 0; t < o.turns; ++t) {
        for (int s = 0; s < o.sessions; ++s, ++index) {
          std::vector<uint32_t> prompt = history[s];
          prompt.insert(prompt.end(), plan.user[s][t].begin(), plan.user[s][t].end());
          auto r = RunTurn(engine, prompt, o.max_new_tokens,
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
          history[s] = std::move(prompt);
          history[s].insert(history[s].end(), answers[s][t].begin(), answers[s][t].end());
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

std::string TierLabel(const std::string& tier) { return tier == "none" ? "miss" : tier; }

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

std::string DemoTable(const DemoReport& rep) {
  std::ostringstream out;
  out << "kvault demo: " << rep.options.sessions << " sessions x " << rep.options.turns
      << " turns, shared system prompt " << rep.options.system_tokens << " tokens, user messages "
      << rep.options.user_min_tokens << "-" << rep.options.user_max_tokens << " tokens, " << rep.options.max_new_tokens
      << " generated tokens per turn (greedy)\n";
  out << "model: " << rep.model_description << "\n";
  out << "device: " << rep.device << ", threads: " << rep.threads << "; chunk " << rep.options.chunk_tokens
      << " tokens; store: DRAM cap " << Bytes(rep.dram_bytes) << " (" << rep.dram_reason << "), SSD cap "
      << Bytes(rep.ssd_bytes) << " under " << rep.options.data_dir << "\n\n";

  out << Printf("%4s %4s %8s %6s %8s %12s %10s %7s %7s %13s %5s %8s %9s %5s\n", "sess", "turn", "history", "new",
                "prompt", "recompute_ms", "cached_ms", "ratio", "hit", "hit_t1/t2", "tier", "computed", "|dlogit|",
                "tok1");
  for (const DemoTurn& d : rep.turns) {
    std::string split = Thousands(d.hit_tokens_t1) + "/" + Thousands(d.hit_tokens_t2);
    std::string diff = std::isnan(d.max_abs_logit_diff) ? "n/a" : Printf("%.1e", d.max_abs_logit_diff);
    out << Printf("%4d %4d %8s %6s %8s %12.1f %10.1f %7.3f %7s %13s %5s %8s %9s %5s\n", d.session, d.turn,
                  Thousands(d.history_tokens).c_str(), Thousands(d.new_tokens).c_str(),
                  Thousands(d.prompt_tokens).c_str(), d.ttft_recompute_ms, d.ttft_cached_ms, d.ratio(),
                  Thousands(d.hit_tokens).c_str(), split.c_str(), d.tier.c_str(), Thousands(d.computed_tokens).c_str(),
                  diff.c_str(), d.first_token_equal ? "same" : "DIFF");
  }

  // Summary.
  int64_t hit_t1 = 0, hit_t2 = 0, prompt_total = 0, computed_total = 0, min_hist = -1, max_hist = 0;
  int first_equal = 0, answers_equal = 0;
  double sum_re = 0, sum_ca = 0;
  for (const DemoTurn& d : rep.turns) {
    hit_t1 += d.hit_tokens_t1;
    hit_t2 += d.hit_tokens_t2;
    prompt_total += d.prompt_tokens;
    computed_total += d.computed_tokens;
    first_equal += d.first_token_equal;
    answers_equal += d.answer_equal;
    sum_re += d.ttft_recompute_ms;
    sum_ca += d.ttft_cached_ms;
    if (d.turn == rep.options.turns) {
      min_hist = min_hist < 0 ? d.history_tokens : std::min(min_hist, d.history_tokens);
      max_hist = std::max(max_hist, d.history_tokens);
    }
  }
  out << "\n";
  out << Printf("last-turn TTFT cached / recompute (mean over %d sessions, history %s-%s tokens): %.3f  (%.1fx faster)\n",
                rep.options.sessions, Thousands(std::max<int64_t>(min_hist, 0)).c_str(), Thousands(max_hist).c_str(),
                rep.last_turn_ttft_ratio, rep.last_turn_ttft_ratio > 0 ? 1.0 / rep.last_turn_ttft_ratio : 0.0);
  out << Printf("engine overhead on cached turns (TTFT outside the forward pass and the KV lookup/pinning): %.1f%%\n",
                100.0 * rep.engine_overhead_fraction);
  out << Printf("all turns: TTFT total %.1f ms recompute vs %.1f ms cached; prompt tokens %s, prefilled in the cached run %s (%.1f%%)\n",
                sum_re, sum_ca, Thousands(prompt_total).c_str(), Thousands(computed_total).c_str(),
                prompt_total > 0 ? 100.0 * computed_total / prompt_total : 0.0);
  out << Printf("max |logit diff| cached vs recompute (last prompt position, every turn): %s (tolerance %.1e); "
                "first generated token equal in %d/%zu turns, whole answer in %d/%zu\n",
                std::isnan(rep.max_abs_logit_diff) ? "n/a" : Printf("%.2e", rep.max_abs_logit_diff).c_str(),
                rep.logit_tolerance, first_equal, rep.turns.size(), answers_equal, rep.turns.size());
  auto stats = nlohmann::json::parse(rep.store_stats_json.empty() ? "{}" : rep.store_stats_json, nullptr, false);
  auto u = [&](const char* key) -> unsigned long long {
    if (!stats.is_object() || !stats.contains(key) || !stats[key].is_number()) return 0;
    return stats[key].get<unsigned long long>();
  };
  out << Printf("reused prefix tokens: %s from DRAM (t1), %s from SSD (t2)\n", Thousands(hit_t1).c_str(),
                Thousands(hit_t2).c_str());
  out << Printf("store (incl. one warm-up request): lookups %llu; hits t1 %llu tokens / %llu chunks, t2 %llu tokens / "
                "%llu chunks, misses %llu tokens; T1 evictions %llu, promotions T2->T1 %llu, dropped unpersisted %llu; "
                "errors io %llu corruption %llu load-miss %llu\n",
                u("lookups"), u("hit_tokens_t1"), u("hit_chunks_t1"), u("hit_tokens_t2"), u("hit_chunks_t2"),
                u("miss_tokens"), u("t1_evictions"), u("promotions"), u("t1_dropped_unpersisted"), u("err_io"),
                u("err_corruption"), u("err_load_miss"));
  out << Printf("store occupancy: T1 %s of %s, T2 %s of %s (%llu entries)\n", Bytes(u("t1_used_bytes")).c_str(),
                Bytes(u("t1_capacity_bytes")).c_str(), Bytes(u("t2_used_bytes")).c_str(),
                Bytes(u("t2_capacity_bytes")).c_str(), u("t2_entries"));
  out << Printf("runtime: run 1 (recompute) %.1f s, run 2 (cached) %.1f s, total %.1f s\n", rep.run_recompute_s,
                rep.run_cached_s, rep.total_s);
  if (!rep.chart_path.empty()) out << "chart: " << rep.chart_path << "\n";
  return out.str();
}

std::string DemoJson(const DemoReport& rep) {
  using json = nlohmann::ordered_json;
  auto num = [](double v) -> json { return std::isfinite(v) ? json(v) : json(nullptr); };
  json j;
  json model;
  model["description"] = rep.model_description;
  model["source"] = rep.model_source;
  model["dtype"] = rep.dtype;
  model["device"] = rep.device;
  model["params"] = rep.params;
  model["kv_bytes_per_token"] = rep.kv_bytes_per_token;
  model["config"] = json::parse(rep.model_config_json.empty() ? "{}" : rep.model_config_json, nullptr, false);
  j["model"] = model;
  const DemoOptions& o = rep.options;
  j["settings"] = {{"sessions", o.sessions},
                   {"turns", o.turns},
                   {"system_tokens", o.system_tokens},
                   {"user_tokens_min", o.user_min_tokens},
                   {"user_tokens_max", o.user_max_tokens},
                   {"max_new_tokens", o.max_new_tokens},
                   {"chunk_tokens", o.chunk_tokens},
                   {"threads", rep.threads},
                   {"seed", o.seed},
                   {"data_dir", o.data_dir},
                   {"dram_bytes", rep.dram_bytes},
                   {"dram_cap", rep.dram_reason},
                   {"ssd_bytes", rep.ssd_bytes},
                   {"evict_dram", o.evict_dram}};
  json turns = json::array();
  for (const DemoTurn& d : rep.turns) {
    json t;
    t["session"] = d.session;
    t["turn"] = d.turn;
    t["history_tokens"] = d.history_tokens;
    t["new_tokens"] = d.new_tokens;
    t["prompt_tokens"] = d.prompt_tokens;
    t["ttft_recompute_ms"] = num(d.ttft_recompute_ms);
    t["ttft_cached_ms"] = num(d.ttft_cached_ms);
    t["ttft_ratio"] = num(d.ratio());
    t["hit_tokens"] = d.hit_tokens;
    t["hit_tokens_t1"] = d.hit_tokens_t1;
    t["hit_tokens_t2"] = d.hit_tokens_t2;
    t["hit_tokens_t3"] = d.hit_tokens_t3;
    t["tier"] = d.tier;
    t["computed_tokens"] = d.computed_tokens;
    t["dropped_tokens"] = d.dropped_tokens;
    t["load_wait_ms"] = num(d.load_wait_ms);
    t["lookup_ms"] = num(d.lookup_ms);
    t["forward_ms"] = num(d.forward_ms);
    t["max_abs_logit_diff"] = num(d.max_abs_logit_diff);
    t["first_token_equal"] = d.first_token_equal;
    t["answer_equal"] = d.answer_equal;
    turns.push_back(t);
  }
  j["turns"] = turns;
  j["max_abs_logit_diff"] = num(rep.max_abs_logit_diff);
  j["logit_tolerance"] = rep.logit_tolerance;
  j["last_turn_ttft_ratio"] = num(rep.last_turn_ttft_ratio);
  j["engine_overhead_fraction"] = num(rep.engine_overhead_fraction);
  int first_equal = 0;
  for (const DemoTurn& d : rep.turns) first_equal += d.first_token_equal;
  j["first_token_equal_turns"] = first_equal;
  j["store"] = json::parse(rep.store_stats_json.empty() ? "{}" : rep.store_stats_json, nullptr, false);
  j["runtime_s"] = {{"recompute", rep.run_recompute_s}, {"cached", rep.run_cached_s}, {"total", rep.total_s}};
  j["chart"] = rep.chart_path;
  return j.dump(2);
}

std::string DemoChartSvg(const DemoReport& rep) {
  BarChart c;
  c.title = "kvault demo: time to first token, full recompute vs cached KV";
  c.subtitle = Printf("%d conversations x %d turns, shared %d-token system prompt. Last turn: cached / recompute = %.3f "
                      "(mean over sessions), max |logit diff| %s",
                      rep.options.sessions, rep.options.turns, rep.options.system_tokens, rep.last_turn_ttft_ratio,
                      std::isnan(rep.max_abs_logit_diff) ? "n/a" : Printf("%.1e", rep.max_abs_logit_diff).c_str());
  c.y_label = "time to first token (ms)";
  c.series = {{"full recompute (store off)", "#d1603d"}, {"cached KV (store on: DRAM + SSD)", "#2b6cb0"}};
  std::vector<const DemoTurn*> order;
  for (const DemoTurn& d : rep.turns) order.push_back(&d);
  std::stable_sort(order.begin(), order.end(), [](const DemoTurn* a, const DemoTurn* b) {
    return a->session != b->session ? a->session < b->session : a->turn < b->turn;
  });
  for (const DemoTurn* d : order) {
    BarGroup g;
    g.label = "T" + std::to_string(d->turn);
    g.sublabels = {d->prompt_tokens >= 1000 ? Printf("%.1fk tok", d->prompt_tokens / 1000.0)
                                            : Printf("%lld tok", static_cast<long long>(d->prompt_tokens)),
                   TierLabel(d->tier)};
    g.values = {d->ttft_recompute_ms, d->ttft_cached_ms};
    g.cluster = "Session " + std::to_string(d->session);
    c.groups.push_back(std::move(g));
  }
  c.notes = {
      "Each group is one turn (T1, T2, ...) of one conversation; 'tok' = prompt tokens (history + new user message).",
      "Under it, where the cached run found the prefix: t1 = host DRAM, t2 = local SSD (slowest tier used), miss = nothing cached.",
      "Model: " + rep.model_description,
      Printf("Device %s, threads: %d. DRAM cap %s, SSD cap %s. Both runs see identical prompts (run 1's answers are replayed).",
             rep.device.c_str(), rep.threads, Bytes(rep.dram_bytes).c_str(), Bytes(rep.ssd_bytes).c_str()),
  };
  return RenderBarChartSvg(c);
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
  return code;
}

}  // namespace kvault::engine

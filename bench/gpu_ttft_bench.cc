#include "gpu_ttft_bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <torch/torch.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "apps/runtime_setup.h"
#include "engine/weights.h"
#include "gpu/cuda_transfer.h"
#include "kvault/store.h"

namespace kvault {
namespace {

using engine::Engine;
using engine::EngineOptions;
using engine::LlamaModel;
using engine::ModelConfig;
using engine::PlanMode;
using engine::RequestResult;
using engine::SamplingParams;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

void Progress(const std::string& what) { std::fprintf(stderr, "[bench gpu-ttft] %s\n", what.c_str()); }

Result<ModelConfig> Preset(const std::string& name) {
  ModelConfig c;
  c.model_type = "llama";
  if (name == "llama3-8b") {
    c.vocab_size = 128256;
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.max_position_embeddings = 131072;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
  } else if (name == "tiny") {
    c.vocab_size = 1024;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.num_layers = 4;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.max_position_embeddings = 65536;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
  } else {
    return Status::InvalidArgument("--preset " + name + ": expected llama3-8b or tiny");
  }
  KVAULT_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::vector<uint32_t> RandomTokens(uint64_t seed, int64_t n, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<uint32_t>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The limit loads are judged against: the pinned host->device peak on a GPU, memcpy on a CPU.
double CopyPeakGbps(bool cuda) {
  if (cuda) {
    auto peak = gpu::MeasurePinnedPeakGBps(256u << 20, gpu::CopyKind::kHostToDevice, 20);
    return peak.ok() ? *peak : 0;
  }
  std::vector<std::byte> a(256u << 20, std::byte{1}), b(a.size());
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), a.size());
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, static_cast<double>(a.size()) / s / 1e9);
  }
  return best;
}

// One measured request: its result and the last position's logits (on the CPU).
struct Run {
  RequestResult r;
  torch::Tensor last_logits;
};

Run Generate(Engine& e, const std::vector<uint32_t>& prompt) {
  SamplingParams p;
  p.max_new_tokens = 1;
  Run run;
  run.r = e.Generate(prompt, p);
  if (run.r.prompt_logits.defined()) run.last_logits = run.r.prompt_logits[-1].to(torch::kCPU, torch::kFloat32);
  return run;
}

// The runs of one measurement; run r used the prompt of repeat r (mod repeats).
struct Measured {
  // How much of a load hid behind compute. On a CPU the compute's waits for each layer are
  // timed on the host (load_wait_ms). On a GPU they are stalls of the device inside the forward
  // pass, so the exposed load is what the forward pass took beyond the new tokens' compute
  // alone (the fitted prefill model: an estimate, as good as the fit).
  bool device_copies = false;
  double new_compute_ms = 0;
  std::vector<double> ttft_ms, copy_gbps, hidden;
  std::vector<Run> runs;
  // `reference`: the full recompute's runs, one per repeat.
  nlohmann::json Summary(const std::vector<Run>& reference) const {
    nlohmann::json j = {{"ttft_ms", Median(ttft_ms)}, {"ttft_ms_all", ttft_ms}};
    if (!copy_gbps.empty()) {
      j["h2d_gbps"] = Median(copy_gbps);
      j["load_hidden_fraction"] = Median(hidden);
    }
    double diff = 0;
    bool match = true;
    for (size_t i = 0; i < runs.size(); ++i) {
      const Run& r = runs[i];
      const Run& ref = reference[i % reference.size()];
      match = match && r.r.status.ok() && r.r.output_tokens == ref.r.output_tokens;
      if (r.r.status.ok()) diff = std::max(diff, (r.last_logits - ref.last_logits).abs().max().item<double>());
    }
    j["first_token_match"] = match;
    j["max_logit_diff"] = diff;
    const RequestResult& last = runs.back().r;
    j["hit_tokens"] = last.hit_tokens;
    int64_t t1_min = INT64_MAX, t2_min = INT64_MAX;
    for (const Run& r : runs) {
      t1_min = std::min(t1_min, r.r.hit_tokens_t1);
      t2_min = std::min(t2_min, r.r.hit_tokens_t2);
    }
    j["hit_tokens_t1_min"] = t1_min;  // over every run
    j["hit_tokens_t2_min"] = t2_min;
    j["computed_tokens"] = last.computed_tokens;
    j["load_wait_ms"] = last.load_wait_ms;
    j["load_copy_ms"] = last.load_copy_ms;
    j["lookup_ms"] = last.lookup_ms;
    j["forward_ms"] = last.forward_ms;
    j["plan"] = nlohmann::json::parse(last.plan.ToJson());
    return j;
  }
  void Add(const Run& run) {
    ttft_ms.push_back(run.r.ttft_ms);
    if (run.r.loaded_bytes > 0 && run.r.load_copy_ms > 0) {
      copy_gbps.push_back(static_cast<double>(run.r.loaded_bytes) / (run.r.load_copy_ms / 1e3) / 1e9);
      const double exposed =
          device_copies ? std::max(0.0, run.r.forward_ms - new_compute_ms) : run.r.load_wait_ms;
      hidden.push_back(std::clamp(1.0 - exposed / run.r.load_copy_ms, 0.0, 1.0));
    }
    runs.push_back(run);
  }
};

Status Bench(const GpuTtftBenchOptions& o) {
  const bool cuda = o.device.empty() ? torch::cuda::is_available() : o.device == "cuda";
  if (o.device != "" && o.device != "cuda" && o.device != "cpu") return Status::InvalidArgument("--device: cuda or cpu");
  if (cuda && !torch::cuda::is_available()) return Status::Unavailable("--device cuda: LibTorch sees no CUDA device");
  const std::string dtype_name = o.dtype.empty() ? (cuda ? "bf16" : "fp32") : o.dtype;
  if (dtype_name != "bf16" && dtype_name != "fp32") return Status::InvalidArgument("--dtype: bf16 or fp32");
  const torch::ScalarType dtype = dtype_name == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  if (o.histories.empty() || o.new_tokens < 1 || o.repeats < 1 || o.chunk_tokens < 1) {
    return Status::InvalidArgument("--histories, --new-tokens, --repeats and --chunk-tokens must be positive");
  }
  auto config = Preset(o.preset);
  if (!config.ok()) return config.status();
  const int64_t longest = *std::max_element(o.histories.begin(), o.histories.end());
  if (longest + std::max(o.new_tokens, o.overlap_new_tokens) > config->max_position_embeddings) {
    return Status::InvalidArgument("history plus new tokens longer than the preset's context");
  }
  if (!cuda) apps::SetComputeThreads(0);

  nlohmann::json out = {{"tool", "kvault bench gpu-ttft"}, {"preset", o.preset}, {"device", cuda ? "cuda" : "cpu"},
                        {"dtype", dtype_name}, {"new_tokens", o.new_tokens}, {"repeats", o.repeats},
                        {"chunk_tokens", o.chunk_tokens}, {"torch", TORCH_VERSION}};
  out["device_description"] = cuda ? gpu::CudaDescription() : std::string("CPU");
  Progress("measuring the copy limit (" + std::string(cuda ? "pinned host->device" : "memcpy") + ")");
  const double peak = CopyPeakGbps(cuda);
  out["copy_peak_gbps"] = peak;
  out["copy_peak_kind"] = cuda ? "pinned cudaMemcpyAsync host->device" : "memcpy";

  Progress("building the model (" + o.preset + ", random weights, " + dtype_name + ")");
  const auto build_start = Clock::now();
  auto model = std::make_shared<const LlamaModel>(*config, engine::RandomWeights(*config, o.seed, dtype),
                                                  cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU));
  out["model_build_s"] = std::chrono::duration<double>(Clock::now() - build_start).count();
  const KvLayout layout = engine::LayoutFor(*config, dtype, o.chunk_tokens);
  out["kv_bytes_per_token"] = layout.token_bytes();

  // The store: T1 holds the longest history with room to spare; T2 all of them.
  uint64_t all_kv = 0;
  for (int64_t h : o.histories) all_kv += static_cast<uint64_t>(h + (o.repeats + 2) * o.new_tokens) * layout.token_bytes();
  const bool own_dir = o.dir.empty();
  const fs::path dir = own_dir ? fs::temp_directory_path() / ("kvault-gpu-ttft-" + std::to_string(::getpid())) : fs::path(o.dir);
  KVAULT_RETURN_IF_ERROR(apps::WipeStoreDir(dir.string(), "--dir", false));
  StoreOptions so;
  so.dir = dir.string();
  so.page_bytes = 1u << 20;
  so.t1_bytes = (static_cast<uint64_t>(longest + (o.repeats + 2) * o.new_tokens) * layout.token_bytes() * 5 / 4 +
                   (64ull << 20)) / so.page_bytes * so.page_bytes + so.page_bytes;
  so.t2_bytes = std::max<uint64_t>(all_kv * 3 / 2, 1ull << 30);
  so.segment_bytes = 256ull << 20;
  so.policy = "lru";
  auto open_store = [&]() -> Result<std::unique_ptr<Store>> { return Store::Open(so); };
  auto store = open_store();
  if (!store.ok()) return store.status();

  auto options_for = [&](Store* s, PlanMode plan, int64_t history) {
    EngineOptions eo;
    eo.max_context = config->max_position_embeddings;
    eo.chunk_tokens = o.chunk_tokens;
    eo.kv_pool_tokens = (history + 2 * o.new_tokens + 2 * o.chunk_tokens) / o.chunk_tokens * o.chunk_tokens + o.chunk_tokens;
    eo.max_batch = 1;
    eo.store = s;
    eo.plan = plan;
    eo.hint_window = 0;  // nothing prefetched behind the measurement's back
    // Only turn 1 saves (the history): a measured run stores nothing a later one could hit.
    eo.save_prompt = eo.save_generated = false;
    return eo;
  };

  // The conversation of history `h`, and its prompts: the history plus `n` new tokens drawn
  // by `salt`. Every measurement of repeat r uses the prompt the recompute's repeat r used.
  const int64_t vocab = config->vocab_size;
  auto history_of = [&](int64_t h) { return RandomTokens(o.seed * 1000 + static_cast<uint64_t>(h), h, vocab); };
  auto prompt_of = [&](const std::vector<uint32_t>& history, uint64_t salt, int64_t n) {
    auto prompt = history;
    const auto fresh = RandomTokens(salt, n, vocab);
    prompt.insert(prompt.end(), fresh.begin(), fresh.end());
    return prompt;
  };
  auto repeat_salt = [&](int64_t h, int r) { return o.seed * 7777 + static_cast<uint64_t>(h) * 31 + r; };

  // Warm-up: CUDA context, cuBLAS handles, kernels.
  {
    Progress("warm-up");
    Engine e(model, options_for(nullptr, PlanMode::kRecompute, 1024));
    (void)Generate(e, RandomTokens(o.seed + 99, std::min<int64_t>(1024, longest), vocab));
  }

  // (a) Full recompute for every history first: the planner's prefill model is fitted on them.
  planner::LoadPlanner fit({});
  std::vector<Measured> recompute(o.histories.size());
  for (size_t i = 0; i < o.histories.size(); ++i) {
    const int64_t h = o.histories[i];
    const auto history = history_of(h);
    Engine e(model, options_for(nullptr, PlanMode::kRecompute, h));
    for (int r = 0; r < o.repeats; ++r) {
      const auto prompt = prompt_of(history, repeat_salt(h, r), o.new_tokens);
      Progress("history " + std::to_string(h) + ": full recompute, run " + std::to_string(r + 1));
      Run run = Generate(e, prompt);
      if (!run.r.status.ok()) return Status(run.r.status.code(), "recompute: " + run.r.status.message());
      fit.ObservePrefill(h + o.new_tokens, 0, run.r.forward_ms / 1e3);
      recompute[i].Add(run);
    }
  }
  const planner::PrefillModel prefill = fit.prefill_model();
  out["prefill_model"] = {{"per_token_us", prefill.per_token_s * 1e6}, {"per_pair_ns", prefill.per_pair_s * 1e9}};

  double t2_read_gbps = 0, copy_gbps = 0;  // measured by the T2 runs, used by the planner runs
  bool t2_direct_io = true;                // every cold T2 read bypassed the page cache
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < o.histories.size(); ++i) {
    const int64_t h = o.histories[i];
    const auto history = history_of(h);
    auto prompt_for = [&](int r) { return prompt_of(history, repeat_salt(h, r), o.new_tokens); };
    // Turn 1 saves the history (T1, and T2 behind).
    {
      Progress("history " + std::to_string(h) + ": saving turn 1");
      EngineOptions eo = options_for(store->get(), PlanMode::kLoad, h);
      eo.save_prompt = true;
      Engine e(model, eo);
      Run run = Generate(e, history);
      if (!run.r.status.ok()) return run.r.status;
      e.WaitForSaves();
      KVAULT_RETURN_IF_ERROR((*store)->Flush());
    }
    // (b) T1 hits.
    const double new_ms = prefill.Seconds(o.new_tokens, h) * 1e3;
    Measured t1;
    t1.new_compute_ms = new_ms;
    t1.device_copies = cuda;
    {
      // A fresh engine (a zeroed pool) per run, so that a load that went wrong cannot hide
      // behind KV a previous run left in the pages; `keeper` holds the store's page-locking.
      Engine keeper(model, options_for(store->get(), PlanMode::kLoad, o.chunk_tokens));
      for (int r = 0; r < o.repeats; ++r) {
        Engine e(model, options_for(store->get(), PlanMode::kLoad, h));
        Progress("history " + std::to_string(h) + ": T1 hit, run " + std::to_string(r + 1));
        t1.Add(Generate(e, prompt_for(r)));
      }
      // Overlap: at the longest history, enough new tokens that their compute could hide the
      // whole load (the "whenever the compute is long enough").
      if (h == longest && o.overlap_new_tokens > 0) {
        Measured ov;
        ov.new_compute_ms = prefill.Seconds(o.overlap_new_tokens, h) * 1e3;
        ov.device_copies = cuda;
        const auto prompt = prompt_of(history, o.seed * 4242 + static_cast<uint64_t>(h), o.overlap_new_tokens);
        Engine e(model, options_for(store->get(), PlanMode::kLoad, h + o.overlap_new_tokens));
        Progress("history " + std::to_string(h) + ": T1 hit with " + std::to_string(o.overlap_new_tokens) + " new tokens");
        ov.Add(Generate(e, prompt));
        out["overlap"] = {{"history", h},
                          {"new_tokens", o.overlap_new_tokens},
                          {"ttft_ms", ov.ttft_ms[0]},
                          {"new_tokens_compute_ms", ov.new_compute_ms},
                          {"load_copy_ms", ov.runs[0].r.load_copy_ms},
                          {"hit_tokens_t1", ov.runs[0].r.hit_tokens_t1},
                          {"load_hidden_fraction", ov.hidden.empty() ? 0.0 : ov.hidden[0]}};
      }
    }
    // (c) T2 hits, cold: a reopened store (empty DRAM) reads the history with O_DIRECT.
    // (d) The planner over the same cold T2, with the rates of (c) and the prefill of (a).
    Measured t2, planned;
    t2.new_compute_ms = planned.new_compute_ms = new_ms;
    t2.device_copies = planned.device_copies = cuda;
    for (int r = 0; r < 2 * o.repeats; ++r) {
      const bool plan = r >= o.repeats;
      store->reset();
      store = open_store();
      if (!store.ok()) return store.status();
      EngineOptions eo = options_for(store->get(), plan ? PlanMode::kAuto : PlanMode::kLoad, h);
      if (plan) {
        eo.planner.fixed_prefill = prefill;
        eo.planner.fixed_t2_read_gbps = t2_read_gbps;
        eo.planner.fixed_copy_gbps = copy_gbps;
      }
      Engine e(model, eo);
      Progress("history " + std::to_string(h) + (plan ? ": planner (cold T2), run " : ": T2 hit (cold), run ") +
               std::to_string(r % o.repeats + 1));
      Run run = Generate(e, prompt_for(r % o.repeats));
      (plan ? planned : t2).Add(run);
      if (!plan) {
        t2_direct_io = t2_direct_io && (*store)->Stats().t2_direct_io;
        const auto rates = e.load_planner().Plan({}, 1);
        if (rates.t2_read_gbps > 0) t2_read_gbps = rates.t2_read_gbps;
        if (rates.copy_gbps > 0) copy_gbps = rates.copy_gbps;
      }
      e.WaitForSaves();
    }

    const double kv_bytes = static_cast<double>(h) * static_cast<double>(layout.token_bytes());
    nlohmann::json row = {{"history", h}, {"kv_bytes", kv_bytes}};
    const std::vector<Run>& reference = recompute[i].runs;
    row["recompute"] = recompute[i].Summary(reference);
    row["recompute"]["tokens_per_s"] = (h + o.new_tokens) / (Median(recompute[i].ttft_ms) / 1e3);
    row["t1_hit"] = t1.Summary(reference);
    row["t2_hit_cold"] = t2.Summary(reference);
    row["planner"] = planned.Summary(reference);
    const double rec = Median(recompute[i].ttft_ms), t1_ms = Median(t1.ttft_ms), t2_ms = Median(t2.ttft_ms),
                 plan_ms = Median(planned.ttft_ms);
    const double bound = peak > 0 ? 1.25 * kv_bytes / (peak * 1e9) * 1e3 + new_ms : 0;
    row["targets"] = {
        {"t1_bound_ms", bound},
        {"t1_new_tokens_compute_ms", new_ms},
        {"t1_within_bound", bound > 0 && t1_ms <= bound},
        {"t1_reduction_vs_recompute", 1.0 - t1_ms / rec},
        {"planner_over_best", plan_ms / std::min(t2_ms, rec)},
        {"planner_within_5pct", plan_ms <= 1.05 * std::min(t2_ms, rec)},
    };
    rows.push_back(row);
    Progress("history " + std::to_string(h) + ": recompute " + std::to_string(rec) + " ms, T1 " + std::to_string(t1_ms) +
             " ms, T2 " + std::to_string(t2_ms) + " ms, planner " + std::to_string(plan_ms) + " ms");
  }
  out["measured_t2_read_gbps"] = t2_read_gbps;
  // O_DIRECT falls back to buffered I/O where the file system refuses it (tmpfs): then the
  // "cold" T2 reads may come from the page cache.
  out["t2_direct_io"] = t2_direct_io;
  out["measured_copy_gbps"] = copy_gbps;
  out["results"] = rows;
  store->reset();
  if (own_dir) fs::remove_all(dir);

  // The cache must never change the answer: every cached run's first token equals the
  // recompute's, and on fp32 so do its logits (bf16 differs by rounding: reported only).
  std::string failure;
  for (const auto& row : rows) {
    for (const char* k : {"t1_hit", "t2_hit_cold", "planner"}) {
      const bool tokens_ok = row[k]["first_token_match"].get<bool>();
      const bool logits_ok = dtype != torch::kFloat32 || row[k]["max_logit_diff"].get<double>() <= 1e-3;
      if ((!tokens_ok || !logits_ok) && failure.empty()) {
        failure = std::string(k) + " differs from the recompute at history " + std::to_string(row["history"].get<int64_t>());
      }
    }
  }
  // And the measurement is what it says: the T1 runs hit the whole history in DRAM, the T2
  // runs on disk.
  for (const auto& row : rows) {
    const int64_t h = row["history"].get<int64_t>();
    if (failure.empty() && row["t1_hit"]["hit_tokens_t1_min"].get<int64_t>() != h) failure = "a T1 run did not hit the whole history";
    if (failure.empty() && row["t2_hit_cold"]["hit_tokens_t2_min"].get<int64_t>() != h) failure = "a T2 run did not hit the whole history on disk";
  }
  out["pass"] = failure.empty();
  if (!o.json.empty() && o.json != "-") {
    std::ofstream f(o.json);
    f << out.dump(2) << "\n";
    if (!f) return Status::IOError("cannot write " + o.json);
  }
  std::cout << out.dump() << std::endl;
  if (!failure.empty()) return Status::Corruption(failure);
  return Status::OK();
}

}  // namespace

int RunGpuTtftBench(const GpuTtftBenchOptions& options) {
  try {
    Status st = Bench(options);
    if (!st.ok()) {
      std::fprintf(stderr, "kvault bench gpu-ttft: %s\n", st.ToString().c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvault bench gpu-ttft: %s\n", e.what());
    return 1;
  }
}

}  // namespace kvault

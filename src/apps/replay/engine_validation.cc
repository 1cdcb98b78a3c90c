#include "apps/replay/engine_validation.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "apps/runtime_setup.h"
#include "engine/weights.h"
#include "kvault/env.h"
#include "replay/simulator.h"
#include "replay/trace.h"

namespace kvault::replay {
namespace {

using Clock = std::chrono::steady_clock;
using engine::Engine;
using engine::EngineOptions;
using engine::RequestResult;
using engine::SamplingParams;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvault replay --engine: %s\n", what.c_str());
  return 1;
}

std::vector<uint32_t> PromptOf(const TraceRequest& r, uint32_t vocab) {
  std::vector<uint32_t> tokens;
  tokens.reserve(r.input_tokens);
  for (const TraceChunk& c : r.chunks) {
    for (uint32_t t = 0; t < c.tokens; ++t) tokens.push_back(TokenAt(c.stream, uint64_t(c.stream_begin) + t, vocab));
  }
  return tokens;
}

// Best-of-3 single-thread memcpy of 64 MiB, GB/s: what the engine's loader copies at on CPU.
double MeasureMemcpyGbps() {
  const size_t n = 64u << 20;
  std::vector<char> a(n, 1), b(n, 2);
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    best = std::max(best, double(n) / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

// Write then O_DIRECT-read 64 MiB under `dir` in pieces of `record` bytes (one chunk's
// record, as the store reads and writes them): the T2 bandwidths the store sees there. The
// probe goes through Env, as the store's I/O does (buffered + fdatasync where O_DIRECT is
// refused). A failed probe reports 1 GB/s both ways.
std::pair<double, double> MeasureDiskGbps(const std::string& dir, size_t record) {
  const size_t piece = (record + kDirectIoAlignment - 1) / kDirectIoAlignment * kDirectIoAlignment;
  const size_t n = (64u << 20) / piece * piece;
  const std::string path = dir + "/.probe";
  void* buf = nullptr;
  if (posix_memalign(&buf, kDirectIoAlignment, piece) != 0) return {1.0, 1.0};
  std::memset(buf, 7, piece);
  double write_gbps = 1.0, read_gbps = 1.0;
  Env* env = Env::Default();
  (void)env->RemoveFile(path);  // a fresh file: a leftover's blocks would skew the writes
  FileOpenOptions fo;
  fo.create = true;
  fo.writable = true;
  fo.use_io_uring = false;  // one piece at a time, as measured before
  auto file = env->OpenFile(path, fo);
  if (file.ok()) {
    const IoSlice slice{buf, piece};
    auto t0 = Clock::now();
    bool ok = true;
    for (size_t off = 0; off < n && ok; off += piece) {
      const WriteOp op{off, {slice}};
      ok = (*file)->WriteBatch({&op, 1}).ok();
    }
    ok = ok && (*file)->Sync().ok();
    if (ok) write_gbps = double(n) / Seconds(t0, Clock::now()) / 1e9;
    t0 = Clock::now();
    for (size_t off = 0; off < n && ok; off += piece) ok = (*file)->Read(off, {&slice, 1}).ok();
    if (ok) read_gbps = double(n) / Seconds(t0, Clock::now()) / 1e9;
    (void)(*file)->Close();
    (void)env->RemoveFile(path);
  }
  std::free(buf);
  return {read_gbps, write_gbps};
}

// Weights a prompt token multiplies through (the layers' projections; not the embedding
// lookup, and the LM head runs for the last token only).
double MatmulParams(const engine::ModelWeights& w) {
  double n = 0;
  for (const auto& l : w.layers) {
    for (const auto* t : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      if (t->defined()) n += double(t->numel());
    }
  }
  return n;
}

struct CalibrationSample {
  double weight_flops, attention_flops, seconds;
};

// Least squares of seconds = k + weight_flops / weight_rate + attention_flops / attention_rate.
// Falls back to one rate and no fixed cost when the three-term fit is not physical.
void FitCostModel(const std::vector<CalibrationSample>& samples, CostModel* cost) {
  double m[3][4] = {};  // normal equations [A^T A | A^T y] for columns (w, a, 1)
  for (const auto& s : samples) {
    const double x[3] = {s.weight_flops, s.attention_flops, 1.0};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) m[i][j] += x[i] * x[j];
      m[i][3] += x[i] * s.seconds;
    }
  }
  // Column scaling keeps the elimination well conditioned (FLOPs are ~1e9, the constant 1).
  double scale[3];
  for (int j = 0; j < 3; ++j) scale[j] = m[j][j] > 0 ? 1.0 / std::sqrt(m[j][j]) : 1.0;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[i][j] *= scale[i] * scale[j];
    m[i][3] *= scale[i];
  }
  bool ok = true;
  for (int c = 0; c < 3 && ok; ++c) {  // Gauss-Jordan with partial pivoting
    int p = c;
    for (int r = c + 1; r < 3; ++r) {
      if (std::fabs(m[r][c]) > std::fabs(m[p][c])) p = r;
    }
    if (std::fabs(m[p][c]) < 1e-12) {
      ok = false;
      break;
    }
    std::swap(m[c], m[p]);
    for (int r = 0; r < 3; ++r) {
      if (r == c) continue;
      const double f = m[r][c] / m[c][c];
      for (int k = c; k < 4; ++k) m[r][k] -= f * m[c][k];
    }
  }
  const double per_weight = ok ? m[0][3] / m[0][0] * scale[0] : 0;
  const double per_attention = ok ? m[1][3] / m[1][1] * scale[1] : 0;
  const double fixed = ok ? m[2][3] / m[2][2] * scale[2] : 0;
  if (ok && per_weight > 0 && per_attention > 0 && fixed >= 0) {
    cost->prefill_tflops = 1.0 / per_weight / 1e12;
    cost->attention_tflops = 1.0 / per_attention / 1e12;
    cost->request_overhead_ms = fixed * 1000.0;
    return;
  }
  double flops = 0, seconds = 0;  // one rate through the origin
  for (const auto& s : samples) {
    flops += s.weight_flops + s.attention_flops;
    seconds += s.seconds;
  }
  cost->prefill_tflops = seconds > 0 ? flops / seconds / 1e12 : 1e-3;
  cost->attention_tflops = 0;
  cost->request_overhead_ms = 0;
}


}  // namespace

int EngineValidationMain(const ReplayCliOptions& cli) {
  torch::NoGradGuard no_grad;
  const bool progress = !cli.quiet;
  auto say = [&](const std::string& s) {
    if (progress) std::fprintf(stderr, "replay --engine: %s\n", s.c_str());
  };
  // The flags were checked by ReplayMain.
  if (Status st = apps::WipeStoreDir(cli.data_dir, "--data-dir", /*can_keep=*/false); !st.ok()) {
    std::fprintf(stderr, "kvault replay --engine: %s\n", st.ToString().c_str());
    return 2;
  }
  std::filesystem::create_directories(cli.data_dir);
  const int threads = apps::SetComputeThreads(cli.threads);

  // The model: the demo's tiny Llama with random weights.
  engine::ModelConfig config = engine::ModelConfig::DemoTiny();
  auto model = std::make_shared<const engine::LlamaModel>(config, engine::RandomWeights(config, 0, torch::kFloat32),
                                                          torch::Device(torch::kCPU));
  const uint32_t vocab = static_cast<uint32_t>(config.vocab_size);
  const uint32_t chunk = cli.engine_block_tokens;
  const KvLayout layout = engine::LayoutFor(config, torch::kFloat32, chunk);

  // The trace, scaled so that a 512-token block holds `chunk` tokens.
  TraceOptions to;
  to.chunk_tokens = chunk;
  to.scaled_block_tokens = chunk;
  to.max_requests = cli.engine_requests;
  auto trace_or = LoadTrace(cli.trace_path, to);
  if (!trace_or.ok()) return Fail(trace_or.status().ToString());
  Trace& trace = trace_or.value();
  uint32_t longest = 0;
  for (TraceRequest& r : trace.requests) {
    for (const TraceChunk& c : r.chunks) {
      if (c.stream_begin < 0) return Fail("a chunk straddles two trace blocks; use a block size that the chunk divides");
    }
    longest = std::max(longest, r.input_tokens);
    r.output_tokens = 1;  // TTFT only: one generated token per request
  }
  if (longest + 8 > config.max_position_embeddings) {
    return Fail("the longest scaled prompt (" + std::to_string(longest) + " tokens) exceeds the model's context; lower --engine-block-tokens");
  }
  say("model DemoTiny (random weights, fp32, " + std::to_string(threads) + " threads), " +
      std::to_string(trace.requests.size()) + " requests, chunk " + std::to_string(chunk) + " tokens, longest prompt " +
      std::to_string(longest) + " tokens");

  // Calibrate the cost model on this engine: prefill time = overhead + weight FLOPs / rate +
  // attention FLOPs / attention rate, fitted on prompts without and with a cached prefix.
  ModelShape shape{"demo-tiny", static_cast<uint32_t>(config.num_layers), static_cast<uint32_t>(config.num_heads),
                   static_cast<uint32_t>(config.num_kv_heads), static_cast<uint32_t>(config.head_dim), 4,
                   MatmulParams(model->weights())};
  shape.kv_bytes_per_token_override = layout.token_bytes();
  CostModel cost;
  {
    StoreOptions so;  // DRAM only: the cached prefixes of the calibration prompts
    so.dir = cli.data_dir;
    so.t2_bytes = 0;
    so.t1_bytes = 8 * (uint64_t{longest} + 4 * chunk) * layout.token_bytes() + (64u << 20);
    auto calib_store = Store::Open(so);
    if (!calib_store.ok()) return Fail("calibration store: " + calib_store.status().ToString());
    EngineOptions eo;
    eo.max_context = config.max_position_embeddings;
    eo.chunk_tokens = chunk;
    eo.kv_pool_tokens = 4 * (longest + 4 * chunk);
    eo.max_batch = 1;
    eo.store = calib_store->get();
    eo.save_generated = false;
    Engine calib(model, eo);
    std::vector<CalibrationSample> samples;
    auto prompt = [&](uint64_t stream, uint32_t n) {
      std::vector<uint32_t> p(n);
      for (uint32_t t = 0; t < n; ++t) p[t] = TokenAt(stream, t, vocab);
      return p;
    };
    auto measure = [&](const std::vector<uint32_t>& p, int reps) -> Result<RequestResult> {
      RequestResult r;
      for (int rep = 0; rep < reps; ++rep) {
        SamplingParams sp;
        sp.max_new_tokens = 1;
        r = calib.Generate(p, sp);
        if (!r.status.ok()) return r.status;
        calib.WaitForSaves();
      }
      return r;
    };
    // Without a cached prefix (each size twice: the second run is measured, with its prefix
    // then cached, so a fresh stream per size).
    const uint32_t sizes[] = {std::max(16u, longest / 16), std::max(32u, longest / 4), std::max(64u, longest / 2), longest};
    uint64_t stream = 0xca11b;
    for (uint32_t n : sizes) {
      (void)measure(prompt(stream + 1000, n), 1);  // warm-up on another stream
      auto r = measure(prompt(stream++, n), 1);
      if (!r.ok()) return Fail("calibration prefill: " + r.status().ToString());
      samples.push_back({shape.WeightFlops(n), shape.AttentionFlops(n, 0), r->ttft_ms / 1000.0});
      say("calibration: " + std::to_string(n) + " new tokens in " + std::to_string(r->ttft_ms) + " ms");
    }
    // After a cached prefix: the prompt is cached first, then extended.
    const uint32_t cached_sizes[][2] = {{longest / 2, 32}, {longest * 3 / 4, 128}, {longest - 64, 64}};
    for (const auto& cs : cached_sizes) {
      const uint32_t c = cs[0] / chunk * chunk, n = cs[1];
      if (c == 0) continue;
      std::vector<uint32_t> full = prompt(stream++, c + n);
      if (!measure(std::vector<uint32_t>(full.begin(), full.begin() + c), 1).ok()) return Fail("calibration prefill failed");
      auto r = measure(full, 1);
      if (!r.ok()) return Fail("calibration prefill: " + r.status().ToString());
      const uint64_t hit = static_cast<uint64_t>(r->hit_tokens), computed = c + n - hit;
      samples.push_back({shape.WeightFlops(computed), shape.AttentionFlops(computed, hit), r->ttft_ms / 1000.0});
      say("calibration: " + std::to_string(computed) + " new tokens after " + std::to_string(hit) + " cached in " +
          std::to_string(r->ttft_ms) + " ms");
    }
    FitCostModel(samples, &cost);
  }
  cost.pcie_gbps = MeasureMemcpyGbps();
  std::tie(cost.t2_read_gbps, cost.t2_write_gbps) = MeasureDiskGbps(cli.data_dir, 4096 + layout.chunk_bytes(chunk));
  cost.decode_ms_per_token = 0;
  say("calibrated: prefill " + std::to_string(cost.prefill_tflops * 1000) + " GFLOP/s (attention " +
      std::to_string((cost.attention_tflops > 0 ? cost.attention_tflops : cost.prefill_tflops) * 1000) + " GFLOP/s) + " +
      std::to_string(cost.request_overhead_ms) + " ms per request; memcpy " + std::to_string(cost.pcie_gbps) +
      " GB/s; disk read " + std::to_string(cost.t2_read_gbps) + " GB/s, write " + std::to_string(cost.t2_write_gbps) + " GB/s");

  // Capacities: a fraction of the requests' unique KV, but DRAM at least a few requests.
  const double unique_bytes = double(trace.unique_tokens) * double(layout.token_bytes());
  const double fraction = cli.cache_fraction > 0 ? cli.cache_fraction : 0.3;
  const StoreOptions defaults;
  const uint64_t page = defaults.page_bytes;
  const uint64_t chunk_alloc = (layout.chunk_bytes(chunk) + page - 1) / page * page;
  const uint64_t min_dram = 3 * ((longest + chunk - 1) / chunk + 2) * chunk_alloc;
  const uint64_t dram = std::max<uint64_t>(min_dram, uint64_t(unique_bytes * fraction * cli.t1_share));
  const uint64_t ssd = std::max<uint64_t>(4 * min_dram, uint64_t(unique_bytes * fraction * (1 - cli.t1_share)));

  // Run the requests through the engine at their arrival times.
  std::vector<double> measured(trace.requests.size(), -1);
  std::vector<double> measured_service(trace.requests.size(), 0);  // lookup + forward: TTFT minus queueing
  uint64_t hit_t1 = 0, hit_t2 = 0, prompt_tokens = 0;
  StoreStats stats;
  {
    StoreOptions so;
    so.dir = cli.data_dir;
    so.t1_bytes = dram;
    so.t2_bytes = ssd;
    so.policy = cli.engine_policy;
    auto store_or = Store::Open(so);
    if (!store_or.ok()) return Fail("opening the store: " + store_or.status().ToString());
    std::unique_ptr<Store> store = std::move(store_or.value());
    EngineOptions eo;
    eo.max_context = config.max_position_embeddings;
    eo.chunk_tokens = chunk;
    eo.kv_pool_tokens = 4 * (longest + 4 * chunk);
    eo.max_batch = 1;
    eo.store = store.get();
    eo.save_generated = false;  // the trace's next turn carries its own blocks
    eo.hint_window = cli.window;
    Engine engine(model, eo);
    say("running " + std::to_string(trace.requests.size()) + " requests through the engine (policy " + cli.engine_policy +
        ", DRAM " + std::to_string(dram >> 20) + " MiB, SSD " + std::to_string(ssd >> 20) + " MiB)");
    const double first = trace.requests.front().arrival_ms;
    const auto t0 = Clock::now();
    size_t next = 0, done = 0;
    auto last_report = t0;
    while (done < trace.requests.size()) {
      const double now_s = Seconds(t0, Clock::now());
      while (next < trace.requests.size() && (trace.requests[next].arrival_ms - first) / 1000.0 / cli.speed <= now_s) {
        const size_t i = next++;
        SamplingParams sp;
        sp.max_new_tokens = 1;
        // The loop submits between steps: a request that arrived during a prefill is submitted
        // late, and that wait is part of its TTFT.
        const double late_ms =
            std::max(0.0, Seconds(t0, Clock::now()) - (trace.requests[i].arrival_ms - first) / 1000.0 / cli.speed) * 1000.0;
        engine.Submit(PromptOf(trace.requests[i], vocab), sp, [&, i, late_ms](RequestResult r) {
          ++done;
          if (!r.status.ok()) return;
          measured[i] = late_ms + r.ttft_ms;
          measured_service[i] = r.lookup_ms + r.forward_ms;
          hit_t1 += r.hit_tokens_t1;
          hit_t2 += r.hit_tokens_t2;
          prompt_tokens += r.prompt_tokens;
        });
      }
      if (!engine.Step() && next < trace.requests.size()) {
        const double wait = (trace.requests[next].arrival_ms - first) / 1000.0 / cli.speed - Seconds(t0, Clock::now());
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, 0.05)));
      }
      if (progress && Seconds(last_report, Clock::now()) > 2) {
        last_report = Clock::now();
        say(std::to_string(done) + "/" + std::to_string(trace.requests.size()) + " requests");
      }
    }
    engine.WaitForSaves();
    stats = store->Stats();
  }
  for (size_t i = 0; i < measured.size(); ++i) {
    if (measured[i] < 0) return Fail("request " + std::to_string(i) + " failed in the engine");
  }

  // The simulator on the same requests, capacities, policy and calibrated costs.
  ReplayOptions ro;
  ro.model = shape;
  ro.cost = cost;
  ro.t1_bytes = dram;
  ro.t2_bytes = ssd;
  ro.page_bytes = defaults.page_bytes;
  ro.policy = cli.engine_policy;
  ro.window = cli.window;
  ro.speed = cli.speed;
  ro.engines = 1;  // one engine loop, one request prefilled at a time
  auto sim_or = RunReplay(trace, ro);
  if (!sim_or.ok()) return Fail("simulator: " + sim_or.status().ToString());
  const ReplayResult& sim = sim_or.value();

  double abs_err = 0;
  for (size_t i = 0; i < measured.size(); ++i) abs_err += std::fabs(sim.ttft_ms[i] - measured[i]);
  double measured_mean = 0, sim_mean = 0;
  for (size_t i = 0; i < measured.size(); ++i) measured_mean += measured[i], sim_mean += sim.ttft_ms[i];
  measured_mean /= double(measured.size());
  sim_mean /= double(measured.size());
  auto rel = [](double s, double m) { return m > 0 ? (s - m) / m : 0.0; };
  double measured_service_mean = 0, sim_service_mean = 0;
  for (size_t i = 0; i < measured.size(); ++i) {
    measured_service_mean += measured_service[i] / double(measured.size());
    sim_service_mean += sim.service_ms[i] / double(measured.size());
  }
  const double meas_hit = double(hit_t1 + hit_t2) / std::max<double>(1, double(prompt_tokens));

  nlohmann::json j;
  j["requests"] = measured.size();
  j["policy"] = cli.engine_policy;
  j["window"] = cli.window;
  j["model"] = "DemoTiny (random weights, fp32, CPU)";
  j["chunk_tokens"] = chunk;
  j["dram_mib"] = dram >> 20;
  j["ssd_mib"] = ssd >> 20;
  j["calibration"] = {{"prefill_gflops", cost.prefill_tflops * 1000},
                      {"attention_gflops", (cost.attention_tflops > 0 ? cost.attention_tflops : cost.prefill_tflops) * 1000},
                      {"request_overhead_ms", cost.request_overhead_ms},
                      {"memcpy_gbps", cost.pcie_gbps},
                      {"disk_read_gbps", cost.t2_read_gbps},
                      {"disk_write_gbps", cost.t2_write_gbps}};
  j["measured"] = {{"ttft_mean_ms", measured_mean},
                   {"service_mean_ms", measured_service_mean},
                   {"ttft_p50_ms", Percentile(measured, 50)},
                   {"ttft_p90_ms", Percentile(measured, 90)},
                   {"ttft_p99_ms", Percentile(measured, 99)},
                   {"token_hit_rate", meas_hit},
                   {"token_hit_rate_by_tier", {{"t1", double(hit_t1) / std::max<double>(1, double(prompt_tokens))},
                                               {"t2", double(hit_t2) / std::max<double>(1, double(prompt_tokens))}}},
                   {"prefetches", stats.prefetches}};
  j["simulated"] = {{"ttft_mean_ms", sim_mean},
                    {"service_mean_ms", sim_service_mean},
                    {"ttft_p50_ms", sim.Percentile(50)},
                    {"ttft_p90_ms", sim.Percentile(90)},
                    {"ttft_p99_ms", sim.Percentile(99)},
                    {"token_hit_rate", sim.token_hit_rate()},
                    {"token_hit_rate_by_tier", {{"t1", double(sim.hit_tokens_t1) / std::max<double>(1, double(sim.prompt_tokens))},
                                                {"t2", double(sim.hit_tokens_t2) / std::max<double>(1, double(sim.prompt_tokens))}}}};
  j["error"] = {{"ttft_mean_rel", rel(sim_mean, measured_mean)},
                {"service_mean_rel", rel(sim_service_mean, measured_service_mean)},
                {"ttft_p50_rel", rel(sim.Percentile(50), Percentile(measured, 50))},
                {"ttft_p90_rel", rel(sim.Percentile(90), Percentile(measured, 90))},
                {"ttft_per_request_mean_abs_ms", abs_err / double(measured.size())},
                {"token_hit_rate_abs", sim.token_hit_rate() - meas_hit}};
  if (cli.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%zu requests through the engine (DemoTiny on CPU) vs the simulator calibrated on it\n", measured.size());
    std::printf("%-10s %10s %10s %10s %10s %8s\n", "", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "hit");
    std::printf("%-10s %10.1f %10.1f %10.1f %10.1f %7.1f%%\n", "measured", measured_mean, Percentile(measured, 50),
                Percentile(measured, 90), Percentile(measured, 99), 100 * meas_hit);
    std::printf("%-10s %10.1f %10.1f %10.1f %10.1f %7.1f%%\n", "simulated", sim_mean, sim.Percentile(50), sim.Percentile(90),
                sim.Percentile(99), 100 * sim.token_hit_rate());
    std::printf("service time (TTFT minus queueing), mean: measured %.1f ms, simulated %.1f ms (%+.1f%%)\n",
                measured_service_mean, sim_service_mean, 100 * rel(sim_service_mean, measured_service_mean));
    std::printf("error: mean %+.1f%%, p50 %+.1f%%, p90 %+.1f%%, hit rate %+.1f points\n", 100 * rel(sim_mean, measured_mean),
                100 * rel(sim.Percentile(50), Percentile(measured, 50)), 100 * rel(sim.Percentile(90), Percentile(measured, 90)),
                100 * (sim.token_hit_rate() - meas_hit));
  }
  return 0;
}

}  // namespace kvault::replay

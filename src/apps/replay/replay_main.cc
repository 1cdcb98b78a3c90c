#include "apps/replay/replay_main.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "apps/replay/engine_validation.h"
#include "kvault/kv_codec.h"
#include "replay/report.h"
#include "replay/simulator.h"
#include "replay/trace.h"
#include "store/eviction_policy.h"

namespace kvault::replay {
namespace {

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int Fail(const Status& st, int code = 1) {
  std::fprintf(stderr, "kvault replay: %s\n", st.ToString().c_str());
  return code;
}

}  // namespace

int ReplayMain(const ReplayCliOptions& cli) {
  // Validate options before reading the trace.
  auto shape = ModelPreset(cli.model);
  if (!shape.ok()) return Fail(shape.status(), 2);
  shape->kv_bytes_per_token_override = cli.kv_bytes_per_token;
  if (Status st = cli.cost.Validate(); !st.ok()) return Fail(st, 2);
  std::vector<std::string> policies = cli.policies == "all" ? PolicyNames() : SplitComma(cli.policies);
  if (policies.empty()) return Fail(Status::InvalidArgument("--policy names no policy"), 2);
  for (const std::string& p : policies) {
    AccessWindow w;
    struct NoFuture final : FutureOracle {
      uint64_t Now() const override { return 0; }
      uint64_t NextUse(const ChunkKey&) const override { return UINT64_MAX; }
    } oracle;
    if (auto made = MakePolicy(p, {&w, &oracle}); !made.ok()) return Fail(made.status(), 2);
  }
  if (cli.engine) {
    AccessWindow w;
    if (auto made = MakePolicy(cli.engine_policy, {&w, nullptr}); !made.ok()) {
      return Fail(Status::InvalidArgument("--engine-policy: " + made.status().message()), 2);
    }
    if (cli.engine_requests == 0) return Fail(Status::InvalidArgument("--engine-requests must be at least 1"), 2);
    if (cli.engine_block_tokens == 0 || 512 % cli.engine_block_tokens != 0) {
      return Fail(Status::InvalidArgument("--engine-block-tokens must divide 512"), 2);
    }
  }
  if (cli.engines == 0) return Fail(Status::InvalidArgument("--engines must be at least 1"), 2);
  if (!(cli.prefetch_budget_gib >= 0) || cli.prefetch_budget_gib > 1e6) {
    return Fail(Status::InvalidArgument("--prefetch-budget-gib must be >= 0"), 2);
  }
  if (!(cli.t1_gib <= 1e7) || !(cli.t2_gib <= 1e9)) return Fail(Status::InvalidArgument("capacities are implausibly large"), 2);
  if (cli.chunk_tokens == 0) return Fail(Status::InvalidArgument("--chunk-tokens must be positive"), 2);
  if (!(cli.speed > 0)) return Fail(Status::InvalidArgument("--speed must be positive"), 2);
  if (!(cli.cache_fraction >= 0) || !(cli.t1_share > 0) || cli.t1_share > 1 || !(cli.t1_gib >= 0) || !(cli.t2_gib >= 0)) {
    return Fail(Status::InvalidArgument("capacities must be non-negative and --t1-share in (0, 1]"), 2);
  }
  if (cli.page_kib == 0 || cli.page_kib % 4 != 0) return Fail(Status::InvalidArgument("--page-kib must be a positive multiple of 4"), 2);

  KvCodec t2_codec = KvCodec::kNone, t3_codec = KvCodec::kNone;
  if (Status st = ParseKvCodec(cli.t2_codec, &t2_codec); !st.ok()) return Fail(Status::InvalidArgument("--t2-codec: " + st.message()), 2);
  if (Status st = ParseKvCodec(cli.t3_codec, &t3_codec); !st.ok()) return Fail(Status::InvalidArgument("--t3-codec: " + st.message()), 2);
  if (t3_codec != KvCodec::kNone) {
    return Fail(Status::InvalidArgument("--t3-codec: kvault replay models T1 and T2 only (no cluster tier); it must be none"), 2);
  }
  if (!(cli.decode_gbps >= 0) || !(cli.encode_gbps >= 0)) {
    return Fail(Status::InvalidArgument("--decode-gbps and --encode-gbps must be >= 0 (0: measured)"), 2);
  }
  if (t2_codec != KvCodec::kNone) {
    if (cli.engine) return Fail(Status::InvalidArgument("--engine runs the store with raw tiers: --t2-codec must be none"), 2);
    if (Status st = KvCodecSupports(t2_codec, shape->Layout(cli.chunk_tokens)); !st.ok()) {
      return Fail(Status::InvalidArgument("--t2-codec with --layout " + cli.model + ": " + st.message()), 2);
    }
  }

  if (cli.engine) return EngineValidationMain(cli);

  // The codec's rates: the flags, or measured once here (one thread, a synthetic chunk of the
  // replay's layout) for every policy's run.
  CostModel cost = cli.cost;
  std::string decode_source = "flag", encode_source = "flag";
  cost.codec_decode_gbps = cli.decode_gbps;
  cost.codec_encode_gbps = cli.encode_gbps;
  if (t2_codec != KvCodec::kNone && (cli.decode_gbps == 0 || cli.encode_gbps == 0)) {
    auto rates = MeasureCodecRates(t2_codec, shape->Layout(cli.chunk_tokens), cli.chunk_tokens);
    if (!rates.ok()) return Fail(rates.status());
    if (cli.decode_gbps == 0) {
      cost.codec_decode_gbps = rates->decode_gbps;
      decode_source = "measured";
    }
    if (cli.encode_gbps == 0) {
      cost.codec_encode_gbps = rates->encode_gbps;
      encode_source = "measured";
    }
    if (!cli.quiet) {
      std::fprintf(stderr, "replay: %s codec on this machine, one thread: decode %.2f GB/s, encode %.2f GB/s of raw KV\n",
                   KvCodecName(t2_codec), rates->decode_gbps, rates->encode_gbps);
    }
  }

  TraceOptions to;
  to.chunk_tokens = cli.chunk_tokens;
  to.max_requests = cli.max_requests;
  to.repeat = cli.repeat;
  if (!cli.quiet) std::fprintf(stderr, "replay: reading %s\n", cli.trace_path.c_str());
  auto trace = LoadTrace(cli.trace_path, to);
  if (!trace.ok()) return Fail(trace.status(), trace.status().code() == Code::kInvalidArgument ? 2 : 1);
  const double unique_bytes = double(trace->unique_tokens) * double(shape->kv_bytes_per_token());
  if (!cli.quiet) {
    std::fprintf(stderr, "replay: %zu requests (%s), %.1f GiB of unique KV, %.1f%% of prompt tokens reusable with an infinite cache\n",
                 trace->requests.size(), trace->format.c_str(), unique_bytes / double(1ull << 30),
                 100.0 * double(trace->reusable_tokens) / double(trace->prompt_tokens));
  }

  std::vector<ReplayRun> runs;
  for (const std::string& policy : policies) {
    ReplayRun run;
    ReplayOptions& o = run.options;
    o.model = shape.value();
    o.cost = cost;
    o.t2_codec = t2_codec;
    o.codec_decode_source = decode_source;
    o.codec_encode_source = encode_source;
    if (cli.cache_fraction > 0) {
      o.t1_bytes = static_cast<uint64_t>(unique_bytes * cli.cache_fraction * cli.t1_share);
      o.t2_bytes = static_cast<uint64_t>(unique_bytes * cli.cache_fraction * (1 - cli.t1_share));
    } else {
      o.t1_bytes = static_cast<uint64_t>(cli.t1_gib * double(1ull << 30));
      o.t2_bytes = static_cast<uint64_t>(cli.t2_gib * double(1ull << 30));
    }
    o.page_bytes = cli.page_kib * 1024;
    o.policy = policy;
    o.window = cli.window;
    o.engines = cli.engines;
    o.prefetch_budget_bytes = static_cast<uint64_t>(cli.prefetch_budget_gib * double(1ull << 30));
    o.speed = cli.speed;
    if (!cli.quiet) {
      o.progress = [policy](size_t done, size_t total) {
        std::fprintf(stderr, "replay [%s]: %zu/%zu requests\n", policy.c_str(), done, total);
      };
    }
    auto result = RunReplay(trace.value(), o);
    if (!result.ok()) return Fail(result.status());
    run.result = std::move(result.value());
    if (!cli.quiet) {
      std::fprintf(stderr, "replay [%s]: done in %.2f s: hit %.1f%%, p90 TTFT %.0f ms\n", policy.c_str(),
                   run.result.wall_s, 100 * run.result.token_hit_rate(), run.result.Percentile(90));
    }
    runs.push_back(std::move(run));
  }

  if (!cli.chart_path.empty() && cli.chart_path != "-") {
    std::ofstream f(cli.chart_path);
    f << QueueChartSvg("kvault replay: queued requests over time (" + cli.model + ")", runs);
    if (!f) return Fail(Status::IOError("cannot write chart " + cli.chart_path));
  }
  if (cli.json) {
    if (runs.size() == 1) {
      std::printf("%s\n", RunJson(trace.value(), cli.trace_path, runs[0]).dump(2).c_str());
    } else {
      nlohmann::json all;
      all["runs"] = nlohmann::json::array();
      for (const ReplayRun& run : runs) all["runs"].push_back(RunJson(trace.value(), cli.trace_path, run));
      std::printf("%s\n", all.dump(2).c_str());
    }
  } else {
    const ReplayOptions& o = runs[0].options;
    std::printf("trace %s: %zu requests, unique KV %.1f GiB, infinite-cache hit rate %.1f%%\n", cli.trace_path.c_str(),
                trace->requests.size(), unique_bytes / double(1ull << 30),
                100.0 * double(trace->reusable_tokens) / double(trace->prompt_tokens));
    std::printf("model %s (%llu B/token), %u engines, DRAM %.1f GiB, SSD %.1f GiB, window %u, speed %.2fx\n\n",
                cli.model.c_str(), static_cast<unsigned long long>(o.model.kv_bytes_per_token()), o.engines,
                double(o.t1_bytes) / double(1ull << 30), double(o.t2_bytes) / double(1ull << 30), o.window, o.speed);
    if (t2_codec != KvCodec::kNone) {
      std::printf("T2 codec %s (%.2fx smaller than raw), decode %.2f GB/s (%s), encode %.2f GB/s (%s)\n\n",
                  KvCodecName(t2_codec),
                  double(o.model.Layout(trace->chunk_tokens).chunk_bytes(trace->chunk_tokens)) /
                      double(EncodedChunkBytes(t2_codec, o.model.Layout(trace->chunk_tokens), trace->chunk_tokens)),
                  cost.codec_decode_gbps, decode_source.c_str(), cost.codec_encode_gbps, encode_source.c_str());
    }
    std::printf("%s", RunTable(runs).c_str());
  }
  return 0;
}

}  // namespace kvault::replay

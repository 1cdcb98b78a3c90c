#include "replay/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "charts/svg_chart.h"

namespace kvault::replay {
namespace {

constexpr double kGiB = double(1ull << 30);

double Round(double v, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(v * s) / s;
}

// At most `points` samples of the queue series (the maximum of each bucket, so peaks stay).
std::vector<std::pair<double, uint32_t>> Downsample(const std::vector<std::pair<double, uint32_t>>& q, size_t points) {
  if (q.size() <= points) return q;
  std::vector<std::pair<double, uint32_t>> out;
  const size_t per = (q.size() + points - 1) / points;
  for (size_t b = 0; b < q.size(); b += per) {
    std::pair<double, uint32_t> best = q[b];
    for (size_t k = b; k < std::min(q.size(), b + per); ++k) best.second = std::max(best.second, q[k].second);
    out.push_back(best);
  }
  return out;
}

}  // namespace

nlohmann::json RunJson(const Trace& trace, const std::string& trace_path, const ReplayRun& run) {
  const ReplayOptions& o = run.options;
  const ReplayResult& r = run.result;
  const double prompt = std::max<double>(1, double(r.prompt_tokens));
  nlohmann::json j;
  j["trace"] = {{"path", trace_path},
                {"format", trace.format},
                {"requests", trace.requests.size()},
                {"prompt_tokens", trace.prompt_tokens},
                {"unique_kv_gib", Round(double(trace.unique_tokens) * double(o.model.kv_bytes_per_token()) / kGiB, 2)},
                {"infinite_cache_hit_rate", Round(double(trace.reusable_tokens) / std::max<double>(1, double(trace.prompt_tokens)), 4)}};
  j["config"] = {{"policy", o.policy},
                 {"window", o.window},
                 {"engines", o.engines},
                 {"model", o.model.name},
                 {"kv_bytes_per_token", o.model.kv_bytes_per_token()},
                 {"dram_gib", Round(double(o.t1_bytes) / kGiB, 3)},
                 {"ssd_gib", Round(double(o.t2_bytes) / kGiB, 3)},
                 {"speed", o.speed},
                 {"prefill_tflops", o.cost.prefill_tflops},
                 {"attention_tflops", o.cost.attention_tflops > 0 ? o.cost.attention_tflops : o.cost.prefill_tflops},
                 {"pcie_gbps", o.cost.pcie_gbps},
                 {"ssd_read_gbps", o.cost.t2_read_gbps},
                 {"ssd_write_gbps", o.cost.t2_write_gbps},
                 {"decode_ms_per_token", o.cost.decode_ms_per_token}};
  // The codecs: T2's (replay models no T3: always none), its ratio on a full chunk (raw /
  // stored payload bytes) and the rates charged; with codec none there is nothing to charge.
  const bool encoded = o.t2_codec != KvCodec::kNone;
  const uint32_t chunk_tokens = trace.chunk_tokens;
  const KvLayout layout = o.model.Layout(chunk_tokens);
  const double stored = encoded ? double(EncodedChunkBytes(o.t2_codec, layout, chunk_tokens)) : 0;
  j["t2_codec"] = KvCodecName(o.t2_codec);
  j["t3_codec"] = KvCodecName(KvCodec::kNone);
  j["t2_codec_ratio"] = encoded && stored > 0 ? Round(double(layout.chunk_bytes(chunk_tokens)) / stored, 3) : 1.0;
  j["decode_gbps"] = encoded ? Round(o.cost.codec_decode_gbps, 3) : 0.0;
  j["decode_gbps_source"] = encoded ? o.codec_decode_source : "unused";
  j["encode_gbps"] = encoded ? Round(o.cost.codec_encode_gbps, 3) : 0.0;
  j["encode_gbps_source"] = encoded ? o.codec_encode_source : "unused";
  j["policy"] = o.policy;
  j["token_hit_rate"] = Round(r.token_hit_rate(), 4);
  j["token_hit_rate_by_tier"] = {{"t1", Round(double(r.hit_tokens_t1) / prompt, 4)},
                                 {"t2", Round(double(r.hit_tokens_t2) / prompt, 4)}};
  j["reused_token_rate"] = Round(double(r.reused_tokens) / prompt, 4);
  j["ttft_p50_ms"] = Round(r.Percentile(50), 2);
  j["ttft_p90_ms"] = Round(r.Percentile(90), 2);
  j["ttft_p99_ms"] = Round(r.Percentile(99), 2);
  double mean = 0;
  for (double v : r.ttft_ms) mean += v;
  j["ttft_mean_ms"] = Round(mean / std::max<size_t>(1, r.ttft_ms.size()), 2);
  j["throughput_tokens_per_s"] = Round(double(r.prompt_tokens + r.output_tokens) / std::max(1e-9, r.makespan_s), 1);
  const double first_arrival_s = trace.requests.front().arrival_ms / 1000.0 / o.speed;
  j["prefill_throughput_tokens_per_s"] = Round(double(r.prompt_tokens) / std::max(1e-9, r.last_prefill_end_s - first_arrival_s), 1);
  j["makespan_s"] = Round(r.makespan_s, 3);
  j["engine_busy_fraction"] = Round(r.prefill_busy_s / std::max(1e-9, o.engines * (r.last_prefill_end_s - first_arrival_s)), 4);
  uint32_t qmax = 0;
  double qsum = 0;
  for (const auto& [t, len] : r.queue) {
    qmax = std::max(qmax, len);
    qsum += len;
  }
  nlohmann::json series = nlohmann::json::array();
  for (const auto& [t, len] : Downsample(r.queue, 200)) series.push_back({Round(t, 3), len});
  j["queue_length"] = {{"max", qmax}, {"mean", Round(qsum / std::max<size_t>(1, r.queue.size()), 2)}, {"series_s", series}};
  j["planner"] = {{"load", r.planner_loads}, {"recompute", r.planner_recomputes}, {"split", r.planner_splits}};
  j["bytes"] = {{"t1_to_gpu", r.bytes_t1_to_gpu},     {"t2_to_t1", r.bytes_t2_to_t1},
                {"prefetched", r.bytes_prefetched},  {"gpu_to_t1", r.bytes_gpu_to_t1},
                {"t1_to_t2", r.bytes_t1_to_t2}};
  j["writes_dropped"] = r.writes_dropped;
  j["evictions"] = {{"t1", r.t1_evictions}, {"t2", r.t2_evictions}};
  j["t1_put_failures"] = r.t1_put_failures;
  j["wall_s"] = Round(r.wall_s, 3);
  return j;
}

std::string RunTable(const std::vector<ReplayRun>& runs) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-8s %7s %7s %7s %8s %10s %10s %10s %12s\n", "policy", "hit", "hit_t1", "hit_t2",
                "reused", "p50_ms", "p90_ms", "p99_ms", "tokens/s");
  out += line;
  for (const ReplayRun& run : runs) {
    const ReplayResult& r = run.result;
    const double prompt = std::max<double>(1, double(r.prompt_tokens));
    std::snprintf(line, sizeof line, "%-8s %6.1f%% %6.1f%% %6.1f%% %7.1f%% %10.1f %10.1f %10.1f %12.0f\n",
                  run.options.policy.c_str(), 100 * r.token_hit_rate(), 100 * double(r.hit_tokens_t1) / prompt,
                  100 * double(r.hit_tokens_t2) / prompt, 100 * double(r.reused_tokens) / prompt, r.Percentile(50),
                  r.Percentile(90), r.Percentile(99), double(r.prompt_tokens + r.output_tokens) / std::max(1e-9, r.makespan_s));
    out += line;
  }
  return out;
}

std::string QueueChartSvg(const std::string& title, const std::vector<ReplayRun>& runs) {
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  const double w = 900, h = 420, left = 70, right = 20, top = 50, bottom = 60;
  double tmax = 1e-9, qmax = 1;
  for (const ReplayRun& run : runs) {
    for (const auto& [t, len] : run.result.queue) {
      tmax = std::max(tmax, t);
      qmax = std::max(qmax, double(len));
    }
  }
  auto x = [&](double t) { return left + t / tmax * (w - left - right); };
  auto y = [&](double q) { return top + (1 - q / qmax) * (h - top - bottom); };
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\">\n"
                "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                w, h, w, h);
  s += buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"28\" font-family=\"sans-serif\" font-size=\"16\">%s</text>\n", left,
                charts::XmlEscape(title).c_str());
  s += buf;
  // Axes and ticks.
  std::snprintf(buf, sizeof buf, "<path d=\"M%.1f %.1f V%.1f H%.1f\" stroke=\"black\" fill=\"none\"/>\n", left, top,
                h - bottom, w - right);
  s += buf;
  for (int k = 0; k <= 4; ++k) {
    const double q = qmax * k / 4, t = tmax * k / 4;
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" text-anchor=\"end\">%.0f</text>\n"
                  "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" text-anchor=\"middle\">%.0f</text>\n",
                  left - 6, y(q) + 4, q, x(t), h - bottom + 16, t);
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"middle\">time (s)</text>\n"
                "<text x=\"16\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"12\" transform=\"rotate(-90 16 %.1f)\" "
                "text-anchor=\"middle\">queued requests</text>\n",
                (left + w - right) / 2, h - 20, (top + h - bottom) / 2, (top + h - bottom) / 2);
  s += buf;
  for (size_t k = 0; k < runs.size(); ++k) {
    const char* color = kColors[k % 6];
    std::string d;
    for (const auto& [t, len] : Downsample(runs[k].result.queue, 600)) {
      std::snprintf(buf, sizeof buf, "%s%.1f %.1f", d.empty() ? "M" : " L", x(t), y(len));
      d += buf;
    }
    s += "<path d=\"" + d + "\" stroke=\"" + color + "\" fill=\"none\" stroke-width=\"1.2\"/>\n";
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"12\">%s: hit %.1f%%, p90 TTFT %.0f ms</text>\n",
                  w - right - 300, top + 4 + 18.0 * k, color, w - right - 282, top + 14 + 18.0 * k,
                  runs[k].options.policy.c_str(), 100 * runs[k].result.token_hit_rate(), runs[k].result.Percentile(90));
    s += buf;
  }
  s += "</svg>\n";
  return s;
}

}  // namespace kvault::replay

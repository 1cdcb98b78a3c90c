#include "serve_load_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace kvault::serve_load {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double Mean(const std::vector<double>& v) {
  if (v.empty()) return kNaN;
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double PerSecond(double count, double elapsed_s) { return elapsed_s > 0 ? count / elapsed_s : 0; }

// A figure for the JSON: null when there is none (NaN: a percentile or mean of nothing).
nlohmann::json Figure(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return kNaN;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (values[hi] - values[lo]) * (pos - static_cast<double>(lo));
}

LoadSummary Summarize(const std::vector<RequestRecord>& records, double slo_ttft_ms, double elapsed_s) {
  LoadSummary s;
  s.elapsed_s = elapsed_s;
  s.slo_ttft_ms = slo_ttft_ms;
  std::vector<double> ttft, tpot, e2e, itl;
  int max_turn = 0;
  for (const RequestRecord& r : records) max_turn = std::max(max_turn, r.turn);
  std::vector<std::vector<double>> turn_ttft(static_cast<size_t>(max_turn));
  s.turns.resize(static_cast<size_t>(max_turn));
  for (int t = 0; t < max_turn; ++t) s.turns[static_cast<size_t>(t)].turn = t + 1;

  for (const RequestRecord& r : records) {
    ++s.sent;
    TurnSummary* turn = r.turn >= 1 ? &s.turns[static_cast<size_t>(r.turn - 1)] : nullptr;
    if (turn) ++turn->sent;
    if (!r.ok) {
      ++s.failed;
      ++s.errors[r.error.empty() ? "unknown" : r.error];
      continue;
    }
    ++s.completed;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    if (r.ttft_ms <= slo_ttft_ms) ++s.met_slo;
    if (r.completion_tokens >= 2) tpot.push_back((r.e2e_ms - r.ttft_ms) / static_cast<double>(r.completion_tokens - 1));
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    s.completion_tokens += r.completion_tokens;
    if (r.prompt_tokens >= 0) {
      ++s.usage_reported;
      s.prompt_tokens += r.prompt_tokens;
      s.cached_tokens += std::max<int64_t>(r.cached_tokens, 0);
    }
    if (turn) {
      ++turn->completed;
      turn_ttft[static_cast<size_t>(r.turn - 1)].push_back(r.ttft_ms);
      if (r.prompt_tokens >= 0) {
        turn->prompt_tokens += r.prompt_tokens;
        turn->cached_tokens += std::max<int64_t>(r.cached_tokens, 0);
      }
    }
  }
  s.ttft_p50_ms = Percentile(ttft, 50);
  s.ttft_p90_ms = Percentile(ttft, 90);
  s.ttft_p99_ms = Percentile(ttft, 99);
  s.ttft_mean_ms = Mean(ttft);
  s.tpot_ms = Mean(tpot);
  s.tpot_p50_ms = Percentile(tpot, 50);
  s.itl_p50_ms = Percentile(itl, 50);
  s.itl_p99_ms = Percentile(itl, 99);
  s.itl_max_ms = Percentile(itl, 100);
  s.e2e_p50_ms = Percentile(e2e, 50);
  s.e2e_p90_ms = Percentile(e2e, 90);
  s.e2e_p99_ms = Percentile(e2e, 99);
  s.cached_token_fraction =
      s.prompt_tokens > 0 ? static_cast<double>(s.cached_tokens) / static_cast<double>(s.prompt_tokens) : 0;
  s.goodput_rps = PerSecond(static_cast<double>(s.met_slo), elapsed_s);
  s.throughput_rps = PerSecond(static_cast<double>(s.completed), elapsed_s);
  s.output_tokens_per_s = PerSecond(static_cast<double>(s.completion_tokens), elapsed_s);
  for (size_t t = 0; t < s.turns.size(); ++t) {
    s.turns[t].ttft_p50_ms = Percentile(turn_ttft[t], 50);
    s.turns[t].ttft_p90_ms = Percentile(turn_ttft[t], 90);
  }
  return s;
}

bool MeetsSlo(const LoadSummary& s, double max_failed_fraction) {
  if (s.completed == 0 || !(s.ttft_p90_ms <= s.slo_ttft_ms)) return false;
  return static_cast<double>(s.failed) <= max_failed_fraction * static_cast<double>(s.sent);
}

double MaxRateAtSlo(const std::vector<SweepPoint>& points) {
  double best = 0;
  for (const SweepPoint& p : points) {
    if (!p.meets_slo) break;
    best = std::max(best, p.rate);
  }
  return best;
}

nlohmann::json ToJson(const LoadSummary& s) {
  nlohmann::json turns = nlohmann::json::array();
  for (const TurnSummary& t : s.turns) {
    turns.push_back({{"turn", t.turn}, {"sent", t.sent}, {"completed", t.completed},
                     {"prompt_tokens", t.prompt_tokens}, {"cached_tokens", t.cached_tokens},
                     {"ttft_p50_ms", Figure(t.ttft_p50_ms)}, {"ttft_p90_ms", Figure(t.ttft_p90_ms)}});
  }
  return {{"sent", s.sent},
          {"completed", s.completed},
          {"failed", s.failed},
          {"errors", s.errors},
          {"elapsed_s", s.elapsed_s},
          {"ttft_p50_ms", Figure(s.ttft_p50_ms)},
          {"ttft_p90_ms", Figure(s.ttft_p90_ms)},
          {"ttft_p99_ms", Figure(s.ttft_p99_ms)},
          {"ttft_mean_ms", Figure(s.ttft_mean_ms)},
          {"tpot_ms", Figure(s.tpot_ms)},
          {"tpot_p50_ms", Figure(s.tpot_p50_ms)},
          {"itl_p50_ms", Figure(s.itl_p50_ms)},
          {"itl_p99_ms", Figure(s.itl_p99_ms)},
          {"itl_max_ms", Figure(s.itl_max_ms)},
          {"e2e_p50_ms", Figure(s.e2e_p50_ms)},
          {"e2e_p90_ms", Figure(s.e2e_p90_ms)},
          {"e2e_p99_ms", Figure(s.e2e_p99_ms)},
          {"prompt_tokens", s.prompt_tokens},
          {"cached_tokens", s.cached_tokens},
          {"completion_tokens", s.completion_tokens},
          {"usage_reported", s.usage_reported},
          {"cached_token_fraction", s.cached_token_fraction},
          {"slo_ttft_ms", s.slo_ttft_ms},
          {"met_slo", s.met_slo},
          {"goodput_rps", s.goodput_rps},
          {"throughput_rps", s.throughput_rps},
          {"output_tokens_per_s", s.output_tokens_per_s},
          {"by_turn", turns}};
}

}  // namespace kvault::serve_load

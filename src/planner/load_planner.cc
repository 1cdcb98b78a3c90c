#include "planner/load_planner.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvault::planner {

const char* PlanKindName(PlanKind kind) {
  switch (kind) {
    case PlanKind::kLoad: return "load";
    case PlanKind::kRecompute: return "recompute";
    case PlanKind::kSplit: return "split";
  }
  return "?";
}

std::string LoadPlan::ToJson() const {
  nlohmann::json j = {{"plan", PlanKindName(kind)},
                      {"cached_chunks", cached_chunks},
                      {"recompute_chunks", recompute_chunks},
                      {"recompute_tokens", recompute_tokens},
                      {"predicted_ms", predicted_ms},
                      {"load_all_ms", load_all_ms},
                      {"recompute_all_ms", recompute_all_ms},
                      {"t2_read_gbps", t2_read_gbps},
                      {"t3_read_gbps", t3_read_gbps},
                      {"copy_gbps", copy_gbps},
                      {"prefill_per_token_us", prefill_per_token_us},
                      {"prefill_per_pair_ns", prefill_per_pair_ns},
                      {"reason", reason}};
  return j.dump();
}

double PrefillModel::Seconds(int64_t n, int64_t cached) const {
  if (n <= 0) return 0;
  const double dn = static_cast<double>(n);
  return dn * (per_token_s + per_pair_s * (static_cast<double>(cached) + dn / 2));
}

LoadPlanner::LoadPlanner(Options options) : options_(options) {}

void LoadPlanner::ObservePrefill(int64_t n, int64_t cached, double seconds) {
  if (n <= 0 || !(seconds > 0) || !std::isfinite(seconds)) return;
  const double x1 = static_cast<double>(n);
  const double x2 = x1 * (static_cast<double>(cached) + x1 / 2);
  std::lock_guard<std::mutex> lock(mu_);
  const double keep = 1 - options_.recent_weight;
  for (double* s : {&s11_, &s12_, &s22_, &s1y_, &s2y_, &sy_, &sx1_}) *s *= keep;
  s11_ += x1 * x1;
  s12_ += x1 * x2;
  s22_ += x2 * x2;
  s1y_ += x1 * seconds;
  s2y_ += x2 * seconds;
  sy_ += seconds;
  sx1_ += x1;
}

void LoadPlanner::ObserveRead(Tier tier, uint64_t bytes, double seconds) {
  if (bytes == 0 || !(seconds > 0)) return;
  std::lock_guard<std::mutex> lock(mu_);
  (tier == Tier::kCluster ? t3_ : t2_).Add(static_cast<double>(bytes) / seconds, options_.recent_weight);
}

void LoadPlanner::ObserveCopy(uint64_t bytes, double seconds) {
  if (bytes == 0 || !(seconds > 0)) return;
  std::lock_guard<std::mutex> lock(mu_);
  copy_.Add(static_cast<double>(bytes) / seconds, options_.recent_weight);
}

PrefillModel LoadPlanner::prefill_model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PrefillModelLocked();
}

PrefillModel LoadPlanner::PrefillModelLocked() const {
  if (options_.fixed_prefill.known()) return options_.fixed_prefill;
  PrefillModel m;
  if (s11_ <= 0) return m;
  // Least squares of seconds = a*n + b*n*(c + n/2); one term alone when the observations
  // cannot tell the two apart (e.g. all of one shape) or the pair gives a negative term.
  const double det = s11_ * s22_ - s12_ * s12_;
  if (det > 1e-9 * s11_ * s22_) {
    const double a = (s1y_ * s22_ - s2y_ * s12_) / det;
    const double b = (s2y_ * s11_ - s1y_ * s12_) / det;
    if (a >= 0 && b >= 0) {
      m.per_token_s = a;
      m.per_pair_s = b;
      return m;
    }
    if (a < 0 && s22_ > 0) {
      m.per_pair_s = std::max(0.0, s2y_ / s22_);
      return m;
    }
  }
  m.per_token_s = std::max(0.0, s1y_ / s11_);
  return m;
}

double LoadPlanner::ReadRateLocked(Tier tier) const {
  if (tier == Tier::kCluster) return options_.fixed_t3_read_gbps > 0 ? options_.fixed_t3_read_gbps * 1e9 : t3_.bytes_per_s;
  return options_.fixed_t2_read_gbps > 0 ? options_.fixed_t2_read_gbps * 1e9 : t2_.bytes_per_s;
}

double LoadPlanner::CopyRateLocked() const {
  return options_.fixed_copy_gbps > 0 ? options_.fixed_copy_gbps * 1e9 : copy_.bytes_per_s;
}

std::vector<LoadPlanner::Split> LoadPlanner::SplitsLocked(std::span<const PlanChunk> chunks) const {
  // splits[k]: head = chunks [0, k), tail = [k, n); built from the tail backwards.
  std::vector<Split> splits(chunks.size() + 1);
  for (size_t i = chunks.size(); i-- > 0;) {
    Split& s = splits[i];
    s = splits[i + 1];
    s.tail_bytes += static_cast<double>(chunks[i].bytes);
    if (chunks[i].tier == Tier::kDisk || chunks[i].tier == Tier::kCluster) {
      const double rate = ReadRateLocked(chunks[i].tier);
      if (rate > 0) s.tail_read_s += static_cast<double>(chunks[i].bytes) / rate;
    }
  }
  int64_t head = 0;
  for (size_t k = 0; k <= chunks.size(); ++k) {
    splits[k].head_tokens = head;
    if (k < chunks.size()) head += chunks[k].tokens;
  }
  return splits;
}

double LoadPlanner::PredictLocked(const Split& split, int64_t cached, int64_t new_tokens, bool all_recomputed,
                                  const PrefillModel& m) const {
  const double copy_rate = CopyRateLocked();
  const double copy = copy_rate > 0 ? split.tail_bytes / copy_rate : 0;
  const double head = m.Seconds(split.head_tokens, 0);
  const double fresh = m.Seconds(new_tokens, cached);
  const double layers = std::max(1, options_.layers);
  if (all_recomputed) return head + fresh;
  return std::max({head + fresh, split.tail_read_s + copy / layers + fresh, split.tail_read_s + copy + fresh / layers});
}

double LoadPlanner::PredictSeconds(std::span<const PlanChunk> chunks, int64_t new_tokens, size_t k) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::vector<Split> splits = SplitsLocked(chunks);
  k = std::min(k, chunks.size());
  return PredictLocked(splits[k], splits.back().head_tokens, new_tokens, k == chunks.size(), PrefillModelLocked());
}

LoadPlan LoadPlanner::Plan(std::span<const PlanChunk> chunks, int64_t new_tokens) const {
  std::lock_guard<std::mutex> lock(mu_);
  const PrefillModel m = PrefillModelLocked();
  LoadPlan plan;
  plan.t2_read_gbps = ReadRateLocked(Tier::kDisk) / 1e9;
  plan.t3_read_gbps = ReadRateLocked(Tier::kCluster) / 1e9;
  plan.copy_gbps = CopyRateLocked() / 1e9;
  plan.prefill_per_token_us = m.per_token_s * 1e6;
  plan.prefill_per_pair_ns = m.per_pair_s * 1e9;
  plan.cached_chunks = chunks.size();
  if (chunks.empty()) {
    plan.reason = "nothing cached";
    return plan;
  }
  const size_t n = chunks.size();
  const std::vector<Split> splits = SplitsLocked(chunks);
  const int64_t cached = splits.back().head_tokens;
  auto predict = [&](size_t k) { return PredictLocked(splits[k], cached, new_tokens, k == n, m); };
  plan.load_all_ms = predict(0) * 1e3;
  plan.recompute_all_ms = predict(n) * 1e3;
  if (!m.known()) {
    plan.predicted_ms = plan.load_all_ms;
    plan.reason = "no prefill measured yet: load";
    return plan;
  }
  size_t best = 0;
  double best_s = plan.load_all_ms / 1e3;
  for (size_t k = 1; k <= n; ++k) {
    const double t = predict(k);
    if (t < best_s * (1 - 1e-9) && t < plan.load_all_ms / 1e3 * (1 - options_.min_gain)) {
      best = k;
      best_s = t;
    }
  }
  plan.recompute_chunks = best;
  for (size_t i = 0; i < best; ++i) plan.recompute_tokens += chunks[i].tokens;
  plan.predicted_ms = best_s * 1e3;
  plan.kind = best == 0 ? PlanKind::kLoad : best == n ? PlanKind::kRecompute : PlanKind::kSplit;
  plan.reason = best == 0 ? "loading is fastest"
                : best == n ? "recomputing is faster than loading"
                            : "recomputing the head while the tail loads beats both";
  return plan;
}

}  // namespace kvault::planner

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
                      {"tail_recompute_chunks", tail_recompute_chunks},
                      {"predicted_ms", predicted_ms},
                      {"load_all_ms", load_all_ms},
                      {"recompute_all_ms", recompute_all_ms},
                      {"t2_read_gbps", t2_read_gbps},
                      {"t3_read_gbps", t3_read_gbps},
                      {"copy_gbps", copy_gbps},
                      {"decode_gbps", decode_gbps},
                      {"t2_backlog_ms", t2_backlog_ms},
                      {"prefill_per_token_us", prefill_per_token_us},
                      {"prefill_per_pair_ns", prefill_per_pair_ns},
                      {"reason", reason}};
  return j.dump();
}

double PipelinedPrefillSeconds(double head_s, double read_s, double copy_s, double fresh_s, int layers) {
  const double l = std::max(1, layers);
  return std::max({head_s + fresh_s, read_s + copy_s / l + fresh_s, read_s + copy_s + fresh_s / l});
}

double PrefillModel::Seconds(int64_t n, int64_t cached) const {
  if (n <= 0) return 0;
  const double dn = static_cast<double>(n);
  return dn * (per_token_s + per_pair_s * (static_cast<double>(cached) + dn / 2));
}

PlanChunk StoredPlanChunk(Tier tier, const KvLayout& layout, uint32_t tokens, KvCodec codec) {
  PlanChunk c;
  c.tier = tier;
  c.tokens = tokens;
  c.bytes = layout.chunk_bytes(tokens);
  if (tier == Tier::kT2 || tier == Tier::kT3) {
    c.codec = codec;
    c.stored_bytes = EncodedChunkBytes(codec, layout, tokens);
  }
  return c;
}

LoadPlanner::LoadPlanner(Options options) : options_(options) {}

void LoadPlanner::ObservePrefill(int64_t n, int64_t cached, double seconds) {
  if (n <= 0 || !(seconds > 0) || !std::isfinite(seconds)) return;
  const double x1 = static_cast<double>(n);
  const double x2 = x1 * (static_cast<double>(cached) + x1 / 2);
  MutexLock lock(mu_);
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
  MutexLock lock(mu_);
  (tier == Tier::kT3 ? t3_ : t2_).Add(static_cast<double>(bytes) / seconds, options_.recent_weight);
}

void LoadPlanner::ObserveDecode(KvCodec codec, uint64_t raw_bytes, double seconds) {
  const auto id = static_cast<size_t>(codec);
  if (codec == KvCodec::kNone || id >= kCodecIds || raw_bytes == 0 || !(seconds > 0)) return;
  MutexLock lock(mu_);
  decode_[id].Add(static_cast<double>(raw_bytes) / seconds, options_.recent_weight);
}

void LoadPlanner::ObserveCopy(uint64_t bytes, double seconds) {
  if (bytes == 0 || !(seconds > 0)) return;
  MutexLock lock(mu_);
  copy_.Add(static_cast<double>(bytes) / seconds, options_.recent_weight);
}

PrefillModel LoadPlanner::prefill_model() const {
  MutexLock lock(mu_);
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
  if (tier == Tier::kT3) return options_.fixed_t3_read_gbps > 0 ? options_.fixed_t3_read_gbps * 1e9 : t3_.bytes_per_s;
  return options_.fixed_t2_read_gbps > 0 ? options_.fixed_t2_read_gbps * 1e9 : t2_.bytes_per_s;
}

double LoadPlanner::DecodeRateLocked(KvCodec codec) const {
  const auto id = static_cast<size_t>(codec);
  if (codec == KvCodec::kNone || id >= kCodecIds) return 0;
  return options_.fixed_decode_gbps > 0 ? options_.fixed_decode_gbps * 1e9 : decode_[id].bytes_per_s;
}

double LoadPlanner::ChunkReadSecondsLocked(const PlanChunk& c) const {
  const double rate = ReadRateLocked(c.tier);
  const double stored = static_cast<double>(c.stored_bytes > 0 ? c.stored_bytes : c.bytes);
  double s = rate > 0 ? stored / rate : 0;
  if (c.codec != KvCodec::kNone) {
    const double decode = DecodeRateLocked(c.codec);
    if (decode > 0) s += static_cast<double>(c.bytes) / decode;
  }
  return s;
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
    if (chunks[i].tier == Tier::kT2) ++s.tail_t2_chunks;
    if (chunks[i].tier == Tier::kT2 || chunks[i].tier == Tier::kT3) s.tail_read_s += ChunkReadSecondsLocked(chunks[i]);
  }
  int64_t head = 0;
  for (size_t k = 0; k <= chunks.size(); ++k) {
    splits[k].head_tokens = head;
    if (k < chunks.size()) head += chunks[k].tokens;
  }
  return splits;
}

double LoadPlanner::PredictLocked(const std::vector<Split>& splits, size_t k, size_t j, int64_t new_tokens,
                                  const PrefillModel& m, double t2_backlog_s) const {
  // splits[x] sums the chunks [x, n), so [k, j) is splits[k] less splits[j] (zero when j = n).
  const Split& from = splits[k];
  const Split& to = splits[j];
  const int64_t kept = to.head_tokens, cached = splits.back().head_tokens;
  const double copy_rate = CopyRateLocked();
  const double copy = copy_rate > 0 ? (from.tail_bytes - to.tail_bytes) / copy_rate : 0;
  const double head = m.Seconds(from.head_tokens, 0);
  const double fresh = m.Seconds(new_tokens + (cached - kept), kept);
  double read = from.tail_read_s - to.tail_read_s;
  if (from.tail_t2_chunks > to.tail_t2_chunks) read += t2_backlog_s;
  return PipelinedPrefillSeconds(head, read, copy, fresh, options_.layers);
}

double LoadPlanner::PredictSeconds(std::span<const PlanChunk> chunks, int64_t new_tokens, size_t k,
                                   size_t tail_recompute_chunks, double t2_backlog_s) const {
  MutexLock lock(mu_);
  const std::vector<Split> splits = SplitsLocked(chunks);
  const size_t j = chunks.size() - std::min(tail_recompute_chunks, chunks.size());
  k = std::min(k, j);
  return PredictLocked(splits, k, j, new_tokens, PrefillModelLocked(), std::max(0.0, t2_backlog_s));
}

LoadPlan LoadPlanner::Plan(std::span<const PlanChunk> chunks, int64_t new_tokens, double t2_backlog_s) const {
  t2_backlog_s = std::isfinite(t2_backlog_s) ? std::max(0.0, t2_backlog_s) : 0.0;
  MutexLock lock(mu_);
  const PrefillModel m = PrefillModelLocked();
  LoadPlan plan;
  plan.t2_read_gbps = ReadRateLocked(Tier::kT2) / 1e9;
  plan.t3_read_gbps = ReadRateLocked(Tier::kT3) / 1e9;
  plan.copy_gbps = CopyRateLocked() / 1e9;
  for (const PlanChunk& c : chunks) {
    if ((c.tier == Tier::kT2 || c.tier == Tier::kT3) && c.codec != KvCodec::kNone) {
      plan.decode_gbps = DecodeRateLocked(c.codec) / 1e9;
      break;
    }
  }
  plan.t2_backlog_ms = t2_backlog_s * 1e3;
  plan.prefill_per_token_us = m.per_token_s * 1e6;
  plan.prefill_per_pair_ns = m.per_pair_s * 1e9;
  plan.cached_chunks = chunks.size();
  if (chunks.empty()) {
    plan.reason = "nothing cached";
    return plan;
  }
  const size_t n = chunks.size();
  const std::vector<Split> splits = SplitsLocked(chunks);
  auto predict = [&](size_t k, size_t j) REQUIRES(mu_) { return PredictLocked(splits, k, j, new_tokens, m, t2_backlog_s); };
  plan.load_all_ms = predict(0, n) * 1e3;
  plan.recompute_all_ms = predict(n, n) * 1e3;
  if (!m.known()) {
    plan.predicted_ms = plan.load_all_ms;
    plan.reason = "no prefill measured yet: load";
    return plan;
  }
  // Candidates in order of what they recompute; a later one must be strictly faster, and
  // anything recomputed must beat loading all by min_gain.
  size_t best_k = 0, best_j = n;
  double best_s = plan.load_all_ms / 1e3;
  auto consider = [&](size_t k, size_t j) REQUIRES(mu_) {
    const double t = predict(k, j);
    if (t < best_s * (1 - 1e-9) && t < plan.load_all_ms / 1e3 * (1 - options_.min_gain)) {
      best_k = k;
      best_j = j;
      best_s = t;
    }
  };
  for (size_t k = 1; k <= n; ++k) consider(k, n);
  if (options_.recompute_slow_tail) {
    size_t slow = 0;  // the first T2/T3 chunk
    while (slow < n && chunks[slow].tier != Tier::kT2 && chunks[slow].tier != Tier::kT3) ++slow;
    // slow == 0 keeps nothing: that is recomputing all, already weighed.
    if (slow > 0 && slow < n) {
      for (size_t k = 0; k < slow; ++k) consider(k, slow);
    }
  }
  plan.recompute_chunks = best_k;
  plan.tail_recompute_chunks = n - best_j;
  for (size_t i = 0; i < best_k; ++i) plan.recompute_tokens += chunks[i].tokens;
  plan.predicted_ms = best_s * 1e3;
  plan.kind = best_k == 0 ? PlanKind::kLoad : best_k == n ? PlanKind::kRecompute : PlanKind::kSplit;
  if (best_j < n) {
    plan.reason = best_k == 0 ? "loading the prefix before the first T2/T3 chunk and recomputing the rest is fastest"
                              : "recomputing the head while the prefix before the first T2/T3 chunk loads, and "
                                "recomputing the rest, is fastest";
  } else {
    plan.reason = best_k == 0 ? "loading is fastest"
                  : best_k == n ? "recomputing is faster than loading"
                                : "recomputing the head while the tail loads beats both";
  }
  return plan;
}

}  // namespace kvault::planner

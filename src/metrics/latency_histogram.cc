#include "metrics/latency_histogram.h"

#include <algorithm>
#include <cmath>

namespace kvault {

namespace {

std::array<double, LatencyHistogram::kFiniteBuckets> MakeUpperBounds() {
  std::array<double, LatencyHistogram::kFiniteBuckets> bounds{};
  // Scaling by a power of two is exact, so each bound is the double nearest 2^i µs and prints
  // as a short decimal ("2e-06", "0.016384").
  for (size_t i = 0; i < bounds.size(); ++i) bounds[i] = std::ldexp(1e-6, static_cast<int>(i));
  return bounds;
}

}  // namespace

const std::array<double, LatencyHistogram::kFiniteBuckets>& LatencyHistogram::UpperBounds() {
  static const std::array<double, kFiniteBuckets> bounds = MakeUpperBounds();
  return bounds;
}

size_t LatencyHistogram::BucketIndex(double seconds) {
  if (!(seconds > 0)) return 0;  // negative, zero and NaN
  const auto& bounds = UpperBounds();
  // First bound >= seconds: bounds are inclusive upper edges.
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin());
}

void LatencyHistogram::Observe(double seconds) {
  buckets_[BucketIndex(seconds)].fetch_add(1, std::memory_order_relaxed);
  if (seconds > 0) {
    // Saturate instead of overflowing the conversion for absurd values (and +Inf).
    const double nanos = std::min(seconds * 1e9, 1.8e19);
    sum_nanos_.fetch_add(static_cast<uint64_t>(std::round(nanos)),
                         std::memory_order_relaxed);
  }
}

HistogramSnapshot LatencyHistogram::Snapshot() const {
  HistogramSnapshot snap;
  const auto& bounds = UpperBounds();
  snap.upper_bounds.assign(bounds.begin(), bounds.end());
  snap.cumulative_counts.resize(kBuckets);
  uint64_t running = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    snap.cumulative_counts[i] = running;
  }
  snap.count = running;
  snap.sum_seconds = static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) / 1e9;
  return snap;
}

double LatencyHistogram::Quantile(double q) const { return Snapshot().Quantile(q); }

double HistogramSnapshot::Quantile(double q) const {
  if (count == 0 || cumulative_counts.empty()) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the wanted observation, 1-based, in (0, count].
  const double rank = std::max(q * static_cast<double>(count), 1.0);
  size_t i = 0;
  while (i < cumulative_counts.size() && static_cast<double>(cumulative_counts[i]) < rank) ++i;
  if (i >= upper_bounds.size()) return upper_bounds.empty() ? 0 : upper_bounds.back();  // +Inf
  const double lower = i == 0 ? 0.0 : upper_bounds[i - 1];
  const double upper = upper_bounds[i];
  const uint64_t before = i == 0 ? 0 : cumulative_counts[i - 1];
  const uint64_t in_bucket = cumulative_counts[i] - before;
  // in_bucket > 0: the bucket holds the rank, so its cumulative count rose past `before`.
  const double fraction = (rank - static_cast<double>(before)) / static_cast<double>(in_bucket);
  return lower + (upper - lower) * fraction;
}

}  // namespace kvault

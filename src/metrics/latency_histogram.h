// LatencyHistogram: counts of observed durations in fixed exponential buckets, for the
// Prometheus endpoint (kvault_op_seconds) and for p50/p99 in reports.
//
// Buckets: the finite upper bounds are 1 µs * 2^i for i = 0 .. 24, i.e. 1 µs, 2 µs, 4 µs, ...
// 8.39 s, 16.78 s, then +Inf. A value v lands in the first bucket whose bound b has v <= b
// (Prometheus' "le" semantics), so a bound is inclusive and every value lands in exactly one
// bucket. The bounds are the same for every histogram: series from different processes and ops
// can be summed.
//
// (Not prometheus::Histogram: that takes a mutex per Observe and has no quantile estimate.)
//
// Thread-safety: Observe may be called from any number of threads at once; it is wait-free
// (two relaxed atomic increments, no locks). Snapshot may run concurrently with Observe; it
// sees every Observe that happened-before it and, of those that overlap it, some subset: its
// cumulative counts are always non-decreasing and its count always equals its +Inf bucket,
// but its sum may be a few samples ahead of or behind its count.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvault {

// A copy of a histogram's state at one moment.
struct HistogramSnapshot {
  // The finite upper bounds in seconds, ascending (the +Inf bucket is implicit).
  std::vector<double> upper_bounds;
  // cumulative_counts[i] = observations <= upper_bounds[i]; one more entry at the end for +Inf,
  // which equals `count`. Non-decreasing.
  std::vector<uint64_t> cumulative_counts;
  double sum_seconds = 0;  // sum of the observed values (negative values counted as 0)
  uint64_t count = 0;

  // An estimate of the q-quantile (q in [0, 1]) in seconds, interpolating linearly inside the
  // bucket that holds the rank q * count (the first bucket's lower edge is 0). Values beyond
  // the last finite bound report that bound. 0 when the histogram is empty.
  double Quantile(double q) const;
};

class LatencyHistogram {
 public:
  static constexpr size_t kFiniteBuckets = 25;            // 1 µs .. 2^24 µs
  static constexpr size_t kBuckets = kFiniteBuckets + 1;  // and +Inf

  LatencyHistogram() = default;
  LatencyHistogram(const LatencyHistogram&) = delete;
  LatencyHistogram& operator=(const LatencyHistogram&) = delete;

  // The finite upper bounds in seconds, ascending.
  static const std::array<double, kFiniteBuckets>& UpperBounds();
  // The index of the bucket that `seconds` lands in: 0 .. kFiniteBuckets (the +Inf bucket).
  // Negative values and NaN land in bucket 0 (a clock that went backwards is "fast").
  static size_t BucketIndex(double seconds);

  // Records one duration. Wait-free.
  void Observe(double seconds);

  HistogramSnapshot Snapshot() const;
  // Snapshot().Quantile(q).
  double Quantile(double q) const;

 private:
  // Non-cumulative counts per bucket; the cumulative view is built by Snapshot.
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  // Sum of observed values in whole nanoseconds (exact and atomic; 584 years before it wraps).
  std::atomic<uint64_t> sum_nanos_{0};
};

}  // namespace kvault

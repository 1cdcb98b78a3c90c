// The Prometheus text exposition format (version 0.0.4), and kvault's metrics in it.
//
// PrometheusWriter collects samples grouped by family and renders each family once: its
// "# HELP" and "# TYPE" lines, then all its samples together, families in the order they were
// first added. Names and labels are validated; a bad one is dropped and remembered in status().
//
// RenderStoreMetrics names every StoreStats counter (DESIGN.md §5). The lookup families add up
// (as StoreStats' own counters do, stats.h):
//   sum over tiers of kvault_lookup_tokens_total{result="hit",tier=T}
//     + kvault_lookup_tokens_total{result="miss"} == kvault_lookup_tokens_requested_total
// and likewise for chunks (kvault_lookup_chunks_total, kvault_lookup_chunks_requested_total).
//
// Not prometheus-cpp: its 1.0.1 text serializer writes counters as doubles (inexact above 2^53),
// 16-digit values that do not read back, "Nan", and HELP newlines unescaped; and its registry
// holds live counters, while kvault renders each scrape from a StoreStats snapshot.
//
// Thread-safety: a PrometheusWriter is not thread-safe (one per scrape); the free functions
// are safe to call from any thread on arguments nobody is writing.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvault/stats.h"
#include "kvault/status.h"
#include "metrics/latency_histogram.h"
#include "store/remote_tier.h"

namespace kvault {

enum class MetricType { kCounter, kGauge, kHistogram };

// Label name/value pairs in the order they are written.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*.
bool IsValidMetricName(std::string_view name);
// Label names: [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved by Prometheus).
bool IsValidLabelName(std::string_view name);
// A label value with \ " and newline escaped as \\ \" \n.
std::string EscapeLabelValue(std::string_view value);
// A sample value: integers exactly, other finite values in the shortest form that reads back
// to the same double, and NaN, +Inf, -Inf.
std::string FormatMetricValue(double value);

class PrometheusWriter {
 public:
  // One sample of a counter or gauge family. A family's type is fixed by its first sample;
  // a later sample of another type, a repeated label set, or an invalid name is dropped and
  // recorded in status(). `help` is used from the family's first sample.
  void AddCounter(std::string_view name, std::string_view help, const MetricLabels& labels, uint64_t value);
  void AddCounter(std::string_view name, std::string_view help, const MetricLabels& labels, double value);
  void AddGauge(std::string_view name, std::string_view help, const MetricLabels& labels, double value);
  void AddGauge(std::string_view name, std::string_view help, const MetricLabels& labels, uint64_t value);
  // A histogram: name_bucket{...,le="b"} for every bound and le="+Inf", then name_sum and
  // name_count. `labels` must not contain "le".
  void AddHistogram(std::string_view name, std::string_view help, const MetricLabels& labels,
                    const HistogramSnapshot& snapshot);

  // The exposition text so far (every line ends in '\n').
  std::string Text() const;
  // OK, or the first problem met (the offending sample was left out).
  const Status& status() const { return status_; }

 private:
  struct Family {
    std::string name, help;
    MetricType type;
    std::vector<std::string> lines;   // rendered sample lines, in order
    std::vector<std::string> label_sets;  // rendered label sets seen, to refuse duplicates
  };
  // The family `name`, created with `type` and `help` if new; null (and status_ set) when the
  // name is invalid or the family exists with another type or already has `labels`.
  Family* Prepare(std::string_view name, std::string_view help, MetricType type, const MetricLabels& labels,
                  std::string* rendered_labels);
  void AddScalar(std::string_view name, std::string_view help, MetricType type, const MetricLabels& labels,
                 const std::string& value);
  void Fail(std::string message);

  std::vector<Family> families_;            // in order of first use
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in families_
  Status status_;
};

// Everything in StoreStats, plus the cluster tier client's own stats when `t3` is not null
// (T3 occupancy and budget evictions, request and byte counts, deadline misses).
void AppendStoreMetrics(PrometheusWriter& w, const StoreStats& s, const RemoteTierStats* t3);
std::string RenderStoreMetrics(const StoreStats& s, const RemoteTierStats* t3);

// One histogram of a labelled family, e.g. {"lookup", &lookup_latency} in kvault_op_seconds.
struct NamedHistogram {
  std::string label_value;
  const LatencyHistogram* histogram;  // not null
};
// family{label_name="label_value"} for each entry, e.g.
//   AppendLatencyHistograms(w, "kvault_op_seconds", "Store operation latency.", "op", ops).
void AppendLatencyHistograms(PrometheusWriter& w, std::string_view family, std::string_view help,
                             std::string_view label_name, std::span<const NamedHistogram> histograms);

// A plain, label-free gauge, e.g. {"kvault_connected_clients", "Clients connected.", 3}.
struct NamedGauge {
  std::string name, help;
  double value = 0;
};
void AppendGauges(PrometheusWriter& w, std::span<const NamedGauge> gauges);

// The two above in one text (for a scrape that has no StoreStats to show).
std::string RenderServerMetrics(std::string_view family, std::string_view help, std::string_view label_name,
                                std::span<const NamedHistogram> histograms, std::span<const NamedGauge> gauges);

}  // namespace kvault

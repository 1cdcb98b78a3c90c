#include "metrics/prometheus_text.h"

#include <charconv>
#include <cmath>

namespace kvault {

namespace {

bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// HELP text escapes only backslash and newline (the format's rule).
std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

// {a="x",b="y"} or "" for no labels; `extra` (e.g. le) goes last.
std::string RenderLabels(const MetricLabels& labels, const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return "";
  std::string out = "{";
  bool first = true;
  auto add = [&](const std::pair<std::string, std::string>& kv) {
    if (!first) out += ',';
    first = false;
    out += kv.first;
    out += "=\"";
    out += EscapeLabelValue(kv.second);
    out += '"';
  };
  for (const auto& kv : labels) add(kv);
  if (extra != nullptr) add(*extra);
  out += '}';
  return out;
}

std::string FormatUnsigned(uint64_t value) { return std::to_string(value); }

}  // namespace

bool IsValidMetricName(std::string_view name) {
  if (name.empty() || !(IsNameStart(name[0]) || name[0] == ':')) return false;
  for (char c : name) {
    if (!(IsNameStart(c) || IsDigit(c) || c == ':')) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || !IsNameStart(name[0]) || name.starts_with("__")) return false;
  for (char c : name) {
    if (!(IsNameStart(c) || IsDigit(c))) return false;
  }
  return true;
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integers below 2^53 are exact in a double: print them without an exponent.
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);  // shortest round-trip form
  return ec == std::errc() ? std::string(buf, end) : "NaN";
}

void PrometheusWriter::Fail(std::string message) {
  if (status_.ok()) status_ = Status::InvalidArgument(std::move(message));
}

PrometheusWriter::Family* PrometheusWriter::Prepare(std::string_view name, std::string_view help, MetricType type,
                                                    const MetricLabels& labels, std::string* rendered_labels) {
  if (!IsValidMetricName(name)) {
    Fail("invalid metric name '" + std::string(name) + "'");
    return nullptr;
  }
  for (const auto& [label, value] : labels) {
    if (!IsValidLabelName(label) || (type == MetricType::kHistogram && label == "le")) {
      Fail("invalid label name '" + label + "' on " + std::string(name));
      return nullptr;
    }
  }
  *rendered_labels = RenderLabels(labels);
  auto it = index_.find(name);
  if (it == index_.end()) {
    it = index_.emplace(std::string(name), families_.size()).first;
    families_.push_back(Family{std::string(name), std::string(help), type, {}, {}});
  }
  Family& family = families_[it->second];
  if (family.type != type) {
    Fail("metric " + family.name + " is a " + TypeName(family.type) + ", not a " + TypeName(type));
    return nullptr;
  }
  for (const std::string& seen : family.label_sets) {
    if (seen == *rendered_labels) {
      Fail("duplicate sample " + family.name + *rendered_labels);
      return nullptr;
    }
  }
  family.label_sets.push_back(*rendered_labels);
  return &family;
}

void PrometheusWriter::AddScalar(std::string_view name, std::string_view help, MetricType type,
                                 const MetricLabels& labels, const std::string& value) {
  std::string rendered;
  Family* family = Prepare(name, help, type, labels, &rendered);
  if (family == nullptr) return;
  family->lines.push_back(family->name + rendered + " " + value);
}

void PrometheusWriter::AddCounter(std::string_view name, std::string_view help, const MetricLabels& labels,
                                  uint64_t value) {
  AddScalar(name, help, MetricType::kCounter, labels, FormatUnsigned(value));
}
void PrometheusWriter::AddCounter(std::string_view name, std::string_view help, const MetricLabels& labels,
                                  double value) {
  AddScalar(name, help, MetricType::kCounter, labels, FormatMetricValue(value));
}
void PrometheusWriter::AddGauge(std::string_view name, std::string_view help, const MetricLabels& labels,
                                double value) {
  AddScalar(name, help, MetricType::kGauge, labels, FormatMetricValue(value));
}
void PrometheusWriter::AddGauge(std::string_view name, std::string_view help, const MetricLabels& labels,
                                uint64_t value) {
  AddScalar(name, help, MetricType::kGauge, labels, FormatUnsigned(value));
}

void PrometheusWriter::AddHistogram(std::string_view name, std::string_view help, const MetricLabels& labels,
                                    const HistogramSnapshot& snapshot) {
  if (snapshot.cumulative_counts.size() != snapshot.upper_bounds.size() + 1) {
    Fail("histogram " + std::string(name) + " has " + std::to_string(snapshot.cumulative_counts.size()) +
         " counts for " + std::to_string(snapshot.upper_bounds.size()) + " bounds");
    return;
  }
  std::string rendered;
  Family* family = Prepare(name, help, MetricType::kHistogram, labels, &rendered);
  if (family == nullptr) return;
  std::pair<std::string, std::string> le{"le", ""};
  for (size_t i = 0; i <= snapshot.upper_bounds.size(); ++i) {
    le.second = i < snapshot.upper_bounds.size() ? FormatMetricValue(snapshot.upper_bounds[i]) : "+Inf";
    family->lines.push_back(family->name + "_bucket" + RenderLabels(labels, &le) + " " +
                            FormatUnsigned(snapshot.cumulative_counts[i]));
  }
  family->lines.push_back(family->name + "_sum" + rendered + " " + FormatMetricValue(snapshot.sum_seconds));
  // The +Inf bucket, so that _count always equals it (snapshot.count is the same number).
  family->lines.push_back(family->name + "_count" + rendered + " " +
                          FormatUnsigned(snapshot.cumulative_counts.back()));
}

std::string PrometheusWriter::Text() const {
  std::string out;
  for (const Family& family : families_) {
    out += "# HELP " + family.name + " " + EscapeHelp(family.help) + "\n";
    out += "# TYPE " + family.name + " " + TypeName(family.type) + "\n";
    for (const std::string& line : family.lines) {
      out += line;
      out += '\n';
    }
  }
  return out;
}

namespace {

// One row per tier for the lookup families: a new tier is one more row.
struct TierHits {
  const char* tier;
  uint64_t tokens, chunks;
};

uint64_t SaturatingSub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

}  // namespace

void AppendStoreMetrics(PrometheusWriter& w, const StoreStats& s, const RemoteTierStats* t3) {
  // --- Lookups: hits per tier + misses == requested, in tokens and in chunks (stats.h).
  const TierHits hits[] = {
      {"t1", s.hit_tokens_t1, s.hit_chunks_t1},
      {"t2", s.hit_tokens_t2, s.hit_chunks_t2},
      {"t3", s.hit_tokens_t3, s.hit_chunks_t3},
  };
  w.AddCounter("kvault_lookups_total", "Prefix lookups answered.", {}, s.lookups);
  w.AddCounter("kvault_lookup_tokens_requested_total",
               "Tokens looked up; equals the sum of kvault_lookup_tokens_total over result and tier.", {},
               s.lookup_tokens);
  w.AddCounter("kvault_lookup_chunks_requested_total",
               "Chunks looked up; equals the sum of kvault_lookup_chunks_total over result and tier.", {},
               s.lookup_chunks);
  const char* tokens_help = "Looked-up tokens by result: a hit in a tier, or a miss (to recompute).";
  const char* chunks_help = "Looked-up chunks by result: a hit in a tier, or a miss (to recompute).";
  for (const TierHits& h : hits) {
    w.AddCounter("kvault_lookup_tokens_total", tokens_help, {{"result", "hit"}, {"tier", h.tier}}, h.tokens);
  }
  w.AddCounter("kvault_lookup_tokens_total", tokens_help, {{"result", "miss"}}, s.miss_tokens);
  for (const TierHits& h : hits) {
    w.AddCounter("kvault_lookup_chunks_total", chunks_help, {{"result", "hit"}, {"tier", h.tier}}, h.chunks);
  }
  w.AddCounter("kvault_lookup_chunks_total", chunks_help, {{"result", "miss"}}, s.miss_chunks);

  // --- Payload bytes moved per path.
  const char* bytes_help =
      "Payload bytes moved, by path: put (caller to T1), load (T1 to caller), between tiers, "
      "prefetch (T2 to T1 on a hint), compaction (T2 rewrites), t3_put/t3_get (to and from the cluster tier).";
  const std::pair<const char*, uint64_t> paths[] = {
      {"put", s.bytes_put},
      {"load", s.bytes_loaded},
      {"t1_to_t2", s.bytes_t1_to_t2},
      {"t2_to_t1", s.bytes_t2_to_t1},
      {"prefetch", s.bytes_prefetched},
      {"compaction", s.bytes_compacted},
      {"t3_put", s.bytes_t1_to_t3},
      {"t3_get", s.bytes_t3_to_t1},
  };
  for (const auto& [path, bytes] : paths) w.AddCounter("kvault_bytes_total", bytes_help, {{"path", path}}, bytes);

  // --- Entries.
  w.AddCounter("kvault_puts_total", "Chunks committed by callers, deduplicated ones included.", {}, s.puts);
  w.AddCounter("kvault_puts_deduplicated_total", "Puts of a chunk the store already held (no copy made).", {},
               s.puts_deduplicated);
  const char* evictions_help = "Entries dropped from a tier by its eviction policy or budget.";
  w.AddCounter("kvault_evictions_total", evictions_help, {{"tier", "t1"}}, s.t1_evictions);
  w.AddCounter("kvault_evictions_total", evictions_help, {{"tier", "t2"}}, s.t2_evictions);
  if (t3 != nullptr) w.AddCounter("kvault_evictions_total", evictions_help, {{"tier", "t3"}}, t3->evictions);
  w.AddCounter("kvault_t1_dropped_unpersisted_total",
               "Entries dropped from T1 before the write-behind had copied them to T2.", {},
               s.t1_dropped_unpersisted);
  w.AddCounter("kvault_t2_compactions_total", "T2 segments whose live records were copied forward.", {},
               s.t2_compactions);
  w.AddCounter("kvault_t2_rewrites_total", "Hot T2 entries written again when their segment was reclaimed.", {},
               s.t2_rewrites);
  w.AddCounter("kvault_promotions_total", "Entries copied from T2 into T1 (on read and by prefetch).", {},
               s.promotions);
  w.AddCounter("kvault_hints_total", "Hint calls (scheduler look-ahead).", {}, s.hints);
  w.AddCounter("kvault_prefetches_total", "Chunks a hint read from T2 into T1.", {}, s.prefetches);
  w.AddCounter("kvault_partials_superseded_total", "Partial trailing chunks replaced by a longer version.", {},
               s.partials_superseded);
  w.AddCounter("kvault_t3_puts_total", "Chunks published to the cluster tier.", {}, s.t3_puts);
  w.AddCounter("kvault_t3_put_drops_total",
               "Chunks not published to the cluster tier (queue full, or gone from T1 before their turn).", {},
               s.t3_put_drops);
  w.AddCounter("kvault_t3_fetches_total", "Chunks read from the cluster tier into T1.", {}, s.t3_fetches);
  const char* coded_help = "Chunks encoded by a tier's KV codec on their way down, and decoded on their way up.";
  w.AddCounter("kvault_codec_chunks_total", coded_help, {{"tier", "t2"}, {"op", "encode"}}, s.t2_chunks_encoded);
  w.AddCounter("kvault_codec_chunks_total", coded_help, {{"tier", "t2"}, {"op", "decode"}}, s.t2_chunks_decoded);
  w.AddCounter("kvault_codec_chunks_total", coded_help, {{"tier", "t3"}, {"op", "encode"}}, s.t3_chunks_encoded);
  w.AddCounter("kvault_codec_chunks_total", coded_help, {{"tier", "t3"}, {"op", "decode"}}, s.t3_chunks_decoded);
  w.AddCounter("kvault_codec_fallbacks_total",
               "Chunks stored raw in a tier with a codec (a layout it cannot take, NaN/Inf values, or too short to gain).", {},
               s.codec_fallbacks);

  // --- Occupancy per tier.
  const char* used_help = "Bytes held in a tier (t3: what this node's client believes it holds).";
  const char* capacity_help = "Configured capacity of a tier in bytes (0: unlimited).";
  const char* entries_help = "Entries held in a tier.";
  w.AddGauge("kvault_tier_used_bytes", used_help, {{"tier", "t1"}}, s.t1_used_bytes);
  w.AddGauge("kvault_tier_used_bytes", used_help, {{"tier", "t2"}}, s.t2_used_bytes);
  if (t3 != nullptr) w.AddGauge("kvault_tier_used_bytes", used_help, {{"tier", "t3"}}, t3->used_bytes);
  w.AddGauge("kvault_tier_capacity_bytes", capacity_help, {{"tier", "t1"}}, s.t1_capacity_bytes);
  w.AddGauge("kvault_tier_capacity_bytes", capacity_help, {{"tier", "t2"}}, s.t2_capacity_bytes);
  if (t3 != nullptr) w.AddGauge("kvault_tier_capacity_bytes", capacity_help, {{"tier", "t3"}}, t3->capacity_bytes);
  w.AddGauge("kvault_tier_entries", entries_help, {{"tier", "t1"}}, s.t1_entries);
  w.AddGauge("kvault_tier_entries", entries_help, {{"tier", "t2"}}, s.t2_entries);
  w.AddGauge("kvault_t2_segments", "Segment files of the T2 log.", {}, s.t2_segments);
  w.AddGauge("kvault_write_queue_entries", "Entries waiting for the T1->T2 write-behind.", {},
             s.write_queue_entries);
  w.AddGauge("kvault_t3_queue_entries", "Chunks waiting to be published to the cluster tier (or in flight).", {},
             s.t3_queue_entries);
  w.AddGauge("kvault_t3_queue_bytes", "Bytes waiting to be published to the cluster tier (or in flight).", {},
             s.t3_queue_bytes);
  w.AddGauge("kvault_t2_direct_io", "1 if T2 runs with O_DIRECT, else 0.", {}, s.t2_direct_io ? 1.0 : 0.0);

  // --- Errors by kind, counted where they arise: kinds may overlap (a T3 value that fails its
  // checksum is corruption and t3; a T3 deadline miss is also a failed T3 operation).
  const char* errors_help =
      "Errors by kind (kinds may overlap); each became a miss or a skipped write, never wrong data.";
  const std::pair<const char*, uint64_t> errors[] = {
      {"io", s.err_io},
      {"no_space", s.err_no_space},
      {"corruption", s.err_corruption},
      {"torn", s.err_torn},
      {"load_miss", s.err_load_miss},
      {"t3", s.err_t3},
  };
  for (const auto& [kind, n] : errors) w.AddCounter("kvault_errors_total", errors_help, {{"kind", kind}}, n);
  if (t3 != nullptr) {
    w.AddCounter("kvault_errors_total", errors_help, {{"kind", "t3_timeout"}}, t3->timeouts);
  }

  // --- The cluster tier client's own traffic (whole records, headers included).
  if (t3 != nullptr) {
    w.AddCounter("kvault_t3_client_puts_total", "Values this node's cluster-tier client wrote.", {}, t3->puts);
    const char* gets_help = "Reads by this node's cluster-tier client, by result (a failure is a miss).";
    w.AddCounter("kvault_t3_client_gets_total", gets_help, {{"result", "hit"}}, t3->get_hits);
    w.AddCounter("kvault_t3_client_gets_total", gets_help, {{"result", "miss"}}, SaturatingSub(t3->gets, t3->get_hits));
    w.AddCounter("kvault_t3_client_contains_keys_total", "Keys asked about by cluster-tier Contains queries.", {},
                 t3->contains_queries);
    const char* record_help = "Record bytes (header and payload) the cluster-tier client sent and received.";
    w.AddCounter("kvault_t3_client_bytes_total", record_help, {{"op", "put"}}, t3->bytes_put);
    w.AddCounter("kvault_t3_client_bytes_total", record_help, {{"op", "get"}}, t3->bytes_got);
    w.AddCounter("kvault_t3_client_errors_total",
                 "Failed cluster-tier operations of any kind, deadline misses included.", {}, t3->errors);
  }
}

std::string RenderStoreMetrics(const StoreStats& s, const RemoteTierStats* t3) {
  PrometheusWriter w;
  AppendStoreMetrics(w, s, t3);
  return w.Text();
}

void AppendLatencyHistograms(PrometheusWriter& w, std::string_view family, std::string_view help,
                             std::string_view label_name, std::span<const NamedHistogram> histograms) {
  for (const NamedHistogram& h : histograms) {
    if (h.histogram == nullptr) continue;
    w.AddHistogram(family, help, {{std::string(label_name), h.label_value}}, h.histogram->Snapshot());
  }
}

void AppendGauges(PrometheusWriter& w, std::span<const NamedGauge> gauges) {
  for (const NamedGauge& g : gauges) w.AddGauge(g.name, g.help, {}, g.value);
}

std::string RenderServerMetrics(std::string_view family, std::string_view help, std::string_view label_name,
                                std::span<const NamedHistogram> histograms, std::span<const NamedGauge> gauges) {
  PrometheusWriter w;
  AppendLatencyHistograms(w, family, help, label_name, histograms);
  AppendGauges(w, gauges);
  return w.Text();
}

}  // namespace kvault

// Tests of the latency histogram, the Prometheus text writer, kvault's store metrics and the
// HTTP endpoint (a real server on an ephemeral port, hit by a real client).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "http/http_server.h"
#include "metrics/http_endpoint.h"
#include "metrics/latency_histogram.h"
#include "metrics/prometheus_text.h"
#include "store/mutex.h"

namespace kvault {
namespace {

// ---------------------------------------------------------------------------------------------
// A small parser of the text exposition format, strict enough to catch what Prometheus rejects.

using LabelMap = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  LabelMap labels;
  double value = 0;
};

struct ParsedFamily {
  std::string help, type;
  std::vector<Sample> samples;
};

struct Parsed {
  std::map<std::string, ParsedFamily> families;
  std::vector<std::string> errors;

  // The value of the one sample `name{labels}`; NaN (and a test failure) when missing.
  double Value(const std::string& name, const LabelMap& labels = {}) const {
    for (const auto& [_, family] : families) {
      for (const Sample& s : family.samples) {
        if (s.name == name && s.labels == labels) return s.value;
      }
    }
    ADD_FAILURE() << "no sample " << name << " with " << labels.size() << " labels";
    return std::nan("");
  }
  bool Has(const std::string& name, const LabelMap& labels) const {
    for (const auto& [_, family] : families) {
      for (const Sample& s : family.samples) {
        if (s.name == name && s.labels == labels) return true;
      }
    }
    return false;
  }
  // The sum of every sample of `name` whose labels include `match`.
  double Sum(const std::string& name, const LabelMap& match = {}) const {
    double total = 0;
    for (const auto& [_, family] : families) {
      for (const Sample& s : family.samples) {
        if (s.name != name) continue;
        bool ok = true;
        for (const auto& [k, v] : match) ok = ok && s.labels.count(k) && s.labels.at(k) == v;
        if (ok) total += s.value;
      }
    }
    return total;
  }
};

bool ValidName(const std::string& n, bool metric) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool alpha = std::isalpha(static_cast<unsigned char>(c)) || c == '_' || (metric && c == ':');
    if (!(alpha || (i > 0 && std::isdigit(static_cast<unsigned char>(c))))) return false;
  }
  return true;
}

bool ParseValue(const std::string& text, double* out) {
  if (text == "+Inf") { *out = INFINITY; return true; }
  if (text == "-Inf") { *out = -INFINITY; return true; }
  if (text == "NaN") { *out = std::nan(""); return true; }
  if (text.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

// Parses `{a="x",b="y"}` starting at text[*pos] == '{'; unescapes \\ \" \n.
bool ParseLabels(const std::string& text, size_t* pos, LabelMap* labels, std::string* error) {
  size_t i = *pos + 1;
  while (i < text.size() && text[i] != '}') {
    size_t eq = text.find('=', i);
    if (eq == std::string::npos) { *error = "label without '='"; return false; }
    std::string name = text.substr(i, eq - i);
    if (!ValidName(name, false)) { *error = "bad label name '" + name + "'"; return false; }
    if (eq + 1 >= text.size() || text[eq + 1] != '"') { *error = "label value not quoted"; return false; }
    std::string value;
    size_t j = eq + 2;
    for (; j < text.size() && text[j] != '"'; ++j) {
      if (text[j] == '\\') {
        if (j + 1 >= text.size()) { *error = "dangling backslash"; return false; }
        const char e = text[++j];
        if (e == '\\') value += '\\';
        else if (e == '"') value += '"';
        else if (e == 'n') value += '\n';
        else { *error = std::string("bad escape \\") + e; return false; }
      } else if (text[j] == '\n') {
        *error = "raw newline in label value";
        return false;
      } else {
        value += text[j];
      }
    }
    if (j >= text.size()) { *error = "unterminated label value"; return false; }
    if (labels->count(name)) { *error = "repeated label " + name; return false; }
    (*labels)[name] = value;
    i = j + 1;
    if (i < text.size() && text[i] == ',') ++i;
    else if (i < text.size() && text[i] != '}') { *error = "junk after label value"; return false; }
  }
  if (i >= text.size()) { *error = "unterminated label set"; return false; }
  *pos = i + 1;
  return true;
}

// Parses and checks: HELP and TYPE once per family and before its samples, every sample line
// `name{labels} value`, a family's samples contiguous, histogram buckets non-decreasing and
// ending in le="+Inf" equal to _count, with a _sum.
Parsed ParseExposition(const std::string& text) {
  Parsed p;
  auto fail = [&](const std::string& line, const std::string& why) { p.errors.push_back(why + ": " + line); };
  if (!text.empty() && text.back() != '\n') p.errors.push_back("text does not end in a newline");
  std::set<std::string> closed;  // families whose samples ended (another family followed)
  std::string current;
  std::set<std::string> helped, typed;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::string kind = line.substr(0, 7);
      if (kind != "# HELP " && kind != "# TYPE ") continue;  // a plain comment
      const size_t sp = line.find(' ', 7);
      if (sp == std::string::npos) { fail(line, "HELP/TYPE without text"); continue; }
      const std::string name = line.substr(7, sp - 7);
      const std::string rest = line.substr(sp + 1);
      if (!ValidName(name, true)) fail(line, "bad family name");
      if (closed.count(name)) fail(line, "family reopened");
      if (!current.empty() && current != name) closed.insert(current);
      current = name;
      ParsedFamily& fam = p.families[name];
      if (kind == "# HELP ") {
        if (!helped.insert(name).second) fail(line, "second HELP");
        if (!fam.samples.empty()) fail(line, "HELP after samples");
        fam.help = rest;
      } else {
        if (!typed.insert(name).second) fail(line, "second TYPE");
        if (!fam.samples.empty()) fail(line, "TYPE after samples");
        if (rest != "counter" && rest != "gauge" && rest != "histogram" && rest != "summary" && rest != "untyped") {
          fail(line, "bad type");
        }
        fam.type = rest;
      }
      continue;
    }
    Sample s;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    s.name = line.substr(0, pos);
    if (!ValidName(s.name, true)) { fail(line, "bad sample name"); continue; }
    if (pos < line.size() && line[pos] == '{') {
      std::string error;
      if (!ParseLabels(line, &pos, &s.labels, &error)) { fail(line, error); continue; }
    }
    if (pos >= line.size() || line[pos] != ' ') { fail(line, "no space before value"); continue; }
    const std::string value = line.substr(pos + 1);
    if (value.find(' ') != std::string::npos) { fail(line, "timestamp or junk after value"); continue; }
    if (!ParseValue(value, &s.value)) { fail(line, "bad value"); continue; }
    // The family: the name itself, or for a histogram the name less _bucket/_sum/_count.
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string sfx = suffix;
      if (s.name.size() > sfx.size() && s.name.ends_with(sfx)) {
        const std::string base = s.name.substr(0, s.name.size() - sfx.size());
        if (p.families.count(base) && p.families[base].type == "histogram") family = base;
      }
    }
    if (!helped.count(family) || !typed.count(family)) { fail(line, "sample before HELP and TYPE"); continue; }
    if (family != current) {
      fail(line, "sample outside its family's block");
      continue;
    }
    if (p.families[family].type == "counter" && !(s.value >= 0)) fail(line, "negative counter");
    p.families[family].samples.push_back(std::move(s));
  }
  // Histograms: per label set (less le), buckets ascending in le, counts non-decreasing,
  // the last le="+Inf", equal to _count, and a _sum.
  for (const auto& [name, fam] : p.families) {
    if (fam.type != "histogram") continue;
    struct Series {
      std::vector<std::pair<double, double>> buckets;  // (le, count)
      bool has_sum = false, has_count = false;
      double count = 0;
    };
    std::map<LabelMap, Series> series;
    for (const Sample& s : fam.samples) {
      LabelMap key = s.labels;
      if (s.name == name + "_bucket") {
        if (!key.count("le")) { p.errors.push_back(name + ": bucket without le"); continue; }
        double le = 0;
        if (!ParseValue(key["le"], &le)) p.errors.push_back(name + ": bad le " + key["le"]);
        key.erase("le");
        series[key].buckets.emplace_back(le, s.value);
      } else if (s.name == name + "_sum") {
        series[key].has_sum = true;
      } else if (s.name == name + "_count") {
        series[key].has_count = true;
        series[key].count = s.value;
      } else {
        p.errors.push_back(name + ": stray sample " + s.name);
      }
    }
    for (const auto& [labels, ser] : series) {
      if (ser.buckets.empty() || !ser.has_sum || !ser.has_count) {
        p.errors.push_back(name + ": incomplete series");
        continue;
      }
      for (size_t i = 1; i < ser.buckets.size(); ++i) {
        if (!(ser.buckets[i].first > ser.buckets[i - 1].first)) p.errors.push_back(name + ": le not ascending");
        if (ser.buckets[i].second < ser.buckets[i - 1].second) p.errors.push_back(name + ": counts decrease");
      }
      if (!std::isinf(ser.buckets.back().first)) p.errors.push_back(name + ": last bucket is not +Inf");
      if (ser.buckets.back().second != ser.count) p.errors.push_back(name + ": +Inf bucket != _count");
    }
  }
  for (const auto& [name, fam] : p.families) {
    if (fam.type.empty() || !helped.count(name)) p.errors.push_back(name + ": HELP or TYPE missing");
  }
  return p;
}

void ExpectValidExposition(const Parsed& p, const std::string& text) {
  for (const std::string& e : p.errors) ADD_FAILURE() << e;
  if (!p.errors.empty()) ADD_FAILURE() << "in:\n" << text;
}

// The parser itself rejects what it should (a parser that accepts everything proves nothing).
TEST(ExpositionParser, RejectsBrokenText) {
  EXPECT_TRUE(ParseExposition("# HELP a x\n# TYPE a counter\na 1\n").errors.empty());
  EXPECT_FALSE(ParseExposition("a 1\n").errors.empty());                                   // no HELP/TYPE
  EXPECT_FALSE(ParseExposition("# HELP a x\n# HELP a x\n# TYPE a counter\na 1\n").errors.empty());
  EXPECT_FALSE(ParseExposition("# HELP a x\n# TYPE a counter\na{b=\"1} 1\n").errors.empty());
  EXPECT_FALSE(ParseExposition("# HELP a x\n# TYPE a counter\na{b=\"\\q\"} 1\n").errors.empty());
  EXPECT_FALSE(ParseExposition("# HELP a x\n# TYPE a counter\na one\n").errors.empty());
  EXPECT_FALSE(ParseExposition("# HELP a x\n# TYPE a counter\n# HELP b x\n# TYPE b gauge\nb 1\na 1\n")
                   .errors.empty());  // a's samples outside its block
  EXPECT_FALSE(ParseExposition("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                               "h_sum 1\nh_count 1\n").errors.empty());  // decreasing
  EXPECT_FALSE(ParseExposition("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                               "h_sum 1\nh_count 3\n").errors.empty());  // +Inf != count
}

// ---------------------------------------------------------------------------------------------
// LatencyHistogram

TEST(LatencyHistogram, BoundsAreExponentialFromOneMicrosecond) {
  const auto& b = LatencyHistogram::UpperBounds();
  ASSERT_EQ(b.size(), 25u);
  EXPECT_EQ(b[0], 1e-6);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_DOUBLE_EQ(b[i], 2 * b[i - 1]);
  EXPECT_GE(b.back(), 10.0);                 // covers 10 s
  EXPECT_LT(b[b.size() - 2], 10.0);          // with one bucket beyond it, not dozens
  EXPECT_DOUBLE_EQ(b.back(), 16.777216);
}

TEST(LatencyHistogram, BucketPlacementIsInclusiveUpperBound) {
  EXPECT_EQ(LatencyHistogram::BucketIndex(0.0), 0u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(-1.0), 0u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(std::nan("")), 0u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(1e-7), 0u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(1e-6), 0u);     // on the bound: that bucket
  EXPECT_EQ(LatencyHistogram::BucketIndex(1.5e-6), 1u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(2e-6), 1u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(2.1e-6), 2u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(3e-3), 12u);    // (2.048 ms, 4.096 ms]
  EXPECT_EQ(LatencyHistogram::BucketIndex(0.5), 19u);     // (0.262 s, 0.524 s]
  EXPECT_EQ(LatencyHistogram::BucketIndex(10.0), 24u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(16.777216), 24u);
  EXPECT_EQ(LatencyHistogram::BucketIndex(17.0), 25u);    // +Inf
  EXPECT_EQ(LatencyHistogram::BucketIndex(INFINITY), 25u);
  // Every bound lands in its own bucket and the next double above it in the next one.
  const auto& b = LatencyHistogram::UpperBounds();
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(LatencyHistogram::BucketIndex(b[i]), i);
    EXPECT_EQ(LatencyHistogram::BucketIndex(std::nextafter(b[i], 1e9)), i + 1);
  }
}

TEST(LatencyHistogram, SnapshotIsCumulativeWithSumAndCount) {
  LatencyHistogram h;
  HistogramSnapshot empty = h.Snapshot();
  EXPECT_EQ(empty.count, 0u);
  EXPECT_EQ(empty.sum_seconds, 0.0);
  EXPECT_EQ(empty.Quantile(0.5), 0.0);

  h.Observe(1e-6);   // bucket 0
  h.Observe(3e-6);   // bucket 2
  h.Observe(3e-6);   // bucket 2
  h.Observe(0.5);    // bucket 19
  h.Observe(100.0);  // +Inf
  const HistogramSnapshot s = h.Snapshot();
  ASSERT_EQ(s.upper_bounds.size(), 25u);
  ASSERT_EQ(s.cumulative_counts.size(), 26u);
  std::vector<uint64_t> want(26);
  for (size_t i = 0; i < 26; ++i) want[i] = 1 + (i >= 2 ? 2 : 0) + (i >= 19 ? 1 : 0) + (i >= 25 ? 1 : 0);
  EXPECT_EQ(s.cumulative_counts, want);
  EXPECT_EQ(s.count, 5u);
  EXPECT_DOUBLE_EQ(s.sum_seconds, 1e-6 + 3e-6 + 3e-6 + 0.5 + 100.0);
  h.Observe(-2.0);  // counted (in bucket 0), adds nothing to the sum
  EXPECT_EQ(h.Snapshot().count, 6u);
  EXPECT_EQ(h.Snapshot().cumulative_counts[0], 2u);
  EXPECT_DOUBLE_EQ(h.Snapshot().sum_seconds, s.sum_seconds);
}

TEST(LatencyHistogram, QuantileInterpolatesInsideTheBucket) {
  LatencyHistogram h;
  for (int i = 0; i < 90; ++i) h.Observe(3e-3);  // (2.048 ms, 4.096 ms]
  for (int i = 0; i < 10; ++i) h.Observe(0.5);   // (0.262144 s, 0.524288 s]
  EXPECT_NEAR(h.Quantile(0.5), 2.048e-3 + 2.048e-3 * 50.0 / 90.0, 1e-12);
  EXPECT_NEAR(h.Quantile(0.9), 4.096e-3, 1e-12);
  EXPECT_NEAR(h.Quantile(0.99), 0.262144 + 0.262144 * 0.9, 1e-12);
  EXPECT_NEAR(h.Quantile(1.0), 0.524288, 1e-12);
  // Each estimate stays inside the bucket of the true quantile.
  EXPECT_GT(h.Quantile(0.5), 2.048e-3);
  EXPECT_LE(h.Quantile(0.5), 4.096e-3);
  EXPECT_GT(h.Quantile(0.95), 0.262144);
  EXPECT_LE(h.Quantile(0.95), 0.524288);
  // Out-of-range q is clamped; values beyond the last bound report that bound.
  EXPECT_EQ(h.Quantile(7.0), h.Quantile(1.0));
  LatencyHistogram slow;
  slow.Observe(60.0);
  EXPECT_DOUBLE_EQ(slow.Quantile(0.5), 16.777216);
}

TEST(LatencyHistogram, ConcurrentObserveLosesNothing) {
  LatencyHistogram h;
  constexpr int kThreads = 8, kPerThread = 50000;
  std::atomic<bool> done{false};
  std::atomic<int> snapshots{0};
  std::thread reader([&] {
    while (!done.load()) {
      HistogramSnapshot s = h.Snapshot();
      for (size_t i = 1; i < s.cumulative_counts.size(); ++i) {
        ASSERT_LE(s.cumulative_counts[i - 1], s.cumulative_counts[i]);
      }
      ASSERT_EQ(s.count, s.cumulative_counts.back());
      snapshots.fetch_add(1);
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&h, t] {
      // (i % 4) + 1 microseconds: buckets 0, 1, 2, 2; a whole number of nanoseconds each.
      for (int i = 0; i < kPerThread; ++i) h.Observe(((i + t) % 4 + 1) * 1e-6);
    });
  }
  for (auto& w : writers) w.join();
  done.store(true);
  reader.join();
  const HistogramSnapshot s = h.Snapshot();
  const uint64_t total = uint64_t{kThreads} * kPerThread;
  EXPECT_EQ(s.count, total);
  EXPECT_EQ(s.cumulative_counts[0], total / 4);      // 1 µs
  EXPECT_EQ(s.cumulative_counts[1], total / 2);      // 2 µs
  EXPECT_EQ(s.cumulative_counts[2], total);          // 3 and 4 µs
  EXPECT_DOUBLE_EQ(s.sum_seconds, static_cast<double>(total / 4) * (1 + 2 + 3 + 4) * 1e-6);
  EXPECT_GT(snapshots.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// PrometheusWriter

TEST(PrometheusText, NamesAreValidated) {
  EXPECT_TRUE(IsValidMetricName("kvault_bytes_total"));
  EXPECT_TRUE(IsValidMetricName("job:rate5m"));
  EXPECT_TRUE(IsValidMetricName("_x9"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9lives"));
  EXPECT_FALSE(IsValidMetricName("has-dash"));
  EXPECT_FALSE(IsValidMetricName("has space"));
  EXPECT_TRUE(IsValidLabelName("tier"));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("1a"));

  PrometheusWriter w;
  w.AddCounter("good_total", "ok", {}, uint64_t{1});
  EXPECT_TRUE(w.status().ok());
  w.AddCounter("bad-name", "x", {}, uint64_t{1});
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(w.Text().find("bad-name"), std::string::npos);  // dropped
  PrometheusWriter w2;
  w2.AddGauge("g", "x", {{"__reserved", "v"}}, 1.0);
  EXPECT_FALSE(w2.status().ok());
  PrometheusWriter w3;
  w3.AddCounter("m", "x", {{"a", "1"}}, uint64_t{1});
  w3.AddGauge("m", "x", {{"a", "2"}}, 1.0);  // type conflict
  EXPECT_FALSE(w3.status().ok());
  PrometheusWriter w4;
  w4.AddCounter("m", "x", {{"a", "1"}}, uint64_t{1});
  w4.AddCounter("m", "x", {{"a", "1"}}, uint64_t{2});  // duplicate series
  EXPECT_FALSE(w4.status().ok());
  EXPECT_EQ(ParseExposition(w4.Text()).families["m"].samples.size(), 1u);
  PrometheusWriter w5;
  LatencyHistogram h;
  w5.AddHistogram("h_seconds", "x", {{"le", "1"}}, h.Snapshot());  // le is reserved
  EXPECT_FALSE(w5.status().ok());
}

TEST(PrometheusText, LabelValuesAreEscapedAndRoundTrip) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeLabelValue("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(EscapeLabelValue("two\nlines"), "two\\nlines");
  const std::string nasty = "C:\\path \"quoted\"\nnext} line, with=signs";
  PrometheusWriter w;
  w.AddGauge("kvault_test_gauge", "Help with a \\ backslash\nand a newline.", {{"v", nasty}, {"k", "x"}}, 2.5);
  ASSERT_TRUE(w.status().ok());
  const std::string text = w.Text();
  EXPECT_NE(text.find("# HELP kvault_test_gauge Help with a \\\\ backslash\\nand a newline.\n"), std::string::npos)
      << text;
  const Parsed p = ParseExposition(text);
  ExpectValidExposition(p, text);
  EXPECT_EQ(p.Value("kvault_test_gauge", {{"v", nasty}, {"k", "x"}}), 2.5);
}

TEST(PrometheusText, ValuesAreFormattedExactly) {
  EXPECT_EQ(FormatMetricValue(3.0), "3");
  EXPECT_EQ(FormatMetricValue(-7.0), "-7");
  EXPECT_EQ(FormatMetricValue(0.5), "0.5");
  EXPECT_EQ(FormatMetricValue(1e-6), "1e-06");
  EXPECT_EQ(FormatMetricValue(0.1 + 0.2), "0.30000000000000004");  // round-trips
  EXPECT_EQ(FormatMetricValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatMetricValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
  PrometheusWriter w;
  w.AddCounter("big_total", "x", {}, uint64_t{18446744073709551615ull});
  EXPECT_NE(w.Text().find("big_total 18446744073709551615\n"), std::string::npos);
}

TEST(PrometheusText, FamiliesStayTogetherWithOneHelpAndType) {
  PrometheusWriter w;
  w.AddCounter("a_total", "A.", {{"k", "1"}}, uint64_t{1});
  w.AddGauge("b", "B.", {}, 2.0);
  w.AddCounter("a_total", "A.", {{"k", "2"}}, uint64_t{3});
  const std::string text = w.Text();
  EXPECT_EQ(text,
            "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"1\"} 1\na_total{k=\"2\"} 3\n"
            "# HELP b B.\n# TYPE b gauge\nb 2\n");
  ExpectValidExposition(ParseExposition(text), text);
}

// A StoreStats with a distinct value in every field, lookup counters that add up.
StoreStats KnownStats() {
  StoreStats s;
  s.lookups = 11;
  s.hit_tokens_t1 = 1000, s.hit_tokens_t2 = 300, s.hit_tokens_t3 = 200, s.miss_tokens = 500;
  s.lookup_tokens = 2000;
  s.hit_chunks_t1 = 60, s.hit_chunks_t2 = 20, s.hit_chunks_t3 = 12, s.miss_chunks = 33;
  s.lookup_chunks = 125;
  s.bytes_put = 101, s.bytes_loaded = 102, s.bytes_t1_to_t2 = 103, s.bytes_t2_to_t1 = 104;
  s.puts = 105, s.puts_deduplicated = 106, s.t1_evictions = 107, s.t1_dropped_unpersisted = 108;
  s.t2_evictions = 109, s.t2_compactions = 110, s.bytes_compacted = 111, s.t2_rewrites = 112;
  s.promotions = 113, s.hints = 114, s.prefetches = 115, s.bytes_prefetched = 116;
  s.partials_superseded = 117;
  s.t1_used_bytes = 118, s.t1_capacity_bytes = 119, s.t1_entries = 120;
  s.t2_used_bytes = 121, s.t2_capacity_bytes = 122, s.t2_entries = 123, s.t2_segments = 124;
  s.write_queue_entries = 125;
  s.err_io = 126, s.err_no_space = 127, s.err_corruption = 128, s.err_torn = 129, s.err_load_miss = 130;
  s.bytes_t1_to_t3 = 131, s.bytes_t3_to_t1 = 132, s.t3_puts = 133, s.t3_put_drops = 134, s.t3_fetches = 135;
  s.t3_queue_entries = 136, s.t3_queue_bytes = 137, s.err_t3 = 138;
  s.t2_direct_io = true;
  return s;
}

TEST(StoreMetrics, EveryFieldIsExposedAndLookupsAddUp) {
  const StoreStats s = KnownStats();
  const std::string text = RenderStoreMetrics(s, nullptr);
  const Parsed p = ParseExposition(text);
  ExpectValidExposition(p, text);

  EXPECT_EQ(p.Value("kvault_lookups_total"), 11);
  EXPECT_EQ(p.Value("kvault_lookup_tokens_requested_total"), 2000);
  EXPECT_EQ(p.Value("kvault_lookup_tokens_total", {{"result", "hit"}, {"tier", "t1"}}), 1000);
  EXPECT_EQ(p.Value("kvault_lookup_tokens_total", {{"result", "hit"}, {"tier", "t2"}}), 300);
  EXPECT_EQ(p.Value("kvault_lookup_tokens_total", {{"result", "hit"}, {"tier", "t3"}}), 200);
  EXPECT_EQ(p.Value("kvault_lookup_tokens_total", {{"result", "miss"}}), 500);
  EXPECT_EQ(p.Sum("kvault_lookup_tokens_total"), p.Value("kvault_lookup_tokens_requested_total"));
  EXPECT_EQ(p.Sum("kvault_lookup_tokens_total", {{"result", "hit"}}), 1500);
  EXPECT_EQ(p.Value("kvault_lookup_chunks_requested_total"), 125);
  EXPECT_EQ(p.Value("kvault_lookup_chunks_total", {{"result", "hit"}, {"tier", "t1"}}), 60);
  EXPECT_EQ(p.Value("kvault_lookup_chunks_total", {{"result", "hit"}, {"tier", "t2"}}), 20);
  EXPECT_EQ(p.Value("kvault_lookup_chunks_total", {{"result", "hit"}, {"tier", "t3"}}), 12);
  EXPECT_EQ(p.Value("kvault_lookup_chunks_total", {{"result", "miss"}}), 33);
  EXPECT_EQ(p.Sum("kvault_lookup_chunks_total"), p.Value("kvault_lookup_chunks_requested_total"));

  const std::map<std::string, double> bytes = {{"put", 101},      {"load", 102},     {"t1_to_t2", 103},
                                               {"t2_to_t1", 104}, {"prefetch", 116}, {"compaction", 111},
                                               {"t3_put", 131},   {"t3_get", 132}};
  for (const auto& [path, v] : bytes) EXPECT_EQ(p.Value("kvault_bytes_total", {{"path", path}}), v) << path;
  EXPECT_EQ(p.Value("kvault_puts_total"), 105);
  EXPECT_EQ(p.Value("kvault_puts_deduplicated_total"), 106);
  EXPECT_EQ(p.Value("kvault_evictions_total", {{"tier", "t1"}}), 107);
  EXPECT_EQ(p.Value("kvault_evictions_total", {{"tier", "t2"}}), 109);
  EXPECT_EQ(p.Value("kvault_t1_dropped_unpersisted_total"), 108);
  EXPECT_EQ(p.Value("kvault_t2_compactions_total"), 110);
  EXPECT_EQ(p.Value("kvault_t2_rewrites_total"), 112);
  EXPECT_EQ(p.Value("kvault_promotions_total"), 113);
  EXPECT_EQ(p.Value("kvault_hints_total"), 114);
  EXPECT_EQ(p.Value("kvault_prefetches_total"), 115);
  EXPECT_EQ(p.Value("kvault_partials_superseded_total"), 117);
  EXPECT_EQ(p.Value("kvault_tier_used_bytes", {{"tier", "t1"}}), 118);
  EXPECT_EQ(p.Value("kvault_tier_capacity_bytes", {{"tier", "t1"}}), 119);
  EXPECT_EQ(p.Value("kvault_tier_entries", {{"tier", "t1"}}), 120);
  EXPECT_EQ(p.Value("kvault_tier_used_bytes", {{"tier", "t2"}}), 121);
  EXPECT_EQ(p.Value("kvault_tier_capacity_bytes", {{"tier", "t2"}}), 122);
  EXPECT_EQ(p.Value("kvault_tier_entries", {{"tier", "t2"}}), 123);
  EXPECT_EQ(p.Value("kvault_t2_segments"), 124);
  EXPECT_EQ(p.Value("kvault_write_queue_entries"), 125);
  EXPECT_EQ(p.Value("kvault_t2_direct_io"), 1);
  EXPECT_EQ(p.Value("kvault_t3_puts_total"), 133);
  EXPECT_EQ(p.Value("kvault_t3_put_drops_total"), 134);
  EXPECT_EQ(p.Value("kvault_t3_fetches_total"), 135);
  EXPECT_EQ(p.Value("kvault_t3_queue_entries"), 136);
  EXPECT_EQ(p.Value("kvault_t3_queue_bytes"), 137);
  const std::map<std::string, double> errors = {{"io", 126},   {"no_space", 127},  {"corruption", 128},
                                                {"torn", 129}, {"load_miss", 130}, {"t3", 138}};
  for (const auto& [kind, v] : errors) EXPECT_EQ(p.Value("kvault_errors_total", {{"kind", kind}}), v) << kind;
  EXPECT_FALSE(p.Has("kvault_errors_total", {{"kind", "t3_timeout"}}));  // needs the tier's stats
  EXPECT_FALSE(p.Has("kvault_tier_used_bytes", {{"tier", "t3"}}));
  EXPECT_EQ(p.families.at("kvault_errors_total").type, "counter");
  EXPECT_EQ(p.families.at("kvault_tier_used_bytes").type, "gauge");
  for (const auto& [name, fam] : p.families) {
    EXPECT_TRUE(name.starts_with("kvault_")) << name;
    if (fam.type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
  }
}

// A guard for StoreStats growing: every counter ToJson lists (given a distinct value here)
// must show up as the value of some sample.
TEST(StoreMetrics, NoStoreStatsCounterIsLeftOut) {
  nlohmann::json fields = nlohmann::json::parse(StoreStats{}.ToJson());
  std::map<std::string, uint64_t> want;
  uint64_t next = 100001;
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    if (!it.value().is_number_unsigned()) continue;  // t2_direct_io, a bool, is checked above
    want[it.key()] = next;
    it.value() = next;
    next += 7;
  }
  ASSERT_GT(want.size(), 40u);
  StoreStats s;
  ASSERT_TRUE(StoreStats::FromJson(fields.dump(), &s).ok());
  const Parsed p = ParseExposition(RenderStoreMetrics(s, nullptr));
  std::set<double> values;
  for (const auto& [_, family] : p.families) {
    for (const Sample& sample : family.samples) values.insert(sample.value);
  }
  for (const auto& [field, value] : want) {
    EXPECT_TRUE(values.count(static_cast<double>(value)))
        << "StoreStats::" << field << " is not exported by AppendStoreMetrics (src/metrics/prometheus_text.cc)";
  }
}

TEST(StoreMetrics, ClusterTierClientSeries) {
  const StoreStats s = KnownStats();
  RemoteTierStats t3;
  t3.puts = 7, t3.bytes_put = 7000, t3.gets = 9, t3.get_hits = 4, t3.bytes_got = 4000;
  t3.contains_queries = 50, t3.evictions = 3, t3.errors = 5, t3.timeouts = 2;
  t3.used_bytes = 1 << 20, t3.capacity_bytes = 1 << 30;
  const std::string text = RenderStoreMetrics(s, &t3);
  const Parsed p = ParseExposition(text);
  ExpectValidExposition(p, text);

  // The store's own series are unchanged by the tier's stats.
  EXPECT_EQ(p.Sum("kvault_lookup_tokens_total"), 2000);
  EXPECT_EQ(p.Sum("kvault_lookup_chunks_total"), 125);
  EXPECT_EQ(p.Value("kvault_bytes_total", {{"path", "t3_put"}}), 131);
  EXPECT_EQ(p.Value("kvault_errors_total", {{"kind", "t3"}}), 138);

  EXPECT_EQ(p.Value("kvault_errors_total", {{"kind", "t3_timeout"}}), 2);
  EXPECT_EQ(p.Value("kvault_evictions_total", {{"tier", "t3"}}), 3);
  EXPECT_EQ(p.Value("kvault_tier_used_bytes", {{"tier", "t3"}}), 1 << 20);
  EXPECT_EQ(p.Value("kvault_tier_capacity_bytes", {{"tier", "t3"}}), 1 << 30);
  EXPECT_EQ(p.Value("kvault_t3_client_puts_total"), 7);
  EXPECT_EQ(p.Value("kvault_t3_client_gets_total", {{"result", "hit"}}), 4);
  EXPECT_EQ(p.Value("kvault_t3_client_gets_total", {{"result", "miss"}}), 5);
  EXPECT_EQ(p.Value("kvault_t3_client_contains_keys_total"), 50);
  EXPECT_EQ(p.Value("kvault_t3_client_bytes_total", {{"op", "put"}}), 7000);
  EXPECT_EQ(p.Value("kvault_t3_client_bytes_total", {{"op", "get"}}), 4000);
  EXPECT_EQ(p.Value("kvault_t3_client_errors_total"), 5);
}

TEST(StoreMetrics, LatencyHistogramsAndGaugesRender) {
  LatencyHistogram lookup, load, save;
  for (int i = 0; i < 10; ++i) lookup.Observe(5e-6);
  load.Observe(2e-3);
  load.Observe(30.0);
  const NamedHistogram ops[] = {{"lookup", &lookup}, {"load", &load}, {"save", &save}};
  const NamedGauge gauges[] = {{"kvault_connected_clients", "Clients connected to kvaultd.", 3}};
  PrometheusWriter w;
  AppendStoreMetrics(w, KnownStats(), nullptr);
  AppendLatencyHistograms(w, "kvault_op_seconds", "Latency of store operations.", "op", ops);
  AppendGauges(w, gauges);
  ASSERT_TRUE(w.status().ok()) << w.status().ToString();
  const std::string text = w.Text();
  const Parsed p = ParseExposition(text);
  ExpectValidExposition(p, text);
  EXPECT_EQ(p.families.at("kvault_op_seconds").type, "histogram");
  EXPECT_EQ(p.families.at("kvault_op_seconds").samples.size(), 3u * (26 + 2));
  EXPECT_EQ(p.Value("kvault_op_seconds_count", {{"op", "lookup"}}), 10);
  EXPECT_EQ(p.Value("kvault_op_seconds_bucket", {{"op", "lookup"}, {"le", "4e-06"}}), 0);
  EXPECT_EQ(p.Value("kvault_op_seconds_bucket", {{"op", "lookup"}, {"le", "8e-06"}}), 10);
  EXPECT_EQ(p.Value("kvault_op_seconds_bucket", {{"op", "load"}, {"le", "16.777216"}}), 1);
  EXPECT_EQ(p.Value("kvault_op_seconds_bucket", {{"op", "load"}, {"le", "+Inf"}}), 2);
  EXPECT_DOUBLE_EQ(p.Value("kvault_op_seconds_sum", {{"op", "load"}}), 30.002);
  EXPECT_EQ(p.Value("kvault_op_seconds_count", {{"op", "save"}}), 0);
  EXPECT_EQ(p.Value("kvault_connected_clients"), 3);
  EXPECT_EQ(p.families.at("kvault_connected_clients").type, "gauge");
  EXPECT_NE(text.find("kvault_op_seconds_bucket{op=\"lookup\",le=\"1e-06\"} 0\n"), std::string::npos);

  const std::string server_only = RenderServerMetrics("kvault_op_seconds", "Latency.", "op", ops, gauges);
  ExpectValidExposition(ParseExposition(server_only), server_only);
}

// ---------------------------------------------------------------------------------------------
// HttpEndpoint: a real server on an ephemeral port and a real client.

struct HealthFlag {
  std::mutex mu;
  bool healthy = true;
  std::string reason;
  std::pair<bool, std::string> Get() {
    std::lock_guard<std::mutex> lock(mu);
    return {healthy, reason};
  }
  void Set(bool h, std::string r) {
    std::lock_guard<std::mutex> lock(mu);
    healthy = h;
    reason = std::move(r);
  }
};

HttpHandlers MakeHandlers(HealthFlag* health, std::atomic<int>* scrapes = nullptr) {
  HttpHandlers h;
  h.metrics = [scrapes] {
    if (scrapes != nullptr) scrapes->fetch_add(1);
    return RenderStoreMetrics(KnownStats(), nullptr);
  };
  h.health = [health] { return health->Get(); };
  return h;
}

std::unique_ptr<httplib::Client> ClientFor(int port) {
  auto cli = std::make_unique<httplib::Client>("127.0.0.1", port);
  cli->set_connection_timeout(5, 0);
  cli->set_read_timeout(10, 0);
  cli->set_write_timeout(5, 0);
  return cli;
}

// A connected socket to 127.0.0.1:port with a receive timeout, or -1.
int Connect(int port, int receive_timeout_s = 10) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{receive_timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `bytes` on a fresh connection and returns the server's first response (its header
// block and Content-Length body), or whatever came before the server closed or 5 s passed.
// (No half-close: httplib drops the answer to a peer that has shut down its sending side.)
std::string RawExchange(int port, const std::string& bytes) {
  const int fd = Connect(port, /*receive_timeout_s=*/5);
  if (fd < 0) return "connect failed";
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buf[4096];
  for (;;) {
    const size_t head_end = reply.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      size_t body = 0;
      const size_t cl = reply.find("Content-Length: ");
      if (cl != std::string::npos && cl < head_end) body = std::strtoul(reply.c_str() + cl + 16, nullptr, 10);
      if (reply.size() >= head_end + 4 + body) break;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return reply;
}

TEST(HttpEndpoint, ServesMetricsHealthAnd404And405) {
  HealthFlag health;
  std::atomic<int> scrapes{0};
  HttpEndpoint ep;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health, &scrapes)).ok());
  ASSERT_GT(ep.port(), 0);
  EXPECT_TRUE(ep.running());
  auto cli = ClientFor(ep.port());

  auto res = cli->Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_TRUE(res->get_header_value("Content-Type").starts_with("text/plain; version=0.0.4"))
      << res->get_header_value("Content-Type");
  EXPECT_EQ(res->body, RenderStoreMetrics(KnownStats(), nullptr));
  const Parsed p = ParseExposition(res->body);
  ExpectValidExposition(p, res->body);
  EXPECT_EQ(p.Sum("kvault_lookup_tokens_total"), 2000);
  EXPECT_EQ(scrapes.load(), 1);
  res = cli->Get("/metrics?name[]=x");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = cli->Head("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_TRUE(res->body.empty());

  res = cli->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  health.Set(false, "T2 disk full");
  res = cli->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body, "T2 disk full\n");
  health.Set(true, "");
  res = cli->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);

  for (const char* path : {"/", "/nope", "/metrics/extra", "/healthzz", "/METRICS"}) {
    res = cli->Get(path);
    ASSERT_TRUE(res) << path;
    EXPECT_EQ(res->status, 404) << path;
  }
  res = cli->Post("/metrics", "x=1", "application/x-www-form-urlencoded");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "GET, HEAD");
  res = cli->Put("/healthz", "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  res = cli->Delete("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  res = cli->Patch("/healthz", "", "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  res = cli->Options("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  res = cli->Post("/other", "x", "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(scrapes.load(), 3);  // the GETs and the HEAD; never the refused methods
  ep.Stop();
}

TEST(HttpEndpoint, PortInUseIsAClearError) {
  HealthFlag health;
  HttpEndpoint first;
  ASSERT_TRUE(first.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  HttpEndpoint second;
  const Status st = second.Start("127.0.0.1", first.port(), MakeHandlers(&health));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(std::to_string(first.port())), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("in use"), std::string::npos) << st.ToString();
  EXPECT_FALSE(second.running());
  EXPECT_EQ(second.port(), 0);
  second.Stop();  // harmless after a failed Start
  // The first endpoint is untouched.
  auto res = ClientFor(first.port())->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);

  // A port held by a plain listening socket (not httplib's) is refused too.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int held = ntohs(addr.sin_port);
  HttpEndpoint third;
  EXPECT_FALSE(third.Start("127.0.0.1", held, MakeHandlers(&health)).ok());
  close(fd);
}

TEST(HttpEndpoint, BadArgumentsAreRefused) {
  HealthFlag health;
  HttpEndpoint ep;
  EXPECT_EQ(ep.Start("127.0.0.1", 0, HttpHandlers{}).code(), Code::kInvalidArgument);  // no metrics
  EXPECT_EQ(ep.Start("127.0.0.1", 70000, MakeHandlers(&health)).code(), Code::kInvalidArgument);
  EXPECT_EQ(ep.Start("127.0.0.1", -1, MakeHandlers(&health)).code(), Code::kInvalidArgument);
  HttpEndpointOptions zero;
  zero.threads = 0;
  EXPECT_EQ(ep.Start("127.0.0.1", 0, MakeHandlers(&health), zero).code(), Code::kInvalidArgument);
  EXPECT_FALSE(ep.Start("no-such-host.invalid", 0, MakeHandlers(&health)).ok());
  EXPECT_FALSE(ep.running());
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  EXPECT_EQ(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).code(), Code::kInvalidArgument);  // twice
}

TEST(HttpEndpoint, StopIsIdempotentAndRestartWorks) {
  HealthFlag health;
  HttpEndpoint ep;
  ep.Stop();  // never started
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  const int port = ep.port();
  ep.Stop();
  ep.Stop();
  EXPECT_EQ(ep.port(), 0);
  EXPECT_FALSE(ep.running());
  auto cli = ClientFor(port);
  cli->set_connection_timeout(1, 0);
  EXPECT_FALSE(cli->Get("/healthz"));  // nobody listens any more
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  auto res = ClientFor(ep.port())->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  // Stop right after Start, and the destructor after Stop.
  HttpEndpoint quick;
  ASSERT_TRUE(quick.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  quick.Stop();
  {
    HttpEndpoint scoped;
    ASSERT_TRUE(scoped.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  }  // destructor stops and joins
}

TEST(HttpEndpoint, MalformedRequestsNeverTakeItDown) {
  HealthFlag health;
  HttpEndpoint ep;
  HttpEndpointOptions options;
  options.threads = 2;
  options.io_timeout_ms = 1000;
  options.max_body_bytes = 1024;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health), options).ok());
  const int port = ep.port();

  std::string reply = RawExchange(port, "GARBAGE\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 400")) << "[" << reply << "]";
  reply = RawExchange(port, "BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n");  // a method nobody knows
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 501")) << "[" << reply << "]";
  std::string binary(512, '\0');
  for (size_t i = 0; i < binary.size(); ++i) binary[i] = static_cast<char>(i * 37);
  (void)RawExchange(port, binary);
  (void)RawExchange(port, "GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n");
  (void)RawExchange(port, "GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n");
  (void)RawExchange(port, "GET /" + std::string(100000, 'a') + " HTTP/1.1\r\n\r\n");
  (void)RawExchange(port, "GET /metrics HTTP/1.1\r\nX: " + std::string(100000, 'b') + "\r\n\r\n");
  (void)RawExchange(port, "GET /metrics HTTP/1.1\r\nHost: x");  // cut short
  (void)RawExchange(port, "");                                   // connect and leave
  const std::string too_big = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                              std::string(5000, 'z');
  reply = RawExchange(port, too_big);
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 413")) << "[" << reply << "]";
  // A well-formed raw request still gets its answer, and so does a real client.
  const std::string ok = RawExchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(ok.starts_with("HTTP/1.1 200")) << ok;
  auto res = ClientFor(port)->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST(HttpEndpoint, ThrowingCallbacksAnswer500And503) {
  HttpHandlers h;
  h.metrics = []() -> std::string { throw std::runtime_error("stats unavailable"); };
  h.health = []() -> std::pair<bool, std::string> { throw std::runtime_error("probe broke"); };
  HttpEndpoint ep;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, std::move(h)).ok());
  auto cli = ClientFor(ep.port());
  auto res = cli->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_NE(res->body.find("stats unavailable"), std::string::npos);
  res = cli->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_NE(res->body.find("probe broke"), std::string::npos);
}

TEST(HttpEndpoint, ConcurrentScrapesAllSucceed) {
  HealthFlag health;
  std::atomic<int> scrapes{0};
  HttpEndpoint ep;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health, &scrapes)).ok());
  const int port = ep.port();
  constexpr int kClients = 6, kRequests = 15;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, port, c] {
      auto cli = ClientFor(port);
      cli->set_keep_alive(c % 2 == 0);
      for (int i = 0; i < kRequests; ++i) {
        auto res = cli->Get(i % 3 == 0 ? "/healthz" : "/metrics");
        if (res && res->status == 200) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
  EXPECT_EQ(scrapes.load(), kClients * (kRequests - kRequests / 3));
  ep.Stop();
}



void SendAll(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// Open sockets, closed when it goes out of scope (also when an ASSERT returns early).
class Sockets {
 public:
  Sockets() = default;
  ~Sockets() { CloseAll(); }
  Sockets(const Sockets&) = delete;
  Sockets& operator=(const Sockets&) = delete;
  int Add(int fd) {
    if (fd >= 0) fds_.push_back(fd);
    return fd;
  }
  void CloseAll() {
    for (int fd : fds_) close(fd);
    fds_.clear();
  }

 private:
  std::vector<int> fds_;
};

// Everything the server sends until it closes (or 10 s pass).
std::string ReadToClose(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// Issue 16: with the old fixed pool of workers, connections that send part of a request and
// then trickle (or send nothing) held every worker, and /healthz waited for their timeouts.
TEST(HttpEndpoint, SlowAndIdleClientsHoldUpNobody) {
  HealthFlag health;
  HttpEndpoint ep;
  HttpEndpointOptions options;
  options.threads = 1;
  options.io_timeout_ms = 30000;  // longer than the test: only asynchrony can keep it prompt
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health), options).ok());
  Sockets slow;
  for (int i = 0; i < 150; ++i) {
    const int fd = slow.Add(Connect(ep.port()));
    ASSERT_GE(fd, 0);
    if (i % 2 == 0) SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");  // a header never finished
  }
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    auto res = ClientFor(ep.port())->Get("/healthz");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(took, 5.0) << "five /healthz with 150 slow connections open took " << took << " s";
}

TEST(HttpEndpoint, ConnectionsPastTheCapGet503) {
  HealthFlag health;
  HttpEndpoint ep;
  HttpEndpointOptions options;
  options.max_connections = 4;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health), options).ok());
  Sockets held;
  for (int i = 0; i < 4; ++i) ASSERT_GE(held.Add(Connect(ep.port())), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // accepted and counted
  std::string reply = RawExchange(ep.port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 503")) << reply;
  EXPECT_NE(reply.find("Connection: close"), std::string::npos) << reply;
  held.CloseAll();
  // Once they are gone, new connections are served again.
  bool served = false;
  for (int i = 0; i < 100 && !served; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    served = RawExchange(ep.port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200");
  }
  EXPECT_TRUE(served);
}

TEST(HttpEndpoint, PipelinedRequestsAreAnsweredInOrder) {
  HealthFlag health;
  HttpEndpoint ep;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  Sockets sockets;
  const int fd = sockets.Add(Connect(ep.port()));
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
              "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string all = ReadToClose(fd);
  close(fd);
  std::vector<size_t> at;
  for (size_t p = all.find("HTTP/1.1 "); p != std::string::npos; p = all.find("HTTP/1.1 ", p + 1)) at.push_back(p);
  ASSERT_EQ(at.size(), 4u) << all;
  EXPECT_EQ(all.substr(at[0], 12), "HTTP/1.1 200");
  EXPECT_EQ(all.substr(at[1], 12), "HTTP/1.1 404");
  EXPECT_EQ(all.substr(at[2], 12), "HTTP/1.1 200");
  EXPECT_EQ(all.substr(at[3], 12), "HTTP/1.1 200");
  EXPECT_TRUE(all.ends_with("ok\n")) << all;
}

TEST(HttpEndpoint, Http10GetsAnAnswerAndAClose) {
  HealthFlag health;
  HttpEndpoint ep;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health)).ok());
  const int fd = Connect(ep.port());
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /healthz HTTP/1.0\r\n\r\n");
  const std::string all = ReadToClose(fd);  // returns: the server closes
  close(fd);
  EXPECT_TRUE(all.starts_with("HTTP/1.1 200")) << all;
  EXPECT_NE(all.find("Connection: close"), std::string::npos) << all;
  EXPECT_TRUE(all.ends_with("\r\n\r\nok\n")) << all;
}

TEST(HttpEndpoint, DeadlinesAnswer408) {
  HealthFlag health;
  HttpEndpoint ep;
  HttpEndpointOptions options;
  options.io_timeout_ms = 300;
  ASSERT_TRUE(ep.Start("127.0.0.1", 0, MakeHandlers(&health), options).ok());
  int fd = Connect(ep.port());
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n");  // never finished
  std::string all = ReadToClose(fd);
  close(fd);
  EXPECT_TRUE(all.starts_with("HTTP/1.1 408")) << all;
  fd = Connect(ep.port());
  ASSERT_GE(fd, 0);
  SendAll(fd, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");  // a body cut short
  all = ReadToClose(fd);
  close(fd);
  EXPECT_TRUE(all.starts_with("HTTP/1.1 408")) << all;
}


// ---------------------------------------------------------------------------------------------
// kvault::http::Server itself (the transport under HttpEndpoint and `kvault serve`).

// A server whose handler keeps every Responder for the test to answer later (as `kvault serve`
// answers from its engine thread).
class HeldRequests {
 public:
  http::Handler Handler() {
    return [this](http::Request req, std::shared_ptr<http::Responder> res) {
      MutexLock lock(mu_);
      held_.push_back({std::move(req), std::move(res)});
      cv_.notify_all();
    };
  }
  // Waits (up to 10 s) until `n` requests came; false if they did not.
  bool WaitFor(size_t n) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return cv_.wait_for(lock.native(), std::chrono::seconds(10), [&]() REQUIRES(mu_) { return held_.size() >= n; });
  }
  std::shared_ptr<http::Responder> Responder(size_t i) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return held_.at(i).second;
  }
  std::vector<std::shared_ptr<http::Responder>> All() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    std::vector<std::shared_ptr<http::Responder>> out;
    for (auto& [_, r] : held_) out.push_back(r);
    return out;
  }

 private:
  Mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<http::Request, std::shared_ptr<http::Responder>>> held_ GUARDED_BY(mu_);
};

// Reads until the server closes; false if it did not within the socket's receive timeout.
bool ReadUntilClosed(int fd, std::string* out) {
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return false;
    out->append(buf, static_cast<size_t>(n));
  }
}

// Review item 6: a client that sends its request and then shuts down its sending side (nc -N,
// some HTTP/1.0 tools) still reads the answer. The old server took the EOF for a departure,
// closed the connection and dropped the answer.
TEST(HttpServer, HalfClosedClientStillGetsTheWholeAnswer) {
  HeldRequests held;
  http::Server server(http::Options{}, held.Handler());
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int plain = sockets.Add(Connect(server.port()));
  const int stream = sockets.Add(Connect(server.port()));
  ASSERT_GE(plain, 0);
  ASSERT_GE(stream, 0);
  SendAll(plain, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(held.WaitFor(1));
  SendAll(stream, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(held.WaitFor(2));
  shutdown(plain, SHUT_WR);
  shutdown(stream, SHUT_WR);
  // Time for the server to see both EOFs before anything is answered.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  held.Responder(0)->Respond({200, "text/plain", {}, "the whole answer\n"});
  auto s = held.Responder(1);
  s->StartStream(200, "text/plain");
  s->Write("part one, ");
  s->Write("part two\n");
  s->End();
  std::string a, b;
  EXPECT_TRUE(ReadUntilClosed(plain, &a));
  EXPECT_TRUE(ReadUntilClosed(stream, &b));
  EXPECT_TRUE(a.starts_with("HTTP/1.1 200")) << a;
  EXPECT_TRUE(a.ends_with("\r\n\r\nthe whole answer\n")) << a;
  EXPECT_TRUE(b.starts_with("HTTP/1.1 200")) << b;
  EXPECT_NE(b.find("part one, "), std::string::npos) << b;
  EXPECT_TRUE(b.ends_with("9\r\npart two\n\r\n0\r\n\r\n")) << b;
  server.Stop();
}

// ... while a client that closes completely is noticed when the answer's bytes are refused.
TEST(HttpServer, ClosedClientOfAStreamIsNoticedByTheWrites) {
  HeldRequests held;
  http::Server server(http::Options{}, held.Handler());
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int fd = sockets.Add(Connect(server.port()));
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(held.WaitFor(1));
  auto res = held.Responder(0);
  std::atomic<bool> gone{false};
  res->OnClose([&] { gone = true; });
  sockets.CloseAll();
  res->StartStream(200, "text/plain");
  for (int i = 0; i < 1000 && !gone.load(); ++i) {  // the first write meets a reset, a later one fails
    res->Write("tick\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone.load());
  EXPECT_TRUE(res->closed());
  server.Stop();
}

// Review item 9: RFC 9110 forbids 100 Continue to an HTTP/1.0 client.
TEST(HttpServer, Http10ExpectContinueGetsNo100) {
  http::Server server(http::Options{}, [](http::Request req, std::shared_ptr<http::Responder> res) {
    res->Respond({200, "text/plain", {}, "got " + req.body + "\n"});
  });
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int fd = sockets.Add(Connect(server.port()));
  ASSERT_GE(fd, 0);
  SendAll(fd, "POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello");
  std::string all;
  EXPECT_TRUE(ReadUntilClosed(fd, &all));
  EXPECT_TRUE(all.starts_with("HTTP/1.1 200")) << all;
  EXPECT_EQ(all.find(" 100 "), std::string::npos) << all;
  EXPECT_TRUE(all.ends_with("got hello\n")) << all;
  // An HTTP/1.1 client that asks still gets its 100 Continue.
  const int fd11 = sockets.Add(Connect(server.port()));
  ASSERT_GE(fd11, 0);
  SendAll(fd11, "POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
  char buf[256];
  const ssize_t n = recv(fd11, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  EXPECT_TRUE(std::string(buf, static_cast<size_t>(n)).starts_with("HTTP/1.1 100 Continue\r\n\r\n"));
  SendAll(fd11, "hello");
  all.clear();
  EXPECT_TRUE(ReadUntilClosed(fd11, &all));
  EXPECT_TRUE(all.ends_with("got hello\n")) << all;
  server.Stop();
}

// Review items 9 and 13: an HTTP/1.0 keep-alive is echoed (else the client closes); an unknown
// method is 501, not 400.
TEST(HttpServer, Http10KeepAliveIsEchoedAndUnknownMethodsGet501) {
  http::Options options;
  options.idle_timeout = std::chrono::milliseconds(500);
  http::Server server(options, [](http::Request req, std::shared_ptr<http::Responder> res) {
    res->Respond({200, "text/plain", {}, req.method + "\n"});
  });
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int fd = sockets.Add(Connect(server.port()));
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /y HTTP/1.0\r\n\r\n");
  std::string all;
  EXPECT_TRUE(ReadUntilClosed(fd, &all));
  const size_t second = all.find("HTTP/1.1 200", 1);
  ASSERT_NE(second, std::string::npos) << all;
  const std::string first = all.substr(0, second);
  EXPECT_NE(first.find("\r\nConnection: keep-alive\r\n"), std::string::npos) << all;
  EXPECT_NE(all.substr(second).find("\r\nConnection: close\r\n"), std::string::npos) << all;

  const std::string reply = RawExchange(server.port(), "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 501 Not Implemented")) << reply;
  EXPECT_TRUE(RawExchange(server.port(), "GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400")) << "garbage";
  EXPECT_EQ(http::StatusText(299), "Unknown");
  EXPECT_EQ(http::StatusText(404), "Not Found");
  server.Stop();
}

// Review item 8: a task posted through a Responder that throws closes its connection; before,
// the exception escaped the io thread's loop and the connection stayed "responding" (no
// deadline) forever.
TEST(HttpServer, ATaskThatThrowsClosesItsConnection) {
  http::Server server(http::Options{}, [](http::Request, std::shared_ptr<http::Responder> res) {
    res->Post([] { throw std::runtime_error("a task that fails"); });
  });
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int fd = sockets.Add(Connect(server.port()));  // 10 s receive timeout
  ASSERT_GE(fd, 0);
  SendAll(fd, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string all;
  EXPECT_TRUE(ReadUntilClosed(fd, &all)) << "the connection was left open";
  EXPECT_EQ(all, "");
  for (int i = 0; i < 500 && server.stats().open_connections != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server.stats().open_connections, 0u);
  server.Stop();
}

// Review item 10: the write deadline is "no progress for write_timeout", not "the whole answer
// within write_timeout": a large answer to a client that reads steadily but slowly is not cut.
TEST(HttpServer, WriteDeadlineIsNoProgressNotTheWholeAnswer) {
  http::Options options;
  options.write_timeout = std::chrono::milliseconds(1000);
  options.send_buffer_bytes = 16 << 10;
  const std::string big(size_t{1536} << 10, 'x');
  http::Server server(options, [&big](http::Request, std::shared_ptr<http::Responder> res) {
    res->Respond({200, "application/octet-stream", {}, big});
  });
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  Sockets sockets;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(sockets.Add(fd), 0);
  const int rcvbuf = 16 << 10;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  SendAll(fd, "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  // ~16 KiB every 25 ms: about 2.4 s for the whole answer, each read well within the deadline.
  std::string all;
  char buf[16 << 10];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, static_cast<size_t>(n));
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_TRUE(all.starts_with("HTTP/1.1 200")) << all.substr(0, 200);
  EXPECT_TRUE(all.ends_with(big.substr(0, 100)));
  EXPECT_EQ(all.size() - all.find("\r\n\r\n") - 4, big.size());
  EXPECT_EQ(server.stats().timeouts, 0u);
  server.Stop();
}

// Review item 1: Stop while other threads still stream through their Responders (as the engine
// thread does): their calls are ignored, nothing touches freed memory (run under TSan/ASan),
// and the Server is destroyed only after they are joined.
TEST(HttpServer, StopWhileStreamsAreActive) {
  for (int round = 0; round < 5; ++round) {
    HeldRequests held;
    auto server = std::make_unique<http::Server>(http::Options{}, held.Handler());
    ASSERT_TRUE(server->Start("127.0.0.1", 0).ok());
    Sockets sockets;
    constexpr size_t kStreams = 8;
    for (size_t i = 0; i < kStreams; ++i) {
      const int fd = sockets.Add(Connect(server->port()));
      ASSERT_GE(fd, 0);
      SendAll(fd, "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    ASSERT_TRUE(held.WaitFor(kStreams));
    std::atomic<bool> done{false};
    std::vector<std::thread> writers;
    for (auto& r : held.All()) {
      r->StartStream(200, "text/plain");
      writers.emplace_back([r, &done] {
        while (!done.load()) {
          r->Write("data\n");
          r->Post([] {});
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    server->Stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // writers keep calling after Stop
    for (auto& r : held.All()) EXPECT_TRUE(r->closed());
    done = true;
    for (auto& t : writers) t.join();
    server.reset();
  }
}

}  // namespace
}  // namespace kvault

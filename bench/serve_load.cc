#include "serve_load.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "charts/svg_chart.h"
#include "serve_load_corpus.h"
#include "serve_load_http.h"
#include "serve_load_stats.h"

namespace kvault {
namespace {

using serve_load::BaseUrl;
using serve_load::ChatStreamState;
using serve_load::HttpClient;
using serve_load::LoadSummary;
using serve_load::RequestRecord;
using serve_load::SseParser;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double SecondsBetween(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void Progress(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Progress(const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "[bench serve] %s\n", line);
}

// Live counts of a run, for the progress lines (written by the session threads).
struct Counters {
  std::atomic<int64_t> sent{0}, completed{0}, failed{0}, live_sessions{0};
};

// A model and the server that serves it.
struct Target {
  std::string model;
  BaseUrl url;
};

// What every session of one run shares (read-only while the sessions run).
struct RunContext {
  const ServeLoadOptions* options = nullptr;
  std::vector<Target> targets;  // session n asks targets[(n / switch_every) % size]
  Clock::time_point start;
  Counters* counters = nullptr;
};

// The user message that opens a session: a tag that makes the conversation's text its own
// (so one session's prompt never starts like another's: every cache hit is the session's own
// earlier turns), the documents, and the first question.
std::string OpeningMessage(const std::string& tag, const std::vector<const serve_load::CorpusDocument*>& docs,
                           const std::string& question) {
  std::string m = tag + "\n\nRead the following document" + (docs.size() > 1 ? "s" : "") +
                  " and answer my questions about " + (docs.size() > 1 ? "them" : "it") + ".\n\n";
  for (const auto* d : docs) m += "# " + d->title + "\n\n" + d->text + "\n\n";
  return m + "Question: " + question;
}

// One streamed chat completion of `messages`: the record of what came back, and the answer's
// text in *answer.
RequestRecord OneTurn(const RunContext& ctx, const Target& target, HttpClient& client, const json& messages, int turn,
                      std::string* answer) {
  const ServeLoadOptions& o = *ctx.options;
  json body = {{"model", target.model},
               {"messages", messages},
               {"max_tokens", o.max_tokens},
               {"temperature", o.temperature},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  RequestRecord rec;
  rec.turn = turn;
  rec.model = target.model;
  ChatStreamState st;
  const Clock::time_point sent = Clock::now();
  Clock::time_point last_chunk;
  SseParser sse([&](std::string_view data) {
    const int64_t chunks_before = st.content_chunks;
    const bool first = st.Add(data);
    const Clock::time_point now = Clock::now();
    if (first) rec.ttft_ms = SecondsBetween(sent, now) * 1e3;
    if (st.content_chunks > chunks_before) {
      if (chunks_before > 0) rec.itl_ms.push_back(SecondsBetween(last_chunk, now) * 1e3);
      last_chunk = now;
    }
  });
  const auto deadline = sent + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
  const HttpClient::Response resp =
      client.Request("POST", target.url.ChatPath(), body.dump(), deadline, [&](std::string_view bytes) {
        sse.Feed(bytes);
        return st.error.empty();
      });
  rec.e2e_ms = SecondsBetween(sent, Clock::now()) * 1e3;
  if (resp.error == "stopped") {
    rec.error = st.error;
  } else if (!resp.error.empty()) {
    rec.error = resp.error;
  } else if (resp.status != 200) {
    rec.error = "http " + std::to_string(resp.status);
  } else if (!st.done) {
    rec.error = "no [DONE]";
  } else if (!st.error.empty()) {
    rec.error = st.error;
  } else if (rec.ttft_ms < 0) {
    rec.error = "no token";
  }
  rec.ok = rec.error.empty();
  if (rec.ok) {
    rec.completion_tokens = st.completion_tokens >= 0 ? st.completion_tokens : st.content_chunks;
    rec.prompt_tokens = st.prompt_tokens;
    rec.cached_tokens = st.cached_tokens;
    rec.answer = st.text;
    *answer = st.text;
  }
  return rec;
}

// One session: `turns` requests on one connection, `think_s` apart. A failed turn leaves the
// conversation as it was (the user asks the next question instead), so every session sends
// exactly `turns` requests.
void RunSession(const RunContext& ctx, const Target& target, uint64_t session_seed, std::vector<RequestRecord>* out) {
  const ServeLoadOptions& o = *ctx.options;
  std::mt19937_64 rng(session_seed);
  const auto& corpus = serve_load::Corpus();
  const size_t first_doc = static_cast<size_t>(rng() % corpus.size());
  std::vector<const serve_load::CorpusDocument*> docs;
  std::vector<std::string> questions;
  for (int i = 0; i < std::max(1, o.documents); ++i) {
    docs.push_back(&corpus[(first_doc + static_cast<size_t>(i)) % corpus.size()]);
  }
  // The questions: each document's in turn, round robin, then again from the start.
  for (size_t q = 0; questions.size() < static_cast<size_t>(o.turns); ++q) {
    for (const auto* d : docs) {
      if (questions.size() < static_cast<size_t>(o.turns)) questions.push_back(d->questions[q % d->questions.size()]);
    }
  }
  char tag[64];
  std::snprintf(tag, sizeof tag, "Conversation %016llx.", static_cast<unsigned long long>(rng()));

  HttpClient client(target.url);
  json messages = json::array();
  for (int turn = 1; turn <= o.turns; ++turn) {
    if (turn > 1 && o.think_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(o.think_s));
    const std::string& q = questions[static_cast<size_t>(turn - 1)];
    messages.push_back({{"role", "user"}, {"content", messages.empty() ? OpeningMessage(tag, docs, q) : q}});
    ++ctx.counters->sent;
    std::string answer;
    out->push_back(OneTurn(ctx, target, client, messages, turn, &answer));
    out->back().session = tag;
    if (out->back().ok) {
      ++ctx.counters->completed;
      messages.push_back({{"role", "assistant"}, {"content", answer}});
    } else {
      ++ctx.counters->failed;
      messages.erase(messages.size() - 1);
    }
  }
}

// --answers: one JSON line per request (rate, session tag, turn, ok, answer), appended, so two
// runs with the same seed can be compared answer by answer (e.g. with and without a cache).
void AppendAnswers(const std::string& path, double rate, const std::vector<RequestRecord>& records) {
  std::ofstream f(path, std::ios::app);
  for (const RequestRecord& r : records) {
    f << json{{"rate", rate}, {"session", r.session}, {"model", r.model}, {"turn", r.turn}, {"ok", r.ok},
              {"answer", r.answer}}
             .dump()
      << "\n";
  }
  if (!f) Progress("cannot write the answers to %s", path.c_str());
}

struct RateResult {
  double rate = 0;
  int64_t sessions = 0;
  LoadSummary summary;
  bool meets_slo = false;
  std::vector<std::pair<std::string, LoadSummary>> per_model;  // several models: each one's share
};

// One run at `rate` sessions/s: launches the sessions on their Poisson arrival times, waits
// for every one to finish, and summarizes.
RateResult RunAtRate(const ServeLoadOptions& o, const std::vector<Target>& targets, double rate, int run_index) {
  Counters counters;
  RunContext ctx{&o, targets, Clock::now(), &counters};
  const size_t per_run = static_cast<size_t>(std::max(1, o.switch_every));
  // One slot per session; a session thread writes only its own slot's records, and this
  // thread reads them only after joining it (a deque never moves existing elements).
  struct Slot {
    std::vector<RequestRecord> records;
    std::thread thread;
  };
  std::deque<Slot> slots;
  std::mt19937_64 arrivals(o.seed * 1000003 + static_cast<uint64_t>(run_index));
  std::exponential_distribution<double> gap(rate);

  std::atomic<bool> launching{true};
  std::thread progress([&] {
    auto next = ctx.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.progress_s));
    while (launching.load() || counters.live_sessions.load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (o.progress_s <= 0 || Clock::now() < next) continue;
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.progress_s));
      Progress("rate %g/s t=%.0fs: live sessions %lld, sent %lld, completed %lld, failed %lld", rate,
               SecondsBetween(ctx.start, Clock::now()), static_cast<long long>(counters.live_sessions.load()),
               static_cast<long long>(counters.sent.load()), static_cast<long long>(counters.completed.load()),
               static_cast<long long>(counters.failed.load()));
    }
  });

  // The first session at once (a Poisson process seen from one of its arrivals), so that every
  // run has one; then exponential gaps.
  double t = 0;
  while (t < o.duration_s && (o.sessions <= 0 || static_cast<int64_t>(slots.size()) < o.sessions)) {
    std::this_thread::sleep_until(ctx.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t)));
    const Target* target = &targets[(slots.size() / per_run) % targets.size()];
    Slot& slot = slots.emplace_back();
    const uint64_t session_seed = arrivals();
    ++counters.live_sessions;
    try {
      slot.thread = std::thread([&ctx, &counters, target, session_seed, records = &slot.records] {
        RunSession(ctx, *target, session_seed, records);
        --counters.live_sessions;
      });
    } catch (const std::system_error& e) {
      --counters.live_sessions;
      slots.pop_back();
      Progress("cannot start a session thread (%s): no more sessions at this rate", e.what());
      break;
    }
    t += gap(arrivals);
  }
  launching = false;
  std::vector<RequestRecord> records;
  for (Slot& s : slots) {
    s.thread.join();
    records.insert(records.end(), s.records.begin(), s.records.end());
  }
  const double elapsed = SecondsBetween(ctx.start, Clock::now());
  progress.join();

  RateResult r;
  r.rate = rate;
  r.sessions = static_cast<int64_t>(slots.size());
  r.summary = serve_load::Summarize(records, o.slo_ttft_ms, elapsed);
  r.meets_slo = serve_load::MeetsSlo(r.summary, o.max_failed_fraction);
  if (targets.size() > 1) {
    for (const Target& t : targets) {
      std::vector<RequestRecord> mine;
      for (const RequestRecord& rec : records) {
        if (rec.model == t.model) mine.push_back(rec);
      }
      r.per_model.emplace_back(t.model, serve_load::Summarize(mine, o.slo_ttft_ms, elapsed));
    }
  }
  if (!o.answers.empty()) AppendAnswers(o.answers, rate, records);
  Progress("rate %g/s done in %.1f s: %lld sessions, sent %lld, completed %lld, failed %lld, TTFT p90 %.0f ms, %s",
           rate, elapsed, static_cast<long long>(r.sessions), static_cast<long long>(r.summary.sent),
           static_cast<long long>(r.summary.completed), static_cast<long long>(r.summary.failed),
           r.summary.ttft_p90_ms, r.meets_slo ? "holds the SLO" : "breaks the SLO");
  return r;
}

json RateJson(const ServeLoadOptions& o, const RateResult& r) {
  json j = {{"offered_rate", r.rate},
            {"offered_request_rps", r.rate * o.turns},
            {"sessions", r.sessions},
            {"meets_slo", r.meets_slo}};
  j.update(serve_load::ToJson(r.summary));
  if (!r.per_model.empty()) {
    json per = json::array();
    for (const auto& [model, summary] : r.per_model) {
      json m = serve_load::ToJson(summary);
      m["model"] = model;
      per.push_back(std::move(m));
    }
    j["per_model"] = std::move(per);
  }
  return j;
}

// The model of GET /v1/models when --model was not given.
Result<std::string> DiscoverModel(const BaseUrl& url, double timeout_s) {
  HttpClient client(url);
  std::string body;
  const std::string chat = url.ChatPath();  // ".../v1/chat/completions" -> ".../v1/models"
  const std::string path = chat.substr(0, chat.size() - std::string_view("/chat/completions").size()) + "/models";
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  const auto resp = client.Request("GET", path, "", deadline, [&](std::string_view b) {
    body.append(b);
    return true;
  });
  if (!resp.error.empty() || resp.status != 200) {
    return Status::Unavailable("GET " + path + ": " + (resp.error.empty() ? "http " + std::to_string(resp.status) : resp.error));
  }
  const json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
    return Status::Corruption("GET " + path + " lists no model");
  }
  return j["data"][0]["id"].get<std::string>();
}

// (rate, TTFT p90) points of a --json output: a sweep's "rates", or one run.
std::vector<std::pair<double, double>> ChartPoints(const json& j) {
  std::vector<std::pair<double, double>> points;
  auto add = [&](const json& run) {
    if (!run.contains("offered_rate") || !run["offered_rate"].is_number()) return;
    const double p90 = run.contains("ttft_p90_ms") && run["ttft_p90_ms"].is_number() ? run["ttft_p90_ms"].get<double>() : kNaN;
    points.emplace_back(run["offered_rate"].get<double>(), p90);
  };
  if (j.contains("rates") && j["rates"].is_array()) {
    for (const json& run : j["rates"]) add(run);
  } else {
    add(j);
  }
  return points;
}

std::string RateLabel(double rate) {
  char b[32];
  std::snprintf(b, sizeof b, "%g/s", rate);
  return b;
}

Status WriteChart(const ServeLoadOptions& o, const std::string& label, const json& mine) {
  struct Series {
    std::string name;
    std::vector<std::pair<double, double>> points;
  };
  std::vector<Series> all{{label, ChartPoints(mine)}};
  for (const std::string& path : o.chart_with) {
    std::ifstream in(path);
    if (!in) return Status::IOError("cannot read " + path);
    const json j = json::parse(in, nullptr, false);
    if (j.is_discarded()) return Status::InvalidArgument(path + " is not a `kvault bench serve --json` output");
    std::string name = j.contains("label") && j["label"].is_string() ? j["label"].get<std::string>()
                                                                     : std::filesystem::path(path).stem().string();
    all.push_back({name, ChartPoints(j)});
  }
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};
  charts::BarChart chart;
  chart.title = "TTFT p90 against offered load";
  char sub[256];
  std::snprintf(sub, sizeof sub, "kvault bench serve: %d-turn sessions, think %g s, max_tokens %d; SLO p90 TTFT <= %g ms",
                o.turns, o.think_s, o.max_tokens, o.slo_ttft_ms);
  chart.subtitle = sub;
  chart.y_label = "TTFT p90 (ms)";
  std::set<double> rates;
  for (size_t i = 0; i < all.size(); ++i) {
    chart.series.push_back({all[i].name, kColors[i % (sizeof kColors / sizeof *kColors)]});
    for (const auto& [rate, p90] : all[i].points) rates.insert(rate);
  }
  for (double rate : rates) {
    charts::BarGroup g;
    g.label = RateLabel(rate);
    g.sublabels = {"sessions/s"};
    for (const Series& s : all) {
      double v = kNaN;
      for (const auto& [r, p90] : s.points) {
        if (r == rate) v = p90;
      }
      g.values.push_back(v);
    }
    chart.groups.push_back(std::move(g));
  }
  chart.notes.push_back("Bars over the SLO mark rates the server does not hold; no bar: rate not run or nothing completed.");
  std::ofstream out(o.chart, std::ios::trunc);
  out << charts::RenderBarChartSvg(chart);
  out.close();
  if (!out) return Status::IOError("cannot write " + o.chart);
  return Status::OK();
}

void PrintTable(const std::vector<RateResult>& results) {
  std::printf("%8s %8s %6s %6s %6s %9s %9s %9s %8s %9s %9s %7s %9s %s\n", "rate/s", "sessions", "sent", "ok", "failed",
              "ttft_p50", "ttft_p90", "ttft_p99", "tpot", "itl_p99", "e2e_p90", "cached", "goodput", "SLO");
  for (const RateResult& r : results) {
    const LoadSummary& s = r.summary;
    std::printf("%8g %8lld %6lld %6lld %6lld %7.0fms %7.0fms %7.0fms %6.1fms %7.0fms %7.0fms %6.1f%% %7.2f/s %s\n",
                r.rate, static_cast<long long>(r.sessions), static_cast<long long>(s.sent),
                static_cast<long long>(s.completed), static_cast<long long>(s.failed), s.ttft_p50_ms, s.ttft_p90_ms,
                s.ttft_p99_ms, s.tpot_ms, s.itl_p99_ms, s.e2e_p90_ms,
                100 * s.cached_token_fraction, s.goodput_rps, r.meets_slo ? "holds" : "breaks");
    for (const auto& [error, n] : s.errors) std::printf("         failed: %lld x %s\n", static_cast<long long>(n), error.c_str());
  }
}

}  // namespace

int RunServeLoadBench(const ServeLoadOptions& o) {
  auto url = serve_load::ParseBaseUrl(o.url);
  if (!url.ok()) {
    std::fprintf(stderr, "kvault bench serve: %s\n", url.status().message().c_str());
    return 2;
  }
  if (!(o.rate > 0) || !(o.duration_s > 0) || o.turns < 1 || o.max_tokens < 1 || !(o.timeout_s > 0) || o.think_s < 0) {
    std::fprintf(stderr, "kvault bench serve: --rate, --duration-s, --turns, --max-tokens and --timeout-s must be positive\n");
    return 2;
  }
  if (!o.models.empty() && !o.model.empty()) {
    std::fprintf(stderr, "kvault bench serve: give --model or --models, not both\n");
    return 2;
  }
  if (!o.urls.empty() && o.urls.size() != o.models.size()) {
    std::fprintf(stderr, "kvault bench serve: --urls needs one URL per model of --models (%zu given for %zu)\n",
                 o.urls.size(), o.models.size());
    return 2;
  }
  if (o.switch_every < 1) {
    std::fprintf(stderr, "kvault bench serve: --switch-every must be at least 1\n");
    return 2;
  }
  std::vector<Target> targets;
  for (size_t i = 0; i < o.models.size(); ++i) {
    Target t{o.models[i], *url};
    if (!o.urls.empty()) {
      auto u = serve_load::ParseBaseUrl(o.urls[i]);
      if (!u.ok()) {
        std::fprintf(stderr, "kvault bench serve: --urls %s: %s\n", o.urls[i].c_str(), u.status().message().c_str());
        return 2;
      }
      t.url = *u;
    }
    targets.push_back(std::move(t));
  }
  std::string model = o.models.empty() ? o.model : o.models.front();
  if (model.empty()) {
    auto found = DiscoverModel(*url, o.timeout_s);
    if (!found.ok()) {
      std::fprintf(stderr, "kvault bench serve: no --model given and %s\n", found.status().message().c_str());
      return 2;
    }
    model = *found;
  }
  if (targets.empty()) targets.push_back({model, *url});
  std::string models_label;
  for (const Target& t : targets) models_label += (models_label.empty() ? "" : "+") + t.model;
  const std::string label = o.label.empty() ? models_label : o.label;

  std::vector<double> rates;
  if (o.sweep) {
    rates = o.rates;
    if (rates.empty()) {
      for (double f = 1; f <= 32; f *= 2) rates.push_back(o.rate * f);
    }
    std::sort(rates.begin(), rates.end());
    rates.erase(std::unique(rates.begin(), rates.end()), rates.end());
    if (rates.empty() || !(rates.front() > 0)) {
      std::fprintf(stderr, "kvault bench serve: --rates must be positive\n");
      return 2;
    }
  } else {
    rates = {o.rate};
  }
  Progress("%s at %s: %zu rate(s), %d turns per session, think %g s, max_tokens %d, SLO p90 TTFT <= %g ms",
           models_label.c_str(), o.url.c_str(), rates.size(), o.turns, o.think_s, o.max_tokens, o.slo_ttft_ms);

  if (!o.answers.empty() && !std::ofstream(o.answers, std::ios::trunc)) {
    std::fprintf(stderr, "kvault bench serve: cannot write --answers %s\n", o.answers.c_str());
    return 2;
  }
  std::vector<RateResult> results;
  std::vector<serve_load::SweepPoint> points;
  for (size_t i = 0; i < rates.size(); ++i) {
    results.push_back(RunAtRate(o, targets, rates[i], static_cast<int>(i)));
    points.push_back({results.back().rate, results.back().meets_slo});
    if (o.sweep && !o.sweep_all && !results.back().meets_slo) break;
  }

  json out = {{"bench", "serve"},
              {"url", o.url},
              {"model", model},
              {"label", label},
              {"turns_per_session", o.turns},
              {"think_s", o.think_s},
              {"documents_per_session", o.documents},
              {"max_tokens", o.max_tokens},
              {"temperature", o.temperature},
              {"duration_s", o.duration_s},
              {"timeout_s", o.timeout_s},
              {"seed", o.seed}};
  if (targets.size() > 1) {
    json ms = json::array();
    for (const Target& t : targets) ms.push_back(t.model);
    out["models"] = ms;
    out["switch_every"] = o.switch_every;
    if (!o.urls.empty()) out["urls"] = o.urls;
  }
  if (o.sweep) {
    json runs = json::array();
    for (const RateResult& r : results) runs.push_back(RateJson(o, r));
    out["slo_ttft_ms"] = o.slo_ttft_ms;
    out["rates"] = runs;
    out["max_rate_at_slo"] = serve_load::MaxRateAtSlo(points);
  } else {
    out.update(RateJson(o, results.front()));
  }

  if (!o.chart.empty()) {
    if (Status st = WriteChart(o, label, out); !st.ok()) {
      std::fprintf(stderr, "kvault bench serve: chart: %s\n", st.message().c_str());
      return 1;
    }
    Progress("chart written to %s", o.chart.c_str());
  }
  if (o.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("kvault bench serve: %s at %s\n", models_label.c_str(), o.url.c_str());
    PrintTable(results);
    if (o.sweep) std::printf("max_rate_at_slo: %g sessions/s\n", out["max_rate_at_slo"].get<double>());
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace kvault

// The figures of `kvault bench serve` from its per-request records: TTFT, time per output
// token and end-to-end percentiles, prompt and cached tokens, completed and failed counts,
// goodput under a TTFT SLO, and a sweep's highest rate that holds the SLO. Pure functions of
// their inputs (no clock, no I/O, no LibTorch), so the unit test pins every figure.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvault::serve_load {

// One request as the load generator saw it. A request is either completed (`ok`: HTTP 200
// and a stream that ended with "data: [DONE]") or failed (`error` says why); never both.
struct RequestRecord {
  int turn = 1;                    // 1-based turn of its session
  bool ok = false;
  std::string error;               // failed: "http 500", "timeout", "connect: ...", "stream cut", ...
  double ttft_ms = -1;             // send -> first content token (or the finish chunk of an empty
                                   // answer); -1 when none arrived
  double e2e_ms = 0;               // send -> end of the stream (or the failure)
  int64_t completion_tokens = 0;   // usage.completion_tokens, else the content chunks counted
  int64_t prompt_tokens = -1;      // usage.prompt_tokens; -1: not reported
  int64_t cached_tokens = -1;      // usage.prompt_tokens_details.cached_tokens; -1: not reported
  // Inter-token latency: the gaps between consecutive content chunks after the first (what a
  // reader of the stream sees stall), in arrival order.
  std::vector<double> itl_ms;
  std::string session;             // the session's tag (the same seed gives the same tags)
  std::string model;               // the model it asked
  std::string answer;              // the answer's text (completed requests)
};

// The p-th percentile (0..100) by linear interpolation between the closest ranks (NumPy's
// default): sorted v, position p/100*(n-1). NaN for no values.
double Percentile(std::vector<double> values, double p);

// One turn's figures (turn 1 is every session's first request, with the document).
struct TurnSummary {
  int turn = 0;
  int64_t sent = 0, completed = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0;  // over completed requests that reported usage
  double ttft_p50_ms = 0, ttft_p90_ms = 0;
};

// A run's figures. Percentiles are over completed requests only (NaN, written as null, when
// none completed); failed requests count in `failed` and `errors` and never in a percentile.
struct LoadSummary {
  int64_t sent = 0, completed = 0, failed = 0;  // completed + failed == sent
  std::map<std::string, int64_t> errors;        // failed requests by their error
  double elapsed_s = 0;                         // the run's wall time (first send -> last end)
  double ttft_p50_ms = 0, ttft_p90_ms = 0, ttft_p99_ms = 0, ttft_mean_ms = 0;
  // Time per output token of a request: (e2e - ttft) / (completion_tokens - 1), over completed
  // requests with at least 2 output tokens; tpot_ms is their mean, tpot_p50_ms the median.
  double tpot_ms = 0, tpot_p50_ms = 0;
  // Inter-token latency over every gap of every completed request (RequestRecord::itl_ms).
  double itl_p50_ms = 0, itl_p99_ms = 0, itl_max_ms = 0;
  double e2e_p50_ms = 0, e2e_p90_ms = 0, e2e_p99_ms = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  int64_t usage_reported = 0;                   // completed requests that reported usage
  double cached_token_fraction = 0;             // cached_tokens / prompt_tokens (0 when none)
  double slo_ttft_ms = 0;
  int64_t met_slo = 0;                          // completed requests with ttft_ms <= slo_ttft_ms
  double goodput_rps = 0;                       // met_slo / elapsed_s
  double throughput_rps = 0;                    // completed / elapsed_s
  double output_tokens_per_s = 0;               // completion_tokens / elapsed_s
  std::vector<TurnSummary> turns;               // by turn, 1..the highest turn sent
};

// Summarizes `records` of a run that took `elapsed_s` seconds against a TTFT SLO.
LoadSummary Summarize(const std::vector<RequestRecord>& records, double slo_ttft_ms, double elapsed_s);

// Whether a run holds the SLO: something completed, its p90 TTFT is within the SLO, and at
// most `max_failed_fraction` of what it sent failed.
bool MeetsSlo(const LoadSummary& s, double max_failed_fraction);

// One rate of a sweep, in the order run (increasing rates).
struct SweepPoint {
  double rate = 0;       // offered sessions per second
  bool meets_slo = false;
};

// The highest rate that holds the SLO with every lower rate of the sweep holding it too (the
// load before the first rate that broke it); 0 when the first rate already broke it.
double MaxRateAtSlo(const std::vector<SweepPoint>& points);

// The summary's keys (see docs/BENCHMARKS.md, "kvault bench serve"); NaN becomes null.
nlohmann::json ToJson(const LoadSummary& s);

}  // namespace kvault::serve_load

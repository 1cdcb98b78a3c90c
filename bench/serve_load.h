// `kvault bench serve`: a load generator for any OpenAI-compatible chat endpoint (kvault
// serve, llama.cpp's server, vLLM, ...). Sessions arrive as a Poisson process at `rate`
// sessions per second for `duration_s` (the first at once); each session is a conversation
// of `turns` streamed chat completions about a document of the committed corpus
// (serve_load_corpus.h), every turn's prompt being the whole conversation so far (as chat
// clients send it), with `think_s` seconds between an answer and the next question. It
// reports TTFT, time per output token and end-to-end percentiles, prompt and cached tokens,
// completed and failed requests, and goodput under a TTFT SLO (serve_load_stats.h); `sweep`
// runs increasing rates and reports the highest one whose p90 TTFT holds the SLO. Errors and
// timeouts are counted, never fatal. One thread per live session (blocking sockets);
// progress goes to stderr.
//
// Several models (`models`): session n talks to models[(n / switch_every) % M] (a conversation
// stays with its model), so consecutive sessions alternate between models in runs of
// `switch_every`: the switching workload of a server that holds several models. `urls` (one
// per model) sends each model's sessions to its own server instead: the same arrivals against
// separately served models, the baseline. The JSON adds a per-model breakdown.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvault {

struct ServeLoadOptions {
  std::string url = "http://127.0.0.1:8080";  // the server's base URL (http:// only)
  std::string model;                           // "" = the first model of GET /v1/models
  std::vector<std::string> models;             // several models, alternating by session (see above)
  std::vector<std::string> urls;               // with `models`: the server of each ("": all at `url`)
  int switch_every = 1;                        // consecutive sessions per model before the next
  double rate = 1.0;                           // sessions per second (Poisson arrivals)
  double duration_s = 30;                      // sessions arrive during this window
  int64_t sessions = 0;                        // stop arrivals after this many (0: no cap)
  int turns = 4;                               // requests per session
  double think_s = 2.0;                        // fixed pause between an answer and the next turn
  int documents = 1;                           // documents in a session's first message
  int max_tokens = 64;
  double temperature = 0;                      // 0: greedy
  double slo_ttft_ms = 2000;
  double timeout_s = 120;                      // per request, from send to the stream's end
  uint64_t seed = 1;
  bool sweep = false;
  std::vector<double> rates;                   // the sweep's rates (default: rate x 1, 2, 4, ... 32)
  bool sweep_all = false;                      // keep going past the first rate that breaks the SLO
  double max_failed_fraction = 0.01;           // a rate with more failures does not hold the SLO
  std::string chart;                           // SVG of TTFT p90 vs offered load
  std::vector<std::string> chart_with;         // other servers' --json outputs, drawn beside
  std::string label;                           // this server's name on the chart (default: model)
  std::string answers;                         // JSON lines of every request's answer ("": none)
  double progress_s = 5;                       // seconds between progress lines on stderr
  bool json = false;
};

int RunServeLoadBench(const ServeLoadOptions& options);

}  // namespace kvault

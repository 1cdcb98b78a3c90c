// Reports of `kvault replay`: the JSON object of one run, a text table, and an SVG chart of
// queue length over time.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "replay/simulator.h"
#include "replay/trace.h"

namespace kvault::replay {

struct ReplayRun {
  ReplayOptions options;
  ReplayResult result;
};

// One run: token_hit_rate, token_hit_rate_by_tier, ttft_p50/p90/p99_ms,
// throughput_tokens_per_s, queue length series, bytes per path, configuration.
nlohmann::json RunJson(const Trace& trace, const std::string& trace_path, const ReplayRun& run);
// Fixed-width table, one row per run.
std::string RunTable(const std::vector<ReplayRun>& runs);
// Queue length over time, one line per run.
std::string QueueChartSvg(const std::string& title, const std::vector<ReplayRun>& runs);

}  // namespace kvault::replay

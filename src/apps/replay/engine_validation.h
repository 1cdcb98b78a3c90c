// `kvault replay --engine`: runs the first requests of a trace through the real engine and
// store (a small random-weight model on CPU, or a bigger one on GPU), calibrates the
// simulator's cost model on that engine, replays the same requests in the simulator, and
// reports simulated vs measured TTFT and hit rate.
#pragma once

#include "apps/replay/replay_main.h"

namespace kvault::replay {

int EngineValidationMain(const ReplayCliOptions& options);

}  // namespace kvault::replay

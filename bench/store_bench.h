// `kvault bench store`: T1/T2 bandwidth, lookup rate and index rebuild time, each next to
// the limit measured in the same run (memcpy, O_DIRECT sequential I/O of the same disk).
#pragma once

#include <cstdint>
#include <string>

namespace kvault {

struct StoreBenchOptions {
  std::string dir = "./kvault-data/bench";  // T2 and the O_DIRECT probe file live here
  bool quick = false;                       // about 20 s instead of about 2 minutes
  bool json = false;
  uint64_t rebuild_entries = 0;             // 0: 20k quick, 100k full
};

// Runs the benchmark; prints JSON (or a table) on stdout and progress on stderr.
int RunStoreBench(const StoreBenchOptions& options);

}  // namespace kvault

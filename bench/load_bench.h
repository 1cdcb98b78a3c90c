// `kvault bench load`: how fast a model comes back when a server switches to it — time to
// first token after a switch with the weights read from the source file (page cache dropped),
// from the store's T2 (SSD, the store reopened so T1 is empty) and from T1 (DRAM), next to the
// limits measured in the same run: memcpy of the same bytes and the O_DIRECT read rate of the
// same T2 files (docs/BENCHMARKS.md, "Model switching").
#pragma once

#include <cstdint>
#include <string>

namespace kvault {

struct LoadBenchOptions {
  std::string model = "smollm2";  // a model spec (models/model_loader.h); ignored with `random`
  // A random-weight model of a known shape instead, written once as safetensors into the work
  // directory (its "source file"): tinyllama (1.1B), llama3-8b (8B); `layers` cuts it shorter.
  std::string random;
  int64_t layers = 0;             // 0: the shape's own
  std::string dtype = "fp32";     // the engine's weights: fp32 or bf16
  std::string dir;                // work directory (store, random model); "": a temporary one, removed
  int read_threads = 16;          // store chunks read at once (ReadOptions::threads)
  int repeats = 3;                // timed loads per tier (median reported)
  int threads = 0;                // compute threads of the first token (0: every core but one)
  bool json = false;
};

int RunLoadBench(const LoadBenchOptions& options);

}  // namespace kvault

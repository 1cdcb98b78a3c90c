// `kvault bench gpu-ttft`: time to first token of a returning conversation on the kvault
// engine — full recompute, T1 hit, T2 hit with a cold page cache (O_DIRECT), and the planner
// — for several history lengths, next to the physical limits measured in the same run (the
// pinned host->device peak on a GPU, memcpy on a CPU) and the engine's own prefill speed.
// bench/gpu_ttft/run.sh adds the transformers baseline on the same GPU (hf_baseline.py).
//
// The model is built from a preset with deterministic random weights: `llama3-8b` (the
// Llama-3-8B shape, bf16, 128 KiB of KV per token) for the GPU machine, `tiny` for a smoke
// run on a CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvault {

struct GpuTtftBenchOptions {
  std::string preset = "llama3-8b";  // llama3-8b | tiny
  std::string device;                // cuda | cpu; "" = cuda when LibTorch sees a GPU
  std::string dtype;                 // bf16 | fp32; "" = bf16 on cuda, fp32 on cpu
  std::vector<int64_t> histories = {1024, 4096, 16384, 32768};
  int64_t new_tokens = 128;
  int repeats = 3;                   // timed runs per measurement (the median is reported)
  int64_t chunk_tokens = 256;
  // At the longest history, one more T1 hit with this many new tokens: enough compute to hide
  // the load, so that the overlap is measured where it can show. 0: skip.
  int64_t overlap_new_tokens = 4096;
  std::string dir;                   // the store's directory (T2); "" = a fresh temporary one
  std::string json;                  // write the JSON here ("-" = stdout only)
  uint64_t seed = 1;
};

int RunGpuTtftBench(const GpuTtftBenchOptions& options);

}  // namespace kvault

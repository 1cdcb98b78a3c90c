// `kvault bench model`: a real model (SmolLM2-135M by default) on this machine's CPU, each
// figure next to its peer measured in the same run:
//   load            LoadModel wall time vs reading the file's bytes
//   gemm peer       torch::linear on the shapes a prefill of N tokens runs (GFLOP/s)
//   prefill         TTFT of an N-token prompt (engine, no store) -> tokens/s and the matrix
//                   FLOP rate vs the GEMM peer
//   decode          ms per greedy token after the first
//   returning turn  TTFT of turn 2 of a conversation with turn 1 in the store (T1) vs its
//                   floor: the new tokens' forward over KV already in memory + one decode step
//                   + the cached KV's bytes at memcpy rate
//   --profile       where a prefill's and a returning turn's time goes, by category
#pragma once

#include <cstdint>
#include <string>

namespace kvault {

struct ModelBenchOptions {
  std::string model = "smollm2";  // models::LoadModel spec
  int threads = 1;                // compute threads (LibTorch and OpenBLAS)
  std::string dtype = "fp32";     // fp32 | bf16
  int64_t prompt_tokens = 1024;
  int64_t decode_tokens = 32;     // greedy steps timed after the first token
  int64_t new_tokens = 20;        // turn 2's new tokens after turn 1's prompt and answer
  int64_t answer_tokens = 16;     // turn 1's answer
  int64_t chunk_tokens = 256;
  int repeats = 3;                // timed runs per figure (medians reported)
  std::string text;               // the prompt's text file ("" = a license text)
  bool profile = false;
  bool json = false;
};

int RunModelBench(const ModelBenchOptions& options);

}  // namespace kvault

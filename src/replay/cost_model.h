// The serving-system model `kvault replay` charges time with: a model shape (KV bytes per
// token, prefill FLOPs), the GPU's effective prefill rate, and tier bandwidths.
//
// Defaults are measurements from the GPU machine (H100 80 GB, PCIe Gen5): a Llama-3-8B-shaped
// model prefills 32k tokens in 1.39 s with transformers (bf16, sdpa), which this FLOP count
// turns into an effective 580 TFLOP/s; pinned host->device copies run at 55 GB/s; its disk
// reads 1.2 GB/s with O_DIRECT. Decode time per output token is an assumption (it does not
// enter TTFT; see docs/REPLAY.md). A T2 codec's decode and encode rates are this machine's
// (MeasureCodecRates, below) unless given.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvault/kv_codec.h"
#include "kvault/layout.h"
#include "kvault/status.h"
#include "planner/load_planner.h"

namespace kvault::replay {

struct ModelShape {
  std::string name;
  uint32_t layers = 0;
  uint32_t q_heads = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t dtype_bytes = 2;
  double params = 0;  // parameters (for 2 * params FLOPs per token)
  uint64_t kv_bytes_per_token_override = 0;  // --kv-bytes-per-token; 0 = from the shape

  uint64_t kv_bytes_per_token() const;
  // FLOPs to prefill `n` new tokens after `cached` tokens of context: the weights' GEMMs
  // and causal attention.
  double WeightFlops(uint64_t n) const;
  double AttentionFlops(uint64_t n, uint64_t cached) const;
  // AttentionFlops(n, c) = AttentionFlopsPerPair() * n * (c + n/2).
  double AttentionFlopsPerPair() const;
  double PrefillFlops(uint64_t n, uint64_t cached) const { return WeightFlops(n) + AttentionFlops(n, cached); }
  // The KV layout of the shape's chunks of `chunk_tokens` (dtype from dtype_bytes: 1 f8,
  // 2 bf16, 4 f32): what a codec encodes. Its token_bytes() is kv_bytes_per_token() unless
  // that is overridden.
  KvLayout Layout(uint32_t chunk_tokens) const;
};

// llama3-8b, llama3-70b, qwen2.5-7b, qwen2.5-72b, mistral-7b.
Result<ModelShape> ModelPreset(const std::string& name);
const std::vector<std::string>& ModelPresetNames();

struct CostModel {
  double prefill_tflops = 580;     // effective FLOP/s of prefill, in 10^12
  double attention_tflops = 0;     // of its attention part; 0: the same as prefill_tflops
  double pcie_gbps = 55;           // host DRAM -> GPU, GB/s (10^9)
  double t2_read_gbps = 1.2;      // T2 -> T1
  double t2_write_gbps = 1.2;     // T1 -> T2 (write-behind)
  double decode_ms_per_token = 20; // per output token of one request (not in TTFT)
  // A lower tier's codec (ReplayOptions::t2_codec): raw KV decoded after a read / encoded
  // before a write, GB/s (10^9) on the reading / writing thread. Unused with codec none;
  // required > 0 otherwise.
  double codec_decode_gbps = 0;
  double codec_encode_gbps = 0;
  double request_overhead_ms = 0;  // fixed engine time per prefill (scheduling, sampling)

  double PrefillSeconds(const ModelShape& m, uint64_t n, uint64_t cached) const {
    const double attention_rate = (attention_tflops > 0 ? attention_tflops : prefill_tflops) * 1e12;
    return request_overhead_ms / 1000.0 + m.WeightFlops(n) / (prefill_tflops * 1e12) +
           m.AttentionFlops(n, cached) / attention_rate;
  }
  Status Validate() const;

  // The engine's planner (planner::LoadPlanner) with these rates instead of measured ones:
  // `base` (the engine's planner options) with the model's layers, the T2 read and PCIe
  // rates (and the codec's decode rate, when set), and the prefill model PrefillSeconds
  // charges pinned. The planner's prefill model has no fixed term: request_overhead_ms is left out of its predictions (every plan pays
  // it once; a split, whose head is a pass of its own, twice).
  planner::LoadPlanner::Options PinnedPlannerOptions(const ModelShape& m,
                                                     planner::LoadPlanner::Options base = {}) const;
};

// A KV codec's rates on this machine, for CostModel::codec_decode_gbps / codec_encode_gbps
// when no flag gives them.
struct CodecRates {
  double decode_gbps = 0;  // raw (decoded) KV per second of one thread's CPU time, 10^9 B/s
  double encode_gbps = 0;  // raw KV encoded per second of one thread's CPU time
};

// Encodes one synthetic chunk of `tokens` tokens of `layout` (random KV-like values of the
// layout's dtype), then times DecodeKvChunk (one thread) on it for about `seconds` of wall
// time and EncodeKvChunk for half that, each after one untimed warm-up call, in CPU time of
// the calling thread (so other processes on a shared machine do not slow the figure). `codec`
// must not be none; InvalidArgument when it cannot encode `layout`.
Result<CodecRates> MeasureCodecRates(KvCodec codec, const KvLayout& layout, uint32_t tokens, double seconds = 0.2);

}  // namespace kvault::replay

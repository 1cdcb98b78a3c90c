#include "replay/cost_model.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

namespace kvault::replay {

uint64_t ModelShape::kv_bytes_per_token() const {
  if (kv_bytes_per_token_override > 0) return kv_bytes_per_token_override;
  return uint64_t{2} * layers * kv_heads * head_dim * dtype_bytes;
}

KvLayout ModelShape::Layout(uint32_t chunk_tokens) const {
  KvLayout l;
  l.num_layers = layers;
  l.num_kv_heads = kv_heads;
  l.head_dim = head_dim;
  l.dtype = dtype_bytes == 4 ? DType::kF32 : dtype_bytes == 1 ? DType::kF8 : DType::kBF16;
  l.chunk_tokens = chunk_tokens;
  l.rope = RopeMode::kPreRope;
  return l;
}

// 2 FLOPs per parameter per token.
double ModelShape::WeightFlops(uint64_t n) const { return 2.0 * params * static_cast<double>(n); }

// QK^T and PV: 2 * 2 * d FLOPs per (query, key) pair per layer, over cached + causal new keys.
double ModelShape::AttentionFlops(uint64_t n, uint64_t cached) const {
  const double nn = static_cast<double>(n), c = static_cast<double>(cached);
  return AttentionFlopsPerPair() * (c * nn + nn * nn / 2.0);
}

double ModelShape::AttentionFlopsPerPair() const { return 4.0 * layers * (double(q_heads) * head_dim); }

const std::vector<std::string>& ModelPresetNames() {
  static const std::vector<std::string> names = {"llama3-8b", "llama3-70b", "qwen2.5-7b", "qwen2.5-72b", "mistral-7b"};
  return names;
}

Result<ModelShape> ModelPreset(const std::string& name) {
  // Shapes from the models' config.json files.
  if (name == "llama3-8b") return ModelShape{name, 32, 32, 8, 128, 2, 8.03e9};
  if (name == "llama3-70b") return ModelShape{name, 80, 64, 8, 128, 2, 70.6e9};
  if (name == "qwen2.5-7b") return ModelShape{name, 28, 28, 4, 128, 2, 7.62e9};
  if (name == "qwen2.5-72b") return ModelShape{name, 80, 64, 8, 128, 2, 72.7e9};
  if (name == "mistral-7b") return ModelShape{name, 32, 32, 8, 128, 2, 7.24e9};
  std::string all;
  for (const auto& n : ModelPresetNames()) all += (all.empty() ? "" : ", ") + n;
  return Status::InvalidArgument("unknown model preset '" + name + "' (available: " + all + ")");
}

planner::LoadPlanner::Options CostModel::PinnedPlannerOptions(const ModelShape& m,
                                                             planner::LoadPlanner::Options base) const {
  base.layers = static_cast<int>(std::max<uint32_t>(m.layers, 1));
  base.fixed_t2_read_gbps = t2_read_gbps;
  base.fixed_copy_gbps = pcie_gbps;
  if (codec_decode_gbps > 0) base.fixed_decode_gbps = codec_decode_gbps;
  const double attention_rate = (attention_tflops > 0 ? attention_tflops : prefill_tflops) * 1e12;
  base.fixed_prefill.per_token_s = m.WeightFlops(1) / (prefill_tflops * 1e12);
  base.fixed_prefill.per_pair_s = m.AttentionFlopsPerPair() / attention_rate;
  return base;
}

Status CostModel::Validate() const {
  if (!(prefill_tflops > 0) || !(pcie_gbps > 0) || !(t2_read_gbps > 0) || !(t2_write_gbps > 0) || !(attention_tflops >= 0) ||
      !(decode_ms_per_token >= 0) || !(request_overhead_ms >= 0) || !(codec_decode_gbps >= 0) || !(codec_encode_gbps >= 0)) {
    return Status::InvalidArgument("cost model rates must be positive");
  }
  return Status::OK();
}

// --- codec rates -------------------------------------------------------------------------
namespace {

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Random finite values of magnitude 2^-5..2^2 with random signs, in `dtype`'s bits.
std::vector<std::byte> SyntheticChunk(const KvLayout& layout, uint32_t tokens) {
  std::vector<std::byte> raw(layout.chunk_bytes(tokens));
  std::mt19937_64 rng(0x6b7661756c74);
  const size_t width = DTypeSize(layout.dtype);
  for (size_t i = 0; i + width <= raw.size(); i += width) {
    const uint64_t r = rng();
    const uint32_t sign = uint32_t(r & 1), e = uint32_t((r >> 1) % 8);  // exponent offset 0..7 from 2^-5
    if (layout.dtype == DType::kF32) {
      const uint32_t bits = sign << 31 | (122 + e) << 23 | (uint32_t(r >> 8) & 0x7fffff);
      std::memcpy(&raw[i], &bits, 4);
    } else if (layout.dtype == DType::kBF16) {
      const uint16_t bits = uint16_t(sign << 15 | (122 + e) << 7 | (uint32_t(r >> 8) & 0x7f));
      std::memcpy(&raw[i], &bits, 2);
    } else if (layout.dtype == DType::kF16) {
      const uint16_t bits = uint16_t(sign << 15 | (10 + e) << 10 | (uint32_t(r >> 8) & 0x3ff));
      std::memcpy(&raw[i], &bits, 2);
    }
  }
  return raw;
}

// Calls `op` (one untimed warm-up first) until `seconds` of wall time have passed; bytes of
// raw KV per second of this thread's CPU time.
template <typename Op>
Result<double> Rate(uint64_t raw_bytes, double seconds, Op op) {
  KVAULT_RETURN_IF_ERROR(op());
  const auto wall_start = std::chrono::steady_clock::now();
  const double cpu_start = ThreadCpuSeconds();
  uint64_t calls = 0;
  do {
    KVAULT_RETURN_IF_ERROR(op());
    ++calls;
  } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count() < seconds);
  const double cpu = ThreadCpuSeconds() - cpu_start;
  return cpu > 0 ? double(raw_bytes) * double(calls) / cpu : 0.0;
}

}  // namespace

Result<CodecRates> MeasureCodecRates(KvCodec codec, const KvLayout& layout, uint32_t tokens, double seconds) {
  if (codec == KvCodec::kNone) return Status::InvalidArgument("codec none has no rates to measure");
  if (tokens == 0) return Status::InvalidArgument("a chunk of at least one token");
  KVAULT_RETURN_IF_ERROR(KvCodecSupports(codec, layout));
  const std::vector<std::byte> raw = SyntheticChunk(layout, tokens);
  std::vector<std::byte> encoded(EncodedChunkBytes(codec, layout, tokens));
  std::vector<std::byte> decoded(raw.size());
  CodecRates rates;
  auto encode = Rate(raw.size(), seconds / 2, [&] { return EncodeKvChunk(codec, layout, tokens, raw, encoded); });
  if (!encode.ok()) return encode.status();
  auto decode = Rate(raw.size(), seconds, [&] { return DecodeKvChunk(codec, layout, tokens, encoded, decoded, 1); });
  if (!decode.ok()) return decode.status();
  rates.encode_gbps = encode.value() / 1e9;
  rates.decode_gbps = decode.value() / 1e9;
  return rates;
}

}  // namespace kvault::replay

// The KV codecs' public functions (include/kvault/kv_codec.h): names, the checks of codec,
// layout and sizes, the chunk as layers back to back, and the threads of DecodeKvChunk. The
// codecs themselves live in kv_codec_int8.cc and kv_codec_int4.cc.
#include "kvault/kv_codec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "store/kv_codec_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace kvault {
namespace {

// int4 decodes a head's vector in registers or a stack-sized buffer: head_dim up to this.
constexpr uint32_t kInt4MaxHeadDim = 1024;

kv_codec::LayerShape ShapeOf(const KvLayout& layout, uint32_t tokens, int layer) {
  return {tokens, layout.num_kv_heads, layout.head_dim, layout.dtype, layer};
}

size_t RawLayerBytes(const KvLayout& layout, uint32_t tokens) { return layout.token_layer_bytes() * tokens; }

Status SizeError(const char* what, size_t got, size_t want) {
  return Status::InvalidArgument(std::string("KV codec: ") + what + " is " + std::to_string(got) + " bytes, expected " +
                                 std::to_string(want));
}

// Codec and layout supported, and both buffers of the expected sizes.
Status CheckCall(KvCodec codec, const KvLayout& layout, size_t raw_size, size_t raw_want, size_t enc_size,
                 size_t enc_want) {
  KVAULT_RETURN_IF_ERROR(KvCodecSupports(codec, layout));
  if (raw_size != raw_want) return SizeError("the raw KV", raw_size, raw_want);
  if (enc_size != enc_want) return SizeError("the encoded KV", enc_size, enc_want);
  return Status::OK();
}

Status EncodeLayer(KvCodec codec, const kv_codec::LayerShape& shape, const std::byte* raw, size_t raw_bytes,
                   std::byte* out) {
  switch (codec) {
    case KvCodec::kNone: std::memcpy(out, raw, raw_bytes); return Status::OK();
    case KvCodec::kInt8: return kv_codec::EncodeInt8Layer(shape, raw, out);
    case KvCodec::kInt4: return kv_codec::EncodeInt4Layer(shape, raw, out);
  }
  return Status::InvalidArgument("unknown KV codec");
}

void DecodeLayer(KvCodec codec, const kv_codec::LayerShape& shape, const std::byte* encoded, std::byte* raw,
                 size_t raw_bytes) {
  switch (codec) {
    case KvCodec::kNone: std::memcpy(raw, encoded, raw_bytes); return;
    case KvCodec::kInt8: kv_codec::DecodeInt8Layer(shape, encoded, raw); return;
    case KvCodec::kInt4: kv_codec::DecodeInt4Layer(shape, encoded, raw); return;
  }
}

std::atomic<kv_codec::SimdLevel> simd_cap{kv_codec::SimdLevel::kAvx512};

}  // namespace

namespace kv_codec {

std::string Where(const LayerShape& shape, int part, uint32_t token, uint32_t head, uint32_t channel) {
  std::string s;
  if (shape.layer >= 0) s = "layer " + std::to_string(shape.layer) + " ";
  s += part == 0 ? "K" : "V";
  if (token != kAllTokens) s += " token " + std::to_string(token);
  s += " head " + std::to_string(head) + " channel " + std::to_string(channel);
  return s;
}

Status NonFiniteError(const char* codec, const LayerShape& shape, int part, uint32_t token, uint32_t head,
                      uint32_t channel, float value) {
  return Status::InvalidArgument(std::string(codec) + " codec: " + Where(shape, part, token, head, channel) + " is " +
                                 (std::isnan(value) ? "NaN" : "infinite") + "; KV must be finite");
}

const char* SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return "scalar";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvx512: return "avx512";
  }
  return "?";
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// CPUID and XCR0 (not __builtin_cpu_supports: clang 14 does not know "f16c"). AVX2 level:
// AVX2, FMA, F16C and the OS saving YMM state; AVX-512 level: also AVX-512 F/DQ/BW/VL and BF16
// and the OS saving the opmask and ZMM state.
SimdLevel DetectSimdLevel() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return SimdLevel::kScalar;
  const bool osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  if (!osxsave || !fma || !f16c) return SimdLevel::kScalar;
  uint32_t xcr0 = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
  if ((xcr0 & 0x6) != 0x6 || __get_cpuid_max(0, nullptr) < 7) return SimdLevel::kScalar;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned max_subleaf = a;
  if (((b >> 5) & 1) == 0) return SimdLevel::kScalar;  // AVX2
  const bool avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1) &&
                      (xcr0 & 0xe6) == 0xe6;  // F, DQ, BW, VL; XMM, YMM, opmask, ZMM state
  if (!avx512 || max_subleaf < 1) return SimdLevel::kAvx2;
  __cpuid_count(7, 1, a, b, c, d);
  return ((a >> 5) & 1) ? SimdLevel::kAvx512 : SimdLevel::kAvx2;  // AVX512_BF16
}
#endif

SimdLevel CpuSimdLevel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const SimdLevel level = DetectSimdLevel();
  return level;
#else
  return SimdLevel::kScalar;
#endif
}

void SetSimdCap(SimdLevel cap) { simd_cap.store(cap, std::memory_order_relaxed); }

SimdLevel ActiveSimdLevel() { return std::min(CpuSimdLevel(), simd_cap.load(std::memory_order_relaxed)); }

}  // namespace kv_codec

const char* KvCodecName(KvCodec codec) {
  switch (codec) {
    case KvCodec::kNone: return "none";
    case KvCodec::kInt8: return "int8";
    case KvCodec::kInt4: return "int4";
  }
  return "?";
}

Status ParseKvCodec(std::string_view name, KvCodec* codec) {
  for (KvCodec c : {KvCodec::kNone, KvCodec::kInt8, KvCodec::kInt4}) {
    if (name == KvCodecName(c)) {
      *codec = c;
      return Status::OK();
    }
  }
  return Status::InvalidArgument("unknown KV codec '" + std::string(name) + "' (none, int8, int4)");
}

Status KvCodecSupports(KvCodec codec, const KvLayout& layout) {
  switch (codec) {
    case KvCodec::kNone: return Status::OK();
    case KvCodec::kInt8:
    case KvCodec::kInt4: break;
    default: return Status::InvalidArgument("unknown KV codec id " + std::to_string(static_cast<int>(codec)));
  }
  const std::string name = KvCodecName(codec);
  if (layout.dtype != DType::kF32 && layout.dtype != DType::kF16 && layout.dtype != DType::kBF16) {
    return Status::InvalidArgument(name + " codec: encodes f32, f16 or bf16 KV, not " + DTypeName(layout.dtype));
  }
  if (layout.num_kv_heads == 0 || layout.head_dim == 0) {
    return Status::InvalidArgument(name + " codec: the layout has no KV heads or a zero head_dim");
  }
  if (codec == KvCodec::kInt4) {
    const uint32_t d = layout.head_dim;
    if (d < 2 || d > kInt4MaxHeadDim || (d & (d - 1)) != 0) {
      return Status::InvalidArgument("int4 codec: head_dim must be a power of two from 2 to " +
                                     std::to_string(kInt4MaxHeadDim) + " (its Hadamard rotation), not " +
                                     std::to_string(d));
    }
  }
  return Status::OK();
}

size_t EncodedLayerBytes(KvCodec codec, const KvLayout& layout, uint32_t tokens) {
  if (tokens == 0) return 0;
  const kv_codec::LayerShape shape = ShapeOf(layout, tokens, -1);
  switch (codec) {
    case KvCodec::kNone: return RawLayerBytes(layout, tokens);
    case KvCodec::kInt8: return kv_codec::Int8LayerBytes(shape);
    case KvCodec::kInt4: return kv_codec::Int4LayerBytes(shape);
  }
  return 0;
}

size_t EncodedChunkBytes(KvCodec codec, const KvLayout& layout, uint32_t tokens) {
  return EncodedLayerBytes(codec, layout, tokens) * layout.num_layers;
}

Status EncodeKvChunk(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> raw,
                     std::span<std::byte> out) {
  KVAULT_RETURN_IF_ERROR(CheckCall(codec, layout, raw.size(), layout.chunk_bytes(tokens), out.size(),
                                   EncodedChunkBytes(codec, layout, tokens)));
  const size_t raw_layer = RawLayerBytes(layout, tokens);
  const size_t enc_layer = EncodedLayerBytes(codec, layout, tokens);
  for (uint32_t l = 0; l < layout.num_layers && tokens > 0; ++l) {
    KVAULT_RETURN_IF_ERROR(EncodeLayer(codec, ShapeOf(layout, tokens, static_cast<int>(l)), raw.data() + l * raw_layer,
                                       raw_layer, out.data() + l * enc_layer));
  }
  return Status::OK();
}

Status DecodeKvChunk(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> encoded,
                     std::span<std::byte> raw, int threads) {
  KVAULT_RETURN_IF_ERROR(CheckCall(codec, layout, raw.size(), layout.chunk_bytes(tokens), encoded.size(),
                                   EncodedChunkBytes(codec, layout, tokens)));
  if (tokens == 0 || layout.num_layers == 0) return Status::OK();
  const size_t raw_layer = RawLayerBytes(layout, tokens);
  const size_t enc_layer = EncodedLayerBytes(codec, layout, tokens);
  const kv_codec::LayerShape shape = ShapeOf(layout, tokens, -1);
  // Layers [begin, end): each thread a contiguous run; the layers' bytes are disjoint.
  auto decode_layers = [&](uint32_t begin, uint32_t end) {
    for (uint32_t l = begin; l < end; ++l) {
      DecodeLayer(codec, shape, encoded.data() + l * enc_layer, raw.data() + l * raw_layer, raw_layer);
    }
  };
  const uint32_t n = std::clamp<uint32_t>(threads < 1 ? 1u : static_cast<uint32_t>(threads), 1u, layout.num_layers);
  std::vector<std::thread> helpers;
  helpers.reserve(n - 1);
  for (uint32_t i = 1; i < n; ++i) {
    const uint32_t begin = layout.num_layers * i / n, end = layout.num_layers * (i + 1) / n;
    try {
      helpers.emplace_back(decode_layers, begin, end);
    } catch (const std::system_error&) {
      decode_layers(begin, end);  // no thread to be had: this one decodes the range itself
    }
  }
  decode_layers(0, layout.num_layers / n);
  for (std::thread& t : helpers) t.join();
  return Status::OK();
}

Status EncodeKvLayer(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> raw,
                     std::span<std::byte> encoded) {
  KVAULT_RETURN_IF_ERROR(CheckCall(codec, layout, raw.size(), RawLayerBytes(layout, tokens), encoded.size(),
                                   EncodedLayerBytes(codec, layout, tokens)));
  if (tokens == 0) return Status::OK();
  return EncodeLayer(codec, ShapeOf(layout, tokens, -1), raw.data(), raw.size(), encoded.data());
}

Status DecodeKvLayer(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> encoded,
                     std::span<std::byte> raw) {
  KVAULT_RETURN_IF_ERROR(CheckCall(codec, layout, raw.size(), RawLayerBytes(layout, tokens), encoded.size(),
                                   EncodedLayerBytes(codec, layout, tokens)));
  if (tokens == 0) return Status::OK();
  DecodeLayer(codec, ShapeOf(layout, tokens, -1), encoded.data(), raw.data(), raw.size());
  return Status::OK();
}

}  // namespace kvault

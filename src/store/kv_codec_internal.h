// The codecs' layer functions behind include/kvault/kv_codec.h (which checks codec, layout
// and sizes before calling them). Not an API: include only from kv_codec*.cc and the codec's
// unit test. Every function is pure apart from the SIMD switch below: safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvault/layout.h"
#include "kvault/status.h"

namespace kvault::kv_codec {

// One layer of a chunk: [K then V][tokens][heads][head_dim] in `dtype`.
struct LayerShape {
  uint32_t tokens = 0;
  uint32_t heads = 0;
  uint32_t head_dim = 0;
  DType dtype = DType::kBF16;
  int layer = -1;  // the layer's index in the chunk, for error messages (-1: not known)

  size_t values_per_part() const { return size_t{tokens} * heads * head_dim; }  // K (or V) values
};

// "layer 3 V token 17 head 1 channel 5" (the layer omitted when unknown, the token when
// `token` is kAllTokens: a K channel's group spans the chunk's tokens).
inline constexpr uint32_t kAllTokens = 0xffffffffu;
std::string Where(const LayerShape& shape, int part, uint32_t token, uint32_t head, uint32_t channel);

// InvalidArgument: "<codec> codec: <Where> is NaN|infinite; KV must be finite".
Status NonFiniteError(const char* codec, const LayerShape& shape, int part, uint32_t token, uint32_t head,
                      uint32_t channel, float value);

// Encoded bytes of one layer (docs/CODECS.md has the byte layouts).
size_t Int8LayerBytes(const LayerShape& shape);
size_t Int4LayerBytes(const LayerShape& shape);
// `raw` holds the layer's K and V; `out` Int*LayerBytes bytes. InvalidArgument (saying where)
// for a NaN or infinite value, or a value beyond what the fp16 scales can represent.
Status EncodeInt8Layer(const LayerShape& shape, const std::byte* raw, std::byte* out);
Status EncodeInt4Layer(const LayerShape& shape, const std::byte* raw, std::byte* out);
// Total functions: any bytes decode (corrupt scales decode to garbage, never to UB).
void DecodeInt8Layer(const LayerShape& shape, const std::byte* encoded, std::byte* raw);
void DecodeInt4Layer(const LayerShape& shape, const std::byte* encoded, std::byte* raw);

// The decoders' kernels: scalar (any CPU), x86-64 AVX2 + FMA + F16C, AVX-512 F/BW/VL/DQ +
// BF16. Every level writes the same bits.
enum class SimdLevel : uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
const char* SimdLevelName(SimdLevel level);  // "scalar", "avx2", "avx512"
// The best level this CPU runs.
SimdLevel CpuSimdLevel();
// Caps the level the decoders use (default kAvx512: no cap); tests step it down to compare
// the kernels. Atomic.
void SetSimdCap(SimdLevel cap);
// min(CpuSimdLevel(), the cap): the kernels a decode runs now.
SimdLevel ActiveSimdLevel();

}  // namespace kvault::kv_codec

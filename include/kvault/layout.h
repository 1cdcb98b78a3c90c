// KvLayout: the only thing the store knows about a model's KV cache.
//
// Payload layout of one chunk of `n` tokens (DESIGN.md §2), layer-major:
//   [layer][K then V][n tokens][kv_heads][head_dim] in `dtype`
// so the K and V of one layer of one chunk form one contiguous range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvault/status.h"

namespace kvault {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF8 = 3 };
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);

// Whether cached K holds rotary position embedding already applied (kPostRope) or not
// (kPreRope: decoupled positional encoding, reusable at shifted positions).
enum class RopeMode : uint8_t { kPostRope = 0, kPreRope = 1 };

struct ByteRange {
  size_t offset = 0;
  size_t size = 0;
};

struct KvLayout {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  DType dtype = DType::kBF16;
  uint32_t chunk_tokens = 256;
  RopeMode rope = RopeMode::kPostRope;

  // Bytes of K plus V for one token in one layer.
  size_t token_layer_bytes() const { return 2ull * num_kv_heads * head_dim * DTypeSize(dtype); }
  // Bytes of one token across all layers (the "KV bytes per token" of the model).
  size_t token_bytes() const { return token_layer_bytes() * num_layers; }
  // Bytes of the payload of a chunk holding `tokens` tokens.
  size_t chunk_bytes(uint32_t tokens) const { return token_bytes() * tokens; }
  // Range of layer `layer` (K then V) inside the payload of a `tokens`-token chunk.
  ByteRange layer_range(uint32_t layer, uint32_t tokens) const {
    size_t size = token_layer_bytes() * tokens;
    return {size * layer, size};
  }

  Status Validate() const;
  std::string ToString() const;
  bool operator==(const KvLayout&) const = default;
};

}  // namespace kvault

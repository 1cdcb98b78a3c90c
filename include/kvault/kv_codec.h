// KV codecs: how a chunk's KV is stored on a tier. T1 holds KV exactly as the engine wrote it
// (codec none); a lower tier may hold it compressed, encoded when the chunk is demoted and
// decoded when it is promoted (or loaded).
//
// A codec works on one chunk's payload in its KvLayout (layer-major,
// [layer][K then V][tokens][kv_heads][head_dim] in the layout's dtype) and encodes each layer
// on its own: the encoded payload is the layers' encodings one after the other, each
// EncodedLayerBytes long, so a loader can decode layer l while layer l+1 is still in flight.
// Everything a layer's decoding needs (scales, offsets) is inside its encoding.
//
//   none   the raw payload, byte for byte.
//   int8   symmetric 8-bit per token and head (K and V): one fp16 scale per head_dim values.
//   int4   4-bit after a randomized Hadamard rotation of each head's head_dim channels (fixed
//          signs, so the rotation needs no storage): K quantized per channel over the chunk's
//          tokens, V per token (asymmetric, fp16 scale and minimum per group). head_dim must
//          be a power of two.
//
// K is stored before RoPE (RopeMode::kPreRope, decoupled positional encoding): its channels
// keep their scale across positions, which is what makes per-channel key quantization work.
//
// Thread-safety: the functions are pure; any thread, concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kvault/layout.h"
#include "kvault/status.h"

namespace kvault {

enum class KvCodec : uint8_t { kNone = 0, kInt8 = 1, kInt4 = 2 };

const char* KvCodecName(KvCodec codec);  // "none", "int8", "int4"
// Parses a codec's name; InvalidArgument (listing the names) otherwise.
Status ParseKvCodec(std::string_view name, KvCodec* codec);
// Whether `codec` can encode chunks of `layout` (int8/int4: dtype f32, f16 or bf16; int4 also
// a power-of-two head_dim); InvalidArgument saying why not.
Status KvCodecSupports(KvCodec codec, const KvLayout& layout);

// Encoded bytes of one layer (K then V) of a `tokens`-token chunk, and of the whole chunk.
size_t EncodedLayerBytes(KvCodec codec, const KvLayout& layout, uint32_t tokens);
size_t EncodedChunkBytes(KvCodec codec, const KvLayout& layout, uint32_t tokens);

// Encodes one chunk's raw payload (layout.chunk_bytes(tokens) bytes) into `out`
// (EncodedChunkBytes bytes). InvalidArgument on a size mismatch, an unsupported layout, or a
// NaN or infinite value (nothing meaningful can be stored for it).
Status EncodeKvChunk(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> raw,
                     std::span<std::byte> out);
// Decodes one chunk into `raw` (layout.chunk_bytes(tokens) bytes), using up to `threads`
// threads (layers split among them). InvalidArgument on a size mismatch.
Status DecodeKvChunk(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> encoded,
                     std::span<std::byte> raw, int threads = 1);
// One layer: `encoded` is that layer's EncodedLayerBytes, `raw` its layout.layer_range size.
Status EncodeKvLayer(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> raw,
                     std::span<std::byte> encoded);
Status DecodeKvLayer(KvCodec codec, const KvLayout& layout, uint32_t tokens, std::span<const std::byte> encoded,
                     std::span<std::byte> raw);

}  // namespace kvault

// Dequantizers for the ggml tensor types found in GGUF files: the block shapes of every type
// kvault knows (so a reader can size any tensor) and decoders from the block layouts to float,
// bfloat16 or IEEE half.
//
// Supported for decoding: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
// Q6_K. Other known types (Q8_1, Q8_K, the IQ* and TQ* families, I8..I64, F64) have a size but
// no decoder: asking for them is kInvalidArgument naming the type.
//
// No LibTorch. Thread-safety: every function is stateless; concurrent calls on disjoint
// outputs are safe. A call may run `threads` worker threads of its own and joins them before
// it returns.
#pragma once

#include <cstdint>
#include <span>

#include "kvault/status.h"

namespace kvault::gguf {

// A ggml type stores its elements in blocks of `block_elements`, each `block_bytes` long
// (1 and sizeof(element) for the plain types).
struct BlockTraits {
  int64_t block_elements;
  int64_t block_bytes;
};

// Block shape of a ggml type; kInvalidArgument naming the type for unknown numbers.
Result<BlockTraits> TraitsOf(uint32_t type);

// True for the types DequantizeTo* can decode.
bool CanDequantize(uint32_t type);

// Dequantizes `n` elements (a multiple of the block size) of `type` from `src` (at least the
// bytes n needs) into dst[0..n), split over `threads` threads (0 = hardware_concurrency) when n
// is large. Unsupported type: kInvalidArgument naming it ("Q8_K", ...); a short `src`, a
// negative n or one that is not a whole number of blocks: kInvalidArgument. dst is untouched
// on error.
Status DequantizeToFloat(uint32_t type, std::span<const uint8_t> src, int64_t n, float* dst, int threads = 0);

// The same, rounding each value to bfloat16 bits (round-to-nearest-even; NaN stays NaN).
// BF16 sources are copied bit for bit.
Status DequantizeToBFloat16(uint32_t type, std::span<const uint8_t> src, int64_t n, uint16_t* dst, int threads = 0);

// The same, rounding each value to IEEE binary16 bits (round-to-nearest-even; beyond the half
// range gives +-inf; NaN stays NaN). F16 sources are copied bit for bit.
Status DequantizeToFloat16(uint32_t type, std::span<const uint8_t> src, int64_t n, uint16_t* dst, int threads = 0);

// Scalar conversions used by the decoders (exact for half -> float and bfloat16 -> float).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToHalf(float f);      // round-to-nearest-even
uint16_t FloatToBFloat16(float f);  // round-to-nearest-even

}  // namespace kvault::gguf

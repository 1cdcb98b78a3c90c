// Scalar numerics shared by the KV codecs (kv_codec_int8.cc, kv_codec_int4.cc): conversions
// between float and the half-precision formats (fp16 for the stored scales; f16/bf16 for the
// layout's dtype), directed rounding of a scale to fp16, the int4 codec's fixed rotation
// signs and its scalar Walsh–Hadamard transform. Not an API: include only from kv_codec*.cc.
// Every function is pure (no state): safe from any thread.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvault/layout.h"

namespace kvault::kv_codec {

// --- fp16 (IEEE binary16) -------------------------------------------------------------------
inline constexpr float kF16Max = 65504.0f;

// f32 -> fp16 bits, round to nearest even (the F16C instruction's rule), NaN -> quiet NaN.
inline uint16_t F32ToF16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
  if (ax < 0x38800000u) {
    // Below 2^-14 (fp16's smallest normal): adding 0.5f leaves the sum's last mantissa bit
    // worth 2^-24, fp16's subnormal step, so the FPU's own rounding does the work.
    const float sum = std::bit_cast<float>(ax) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(sum) - 0x3f000000u);
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  const uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + odd;  // -(112 << 23) + 0xfff + odd, modulo 2^32
  return sign | static_cast<uint16_t>(ax >> 13);
}

inline float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  if (em >= 0x7c00u) return std::bit_cast<float>(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
  if (em < 0x400u) {  // zero or subnormal: em * 2^-24, exact in f32
    const float mag = static_cast<float>(em) * 0x1p-24f;
    return sign ? -mag : mag;
  }
  return std::bit_cast<float>(sign | ((em << 13) + 0x38000000u));
}

inline bool F16IsFinite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

// The smallest finite fp16 >= v (v >= 0, finite), or false if none (v > 65504).
inline bool F16RoundUp(double v, uint16_t* out) {
  uint16_t h = F32ToF16Bits(static_cast<float>(v));
  if (static_cast<double>(F16BitsToF32(h)) < v) ++h;  // v >= 0: the next bit pattern is the next value up
  if (!F16IsFinite(h)) return false;
  *out = h;
  return true;
}

// The largest finite fp16 <= v (v finite), or false if none (v < -65504).
inline bool F16RoundDown(double v, uint16_t* out) {
  uint16_t h = F32ToF16Bits(static_cast<float>(v));
  if (static_cast<double>(F16BitsToF32(h)) > v) {
    if (h & 0x8000u) {
      ++h;  // negative: a larger magnitude is a smaller value
    } else if (h == 0) {
      h = 0x8001u;  // the negative subnormal closest to zero
    } else {
      --h;
    }
  }
  if (!F16IsFinite(h)) return false;
  *out = h;
  return true;
}

// --- bf16 ---------------------------------------------------------------------------------
inline uint16_t F32ToBf16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // round to nearest even
}
inline float Bf16BitsToF32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// --- little-endian fp16 fields of an encoding (unaligned) ------------------------------------
inline uint16_t LoadU16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void StoreU16(std::byte* p, uint16_t v) { std::memcpy(p, &v, 2); }

// --- the layout's dtype (f32, f16, bf16), element i of a raw payload ------------------------
inline float LoadValue(DType dtype, const std::byte* base, size_t i) {
  switch (dtype) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, base + 4 * i, 4);
      return v;
    }
    case DType::kF16: return F16BitsToF32(LoadU16(base + 2 * i));
    default: return Bf16BitsToF32(LoadU16(base + 2 * i));
  }
}
inline void StoreValue(DType dtype, std::byte* base, size_t i, float v) {
  switch (dtype) {
    case DType::kF32: std::memcpy(base + 4 * i, &v, 4); return;
    case DType::kF16: StoreU16(base + 2 * i, F32ToF16Bits(v)); return;
    default: StoreU16(base + 2 * i, F32ToBf16Bits(v)); return;
  }
}

// A decoded value for an f16 payload: the scales round up, so a value whose input was at most
// kF16Max may decode a little above it, which fp16 would round to infinity; it saturates
// instead (which only brings it closer to the input). Every decoding kernel applies this
// before its fp16 conversion (StoreDecodedValue, StoreRow, the SIMD stores), so they stay
// bit-identical.
inline float SaturateF16(float v) { return std::min(std::max(v, -kF16Max), kF16Max); }

inline void StoreDecodedValue(DType dtype, std::byte* base, size_t i, float v) {
  StoreValue(dtype, base, i, dtype == DType::kF16 ? SaturateF16(v) : v);
}

// Rounds v to the nearest integer, ties to even, for |v| <= 2^22 (callers clamp first): adding
// and subtracting 1.5 * 2^23 leaves no fraction bits (the FPU rounds). Unlike std::nearbyint,
// inline on every x86-64 (no SSE4.1 needed) and vectorizable.
inline float RoundToInt(float v) {
  constexpr float kMagic = 0x1.8p23f;
  return (v + kMagic) - kMagic;
}

// Reads values [first, first + count) of a payload in `dtype` into out (f32). Returns the
// index (from `first`) of the first NaN or infinite value, or count if all are finite.
inline size_t LoadFiniteRow(DType dtype, const std::byte* base, size_t first, size_t count, float* out) {
  switch (dtype) {
    case DType::kF32: std::memcpy(out, base + 4 * first, 4 * count); break;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) out[i] = F16BitsToF32(LoadU16(base + 2 * (first + i)));
      break;
    default:
      for (size_t i = 0; i < count; ++i) out[i] = Bf16BitsToF32(LoadU16(base + 2 * (first + i)));
      break;
  }
  bool finite = true;
  for (size_t i = 0; i < count; ++i) finite &= std::fabs(out[i]) <= 3.40282347e38f;  // false for NaN and ±inf
  if (finite) return count;
  size_t i = 0;
  while (std::fabs(out[i]) <= 3.40282347e38f) ++i;
  return i;
}

// Stores count decoded floats at element `first` of a payload in kDType (loops the compiler
// vectorizes for f32 and bf16; f16 saturates, as StoreDecodedValue).
template <DType kDType>
inline void StoreRow(const float* v, size_t count, std::byte* base, size_t first) {
  if constexpr (kDType == DType::kF32) {
    std::memcpy(base + 4 * first, v, 4 * count);
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(base + 2 * first);  // may be unaligned: memcpy below
    for (size_t i = 0; i < count; ++i) {
      const uint16_t bits = kDType == DType::kF16 ? F32ToF16Bits(SaturateF16(v[i])) : F32ToBf16Bits(v[i]);
      std::memcpy(out + i, &bits, 2);
    }
  }
}

// --- the int4 codec's rotation ------------------------------------------------------------
// R = H · S / sqrt(n): S the diagonal of fixed pseudo-random signs, H the n×n Walsh–Hadamard
// matrix (Sylvester order). R is orthonormal; R⁻¹ = S · H / sqrt(n).
inline constexpr uint64_t kRotationSeed = 0x6b7661756c74ull;  // "kvault"

// signs[c] = ±1 for c < n: the low bit of the c-th output of splitmix64 seeded with
// kRotationSeed (the same signs for every layer, head and chunk).
inline void RotationSigns(uint32_t n, float* signs) {
  uint64_t state = kRotationSeed;
  for (uint32_t c = 0; c < n; ++c) {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    signs[c] = (z & 1) ? -1.0f : 1.0f;
  }
}

// In place, unnormalized: x <- H x, n a power of two. Stages h = 1, 2, 4, ...; each pair
// (a, b) = (x[j], x[j + h]) becomes (a + b, a - b). The SIMD decoder performs the same
// operations in the same order, so both give the same bits.
inline void Fwht(float* x, uint32_t n) {
  for (uint32_t i = 0; i + 1 < n; i += 2) {  // h = 1, apart so the loops below vectorize
    const float a = x[i];
    const float b = x[i + 1];
    x[i] = a + b;
    x[i + 1] = a - b;
  }
  for (uint32_t h = 2; h < n; h *= 2) {
    for (uint32_t i = 0; i < n; i += 2 * h) {
      float* lo = x + i;
      float* hi = x + i + h;
      for (uint32_t j = 0; j < h; ++j) {
        const float a = lo[j];
        const float b = hi[j];
        lo[j] = a + b;
        hi[j] = a - b;
      }
    }
  }
}

}  // namespace kvault::kv_codec

// The codecs' SIMD building blocks, chosen at run time (kv_codec_internal.h, ActiveSimdLevel):
// x86-64 AVX2 + FMA + F16C (8 lanes) and AVX-512 F/BW/VL/DQ + BF16 (16 lanes). Stores of
// floats in the layout's dtype round like the scalar conversions (kv_codec_numeric.h: to
// nearest even), so a SIMD decoder writes the same bits as the scalar one. Not an API: include
// only from kv_codec*.cc. KVAULT_CODEC_AVX2 functions may run only at SimdLevel::kAvx2 or
// above, KVAULT_CODEC_AVX512 ones only at kAvx512. Pure functions: safe from any thread.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVAULT_CODEC_X86 1
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "kvault/layout.h"
#include "store/kv_codec_numeric.h"  // kF16Max

#define KVAULT_CODEC_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVAULT_CODEC_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace kvault::kv_codec {

// float -> bf16 bits in the low 16 bits of each 32-bit lane, round to nearest even (NaN is not
// special-cased: decoded values are finite unless the encoding is corrupt).
KVAULT_CODEC_AVX2 inline __m128i Bf16Bits8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  // packus works per 128-bit lane: [r0..r3 r0..r3 | r4..r7 r4..r7]; gather qwords 0 and 2.
  const __m256i packed = _mm256_packus_epi32(r, r);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// Stores 8 floats at element `i` of `base` in `kDType` (f32, f16 or bf16).
template <DType kDType>
KVAULT_CODEC_AVX2 inline void Store8(std::byte* base, size_t i, __m256 v) {
  if constexpr (kDType == DType::kF32) {
    _mm256_storeu_ps(reinterpret_cast<float*>(base + 4 * i), v);
  } else if constexpr (kDType == DType::kF16) {
    const __m256 lim = _mm256_set1_ps(kF16Max);  // saturate, as SaturateF16
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 2 * i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 2 * i), Bf16Bits8(v));
  }
}

// 8 fp16 values (unaligned) widened to floats.
KVAULT_CODEC_AVX2 inline __m256 LoadF16x8(const std::byte* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// 8 values at element `i` of `base` in `kDType`, widened to floats (exact).
template <DType kDType>
KVAULT_CODEC_AVX2 inline __m256 Load8(const std::byte* base, size_t i) {
  if constexpr (kDType == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(base + 4 * i));
  } else if constexpr (kDType == DType::kF16) {
    return LoadF16x8(base + 2 * i);
  } else {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 2 * i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
}

// All-ones lanes where v is finite (|v| <= FLT_MAX is false for NaN and infinities).
KVAULT_CODEC_AVX2 inline __m256 FiniteLanes(__m256 v) {
  const __m256 abs = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  return _mm256_cmp_ps(abs, _mm256_set1_ps(3.40282347e38f), _CMP_LE_OQ);
}

// Horizontal maximum and minimum of 8 lanes.
KVAULT_CODEC_AVX2 inline float HMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
KVAULT_CODEC_AVX2 inline float HMin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// The Hadamard stages that pair whole registers r[j] and r[j + kH] (channel distance 8 * kH),
// kH = 1, 2, 4, ... < kNv, in the scalar Fwht's order.
template <int kNv, int kH>
KVAULT_CODEC_AVX2 inline void RegisterButterflies(__m256 (&r)[kNv]) {
  if constexpr (kH < kNv) {
    for (int i = 0; i < kNv; i += 2 * kH) {
      for (int j = i; j < i + kH; ++j) {
        const __m256 a = r[j];
        const __m256 b = r[j + kH];
        r[j] = _mm256_add_ps(a, b);
        r[j + kH] = _mm256_sub_ps(a, b);
      }
    }
    RegisterButterflies<kNv, 2 * kH>(r);
  }
}

// r <- H r (unnormalized) for a vector of 8 * kNv channels held in kNv registers, with the
// scalar Fwht's operations in its order (kv_codec_numeric.h), so the same bits. Stages h = 1,
// 2, 4 inside each register: v*sign + partner gives a+b in the low and a-b in the high element
// of each pair (v*±1 is exact, so the fma rounds like the scalar a±b); then whole registers.
template <int kNv>
KVAULT_CODEC_AVX2 inline void HadamardAvx2(__m256 (&r)[kNv]) {
  const __m256 sign1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
  const __m256 sign2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
  const __m256 sign4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
#pragma GCC unroll 32
  for (int i = 0; i < kNv; ++i) {
    __m256 v = r[i];
    v = _mm256_fmadd_ps(v, sign1, _mm256_permute_ps(v, 0xb1));
    v = _mm256_fmadd_ps(v, sign2, _mm256_permute_ps(v, 0x4e));
    v = _mm256_fmadd_ps(v, sign4, _mm256_permute2f128_ps(v, v, 0x01));
    r[i] = v;
  }
  RegisterButterflies<kNv, 1>(r);
}

// Stores 16 floats at element `i` of `base` in `kDType`. vcvtneps2bf16 rounds to nearest even
// like F32ToBf16Bits; it flushes f32 subnormal inputs to zero, which decoded KV never holds
// (a nonzero decoded value is at least 2^-24 times a power of two no smaller than 2^-6).
template <DType kDType>
KVAULT_CODEC_AVX512 inline void Store16(std::byte* base, size_t i, __m512 v) {
  if constexpr (kDType == DType::kF32) {
    _mm512_storeu_ps(reinterpret_cast<float*>(base + 4 * i), v);
  } else if constexpr (kDType == DType::kF16) {
    const __m512 lim = _mm512_set1_ps(kF16Max);  // saturate, as SaturateF16
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(base + 2 * i),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(base + 2 * i), (__m256i)_mm512_cvtneps_pbh(v));
  }
}
// The first lanes of `mask` only.
template <DType kDType>
KVAULT_CODEC_AVX512 inline void Store16Mask(std::byte* base, size_t i, __m512 v, __mmask16 mask) {
  if constexpr (kDType == DType::kF32) {
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(base + 4 * i), mask, v);
  } else if constexpr (kDType == DType::kF16) {
    const __m512 lim = _mm512_set1_ps(kF16Max);  // saturate, as SaturateF16
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
    _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(base + 2 * i), mask,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(base + 2 * i), mask, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

}  // namespace kvault::kv_codec

#endif  // x86-64

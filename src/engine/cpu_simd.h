// The building blocks of the CPU kernels (cpu_kernels.cc, cpu_attention.cc), not an API:
// conversions between float and the model's element type, and AVX-512 loads, stores,
// rounding, e^x and horizontal reductions over 16 float lanes. Include only from kernel .cc
// files: every AVX-512 function is compiled for AVX-512 (KVAULT_AVX512) and may run only after
// HasAvx512() (cpu_kernels.h) returned true; KVAULT_AVX512BF16 ones only after HasAvx512Bf16().
// All functions are pure (no state): safe from any thread.
#pragma once

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

#define KVAULT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define KVAULT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

namespace kvault::engine::cpu {

using bf16 = c10::BFloat16;

// GCC 12's AVX-512 headers leave the pass-through operand of unmasked conversions undefined
// on purpose (_mm512_undefined_*), which -Wmaybe-uninitialized reports at every use; the
// kernel files wrap their AVX-512 code in the same push/pop.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// --- scalar conversions -------------------------------------------------------------------
inline float F(float x) { return x; }
inline float F(bf16 x) { return static_cast<float>(x); }
template <class T>
inline T To(float x) {
  return static_cast<T>(x);
}
// x rounded to T's precision, as a float.
template <class T>
inline float Round(float x) {
  return F(To<T>(x));
}

// --- loads and stores of 16 lanes (a bf16 lane widens to the float of the same value) -----
KVAULT_AVX512 inline __m512 Load(const float* p) { return _mm512_loadu_ps(p); }
KVAULT_AVX512 inline __m512 Load(const bf16* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
KVAULT_AVX512 inline __m512 LoadMask(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
KVAULT_AVX512 inline __m512 LoadMask(const bf16* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const __m256i*>(p))), 16));
}
// float -> bf16 bits, round to nearest even, NaN -> 0x7fc0 (c10::BFloat16's rule).
KVAULT_AVX512 inline __m256i ToBf16Bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}
KVAULT_AVX512 inline void Store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
KVAULT_AVX512 inline void Store(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), ToBf16Bits(v));
}
KVAULT_AVX512 inline void StoreMask(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
KVAULT_AVX512 inline void StoreMask(bf16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(p), m, ToBf16Bits(v));
}
// v rounded to T's precision.
KVAULT_AVX512 inline __m512 RoundV(__m512 v, float*) { return v; }
KVAULT_AVX512 inline __m512 RoundV(__m512 v, bf16*) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ToBf16Bits(v)), 16));
}
template <class T>
KVAULT_AVX512 inline __m512 RoundT(__m512 v) {
  return RoundV(v, static_cast<T*>(nullptr));
}
// The first min(n, 16) lanes.
KVAULT_AVX512 inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

// With AVX512-BF16, rounding to bf16 is one instruction (vcvtneps2bf16: round to nearest
// even, as c10::BFloat16, except that denormals flush to zero) instead of eight: the
// elementwise kernels that write the most bf16 values (SiLU, softmax) have a version built
// for it.
KVAULT_AVX512BF16 inline __m256i ToBf16BitsNe(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
KVAULT_AVX512BF16 inline void StoreMaskNe(bf16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(p), m, ToBf16BitsNe(v));
}
KVAULT_AVX512BF16 inline __m512 RoundNe(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ToBf16BitsNe(v)), 16));
}

// --- arithmetic ------------------------------------------------------------------------------
// e^x, relative error about 2 ulp; e^x of x < -87.3 is flushed to 0.
KVAULT_AVX512 inline __m512 Exp(__m512 x) {
  const __m512 tiny = _mm512_set1_ps(-87.3f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, tiny, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, tiny), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(p, n));
}

// Horizontal sum and maximum of the 16 lanes (fixed order).
KVAULT_AVX512 inline float HSum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xb1));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4e));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xb1));
  return _mm512_cvtss_f32(v);
}
KVAULT_AVX512 inline float HMax(__m512 v) {
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0xb1));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4e));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0xb1));
  return _mm512_cvtss_f32(v);
}

// Lane j = the sum of the 16 lanes of v[j]: 16 dot products finished at once (fixed order).
KVAULT_AVX512 inline __m512 Reduce16(__m512 v[16]) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 p = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xdd));
  const __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(p, q, 0x88), _mm512_shuffle_f32x4(p, q, 0xdd));
}

#pragma GCC diagnostic pop

}  // namespace kvault::engine::cpu

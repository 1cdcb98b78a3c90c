// The CPU path's row kernels (see cpu_kernels.h): RMSNorm, SiLU times up, and the
// matrix-vector products of a few rows; and the instruction-set switch of all the kernels.
#include "engine/cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "engine/cpu_parallel.h"
#include "engine/cpu_simd.h"

namespace kvault::engine::cpu {

bool HasAvx512() {
  // KVAULT_NO_AVX512 (any value) runs the portable kernels: how the tests cover them on an
  // AVX-512 machine, and a way to rule the AVX-512 code out when comparing numbers.
  static const bool has = std::getenv("KVAULT_NO_AVX512") == nullptr && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return has;
}
bool HasAvx512Bf16() {
  static const bool has = HasAvx512() && __builtin_cpu_supports("avx512bf16");
  return has;
}

namespace {

// See cpu_simd.h.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// --- RMSNorm: out = w * T(x * rsqrt(mean(x^2) + eps)) ---------------------------------------
template <class T>
KVAULT_AVX512 void RmsNormRowAvx512(const T* x, const T* w, int64_t n, float eps, T* out) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = LoadMask(x + i, TailMask(n - i));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float r = 1.0f / std::sqrt(HSum(acc) / static_cast<float>(n) + eps);
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 y = RoundT<T>(_mm512_mul_ps(LoadMask(x + i, m), rv));
    StoreMask(out + i, _mm512_mul_ps(LoadMask(w + i, m), y), m);
  }
}
template <class T>
void RmsNormRow(const T* x, const T* w, int64_t n, float eps, T* out) {
  if (HasAvx512()) return RmsNormRowAvx512(x, w, n, eps, out);
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += F(x[i]) * F(x[i]);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = To<T>(F(w[i]) * Round<T>(F(x[i]) * r));
}

// --- SiLU(gate) * up, gate and up side by side in each row of `gu` ------------------------
// The AVX-512 body is written once, as a macro over the store and round operations, for the
// AVX-512 version and the AVX512-BF16 one (cpu_simd.h: ToBf16BitsNe).
#define KVAULT_SILU_MUL_ROW(STORE_MASK, ROUND)                                                            \
  const __m512 one = _mm512_set1_ps(1.0f);                                                                \
  for (int64_t i = 0; i < n; i += 16) {                                                                   \
    const __mmask16 m = TailMask(n - i);                                                                  \
    const __m512 x = LoadMask(g + i, m);                                                                  \
    const __m512 s = ROUND(_mm512_div_ps(x, _mm512_add_ps(one, Exp(_mm512_sub_ps(_mm512_setzero_ps(), x))))); \
    STORE_MASK(out + i, _mm512_mul_ps(s, LoadMask(u + i, m)), m);                                         \
  }
template <class T>
KVAULT_AVX512 void SiluMulRowAvx512(const T* g, const T* u, int64_t n, T* out) {
  KVAULT_SILU_MUL_ROW(StoreMask, RoundT<T>)
}
KVAULT_AVX512BF16 void SiluMulRowBf16(const bf16* g, const bf16* u, int64_t n, bf16* out) {
  KVAULT_SILU_MUL_ROW(StoreMaskNe, RoundNe)
}
#undef KVAULT_SILU_MUL_ROW
template <class T>
void SiluMulRow(const T* g, const T* u, int64_t n, T* out) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (HasAvx512Bf16()) return SiluMulRowBf16(g, u, n, out);
  }
  if (HasAvx512()) return SiluMulRowAvx512(g, u, n, out);
  for (int64_t i = 0; i < n; ++i) {
    const float x = F(g[i]);
    out[i] = To<T>(Round<T>(x / (1.0f + std::exp(-x))) * F(u[i]));
  }
}

// --- x W^T for a few rows of x: y[r] = x[r] W^T (+ bias) (+ residual[r]) -------------------
// W [out, in] row-major; x, residual, y rows contiguous. Register tiles of R rows of x by
// 16 / R rows of W (16 accumulators, finished together by Reduce16), so that W streams from
// memory once per call and each load feeds several multiply-adds; where a BLAS GEMM would
// first pack all of W (as slow as the product itself for a handful of rows). The sum is
// rounded to T, then the bias added and rounded, then the residual (linear() then an add).
template <class T>
inline void GemvFinish(const GemvArgs& a, int64_t r, int64_t o, float sum) {
  float v = Round<T>(sum);
  if (a.bias != nullptr) v = Round<T>(v + F(static_cast<const T*>(a.bias)[o]));
  if (a.residual != nullptr) v = F(static_cast<const T*>(a.residual)[r * a.out + o]) + v;
  static_cast<T*>(a.y)[r * a.out + o] = To<T>(v);
}

// One tile: rows [r0, r0 + R) of x by W rows [o0, o0 + nb), nb <= 16 / R.
template <class T, int R>
KVAULT_AVX512 inline void GemmTileAvx512(const GemvArgs& a, int64_t r0, int64_t o0, int64_t nb) {
  constexpr int kO = 16 / R;
  const T* x = static_cast<const T*>(a.x) + r0 * a.in;
  const T* w = static_cast<const T*>(a.w) + o0 * a.in;
  const int64_t in = a.in;
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 16) {
    const __mmask16 m = TailMask(in - i);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = LoadMask(x + r * in + i, m);
    for (int o = 0; o < kO; ++o) {
      if (o >= nb) break;
      const __m512 wv = LoadMask(w + o * in + i, m);
      for (int r = 0; r < R; ++r) acc[r * kO + o] = _mm512_fmadd_ps(wv, xv[r], acc[r * kO + o]);
    }
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, Reduce16(acc));
  for (int r = 0; r < R; ++r) {
    for (int64_t o = 0; o < nb; ++o) GemvFinish<T>(a, r0 + r, o0 + o, s[r * kO + o]);
  }
}

// bf16 with AVX512-BF16: 32 products per instruction (pairs summed in fp32).
template <int R>
KVAULT_AVX512BF16 inline void GemmTileBf16Dp(const GemvArgs& a, int64_t r0, int64_t o0, int64_t nb) {
  constexpr int kO = 16 / R;
  const auto* x = static_cast<const uint16_t*>(a.x) + r0 * a.in;
  const auto* w = static_cast<const uint16_t*>(a.w) + o0 * a.in;
  const int64_t in = a.in;
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 32) {
    const int64_t left = in - i;
    const __mmask32 m = left >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << left) - 1);
    __m512bh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + r * in + i);
    for (int o = 0; o < kO; ++o) {
      if (o >= nb) break;
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + o * in + i);
      for (int r = 0; r < R; ++r) acc[r * kO + o] = _mm512_dpbf16_ps(acc[r * kO + o], wv, xv[r]);
    }
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, Reduce16(acc));
  for (int r = 0; r < R; ++r) {
    for (int64_t o = 0; o < nb; ++o) GemvFinish<bf16>(a, r0 + r, o0 + o, s[r * kO + o]);
  }
}

// Output rows [o0, o1) of every row of x.
template <class T>
KVAULT_AVX512 void GemvAvx512(const GemvArgs& a, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; o += 16) {
    const int64_t nb = std::min<int64_t>(16, o1 - o);
    int64_t r = 0;
    if (a.rows == 1) {
      GemmTileAvx512<T, 1>(a, 0, o, nb);
      continue;
    }
    for (; r + 4 <= a.rows; r += 4) {
      for (int64_t q = 0; q < nb; q += 4) GemmTileAvx512<T, 4>(a, r, o + q, std::min<int64_t>(4, nb - q));
    }
    for (; r + 2 <= a.rows; r += 2) {
      for (int64_t q = 0; q < nb; q += 8) GemmTileAvx512<T, 2>(a, r, o + q, std::min<int64_t>(8, nb - q));
    }
    for (; r < a.rows; ++r) GemmTileAvx512<T, 1>(a, r, o, nb);
  }
}
KVAULT_AVX512BF16 void GemvBf16Dp(const GemvArgs& a, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; o += 16) {
    const int64_t nb = std::min<int64_t>(16, o1 - o);
    int64_t r = 0;
    if (a.rows == 1) {
      GemmTileBf16Dp<1>(a, 0, o, nb);
      continue;
    }
    for (; r + 4 <= a.rows; r += 4) {
      for (int64_t q = 0; q < nb; q += 4) GemmTileBf16Dp<4>(a, r, o + q, std::min<int64_t>(4, nb - q));
    }
    for (; r + 2 <= a.rows; r += 2) {
      for (int64_t q = 0; q < nb; q += 8) GemmTileBf16Dp<2>(a, r, o + q, std::min<int64_t>(8, nb - q));
    }
    for (; r < a.rows; ++r) GemmTileBf16Dp<1>(a, r, o, nb);
  }
}

template <class T>
void GemvScalar(const GemvArgs& a, int64_t o0, int64_t o1) {
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.w);
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t r = 0; r < a.rows; ++r) {
      float s = 0;
      for (int64_t i = 0; i < a.in; ++i) s += F(x[r * a.in + i]) * F(w[o * a.in + i]);
      GemvFinish<T>(a, r, o, s);
    }
  }
}

#pragma GCC diagnostic pop

}  // namespace

template <class T>
void RmsNorm(const T* x, const T* w, int64_t rows, int64_t n, float eps, T* out) {
  ParallelFor(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) RmsNormRow(x + r * n, w, n, eps, out + r * n);
  });
}

template <class T>
void SiluMul(const T* gate_up, int64_t rows, int64_t f, T* out) {
  ParallelFor(0, rows, std::max<int64_t>(1, 16384 / f), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) SiluMulRow(gate_up + r * 2 * f, gate_up + r * 2 * f + f, f, out + r * f);
  });
}

template <class T>
void Gemv(const GemvArgs& a) {
  // Blocks of 16 output rows; a task of at least ~64k multiply-adds.
  const int64_t blocks = (a.out + 15) / 16;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, a.in * a.rows * 16));
  ParallelFor(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t o0 = b0 * 16, o1 = std::min(a.out, b1 * 16);
    if constexpr (std::is_same_v<T, bf16>) {
      if (HasAvx512Bf16()) return GemvBf16Dp(a, o0, o1);
    }
    if (HasAvx512()) return GemvAvx512<T>(a, o0, o1);
    GemvScalar<T>(a, o0, o1);
  });
}

template void RmsNorm<float>(const float*, const float*, int64_t, int64_t, float, float*);
template void RmsNorm<bf16>(const bf16*, const bf16*, int64_t, int64_t, float, bf16*);
template void SiluMul<float>(const float*, int64_t, int64_t, float*);
template void SiluMul<bf16>(const bf16*, int64_t, int64_t, bf16*);
template void Gemv<float>(const GemvArgs&);
template void Gemv<bf16>(const GemvArgs&);

}  // namespace kvault::engine::cpu

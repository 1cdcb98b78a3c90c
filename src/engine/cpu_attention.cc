// The CPU path's attention kernels (see cpu_kernels.h): rotary embedding of head vectors, the
// flash form for a few queries straight over the paged pre-RoPE KV, and the pieces of the
// GEMM form for many queries (rotated, blocked inputs; the masked softmax of a score block).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/cpu_kernels.h"
#include "engine/cpu_parallel.h"
#include "engine/cpu_simd.h"

namespace kvault::engine::cpu {
namespace {

// See cpu_simd.h.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// --- rotary embedding of one head vector ---------------------------------------------------
// y = x * cos + rotate_half(x) * sin (HF's convention), cos/sin: [D/2] rows of the table
// (the two halves share them). Computed in fp32 (products, then the sum, as LibTorch's
// float ops do) and rounded once to T; y is float (the value in T's precision).
template <class T>
KVAULT_AVX512 inline void RotateAvx512(const T* x, const float* c, const float* s, int64_t half, float* y) {
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 m = TailMask(half - i);
    const __m512 x1 = LoadMask(x + i, m), x2 = LoadMask(x + half + i, m);
    const __m512 cv = LoadMask(c + i, m), sv = LoadMask(s + i, m);
    const __m512 y1 = RoundT<T>(_mm512_sub_ps(_mm512_mul_ps(x1, cv), _mm512_mul_ps(x2, sv)));
    const __m512 y2 = RoundT<T>(_mm512_add_ps(_mm512_mul_ps(x2, cv), _mm512_mul_ps(x1, sv)));
    StoreMask(y + i, y1, m);
    StoreMask(y + half + i, y2, m);
  }
}
template <class T>
inline void RotateScalar(const T* x, const float* c, const float* s, int64_t half, float* y) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = F(x[i]), x2 = F(x[half + i]);
    const float a = x1 * c[i], b = x2 * s[i], e = x2 * c[i], f = x1 * s[i];
    y[i] = Round<T>(a - b);
    y[half + i] = Round<T>(e + f);
  }
}
// The same, written in T.
template <class T>
KVAULT_AVX512 void RotateToTAvx512(const T* x, const float* c, const float* s, int64_t half, T* y) {
  alignas(64) float buf[512];
  RotateAvx512(x, c, s, half, buf);
  for (int64_t i = 0; i < 2 * half; i += 16) {
    const __mmask16 m = TailMask(2 * half - i);
    StoreMask(y + i, LoadMask(buf + i, m), m);
  }
}
template <class T>
void RotateToT(const T* x, const float* c, const float* s, int64_t half, T* y) {
  if (HasAvx512() && half <= 256) return RotateToTAvx512(x, c, s, half, y);
  float buf[512];
  if (half > 256) {
    std::vector<float> big(2 * half);
    RotateScalar(x, c, s, half, big.data());
    for (int64_t i = 0; i < 2 * half; ++i) y[i] = To<T>(big[i]);
    return;
  }
  RotateScalar(x, c, s, half, buf);
  for (int64_t i = 0; i < 2 * half; ++i) y[i] = To<T>(buf[i]);
}

// --- attention of a few queries straight over the paged, pre-RoPE KV ------------------------
// Flash-style (online softmax over blocks of 16 keys): keys are rotated as they are read,
// nothing is gathered. Query t (at position start + t) sees keys at positions p with
// lo(t) <= p <= start + t, lo = start + t - window + 1 with a sliding window, else 0.

// Maps a position to its key/value rows.
template <class T>
struct KvCursor {
  const AttnArgs& a;
  size_t span = 0;
  int64_t first = 0;  // position of span's first token
  explicit KvCursor(const AttnArgs& args) : a(args) {}
  // Pointers to the K and V of head g at position p (p never decreases between calls).
  std::pair<const T*, const T*> At(int64_t p, int64_t g) {
    while (p >= first + a.spans[span].tokens) first += a.spans[span++].tokens;
    const int64_t off = ((p - first) * a.kv_heads + g) * a.dim;
    return {static_cast<const T*>(a.spans[span].k) + off, static_cast<const T*>(a.spans[span].v) + off};
  }
};

// The running softmax state of a task's query rows: maximum, sum of exponentials, and the
// unnormalized output [rows, D].
struct AttnState {
  std::vector<float> mx, sum, acc;
  void Reset(int64_t rows, int64_t d) {
    mx.assign(rows, -std::numeric_limits<float>::infinity());
    sum.assign(rows, 0.0f);
    acc.assign(rows * d, 0.0f);
  }
};

// Queries [t0, t1) (every head) over the keys at positions [k0, k1) that they may see,
// AVX-512, D = 16 * NV. Keys go by blocks of 16 and, in a block, by KV head, so that the
// [tokens, KV, D] rows are read in order; each key is rotated once for all the queries.
// State rows: (t - t0) * heads + h.
template <class T, int NV>
KVAULT_AVX512 void AttendTaskAvx512(const AttnArgs& a, int64_t t0, int64_t t1, int64_t k0, int64_t k1,
                                    AttnState& st) {
  constexpr int64_t d = 16 * NV, half = d / 2;
  const int64_t heads = a.heads, kvh = a.kv_heads, rep = heads / kvh, rows = (t1 - t0) * heads;
  alignas(64) float kr[16 * d];  // rotated keys of the block (one KV head)
  alignas(64) float vr[16 * d];  // values of the block
  std::vector<float> qmem(static_cast<size_t>(rows * d) + 16);
  float* qr = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(qmem.data()) + 63) & ~uintptr_t{63});
  st.Reset(rows, d);
  const T* q = static_cast<const T*>(a.q);
  for (int64_t t = t0; t < t1; ++t) {
    const float* c = a.cos + (a.start + t) * half;
    const float* s = a.sin + (a.start + t) * half;
    for (int64_t h = 0; h < heads; ++h) {
      RotateAvx512(q + t * a.q_stride + h * d, c, s, half, qr + ((t - t0) * heads + h) * d);
    }
  }
  const int64_t last = std::min(k1 - 1, a.start + t1 - 1);  // the last position any query here sees
  const int64_t first = std::max(k0, a.window > 0 ? std::max<int64_t>(0, a.start + t0 - a.window + 1) : 0);
  if (first > last) return;
  KvCursor<T> cursor(a), ahead(a);
  // The next block's rows are prefetched (a key's row is kvh * D values; blocks of a page
  // are adjacent, but a task reads little between two rows).
  const int64_t row_lines = (kvh * d * static_cast<int64_t>(sizeof(T)) + 63) / 64;
  auto prefetch = [&](int64_t from, int64_t to) {
    for (int64_t p = from; p <= to; ++p) {
      auto [kp, vp] = ahead.At(p, 0);
      for (int64_t l = 0; l < row_lines; ++l) {
        _mm_prefetch(reinterpret_cast<const char*>(kp) + 64 * l, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(vp) + 64 * l, _MM_HINT_T0);
      }
    }
  };
  const __m512 scale = _mm512_set1_ps(a.scale);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  prefetch(first, std::min(first / 16 * 16 + 15, last));
  for (int64_t p0 = first / 16 * 16; p0 <= last; p0 += 16) {
    const int64_t lo_p = std::max(p0, first), hi_p = std::min(p0 + 15, last);
    if (p0 + 16 <= last) prefetch(p0 + 16, std::min(p0 + 31, last));
    const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(p0)), lane);
    const __mmask16 in_block =
        _mm512_cmp_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(lo_p)), _MM_CMPINT_GE) &
        _mm512_cmp_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(hi_p)), _MM_CMPINT_LE);
    for (int64_t g = 0; g < kvh; ++g) {
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t p = p0 + j;
        if (p < lo_p || p > hi_p) {
          for (int64_t i = 0; i < NV; ++i) {
            _mm512_store_ps(kr + j * d + i * 16, _mm512_setzero_ps());
            _mm512_store_ps(vr + j * d + i * 16, _mm512_setzero_ps());
          }
          continue;
        }
        auto [kp, vp] = cursor.At(p, g);
        const float* c = a.cos + p * half;
        const float* sn = a.sin + p * half;
        for (int64_t i = 0; i < half; i += 16) {  // RotateAvx512 with the size known
          const __m512 x1 = Load(kp + i), x2 = Load(kp + half + i), cv = _mm512_loadu_ps(c + i),
                       sv = _mm512_loadu_ps(sn + i);
          _mm512_store_ps(kr + j * d + i, RoundT<T>(_mm512_sub_ps(_mm512_mul_ps(x1, cv), _mm512_mul_ps(x2, sv))));
          _mm512_store_ps(kr + j * d + half + i,
                          RoundT<T>(_mm512_add_ps(_mm512_mul_ps(x2, cv), _mm512_mul_ps(x1, sv))));
        }
        for (int64_t i = 0; i < NV; ++i) _mm512_store_ps(vr + j * d + i * 16, Load(vp + i * 16));
      }
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t qpos = a.start + t;
        const int64_t lo = a.window > 0 ? std::max<int64_t>(0, qpos - a.window + 1) : 0;
        const __mmask16 valid = in_block &
                                _mm512_cmp_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(qpos)), _MM_CMPINT_LE) &
                                _mm512_cmp_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(lo)), _MM_CMPINT_GE);
        if (valid == 0) continue;
        for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
          const int64_t row = (t - t0) * heads + h;
          const float* qv = qr + row * d;
          __m512 qi[NV];
          for (int i = 0; i < NV; ++i) qi[i] = _mm512_load_ps(qv + i * 16);
          __m512 dots[16];
          for (int j = 0; j < 16; ++j) {
            __m512 acc = _mm512_mul_ps(qi[0], _mm512_load_ps(kr + j * d));
            for (int i = 1; i < NV; ++i) acc = _mm512_fmadd_ps(qi[i], _mm512_load_ps(kr + j * d + i * 16), acc);
            dots[j] = acc;
          }
          const __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), valid,
                                              _mm512_mul_ps(Reduce16(dots), scale));
          const float m_new = std::max(st.mx[row], HMax(s));
          const float alpha =
              st.mx[row] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(st.mx[row] - m_new);
          const __m512 e = _mm512_maskz_mov_ps(valid, Exp(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
          st.sum[row] = st.sum[row] * alpha + HSum(e);
          st.mx[row] = m_new;
          alignas(64) float ev[16];
          _mm512_store_ps(ev, e);
          float* ac = st.acc.data() + row * d;
          const __m512 av = _mm512_set1_ps(alpha);
          __m512 o[NV];
          for (int i = 0; i < NV; ++i) o[i] = _mm512_mul_ps(_mm512_loadu_ps(ac + i * 16), av);
          for (int j = 0; j < 16; ++j) {
            const __m512 pj = _mm512_set1_ps(ev[j]);
            for (int i = 0; i < NV; ++i) o[i] = _mm512_fmadd_ps(pj, _mm512_load_ps(vr + j * d + i * 16), o[i]);
          }
          for (int i = 0; i < NV; ++i) _mm512_storeu_ps(ac + i * 16, o[i]);
        }
      }
    }
  }
}

// The portable version (any D): every score of a row, then its softmax state.
template <class T>
void AttendTaskScalar(const AttnArgs& a, int64_t t0, int64_t t1, int64_t k0, int64_t k1, AttnState& st) {
  const int64_t d = a.dim, half = d / 2, heads = a.heads, rep = heads / a.kv_heads;
  const T* q = static_cast<const T*>(a.q);
  st.Reset((t1 - t0) * heads, d);
  std::vector<float> qr(d), kr(d), scores;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t qpos = a.start + t;
    const int64_t lo = std::max(k0, a.window > 0 ? std::max<int64_t>(0, qpos - a.window + 1) : 0);
    const int64_t hi = std::min(qpos, k1 - 1);
    if (lo > hi) continue;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (t - t0) * heads + h, g = h / rep;
      RotateScalar(q + t * a.q_stride + h * d, a.cos + qpos * half, a.sin + qpos * half, half, qr.data());
      scores.assign(hi - lo + 1, 0.0f);
      KvCursor<T> cursor(a);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t p = lo; p <= hi; ++p) {
        RotateScalar(cursor.At(p, g).first, a.cos + p * half, a.sin + p * half, half, kr.data());
        float s = 0;
        for (int64_t i = 0; i < d; ++i) s += qr[i] * kr[i];
        scores[p - lo] = s * a.scale;
        m = std::max(m, scores[p - lo]);
      }
      float total = 0;
      for (float& s : scores) total += (s = std::exp(s - m));
      float* o = st.acc.data() + row * d;
      KvCursor<T> vcursor(a);
      for (int64_t p = lo; p <= hi; ++p) {
        const T* v = vcursor.At(p, g).second;
        for (int64_t i = 0; i < d; ++i) o[i] += scores[p - lo] * F(v[i]);
      }
      st.mx[row] = m;
      st.sum[row] = total;
    }
  }
}

template <class T>
void AttendTask(const AttnArgs& a, int64_t t0, int64_t t1, int64_t k0, int64_t k1, AttnState& st) {
  if (HasAvx512()) {
    switch (a.dim) {
      case 32: return AttendTaskAvx512<T, 2>(a, t0, t1, k0, k1, st);
      case 64: return AttendTaskAvx512<T, 4>(a, t0, t1, k0, k1, st);
      case 96: return AttendTaskAvx512<T, 6>(a, t0, t1, k0, k1, st);
      case 128: return AttendTaskAvx512<T, 8>(a, t0, t1, k0, k1, st);
      case 256: return AttendTaskAvx512<T, 16>(a, t0, t1, k0, k1, st);
      default: break;
    }
  }
  AttendTaskScalar<T>(a, t0, t1, k0, k1, st);
}

// --- masked softmax of one row of scores, in place --------------------------------------------
// The `keys` scores of a row, scaled by `scale`: those of [lo, hi] become their softmax (in
// fp32, rounded to T), the rest 0. The AVX-512 body is written once, as a macro over the
// store operation, for the AVX-512 version and the AVX512-BF16 one.
#define KVAULT_SOFTMAX_ROW(STORE_MASK)                                                                   \
  const __m512 sc = _mm512_set1_ps(scale);                                                               \
  __m512 mv = _mm512_set1_ps(-std::numeric_limits<float>::infinity());                                  \
  for (int64_t i = lo; i <= hi; i += 16) {                                                               \
    const __mmask16 m = TailMask(hi + 1 - i);                                                            \
    mv = _mm512_mask_max_ps(mv, m, mv, _mm512_mul_ps(LoadMask(s + i, m), sc));                           \
  }                                                                                                      \
  const __m512 mx = _mm512_set1_ps(HMax(mv));                                                            \
  __m512 total = _mm512_setzero_ps();                                                                    \
  thread_local std::vector<float> buf; /* the exponentials of the row, in fp32 */                       \
  buf.resize(static_cast<size_t>(hi - lo + 16));                                                         \
  for (int64_t i = lo; i <= hi; i += 16) {                                                               \
    const __mmask16 m = TailMask(hi + 1 - i);                                                            \
    const __m512 e = _mm512_maskz_mov_ps(m, Exp(_mm512_sub_ps(_mm512_mul_ps(LoadMask(s + i, m), sc), mx))); \
    total = _mm512_add_ps(total, e);                                                                     \
    _mm512_storeu_ps(buf.data() + (i - lo), e);                                                          \
  }                                                                                                      \
  const __m512 inv = _mm512_set1_ps(1.0f / HSum(total));                                                 \
  for (int64_t i = 0; i < lo; i += 16) STORE_MASK(s + i, _mm512_setzero_ps(), TailMask(lo - i));         \
  for (int64_t i = lo; i <= hi; i += 16) {                                                               \
    const __mmask16 m = TailMask(hi + 1 - i);                                                            \
    STORE_MASK(s + i, _mm512_mul_ps(_mm512_loadu_ps(buf.data() + (i - lo)), inv), m);                    \
  }                                                                                                      \
  for (int64_t i = hi + 1; i < keys; i += 16) STORE_MASK(s + i, _mm512_setzero_ps(), TailMask(keys - i));
template <class T>
KVAULT_AVX512 void SoftmaxRowAvx512(T* s, int64_t keys, int64_t lo, int64_t hi, float scale) {
  KVAULT_SOFTMAX_ROW(StoreMask)
}
KVAULT_AVX512BF16 void SoftmaxRowBf16(bf16* s, int64_t keys, int64_t lo, int64_t hi, float scale) {
  KVAULT_SOFTMAX_ROW(StoreMaskNe)
}
template <class T>
void SoftmaxRowScalar(T* s, int64_t keys, int64_t lo, int64_t hi, float scale) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = lo; i <= hi; ++i) m = std::max(m, F(s[i]) * scale);
  std::vector<float> e(hi - lo + 1);
  float total = 0;
  for (int64_t i = lo; i <= hi; ++i) total += (e[i - lo] = std::exp(F(s[i]) * scale - m));
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < keys; ++i) s[i] = To<T>(i < lo || i > hi ? 0.0f : e[i - lo] * inv);
}
#undef KVAULT_SOFTMAX_ROW

#pragma GCC diagnostic pop

}  // namespace

// --- the kernels of cpu_kernels.h -----------------------------------------------------------

template <class T>
void Attend(const AttnArgs& a) {
  // Tasks: (up to 8 queries, a range of keys). A few queries over many keys split the keys
  // into ranges of about 256 (by the key count only: the same split, the same sums, whatever
  // the thread count) and merge the ranges' softmax states.
  constexpr int64_t kQueries = 8, kKeys = 256;
  const int64_t d = a.dim, heads = a.heads;
  const int64_t chunks = (a.queries + kQueries - 1) / kQueries;
  const int64_t n = a.start + a.queries;
  const int64_t splits = chunks == 1 ? std::max<int64_t>(1, n / kKeys) : 1;
  const int64_t per = (n + splits - 1) / splits;
  const int64_t tasks = chunks * splits;
  std::vector<AttnState> states(static_cast<size_t>(tasks));
  ParallelFor(0, tasks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t split = i % splits, c = i / splits;
      const int64_t t0 = c * kQueries, t1 = std::min(a.queries, t0 + kQueries);
      AttendTask<T>(a, t0, t1, split * per, std::min(n, (split + 1) * per), states[i]);
    }
  });
  T* out = static_cast<T*>(a.out);
  std::vector<float> w(static_cast<size_t>(splits));
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = c * kQueries, t1 = std::min(a.queries, t0 + kQueries);
    const AttnState* st = &states[c * splits];
    for (int64_t row = 0; row < (t1 - t0) * heads; ++row) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, st[sp].mx[row]);
      float total = 0;
      for (int64_t sp = 0; sp < splits; ++sp) {
        w[sp] = st[sp].mx[row] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(st[sp].mx[row] - m);
        total += st[sp].sum[row] * w[sp];
      }
      T* o = out + (t0 + row / heads) * a.out_stride + (row % heads) * d;
      const float inv = 1.0f / total;
      for (int64_t i = 0; i < d; ++i) {
        float v = 0;
        for (int64_t sp = 0; sp < splits; ++sp) v += st[sp].acc[row * d + i] * w[sp];
        o[i] = To<T>(v * inv);
      }
    }
  }
}

template <class T>
void PackForGemmAttention(const GemmAttnPack& a) {
  const int64_t heads = a.heads, kvh = a.kv_heads, d = a.dim, half = d / 2, rep = heads / kvh;
  const int64_t start = a.start, width = a.q_stride, block = a.block, npad = a.keys_padded;
  const int64_t n = start + a.queries;
  const T* q = static_cast<const T*>(a.q);
  T* qo = static_cast<T*>(a.q_out);
  T* ko = static_cast<T*>(a.k_out);
  T* vo = static_cast<T*>(a.v_out);
  ParallelFor(0, n, 64, [&](int64_t b, int64_t e) {
    size_t span = 0;
    int64_t first = 0;
    for (int64_t p = b; p < e; ++p) {
      const float* c = a.cos + p * half;
      const float* s = a.sin + p * half;
      const T *kp, *vp;
      if (p < start) {
        while (p >= first + a.spans[span].tokens) first += a.spans[span++].tokens;
        kp = static_cast<const T*>(a.spans[span].k) + (p - first) * kvh * d;
        vp = static_cast<const T*>(a.spans[span].v) + (p - first) * kvh * d;
      } else {
        const int64_t i = p - start, bi = i / block, bt = i % block;
        kp = q + i * width + heads * d;
        vp = q + i * width + (heads + kvh) * d;
        for (int64_t h = 0; h < heads; ++h) {
          RotateToT(q + i * width + h * d, c, s, half, qo + ((bi * kvh + h / rep) * block * rep + bt * rep + h % rep) * d);
        }
      }
      for (int64_t g = 0; g < kvh; ++g) {
        RotateToT(kp + g * d, c, s, half, ko + (g * npad + p) * d);
        std::memcpy(vo + (g * npad + p) * d, vp + g * d, sizeof(T) * d);
      }
    }
  });
}

template <class T>
void MaskedSoftmax(T* s, int64_t kv_heads, int64_t block, int64_t rows, int64_t rep, int64_t keys, int64_t qpos0,
                   int64_t window, float scale) {
  const int64_t n = kv_heads * rows * rep;
  ParallelFor(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, keys)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t g = i / (rows * rep), j = i % (rows * rep);
      const int64_t qpos = qpos0 + j / rep;
      const int64_t hi = std::min(qpos, keys - 1);
      const int64_t lo = window > 0 ? std::max<int64_t>(0, qpos - window + 1) : 0;
      T* row = s + (g * block * rep + j) * keys;
      if constexpr (std::is_same_v<T, bf16>) {
        if (HasAvx512Bf16()) {
          SoftmaxRowBf16(row, keys, lo, hi, scale);
          continue;
        }
      }
      if (HasAvx512()) {
        SoftmaxRowAvx512(row, keys, lo, hi, scale);
      } else {
        SoftmaxRowScalar(row, keys, lo, hi, scale);
      }
    }
  });
}

template void Attend<float>(const AttnArgs&);
template void Attend<bf16>(const AttnArgs&);
template void PackForGemmAttention<float>(const GemmAttnPack&);
template void PackForGemmAttention<bf16>(const GemmAttnPack&);
template void MaskedSoftmax<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float);
template void MaskedSoftmax<bf16>(bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float);

}  // namespace kvault::engine::cpu

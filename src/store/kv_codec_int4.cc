// The int4 codec: each head's head_dim channels rotated by R = H·S/sqrt(n) (kv_codec_numeric.h;
// fixed signs, nothing stored), then asymmetric 4-bit: K per channel over the chunk's tokens
// (one fp16 scale and minimum per layer, head and channel), V per token (one per layer,
// token and head). docs/CODECS.md has the byte layout and the error bound.
//
// Encoding a group of rotated values y: m = the largest fp16 <= min(y); s = the smallest fp16
// >= (max(y) - m) / 15; q = round((y - m) / s) in [0, 15]. Decoding: y' = q*s + m (q*s exact
// in f32, one rounding), then x' = S·H·y' / sqrt(n) rounded to the layout's dtype. Per value
// |y - y'| <= s/2 (+ f32 rounding); R is orthonormal, so per vector ||x - x'||_2 =
// ||y - y'||_2 <= sqrt(sum over channels of (s_c/2)^2) (+ f32 and output rounding).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "store/kv_codec_internal.h"
#include "store/kv_codec_numeric.h"
#include "store/kv_codec_simd.h"

// GCC 12's AVX-512 headers leave the pass-through operand of unmasked intrinsics undefined on
// purpose (_mm512_undefined_*), which -W(maybe-)uninitialized reports at every use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace kvault::kv_codec {
namespace {

// K part: [heads*head_dim fp16 scales][heads*head_dim fp16 mins][tokens*heads*head_dim/2 bytes]
// V part: [tokens*heads fp16 scales][tokens*heads fp16 mins][tokens*heads*head_dim/2 bytes]
// Packed values in the raw order (token, head, channel); byte j holds channel 2j in its low
// nibble and channel 2j+1 in its high nibble.
size_t PackedBytes(const LayerShape& shape) { return shape.values_per_part() / 2; }
size_t KPartBytes(const LayerShape& shape) { return 4 * size_t{shape.heads} * shape.head_dim + PackedBytes(shape); }

// The decode-side multipliers S/sqrt(n): mult[c] = sign[c] / sqrt(n), rounded once to f32.
std::vector<float> InverseMultipliers(uint32_t n) {
  std::vector<float> mult(n);
  RotationSigns(n, mult.data());
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  for (float& m : mult) m *= inv_sqrt;
  return mult;
}

// y <- R x: signs, Hadamard, 1/sqrt(n).
void Rotate(const float* signs, float inv_sqrt, uint32_t n, float* x) {
  for (uint32_t c = 0; c < n; ++c) x[c] *= signs[c];
  Fwht(x, n);
  for (uint32_t c = 0; c < n; ++c) x[c] *= inv_sqrt;
}

// Reads one (token, head) vector of a part into x (f32), rejecting NaN and infinities.
Status LoadFinite(const LayerShape& shape, int part, const std::byte* in, uint32_t t, uint32_t h, float* x) {
  const size_t bad = LoadFiniteRow(shape.dtype, in, (size_t{t} * shape.heads + h) * shape.head_dim, shape.head_dim, x);
  if (bad < shape.head_dim) return NonFiniteError("int4", shape, part, t, h, static_cast<uint32_t>(bad), x[bad]);
  return Status::OK();
}

// The fp16 minimum and scale of a group whose rotated values span [lo, hi]. A minimum of -0
// is stored as +0: which zero a min() returns depends on the kernel, the bytes must not.
bool GroupParams(float lo, float hi, uint16_t* min16, uint16_t* scale16) {
  if (!F16RoundDown(lo == 0.0f ? 0.0f : lo, min16)) return false;
  const double range = static_cast<double>(hi) - F16BitsToF32(*min16);
  *scale16 = 0;
  return range <= 0.0 || F16RoundUp(range / 15.0, scale16);
}

std::string RangeError(const LayerShape& shape, int part, uint32_t t, uint32_t h, uint32_t c, float lo, float hi) {
  return "int4 codec: " + Where(shape, part, t, h, c) + ": rotated values span [" + std::to_string(lo) + ", " +
         std::to_string(hi) +
         "], beyond the fp16 scale and minimum (|rotated value| <= 65504; a head vector's L2 norm bounds it)";
}

// Finite inputs can still rotate out of range: values near the f32 maximum overflow in the
// butterflies (inf - inf = NaN, which min/max would skip and Quantize could not convert). Every
// rotated value must lie within the fp16 minimum's and scale's reach, ±kF16Max; false (a
// NaN too) is refused before anything is quantized.
Status CheckRotated(const LayerShape& shape, int part, uint32_t t, uint32_t h, const float* y) {
  bool in_range = true;
  for (uint32_t c = 0; c < shape.head_dim; ++c) in_range &= std::fabs(y[c]) <= kF16Max;  // false for NaN
  if (in_range) return Status::OK();
  uint32_t c = 0;
  while (std::fabs(y[c]) <= kF16Max) ++c;
  return Status::InvalidArgument(RangeError(shape, part, t, h, c, y[c], y[c]));
}

inline uint8_t Quantize(float y, float min, float inv_scale) {
  return static_cast<uint8_t>(RoundToInt(std::clamp((y - min) * inv_scale, 0.0f, 15.0f)));
}

// 1 / s in f32 (0 for s = 0: every value of the group equals its minimum).
float Inverse(uint16_t scale16) {
  const float s = F16BitsToF32(scale16);
  return s > 0.0f ? 1.0f / s : 0.0f;
}

// The encoder's per-row work. The scalar and the AVX2 kernels perform the same operations, so
// they write the same bytes. `count` values, even (SIMD kernels: a multiple of 8).
struct EncodeKernels {
  // y <- R x for the vector at element `first` of a part (n values in `dtype`); false if it
  // holds a NaN or an infinity (y is then unspecified).
  bool (*load_rotate)(DType dtype, const std::byte* in, size_t first, uint32_t n, const float* signs,
                      float inv_sqrt, float* y);
  // lo[i] = min(lo[i], row[i]), hi[i] = max(hi[i], row[i]).
  void (*min_max_rows)(const float* row, size_t count, float* lo, float* hi);
  // The minimum and maximum of y.
  void (*min_max)(const float* y, size_t count, float* lo, float* hi);
  // out[j] = q(2j) | q(2j+1) << 4, q(i) = Quantize(y[i], mins[i], invs[i]).
  void (*pack_per_channel)(const float* y, size_t count, const float* mins, const float* invs, uint8_t* out);
  // The same with one minimum and inverse scale for all values.
  void (*pack_uniform)(const float* y, size_t count, float min, float inv, uint8_t* out);
};

bool LoadRotateScalar(DType dtype, const std::byte* in, size_t first, uint32_t n, const float* signs, float inv_sqrt,
                      float* y) {
  if (LoadFiniteRow(dtype, in, first, n, y) != n) return false;
  Rotate(signs, inv_sqrt, n, y);
  return true;
}
void MinMaxRowsScalar(const float* row, size_t count, float* lo, float* hi) {
  for (size_t i = 0; i < count; ++i) {
    lo[i] = std::min(lo[i], row[i]);
    hi[i] = std::max(hi[i], row[i]);
  }
}
void MinMaxScalar(const float* y, size_t count, float* lo, float* hi) {
  const auto [lo_it, hi_it] = std::minmax_element(y, y + count);
  *lo = *lo_it;
  *hi = *hi_it;
}
void PackPerChannelScalar(const float* y, size_t count, const float* mins, const float* invs, uint8_t* out) {
  for (size_t i = 0; i < count; i += 2) {
    out[i / 2] = static_cast<uint8_t>(Quantize(y[i], mins[i], invs[i]) | (Quantize(y[i + 1], mins[i + 1], invs[i + 1]) << 4));
  }
}
void PackUniformScalar(const float* y, size_t count, float min, float inv, uint8_t* out) {
  for (size_t i = 0; i < count; i += 2) {
    out[i / 2] = static_cast<uint8_t>(Quantize(y[i], min, inv) | (Quantize(y[i + 1], min, inv) << 4));
  }
}

#ifdef KVAULT_CODEC_X86
template <DType kDType, int kNv>
KVAULT_CODEC_AVX2 bool LoadRotateAvx2(DType, const std::byte* in, size_t first, uint32_t, const float* signs,
                                      float inv_sqrt, float* y) {
  __m256 r[kNv];
  __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
#pragma GCC unroll 32
  for (int i = 0; i < kNv; ++i) {
    const __m256 v = Load8<kDType>(in, first + 8 * i);
    finite = _mm256_and_ps(finite, FiniteLanes(v));
    r[i] = _mm256_mul_ps(v, _mm256_loadu_ps(signs + 8 * i));
  }
  if (_mm256_movemask_ps(finite) != 0xff) return false;
  HadamardAvx2<kNv>(r);
  const __m256 scale = _mm256_set1_ps(inv_sqrt);
#pragma GCC unroll 32
  for (int i = 0; i < kNv; ++i) _mm256_storeu_ps(y + 8 * i, _mm256_mul_ps(r[i], scale));
  return true;
}
KVAULT_CODEC_AVX2 void MinMaxRowsAvx2(const float* row, size_t count, float* lo, float* hi) {
  for (size_t i = 0; i < count; i += 8) {
    const __m256 v = _mm256_loadu_ps(row + i);
    _mm256_storeu_ps(lo + i, _mm256_min_ps(_mm256_loadu_ps(lo + i), v));
    _mm256_storeu_ps(hi + i, _mm256_max_ps(_mm256_loadu_ps(hi + i), v));
  }
}
KVAULT_CODEC_AVX2 void MinMaxAvx2(const float* y, size_t count, float* lo, float* hi) {
  __m256 vlo = _mm256_loadu_ps(y), vhi = vlo;
  for (size_t i = 8; i < count; i += 8) {
    const __m256 v = _mm256_loadu_ps(y + i);
    vlo = _mm256_min_ps(vlo, v);
    vhi = _mm256_max_ps(vhi, v);
  }
  *lo = HMin(vlo);
  *hi = HMax(vhi);
}
// Quantize (clamp((y - min) * inv, 0, 15), rounded to nearest even) 8 values and pack them
// into 4 bytes, even channels in the low nibbles.
KVAULT_CODEC_AVX2 inline uint32_t Pack8(__m256 y, __m256 min, __m256 inv) {
  const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(y, min), inv), _mm256_setzero_ps()),
                                 _mm256_set1_ps(15.0f));
  __m256i q = _mm256_sllv_epi32(_mm256_cvtps_epi32(v), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
  q = _mm256_or_si256(q, _mm256_srli_epi64(q, 32));  // byte 0 of each 64-bit lane: q(2j) | q(2j+1) << 4
  const __m256i pick = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  q = _mm256_shuffle_epi8(q, pick);
  const uint32_t low = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(q))) & 0xffffu;
  const uint32_t high = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(q, 1))) & 0xffffu;
  return low | (high << 16);
}
KVAULT_CODEC_AVX2 void PackPerChannelAvx2(const float* y, size_t count, const float* mins, const float* invs,
                                          uint8_t* out) {
  for (size_t i = 0; i < count; i += 8) {
    const uint32_t word = Pack8(_mm256_loadu_ps(y + i), _mm256_loadu_ps(mins + i), _mm256_loadu_ps(invs + i));
    std::memcpy(out + i / 2, &word, 4);
  }
}
KVAULT_CODEC_AVX2 void PackUniformAvx2(const float* y, size_t count, float min, float inv, uint8_t* out) {
  const __m256 vmin = _mm256_set1_ps(min), vinv = _mm256_set1_ps(inv);
  for (size_t i = 0; i < count; i += 8) {
    const uint32_t word = Pack8(_mm256_loadu_ps(y + i), vmin, vinv);
    std::memcpy(out + i / 2, &word, 4);
  }
}

template <DType kDType>
auto LoadRotateAvx2For(uint32_t n) -> decltype(&LoadRotateScalar) {
  switch (n) {
    case 8: return &LoadRotateAvx2<kDType, 1>;
    case 16: return &LoadRotateAvx2<kDType, 2>;
    case 32: return &LoadRotateAvx2<kDType, 4>;
    case 64: return &LoadRotateAvx2<kDType, 8>;
    case 128: return &LoadRotateAvx2<kDType, 16>;
    case 256: return &LoadRotateAvx2<kDType, 32>;
    default: return nullptr;
  }
}
#endif

// The AVX2 kernels when the CPU runs them and head_dim is 8 to 256; the scalar ones otherwise.
EncodeKernels EncodeKernelsFor(const LayerShape& shape) {
#ifdef KVAULT_CODEC_X86
  if (ActiveSimdLevel() >= SimdLevel::kAvx2) {
    decltype(&LoadRotateScalar) load_rotate = nullptr;
    switch (shape.dtype) {
      case DType::kF32: load_rotate = LoadRotateAvx2For<DType::kF32>(shape.head_dim); break;
      case DType::kF16: load_rotate = LoadRotateAvx2For<DType::kF16>(shape.head_dim); break;
      default: load_rotate = LoadRotateAvx2For<DType::kBF16>(shape.head_dim); break;
    }
    if (load_rotate != nullptr) {
      return {load_rotate, &MinMaxRowsAvx2, &MinMaxAvx2, &PackPerChannelAvx2, &PackUniformAvx2};
    }
  }
#endif
  return {&LoadRotateScalar, &MinMaxRowsScalar, &MinMaxScalar, &PackPerChannelScalar, &PackUniformScalar};
}

// --- decoding -----------------------------------------------------------------------------
template <DType kDType>
void DecodeScalar(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  const uint32_t n = shape.head_dim;
  const uint32_t heads = shape.heads;
  const std::vector<float> mult = InverseMultipliers(n);
  std::vector<float> y(n);
  const size_t out_part = shape.values_per_part() * DTypeSize(kDType);
  // K: per-channel scales and mins.
  std::vector<float> ks(size_t{heads} * n), km(size_t{heads} * n);
  for (size_t i = 0; i < ks.size(); ++i) {
    ks[i] = F16BitsToF32(LoadU16(encoded + 2 * i));
    km[i] = F16BitsToF32(LoadU16(encoded + 2 * (ks.size() + i)));
  }
  const auto* kq = reinterpret_cast<const uint8_t*>(encoded + 4 * ks.size());
  const std::byte* v_part = encoded + KPartBytes(shape);
  const size_t groups = size_t{shape.tokens} * heads;
  const auto* vq = reinterpret_cast<const uint8_t*>(v_part + 4 * groups);
  for (int part = 0; part < 2; ++part) {
    const uint8_t* q = part == 0 ? kq : vq;
    std::byte* out = raw + part * out_part;
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = g * n;
      const float* s = part == 0 ? &ks[(g % heads) * n] : nullptr;
      const float* m = part == 0 ? &km[(g % heads) * n] : nullptr;
      const float vs = part == 0 ? 0.0f : F16BitsToF32(LoadU16(v_part + 2 * g));
      const float vm = part == 0 ? 0.0f : F16BitsToF32(LoadU16(v_part + 2 * (groups + g)));
      const uint8_t* qv = q + base / 2;
      if (part == 0) {
        for (uint32_t c = 0; c < n; c += 2) {
          y[c] = static_cast<float>(qv[c / 2] & 0x0f) * s[c] + m[c];
          y[c + 1] = static_cast<float>(qv[c / 2] >> 4) * s[c + 1] + m[c + 1];
        }
      } else {
        for (uint32_t c = 0; c < n; c += 2) {
          y[c] = static_cast<float>(qv[c / 2] & 0x0f) * vs + vm;
          y[c + 1] = static_cast<float>(qv[c / 2] >> 4) * vs + vm;
        }
      }
      Fwht(y.data(), n);
      for (uint32_t c = 0; c < n; ++c) y[c] *= mult[c];
      StoreRow<kDType>(y.data(), n, out, base);
    }
  }
}

#ifdef KVAULT_CODEC_X86
// One (token, head) vector of n = 8 * kNv channels, held in kNv registers: dequantize (per
// channel: scales/mins arrays; per token: the broadcast s, m), the Hadamard transform with the
// scalar Fwht's operations in its order, the multipliers, the store.
template <DType kDType, int kNv, bool kPerChannel>
KVAULT_CODEC_AVX2 inline void DecodeVectorAvx2(const uint8_t* q, const float* scales, const float* mins, __m256 s,
                                               __m256 m, const float* mult, std::byte* out, size_t index) {
  __m256 r[kNv];
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i low4 = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 32
  for (int i = 0; i < kNv; ++i) {
    uint32_t word;
    std::memcpy(&word, q + 4 * i, 4);
    const __m256i qi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), low4);
    const __m256 qf = _mm256_cvtepi32_ps(qi);
    if constexpr (kPerChannel) {
      r[i] = _mm256_fmadd_ps(qf, _mm256_loadu_ps(scales + 8 * i), _mm256_loadu_ps(mins + 8 * i));
    } else {
      r[i] = _mm256_fmadd_ps(qf, s, m);
    }
  }
  HadamardAvx2<kNv>(r);
#pragma GCC unroll 32
  for (int i = 0; i < kNv; ++i) Store8<kDType>(out, index + 8 * i, _mm256_mul_ps(r[i], _mm256_loadu_ps(mult + 8 * i)));
}

template <DType kDType, int kNv>
KVAULT_CODEC_AVX2 void DecodeAvx2(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  constexpr uint32_t n = 8 * kNv;
  const uint32_t heads = shape.heads;
  const std::vector<float> mult = InverseMultipliers(n);
  const size_t out_part = shape.values_per_part() * DTypeSize(kDType);
  std::vector<float> ks(size_t{heads} * n), km(size_t{heads} * n);
  for (size_t i = 0; i < ks.size(); i += 8) {
    _mm256_storeu_ps(&ks[i], LoadF16x8(encoded + 2 * i));
    _mm256_storeu_ps(&km[i], LoadF16x8(encoded + 2 * (ks.size() + i)));
  }
  const auto* kq = reinterpret_cast<const uint8_t*>(encoded + 4 * ks.size());
  const std::byte* v_part = encoded + KPartBytes(shape);
  const size_t groups = size_t{shape.tokens} * heads;
  const auto* vq = reinterpret_cast<const uint8_t*>(v_part + 4 * groups);
  const __m256 zero = _mm256_setzero_ps();
  for (size_t g = 0; g < groups; ++g) {
    const size_t h = g % heads;
    DecodeVectorAvx2<kDType, kNv, true>(kq + g * n / 2, &ks[h * n], &km[h * n], zero, zero, mult.data(), raw,
                                        g * n);
  }
  std::byte* v_out = raw + out_part;
  for (size_t g = 0; g < groups; ++g) {
    const __m256 s = _mm256_set1_ps(F16BitsToF32(LoadU16(v_part + 2 * g)));
    const __m256 m = _mm256_set1_ps(F16BitsToF32(LoadU16(v_part + 2 * (groups + g))));
    DecodeVectorAvx2<kDType, kNv, false>(vq + g * n / 2, nullptr, nullptr, s, m, mult.data(), v_out, g * n);
  }
}

template <DType kDType>
bool DecodeAvx2ForHeadDim(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  switch (shape.head_dim) {
    case 8: DecodeAvx2<kDType, 1>(shape, encoded, raw); return true;
    case 16: DecodeAvx2<kDType, 2>(shape, encoded, raw); return true;
    case 32: DecodeAvx2<kDType, 4>(shape, encoded, raw); return true;
    case 64: DecodeAvx2<kDType, 8>(shape, encoded, raw); return true;
    case 128: DecodeAvx2<kDType, 16>(shape, encoded, raw); return true;
    case 256: DecodeAvx2<kDType, 32>(shape, encoded, raw); return true;
    default: return false;  // the scalar kernel handles the rest
  }
}

// The AVX-512 kernels: as the AVX2 ones with 16 lanes; stages h = 1, 2, 4, 8 inside a register.
template <int kNv, int kH>
KVAULT_CODEC_AVX512 inline void RegisterButterflies512(__m512 (&r)[kNv]) {
  if constexpr (kH < kNv) {
    for (int i = 0; i < kNv; i += 2 * kH) {
      for (int j = i; j < i + kH; ++j) {
        const __m512 a = r[j];
        const __m512 b = r[j + kH];
        r[j] = _mm512_add_ps(a, b);
        r[j + kH] = _mm512_sub_ps(a, b);
      }
    }
    RegisterButterflies512<kNv, 2 * kH>(r);
  }
}

template <DType kDType, int kNv, bool kPerChannel>
KVAULT_CODEC_AVX512 inline void DecodeVectorAvx512(const uint8_t* q, const float* scales, const float* mins,
                                                   __m512 s, __m512 m, const float* mult, std::byte* out,
                                                   size_t index) {
  __m512 r[kNv];
  // Lane j takes nibble j % 8 of the 32-bit word j / 8 of the register's 8 bytes.
  const __m512i words = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
  const __m512i low4 = _mm512_set1_epi32(0x0f);
#pragma GCC unroll 16
  for (int i = 0; i < kNv; ++i) {
    const __m512i bytes = _mm512_zextsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * i)));
    const __m512i qi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(words, bytes), shifts), low4);
    const __m512 qf = _mm512_cvtepi32_ps(qi);
    if constexpr (kPerChannel) {
      r[i] = _mm512_fmadd_ps(qf, _mm512_loadu_ps(scales + 16 * i), _mm512_loadu_ps(mins + 16 * i));
    } else {
      r[i] = _mm512_fmadd_ps(qf, s, m);
    }
  }
  const __m512 sign1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
  const __m512 sign2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
  const __m512 sign4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
  const __m512 sign8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
#pragma GCC unroll 16
  for (int i = 0; i < kNv; ++i) {
    __m512 v = r[i];
    v = _mm512_fmadd_ps(v, sign1, _mm512_permute_ps(v, 0xb1));         // pairs (j, j+1)
    v = _mm512_fmadd_ps(v, sign2, _mm512_permute_ps(v, 0x4e));         // (j, j+2)
    v = _mm512_fmadd_ps(v, sign4, _mm512_shuffle_f32x4(v, v, 0xb1));   // (j, j+4): 128-bit lanes 1 0 3 2
    v = _mm512_fmadd_ps(v, sign8, _mm512_shuffle_f32x4(v, v, 0x4e));   // (j, j+8): 128-bit lanes 2 3 0 1
    r[i] = v;
  }
  RegisterButterflies512<kNv, 1>(r);
#pragma GCC unroll 16
  for (int i = 0; i < kNv; ++i) Store16<kDType>(out, index + 16 * i, _mm512_mul_ps(r[i], _mm512_loadu_ps(mult + 16 * i)));
}

template <DType kDType, int kNv>
KVAULT_CODEC_AVX512 void DecodeAvx512(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  constexpr uint32_t n = 16 * kNv;
  const uint32_t heads = shape.heads;
  const std::vector<float> mult = InverseMultipliers(n);
  const size_t out_part = shape.values_per_part() * DTypeSize(kDType);
  std::vector<float> ks(size_t{heads} * n), km(size_t{heads} * n);
  for (size_t i = 0; i < ks.size(); i += 8) {
    _mm256_storeu_ps(&ks[i], LoadF16x8(encoded + 2 * i));
    _mm256_storeu_ps(&km[i], LoadF16x8(encoded + 2 * (ks.size() + i)));
  }
  const auto* kq = reinterpret_cast<const uint8_t*>(encoded + 4 * ks.size());
  const std::byte* v_part = encoded + KPartBytes(shape);
  const size_t groups = size_t{shape.tokens} * heads;
  const auto* vq = reinterpret_cast<const uint8_t*>(v_part + 4 * groups);
  const __m512 zero = _mm512_setzero_ps();
  for (size_t g = 0; g < groups; ++g) {
    const size_t h = g % heads;
    DecodeVectorAvx512<kDType, kNv, true>(kq + g * n / 2, &ks[h * n], &km[h * n], zero, zero, mult.data(), raw,
                                          g * n);
  }
  std::byte* v_out = raw + out_part;
  for (size_t g = 0; g < groups; ++g) {
    const __m512 s = _mm512_set1_ps(F16BitsToF32(LoadU16(v_part + 2 * g)));
    const __m512 m = _mm512_set1_ps(F16BitsToF32(LoadU16(v_part + 2 * (groups + g))));
    DecodeVectorAvx512<kDType, kNv, false>(vq + g * n / 2, nullptr, nullptr, s, m, mult.data(), v_out, g * n);
  }
}

template <DType kDType>
bool DecodeAvx512ForHeadDim(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  switch (shape.head_dim) {
    case 16: DecodeAvx512<kDType, 1>(shape, encoded, raw); return true;
    case 32: DecodeAvx512<kDType, 2>(shape, encoded, raw); return true;
    case 64: DecodeAvx512<kDType, 4>(shape, encoded, raw); return true;
    case 128: DecodeAvx512<kDType, 8>(shape, encoded, raw); return true;
    case 256: DecodeAvx512<kDType, 16>(shape, encoded, raw); return true;
    default: return false;  // the AVX2 or scalar kernel handles the rest
  }
}
#endif

}  // namespace

size_t Int4LayerBytes(const LayerShape& shape) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  return KPartBytes(shape) + 4 * groups + PackedBytes(shape);
}

Status EncodeInt4Layer(const LayerShape& shape, const std::byte* raw, std::byte* out) {
  const uint32_t n = shape.head_dim;
  const uint32_t heads = shape.heads;
  const uint32_t tokens = shape.tokens;
  const EncodeKernels kernels = EncodeKernelsFor(shape);
  std::vector<float> signs(n);
  RotationSigns(n, signs.data());
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  const size_t in_part = shape.values_per_part() * DTypeSize(shape.dtype);
  std::vector<float> scratch(n);

  // K: rotate every vector, then one scale and minimum per (head, channel) over the tokens.
  std::vector<float> y(shape.values_per_part());
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t h = 0; h < heads; ++h) {
      const size_t first = (size_t{t} * heads + h) * n;
      if (!kernels.load_rotate(shape.dtype, raw, first, n, signs.data(), inv_sqrt, &y[first])) {
        return LoadFinite(shape, 0, raw, t, h, scratch.data());  // says where
      }
      if (const Status st = CheckRotated(shape, 0, t, h, &y[first]); !st.ok()) return st;
    }
  }
  const size_t channels = size_t{heads} * n;
  std::vector<float> kmin(channels), kinv(channels);
  std::vector<float> lo(channels, std::numeric_limits<float>::infinity()), hi(channels, -lo[0]);
  for (uint32_t t = 0; t < tokens; ++t) kernels.min_max_rows(&y[size_t{t} * channels], channels, lo.data(), hi.data());
  for (uint32_t h = 0; h < heads; ++h) {
    for (uint32_t c = 0; c < n; ++c) {
      uint16_t min16, scale16;
      const size_t i = size_t{h} * n + c;
      if (!GroupParams(lo[i], hi[i], &min16, &scale16)) {
        return Status::InvalidArgument(RangeError(shape, 0, kAllTokens, h, c, lo[i], hi[i]));
      }
      StoreU16(out + 2 * i, scale16);
      StoreU16(out + 2 * (channels + i), min16);
      kmin[i] = F16BitsToF32(min16);
      kinv[i] = Inverse(scale16);
    }
  }
  auto* kq = reinterpret_cast<uint8_t*>(out + 4 * channels);
  for (uint32_t t = 0; t < tokens; ++t) {
    const size_t first = size_t{t} * channels;
    kernels.pack_per_channel(&y[first], channels, kmin.data(), kinv.data(), kq + first / 2);
  }

  // V: one scale and minimum per (token, head) vector.
  std::byte* v_part = out + KPartBytes(shape);
  const size_t groups = size_t{tokens} * heads;
  auto* vq = reinterpret_cast<uint8_t*>(v_part + 4 * groups);
  const std::byte* v_in = raw + in_part;
  std::vector<float> x(n);
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t h = 0; h < heads; ++h) {
      const size_t g = size_t{t} * heads + h;
      if (!kernels.load_rotate(shape.dtype, v_in, g * n, n, signs.data(), inv_sqrt, x.data())) {
        return LoadFinite(shape, 1, v_in, t, h, scratch.data());  // says where
      }
      if (const Status st = CheckRotated(shape, 1, t, h, x.data()); !st.ok()) return st;
      float vlo, vhi;
      kernels.min_max(x.data(), n, &vlo, &vhi);
      uint16_t min16, scale16;
      if (!GroupParams(vlo, vhi, &min16, &scale16)) return Status::InvalidArgument(RangeError(shape, 1, t, h, 0, vlo, vhi));
      StoreU16(v_part + 2 * g, scale16);
      StoreU16(v_part + 2 * (groups + g), min16);
      kernels.pack_uniform(x.data(), n, F16BitsToF32(min16), Inverse(scale16), vq + g * n / 2);
    }
  }
  return Status::OK();
}

void DecodeInt4Layer(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
#ifdef KVAULT_CODEC_X86
  const SimdLevel level = ActiveSimdLevel();
  if (level >= SimdLevel::kAvx512) {
    bool done = false;
    switch (shape.dtype) {
      case DType::kF32: done = DecodeAvx512ForHeadDim<DType::kF32>(shape, encoded, raw); break;
      case DType::kF16: done = DecodeAvx512ForHeadDim<DType::kF16>(shape, encoded, raw); break;
      default: done = DecodeAvx512ForHeadDim<DType::kBF16>(shape, encoded, raw); break;
    }
    if (done) return;
  }
  if (level >= SimdLevel::kAvx2) {
    bool done = false;
    switch (shape.dtype) {
      case DType::kF32: done = DecodeAvx2ForHeadDim<DType::kF32>(shape, encoded, raw); break;
      case DType::kF16: done = DecodeAvx2ForHeadDim<DType::kF16>(shape, encoded, raw); break;
      default: done = DecodeAvx2ForHeadDim<DType::kBF16>(shape, encoded, raw); break;
    }
    if (done) return;
  }
#endif
  switch (shape.dtype) {
    case DType::kF32: return DecodeScalar<DType::kF32>(shape, encoded, raw);
    case DType::kF16: return DecodeScalar<DType::kF16>(shape, encoded, raw);
    default: return DecodeScalar<DType::kBF16>(shape, encoded, raw);
  }
}

}  // namespace kvault::kv_codec

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

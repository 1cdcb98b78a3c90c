// The int8 codec: symmetric 8-bit per (token, kv-head) group of head_dim values, one fp16
// scale per group (docs/CODECS.md: byte layout and error bound).
//
// Encoding: s = the smallest fp16 >= max|x| / 127 (rounded up, so no value clamps), then
// q = round(x / s) in [-127, 127]. Decoding: x' = q * s, exact in f32 (q has 8 bits, s 11),
// then rounded to the layout's dtype. Hence |x - x'| <= s/2 (+ the f32 rounding of x / s,
// relative 2^-16 of s) + the output dtype's rounding.
#include <algorithm>
#include <cmath>
#include <cstring>
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

// One part (K or V) of a layer's encoding: [groups fp16 scales][groups * head_dim int8].
size_t PartBytes(const LayerShape& shape) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  return groups * 2 + groups * shape.head_dim;
}

// Group g (token g / heads, head g % heads) of a part as f32; InvalidArgument saying where for
// a NaN or infinite value.
Status LoadGroup(const LayerShape& shape, int part, const std::byte* in, size_t g, float* x) {
  const uint32_t d = shape.head_dim;
  const size_t bad = LoadFiniteRow(shape.dtype, in, g * d, d, x);
  if (bad == d) return Status::OK();
  return NonFiniteError("int8", shape, part, static_cast<uint32_t>(g / shape.heads),
                        static_cast<uint32_t>(g % shape.heads), static_cast<uint32_t>(bad), x[bad]);
}

// The smallest fp16 >= amax / 127 (0 for an all-zero group); InvalidArgument if beyond fp16.
Status GroupScale(const LayerShape& shape, int part, size_t g, float amax, uint16_t* s16) {
  *s16 = 0;
  if (amax == 0.0f || F16RoundUp(static_cast<double>(amax) / 127.0, s16)) return Status::OK();
  return Status::InvalidArgument(
      "int8 codec: " +
      Where(shape, part, static_cast<uint32_t>(g / shape.heads), static_cast<uint32_t>(g % shape.heads), 0) +
      ": a value of magnitude " + std::to_string(amax) +
      " is beyond the codec's range (|x| <= 127 * 65504, the largest fp16 scale)");
}

// 1 / s in f32 (0 for s = 0: the group is all zeros and quantizes to 0).
float Inverse(uint16_t s16) {
  const float s = F16BitsToF32(s16);
  return s > 0.0f ? 1.0f / s : 0.0f;
}

#ifdef KVAULT_CODEC_X86
// EncodeInt8Layer for head_dim a multiple of 8, with the scalar code's operations (so the
// same bytes): max|x| exactly, q = round-to-nearest-even(clamp(x * inv, -127, 127)).
template <DType kDType>
KVAULT_CODEC_AVX2 Status EncodeAvx2(const LayerShape& shape, const std::byte* raw, std::byte* out) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  const uint32_t d = shape.head_dim;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int part = 0; part < 2; ++part) {
    const std::byte* in = raw + part * shape.values_per_part() * DTypeSize(kDType);
    std::byte* scales = out + part * PartBytes(shape);
    auto* q = reinterpret_cast<int8_t*>(scales + groups * 2);
    for (size_t g = 0; g < groups; ++g) {
      __m256 amax = _mm256_setzero_ps();
      __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      for (uint32_t c = 0; c < d; c += 8) {
        const __m256 v = Load8<kDType>(in, g * d + c);
        finite = _mm256_and_ps(finite, FiniteLanes(v));
        amax = _mm256_max_ps(amax, _mm256_and_ps(v, abs_mask));
      }
      if (_mm256_movemask_ps(finite) != 0xff) {
        std::vector<float> x(d);
        return LoadGroup(shape, part, in, g, x.data());  // says where
      }
      uint16_t s16 = 0;
      KVAULT_RETURN_IF_ERROR(GroupScale(shape, part, g, HMax(amax), &s16));
      StoreU16(scales + 2 * g, s16);
      const __m256 inv = _mm256_set1_ps(Inverse(s16));
      for (uint32_t c = 0; c < d; c += 8) {
        const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(Load8<kDType>(in, g * d + c), inv), lo), hi);
        const __m256i qi = _mm256_cvtps_epi32(v);  // rounds to nearest even (the default MXCSR mode)
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + g * d + c), _mm_packs_epi16(words, words));
      }
    }
  }
  return Status::OK();
}
#endif

template <DType kDType>
void DecodeScalar(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  const uint32_t d = shape.head_dim;
  for (int part = 0; part < 2; ++part) {
    const std::byte* scales = encoded + part * PartBytes(shape);
    const auto* q = reinterpret_cast<const int8_t*>(scales + groups * 2);
    std::byte* out = raw + part * shape.values_per_part() * DTypeSize(kDType);
    for (size_t g = 0; g < groups; ++g) {
      const float s = F16BitsToF32(LoadU16(scales + 2 * g));
      for (uint32_t c = 0; c < d; ++c) StoreDecodedValue(kDType, out, g * d + c, static_cast<float>(q[g * d + c]) * s);
    }
  }
}

#ifdef KVAULT_CODEC_X86
template <DType kDType>
KVAULT_CODEC_AVX2 void DecodeAvx2(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  const uint32_t d = shape.head_dim;
  const uint32_t d8 = d & ~7u;
  for (int part = 0; part < 2; ++part) {
    const std::byte* scales = encoded + part * PartBytes(shape);
    const auto* q = reinterpret_cast<const int8_t*>(scales + groups * 2);
    std::byte* out = raw + part * shape.values_per_part() * DTypeSize(kDType);
    for (size_t g = 0; g < groups; ++g) {
      const float s = F16BitsToF32(LoadU16(scales + 2 * g));
      const __m256 sv = _mm256_set1_ps(s);
      const int8_t* qg = q + g * d;
      for (uint32_t c = 0; c < d8; c += 8) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qg + c));
        const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), sv);
        Store8<kDType>(out, g * d + c, v);
      }
      for (uint32_t c = d8; c < d; ++c) StoreDecodedValue(kDType, out, g * d + c, static_cast<float>(qg[c]) * s);
    }
  }
}

template <DType kDType>
KVAULT_CODEC_AVX512 void DecodeAvx512(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
  const size_t groups = size_t{shape.tokens} * shape.heads;
  const uint32_t d = shape.head_dim;
  const uint32_t d16 = d & ~15u;
  const __mmask16 tail = static_cast<__mmask16>((1u << (d - d16)) - 1);
  for (int part = 0; part < 2; ++part) {
    const std::byte* scales = encoded + part * PartBytes(shape);
    const auto* q = reinterpret_cast<const int8_t*>(scales + groups * 2);
    std::byte* out = raw + part * shape.values_per_part() * DTypeSize(kDType);
    for (size_t g = 0; g < groups; ++g) {
      const __m512 sv = _mm512_set1_ps(F16BitsToF32(LoadU16(scales + 2 * g)));
      const int8_t* qg = q + g * d;
      for (uint32_t c = 0; c < d16; c += 16) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qg + c));
        Store16<kDType>(out, g * d + c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), sv));
      }
      if (tail != 0) {
        const __m128i bytes = _mm_maskz_loadu_epi8(tail, qg + d16);
        Store16Mask<kDType>(out, g * d + d16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), sv), tail);
      }
    }
  }
}
#endif

}  // namespace

size_t Int8LayerBytes(const LayerShape& shape) { return 2 * PartBytes(shape); }

Status EncodeInt8Layer(const LayerShape& shape, const std::byte* raw, std::byte* out) {
#ifdef KVAULT_CODEC_X86
  if (ActiveSimdLevel() >= SimdLevel::kAvx2 && shape.head_dim % 8 == 0) {
    switch (shape.dtype) {
      case DType::kF32: return EncodeAvx2<DType::kF32>(shape, raw, out);
      case DType::kF16: return EncodeAvx2<DType::kF16>(shape, raw, out);
      default: return EncodeAvx2<DType::kBF16>(shape, raw, out);
    }
  }
#endif
  const size_t groups = size_t{shape.tokens} * shape.heads;
  const uint32_t d = shape.head_dim;
  std::vector<float> x(d);
  for (int part = 0; part < 2; ++part) {
    const std::byte* in = raw + part * shape.values_per_part() * DTypeSize(shape.dtype);
    std::byte* scales = out + part * PartBytes(shape);
    auto* q = reinterpret_cast<int8_t*>(scales + groups * 2);
    for (size_t g = 0; g < groups; ++g) {
      KVAULT_RETURN_IF_ERROR(LoadGroup(shape, part, in, g, x.data()));
      float amax = 0.0f;
      for (uint32_t c = 0; c < d; ++c) amax = std::max(amax, std::fabs(x[c]));
      uint16_t s16 = 0;
      KVAULT_RETURN_IF_ERROR(GroupScale(shape, part, g, amax, &s16));
      StoreU16(scales + 2 * g, s16);
      const float inv = Inverse(s16);
      for (uint32_t c = 0; c < d; ++c) {
        q[g * d + c] = static_cast<int8_t>(RoundToInt(std::clamp(x[c] * inv, -127.0f, 127.0f)));
      }
    }
  }
  return Status::OK();
}

void DecodeInt8Layer(const LayerShape& shape, const std::byte* encoded, std::byte* raw) {
#ifdef KVAULT_CODEC_X86
  switch (ActiveSimdLevel()) {
    case SimdLevel::kAvx512:
      switch (shape.dtype) {
        case DType::kF32: return DecodeAvx512<DType::kF32>(shape, encoded, raw);
        case DType::kF16: return DecodeAvx512<DType::kF16>(shape, encoded, raw);
        default: return DecodeAvx512<DType::kBF16>(shape, encoded, raw);
      }
    case SimdLevel::kAvx2:
      switch (shape.dtype) {
        case DType::kF32: return DecodeAvx2<DType::kF32>(shape, encoded, raw);
        case DType::kF16: return DecodeAvx2<DType::kF16>(shape, encoded, raw);
        default: return DecodeAvx2<DType::kBF16>(shape, encoded, raw);
      }
    case SimdLevel::kScalar: break;
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

// The KV codecs (include/kvault/kv_codec.h, docs/CODECS.md): round trips within each codec's
// proven error bound on random and adversarial inputs; the stored fp16 scales and minimums
// checked against their definition from the group's values (read from the documented byte
// layout with this file's own fp16 decoder and rotation); NaN/Inf and out-of-range values
// rejected saying where; sizes; layer-wise = chunk-wise; threads and SIMD give the same bytes;
// the int4 rotation measurably helps on an outlier channel.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvault/kv_codec.h"
#include "store/kv_codec_internal.h"
#include "store/kv_codec_numeric.h"

namespace kvault {
namespace {

// --- this test's own reading of the formats (independent of the codec's helpers) -----------
double Half(uint16_t h) {  // IEEE binary16 -> double
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? NAN : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}
uint16_t U16(const std::byte* p) { return static_cast<uint16_t>(std::to_integer<int>(p[0]) | (std::to_integer<int>(p[1]) << 8)); }

float ReadValue(DType dtype, const std::vector<std::byte>& raw, size_t i) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, raw.data() + 4 * i, 4);
    return f;
  }
  const uint16_t bits = U16(raw.data() + 2 * i);
  if (dtype == DType::kF16) return static_cast<float>(Half(bits));
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// The payload of `values` (in the raw order) in `dtype` (conversions of the codec's numerics).
std::vector<std::byte> ToRaw(const std::vector<float>& values, DType dtype) {
  std::vector<std::byte> raw(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) kv_codec::StoreValue(dtype, raw.data(), i, values[i]);
  return raw;
}
std::vector<float> FromRaw(const std::vector<std::byte>& raw, DType dtype) {
  std::vector<float> v(raw.size() / DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) v[i] = ReadValue(dtype, raw, i);
  return v;
}

// Half an ulp of the output dtype at magnitude `mag` (the rounding of a decoded value).
double OutRound(DType dtype, double mag) {
  switch (dtype) {
    case DType::kF32: return mag * 0x1p-24 + 1e-45;
    case DType::kF16: return std::max(mag * 0x1p-11, 0x1p-25);
    default: return mag * 0x1p-8 + 1e-45;
  }
}

// The rotation of docs/CODECS.md, computed in double: y = H · S · x / sqrt(n), S from splitmix64.
std::vector<double> DocSigns(uint32_t n) {
  std::vector<double> s(n);
  uint64_t state = 0x6b7661756c74ull;
  for (uint32_t c = 0; c < n; ++c) {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    s[c] = (z & 1) ? -1.0 : 1.0;
  }
  return s;
}
std::vector<double> Rotate(const float* x, uint32_t n) {
  const std::vector<double> signs = DocSigns(n);
  std::vector<double> y(n, 0.0);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t j = 0; j < n; ++j) y[i] += ((std::popcount(i & j) & 1) ? -1.0 : 1.0) * signs[j] * x[j];
    y[i] /= std::sqrt(static_cast<double>(n));
  }
  return y;
}

// The first index where two byte buffers differ (-1: equal; the shorter length if one is a
// prefix of the other), so a failure prints a position instead of two buffers.
long FirstDifference(const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
  const auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  if (ia == a.end() && ib == b.end()) return -1;
  return ia - a.begin();
}

struct Shape {
  uint32_t layers, heads, head_dim;
  DType dtype;
  uint32_t tokens;
};
KvLayout LayoutOf(const Shape& s) {
  KvLayout l;
  l.num_layers = s.layers;
  l.num_kv_heads = s.heads;
  l.head_dim = s.head_dim;
  l.dtype = s.dtype;
  l.chunk_tokens = 256;
  l.rope = RopeMode::kPreRope;
  return l;
}
std::string Name(const Shape& s) {
  return "layers=" + std::to_string(s.layers) + " heads=" + std::to_string(s.heads) + " d=" +
         std::to_string(s.head_dim) + " " + DTypeName(s.dtype) + " tokens=" + std::to_string(s.tokens);
}
// Index of (layer, part, token, head, channel) in a raw payload.
size_t Idx(const Shape& s, uint32_t l, int part, uint32_t t, uint32_t h, uint32_t c) {
  const size_t part_values = size_t{s.tokens} * s.heads * s.head_dim;
  return (size_t{l} * 2 + part) * part_values + (size_t{t} * s.heads + h) * s.head_dim + c;
}

// Values like KV: per-channel magnitudes vary (keys have outlier-ish channels), V milder.
std::vector<float> RandomKv(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(2 * size_t{s.layers} * s.tokens * s.heads * s.head_dim);
  for (uint32_t l = 0; l < s.layers; ++l)
    for (int part = 0; part < 2; ++part)
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.heads; ++h)
          for (uint32_t c = 0; c < s.head_dim; ++c) {
            const float channel_scale = part == 0 ? 0.2f + static_cast<float>((c * 7 + h) % 11) : 1.0f;
            const float bias = part == 0 ? 0.3f * static_cast<float>(c % 5) : 0.0f;
            v[Idx(s, l, part, t, h, c)] = channel_scale * normal(rng) + bias;
          }
  return v;
}

struct Coded {
  std::vector<std::byte> raw, encoded, decoded;
};
Coded RoundTrip(KvCodec codec, const Shape& s, const std::vector<float>& values) {
  const KvLayout layout = LayoutOf(s);
  Coded c;
  c.raw = ToRaw(values, s.dtype);
  c.encoded.resize(EncodedChunkBytes(codec, layout, s.tokens));
  Status st = EncodeKvChunk(codec, layout, s.tokens, c.raw, c.encoded);
  EXPECT_TRUE(st.ok()) << st.ToString() << " " << Name(s);
  c.decoded.resize(c.raw.size());
  st = DecodeKvChunk(codec, layout, s.tokens, c.encoded, c.decoded);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return c;
}

// int8: every value within s/2 of its input (plus the f32 rounding of x/s and the output
// dtype's rounding), and s the smallest fp16 >= the group's max|x| / 127.
void CheckInt8(const Shape& s, const Coded& c) {
  const std::vector<float> in = FromRaw(c.raw, s.dtype), out = FromRaw(c.decoded, s.dtype);
  const size_t groups = size_t{s.tokens} * s.heads;
  const size_t part_bytes = groups * 2 + groups * s.head_dim;
  ASSERT_EQ(c.encoded.size(), 2 * part_bytes * s.layers);
  int failures = 0;
  for (uint32_t l = 0; l < s.layers; ++l)
    for (int part = 0; part < 2; ++part) {
      const std::byte* enc = c.encoded.data() + (2 * l + part) * part_bytes;
      for (uint32_t t = 0; t < s.tokens; ++t)
        for (uint32_t h = 0; h < s.heads; ++h) {
          const uint16_t bits = U16(enc + 2 * (size_t{t} * s.heads + h));
          const double scale = Half(bits);
          double amax = 0;
          for (uint32_t c2 = 0; c2 < s.head_dim; ++c2) amax = std::max(amax, std::fabs(double{in[Idx(s, l, part, t, h, c2)]}));
          // The stored scale is the smallest fp16 >= amax / 127 (0 for an all-zero group).
          ASSERT_TRUE(std::isfinite(scale) && scale >= 0);
          EXPECT_GE(scale * 127.0 * (1 + 1e-7), amax) << "layer " << l << " part " << part << " t " << t;
          if (bits > 0) {
            EXPECT_LT(Half(bits - 1) * 127.0, amax * (1 + 1e-7)) << "scale not the smallest";
          }
          for (uint32_t c2 = 0; c2 < s.head_dim; ++c2) {
            const size_t i = Idx(s, l, part, t, h, c2);
            ASSERT_TRUE(std::isfinite(out[i])) << "decoded " << out[i] << " from " << in[i];  // no bound covers inf
            const double err = std::fabs(double{in[i]} - out[i]);
            const double bound = scale / 2 * (1 + 0x1p-15) + OutRound(s.dtype, std::fabs(out[i]));
            if (err > bound && ++failures < 5) {
              ADD_FAILURE() << Name(s) << " int8 l" << l << " part " << part << " t" << t << " h" << h << " c" << c2
                            << ": in " << in[i] << " out " << out[i] << " err " << err << " > bound " << bound;
            }
          }
        }
    }
  EXPECT_EQ(failures, 0);
}

// int4: per stored group, min16 is the largest fp16 <= the rotated group's minimum and s the
// smallest fp16 >= (max - min16) / 15; per (token, head) vector, ||x - x'||_2 <=
// sqrt(sum_c (s_c / 2)^2) (+ f32 and output rounding).
void CheckInt4(const Shape& s, const Coded& c) {
  const std::vector<float> in = FromRaw(c.raw, s.dtype), out = FromRaw(c.decoded, s.dtype);
  const uint32_t n = s.head_dim, heads = s.heads, tokens = s.tokens;
  const size_t groups = size_t{tokens} * heads, channels = size_t{heads} * n;
  const size_t packed = groups * n / 2;
  const size_t k_bytes = 4 * channels + packed, layer_bytes = k_bytes + 4 * groups + packed;
  ASSERT_EQ(c.encoded.size(), layer_bytes * s.layers);
  int failures = 0;
  for (uint32_t l = 0; l < s.layers; ++l) {
    const std::byte* k = c.encoded.data() + l * layer_bytes;
    const std::byte* v = k + k_bytes;
    // Rotated values of every vector, in double.
    std::vector<std::vector<double>> rotated[2];
    for (int part = 0; part < 2; ++part)
      for (uint32_t t = 0; t < tokens; ++t)
        for (uint32_t h = 0; h < heads; ++h) rotated[part].push_back(Rotate(&in[Idx(s, l, part, t, h, 0)], n));
    // The codec rotates in f32: each rotated value is off by up to ~log2(n) f32 roundings of
    // the vector's norm, so comparisons against this double rotation allow 2e-6 of the norm.
    auto norm = [](const std::vector<double>& y) {
      double n2 = 0;
      for (double e : y) n2 += e * e;
      return std::sqrt(n2);
    };
    auto check_group = [&](uint16_t scale_bits, uint16_t min_bits, double lo, double hi, double max_norm,
                           const std::string& where) {
      const double scale = Half(scale_bits), mn = Half(min_bits);
      const double tol = 2e-6 * max_norm + 1e-30;
      ASSERT_TRUE(std::isfinite(scale) && std::isfinite(mn) && scale >= 0) << where;
      EXPECT_LE(mn, lo + tol) << where << ": stored minimum above the group's minimum";
      // Largest fp16 <= lo: the next fp16 up is above lo.
      const double next_up = (min_bits & 0x8000) ? (min_bits == 0x8000 ? Half(1) : Half(min_bits - 1)) : Half(min_bits + 1);
      EXPECT_GT(next_up, lo - tol) << where << ": stored minimum not the largest fp16 below";
      EXPECT_GE(mn + 15 * scale, hi - tol) << where << ": scale too small (values would clamp)";
      if (scale_bits > 0) {
        EXPECT_LT(mn + 15 * Half(scale_bits - 1), hi + tol) << where << ": scale not the smallest";
      }
    };
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t c2 = 0; c2 < n; ++c2) {
        double lo = INFINITY, hi = -INFINITY, max_norm = 0;
        for (uint32_t t = 0; t < tokens; ++t) {
          lo = std::min(lo, rotated[0][t * heads + h][c2]);
          hi = std::max(hi, rotated[0][t * heads + h][c2]);
          max_norm = std::max(max_norm, norm(rotated[0][t * heads + h]));
        }
        const size_t i = size_t{h} * n + c2;
        check_group(U16(k + 2 * i), U16(k + 2 * (channels + i)), lo, hi, max_norm,
                    "layer " + std::to_string(l) + " K h" + std::to_string(h) + " c" + std::to_string(c2));
      }
    for (size_t g = 0; g < groups; ++g) {
      const auto& y = rotated[1][g];
      check_group(U16(v + 2 * g), U16(v + 2 * (groups + g)), *std::min_element(y.begin(), y.end()),
                  *std::max_element(y.begin(), y.end()), norm(y), "layer " + std::to_string(l) + " V group " + std::to_string(g));
    }
    // The round trip's error bound, per vector.
    for (int part = 0; part < 2; ++part)
      for (uint32_t t = 0; t < tokens; ++t)
        for (uint32_t h = 0; h < heads; ++h) {
          double err2 = 0, bound2 = 0, norm2 = 0, round2 = 0;
          const size_t g = size_t{t} * heads + h;
          for (uint32_t c2 = 0; c2 < n; ++c2) {
            const size_t i = Idx(s, l, part, t, h, c2);
            ASSERT_TRUE(std::isfinite(out[i])) << "decoded " << out[i] << " from " << in[i];
            const double e = double{in[i]} - out[i];
            err2 += e * e;
            norm2 += double{in[i]} * in[i];
            const double r = OutRound(s.dtype, std::fabs(out[i]));
            round2 += r * r;
            const double step = part == 0 ? Half(U16(k + 2 * (size_t{h} * n + c2))) : Half(U16(v + 2 * g));
            bound2 += step * step / 4;
          }
          const double bound = std::sqrt(bound2) * (1 + 1e-5) + 1e-5 * std::sqrt(norm2) + std::sqrt(round2);
          if (std::sqrt(err2) > bound && ++failures < 5) {
            ADD_FAILURE() << Name(s) << " int4 l" << l << " part " << part << " t" << t << " h" << h << ": L2 err "
                          << std::sqrt(err2) << " > bound " << bound;
          }
        }
  }
  EXPECT_EQ(failures, 0);
}

void CheckBound(KvCodec codec, const Shape& s, const Coded& c) {
  if (codec == KvCodec::kInt8) CheckInt8(s, c);
  if (codec == KvCodec::kInt4) CheckInt4(s, c);
  if (codec == KvCodec::kNone) {
    EXPECT_EQ(FirstDifference(c.decoded, c.raw), -1);
  }
}

std::vector<Shape> Shapes() {
  std::vector<Shape> shapes;
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  int i = 0;
  for (DType dtype : dtypes)
    for (uint32_t d : {64u, 128u})
      for (uint32_t tokens : {1u, 37u, 256u}) {
        ++i;
        shapes.push_back({1 + static_cast<uint32_t>(i % 3), 1 + static_cast<uint32_t>(i % 4), d, dtype, tokens});
      }
  shapes.push_back({2, 2, 16, DType::kBF16, 9});  // a small head: the SIMD kernels' smallest register count
  shapes.push_back({1, 3, 8, DType::kF16, 5});
  shapes.push_back({2, 1, 4, DType::kF32, 3});  // below the SIMD width: scalar kernels
  shapes.push_back({2, 2, 24, DType::kBF16, 6});  // int8 only: a partial AVX-512 register per group
  shapes.push_back({1, 2, 256, DType::kF16, 3});  // the widest head the SIMD kernels hold in registers
  shapes.push_back({1, 1, 512, DType::kBF16, 2});  // int4 beyond them: scalar
  return shapes;
}

constexpr KvCodec kCodecs[] = {KvCodec::kNone, KvCodec::kInt8, KvCodec::kInt4};

// --- tests ------------------------------------------------------------------------------------

TEST(KvCodecNumerics, Fp16ConversionsMatchIeee) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const double v = Half(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    ASSERT_EQ(kv_codec::F16BitsToF32(static_cast<uint16_t>(h)), static_cast<float>(v)) << h;
    ASSERT_EQ(kv_codec::F32ToF16Bits(static_cast<float>(v)), h) << h;
    // Midpoints to the next value up round to the even neighbour (or overflow to infinity).
    if ((h & 0x7fff) < 0x7bff) {
      const uint16_t up = static_cast<uint16_t>((h & 0x8000) ? h - 1 : h + 1);
      if ((h & 0x7fff) == 0 && (h & 0x8000)) continue;
      const float mid = static_cast<float>((v + Half(up)) / 2);
      const uint16_t even = (h & 1) ? up : static_cast<uint16_t>(h);
      ASSERT_EQ(kv_codec::F32ToF16Bits(mid), even) << h;
    }
  }
  EXPECT_EQ(kv_codec::F32ToF16Bits(65519.0f), 0x7bff);
  EXPECT_EQ(kv_codec::F32ToF16Bits(65520.0f), 0x7c00);
  uint16_t bits;
  EXPECT_TRUE(kv_codec::F16RoundUp(1e-9, &bits));
  EXPECT_EQ(bits, 1);  // the smallest subnormal
  EXPECT_FALSE(kv_codec::F16RoundUp(65505.0, &bits));
  EXPECT_TRUE(kv_codec::F16RoundDown(-1e-9, &bits));
  EXPECT_EQ(bits, 0x8001);
  EXPECT_FALSE(kv_codec::F16RoundDown(-65505.0, &bits));
}

TEST(KvCodec, NamesParse) {
  // The names are part of the configuration surface (--t2-codec, kvaultd keys) and the ids of
  // the record format.
  EXPECT_STREQ(KvCodecName(KvCodec::kNone), "none");
  EXPECT_STREQ(KvCodecName(KvCodec::kInt8), "int8");
  EXPECT_STREQ(KvCodecName(KvCodec::kInt4), "int4");
  EXPECT_EQ(static_cast<int>(KvCodec::kInt8), 1);
  EXPECT_EQ(static_cast<int>(KvCodec::kInt4), 2);
  for (KvCodec c : kCodecs) {
    KvCodec parsed = KvCodec::kNone;
    ASSERT_TRUE(ParseKvCodec(KvCodecName(c), &parsed).ok());
    EXPECT_EQ(parsed, c);
  }
  KvCodec parsed;
  const Status st = ParseKvCodec("int3", &parsed);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("none, int8, int4"), std::string::npos);
}

TEST(KvCodec, RandomRoundTripsWithinBound) {
  uint32_t seed = 1;
  for (const Shape& s : Shapes()) {
    const std::vector<float> values = RandomKv(s, seed++);
    for (KvCodec codec : kCodecs) {
      SCOPED_TRACE(std::string(KvCodecName(codec)) + " " + Name(s));
      if (!KvCodecSupports(codec, LayoutOf(s)).ok()) continue;
      CheckBound(codec, s, RoundTrip(codec, s, values));
    }
  }
}

TEST(KvCodec, LayerWiseChunkWiseThreadsAndSimdAgree) {
  uint32_t seed = 100;
  for (const Shape& s : Shapes()) {
    const KvLayout layout = LayoutOf(s);
    std::vector<float> values = RandomKv(s, seed++);
    // Zeros of both signs in the last token's V (which zero a min() keeps must not matter).
    for (uint32_t c = 0; c < s.head_dim; ++c) values[Idx(s, s.layers - 1, 1, s.tokens - 1, 0, c)] = c % 2 ? 0.0f : -0.0f;
    const std::vector<std::byte> raw = ToRaw(values, s.dtype);
    for (KvCodec codec : kCodecs) {
      SCOPED_TRACE(std::string(KvCodecName(codec)) + " " + Name(s));
      if (!KvCodecSupports(codec, layout).ok()) continue;
      std::vector<std::byte> chunk(EncodedChunkBytes(codec, layout, s.tokens));
      ASSERT_TRUE(EncodeKvChunk(codec, layout, s.tokens, raw, chunk).ok());
      std::vector<std::byte> again(chunk.size());
      ASSERT_TRUE(EncodeKvChunk(codec, layout, s.tokens, raw, again).ok());
      EXPECT_EQ(FirstDifference(again, chunk), -1) << "encoding is deterministic";
      // Layer by layer: the same bytes as the chunk, in order.
      const size_t enc_layer = EncodedLayerBytes(codec, layout, s.tokens);
      const ByteRange r0 = layout.layer_range(0, s.tokens);
      std::vector<std::byte> by_layer(layout.chunk_bytes(s.tokens));
      for (uint32_t l = 0; l < s.layers; ++l) {
        const ByteRange r = layout.layer_range(l, s.tokens);
        std::vector<std::byte> enc(enc_layer);
        ASSERT_TRUE(EncodeKvLayer(codec, layout, s.tokens, std::span(raw).subspan(r.offset, r.size), enc).ok());
        EXPECT_TRUE(std::equal(enc.begin(), enc.end(), chunk.begin() + l * enc_layer)) << "layer " << l;
        ASSERT_TRUE(DecodeKvLayer(codec, layout, s.tokens, std::span(chunk).subspan(l * enc_layer, enc_layer),
                                  std::span(by_layer).subspan(r.offset, r.size))
                        .ok());
      }
      EXPECT_EQ(r0.size * s.layers, by_layer.size());
      std::vector<std::byte> one(raw.size()), four(raw.size());
      ASSERT_TRUE(DecodeKvChunk(codec, layout, s.tokens, chunk, one, 1).ok());
      ASSERT_TRUE(DecodeKvChunk(codec, layout, s.tokens, chunk, four, 4).ok());
      EXPECT_EQ(FirstDifference(one, four), -1) << "threads 1 and 4";
      EXPECT_EQ(FirstDifference(one, by_layer), -1) << "layer-wise and chunk-wise decoding";
      // Every kernel this CPU runs writes the same bits.
      for (auto level : {kv_codec::SimdLevel::kScalar, kv_codec::SimdLevel::kAvx2, kv_codec::SimdLevel::kAvx512}) {
        if (level > kv_codec::CpuSimdLevel()) continue;
        kv_codec::SetSimdCap(level);
        std::vector<std::byte> other(raw.size()), other_chunk(chunk.size());
        ASSERT_TRUE(DecodeKvChunk(codec, layout, s.tokens, chunk, other, 2).ok());
        ASSERT_TRUE(EncodeKvChunk(codec, layout, s.tokens, raw, other_chunk).ok());
        kv_codec::SetSimdCap(kv_codec::SimdLevel::kAvx512);
        EXPECT_EQ(FirstDifference(one, other), -1) << "decoding kernels " << kv_codec::SimdLevelName(level) << " and "
                              << kv_codec::SimdLevelName(kv_codec::CpuSimdLevel());
        EXPECT_EQ(FirstDifference(chunk, other_chunk), -1) << "encoding kernels " << kv_codec::SimdLevelName(level) << " and "
                                      << kv_codec::SimdLevelName(kv_codec::CpuSimdLevel());
      }
    }
  }
}

TEST(KvCodec, AdversarialInputs) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Shape s{2, 3, 64, dtype, 37};
    const size_t count = 2 * size_t{s.layers} * s.tokens * s.heads * s.head_dim;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::pair<std::string, std::vector<float>>> inputs;
    std::vector<float> outlier(count);
    for (size_t i = 0; i < count; ++i) outlier[i] = normal(rng) * ((i % s.head_dim) == 5 ? 100.0f : 1.0f);
    inputs.push_back({"outlier channel", outlier});
    std::vector<float> zeros(count);
    for (size_t i = 0; i < count; ++i) zeros[i] = (i * 7) % 3 ? 0.0f : -0.0f;  // zeros of both signs
    inputs.push_back({"all zero", zeros});
    inputs.push_back({"constant", std::vector<float>(count, 0.7f)});
    inputs.push_back({"negative constant", std::vector<float>(count, -3.25f)});
    std::vector<float> single(count, 0.0f);
    single[count / 3] = 42.5f;
    inputs.push_back({"single nonzero", single});
    std::vector<float> tiny(count);
    for (size_t i = 0; i < count; ++i) tiny[i] = normal(rng) * 1e-6f;
    inputs.push_back({"tiny (fp16 subnormal scales)", tiny});
    // The largest magnitudes each codec represents in this dtype: int8 up to 127 * 65504 (f16
    // input: its own max 65504); int4 needs every rotated value within ±65504: 1000 * sqrt(64).
    const float int8_max = dtype == DType::kF16 ? 65504.0f : 8.0e6f;
    std::vector<float> big8(count), big4(count);
    for (size_t i = 0; i < count; ++i) {
      big8[i] = (i % 3 == 0 ? -int8_max : int8_max) * (i % 7 == 0 ? 1.0f : 0.5f);
      big4[i] = (i % 3 == 0 ? -1000.0f : 1000.0f);
    }
    for (KvCodec codec : kCodecs) {
      for (const auto& [name, values] : inputs) {
        SCOPED_TRACE(std::string(KvCodecName(codec)) + " " + DTypeName(dtype) + " " + name);
        const Coded c = RoundTrip(codec, s, values);
        CheckBound(codec, s, c);
        if (name == "all zero") {
          for (float v : FromRaw(c.decoded, dtype)) ASSERT_EQ(v, 0.0f);
          // Every stored scale and minimum is +0 (bits 0): which zero a min() keeps must not
          // change the bytes.
          const size_t groups = size_t{s.tokens} * s.heads, channels = size_t{s.heads} * s.head_dim;
          const size_t layer_bytes = c.encoded.size() / s.layers;
          for (uint32_t l = 0; l < s.layers; ++l) {
            const std::byte* e = c.encoded.data() + l * layer_bytes;
            std::vector<const std::byte*> fields;  // starts of the fp16 arrays, and their lengths
            std::vector<size_t> lengths;
            if (codec == KvCodec::kInt8) {
              fields = {e, e + layer_bytes / 2};
              lengths = {groups, groups};
            } else if (codec == KvCodec::kInt4) {
              const size_t k_bytes = 4 * channels + groups * s.head_dim / 2;
              fields = {e, e + k_bytes};
              lengths = {2 * channels, 2 * groups};
            }
            for (size_t f = 0; f < fields.size(); ++f) {
              for (size_t i = 0; i < lengths[f]; ++i) ASSERT_EQ(U16(fields[f] + 2 * i), 0) << "field " << f << " #" << i;
            }
          }
        }
      }
      SCOPED_TRACE(std::string(KvCodecName(codec)) + " " + DTypeName(dtype) + " max magnitude");
      if (codec != KvCodec::kInt4) CheckBound(codec, s, RoundTrip(codec, s, big8));
      if (codec != KvCodec::kInt8) CheckBound(codec, s, RoundTrip(codec, s, big4));
      if (dtype == DType::kF16) {
        // The f16 maximum itself: int8's rounded-up scale (127 * 516 = 65532) and int4's
        // rotation both decode it a little above 65504, which must saturate, never become inf.
        std::vector<float> spike(count, 0.0f);
        for (size_t i = 0; i < count; i += s.head_dim) spike[i] = 65504.0f;
        CheckBound(codec, s, RoundTrip(codec, s, spike));
      }
    }
  }
}

TEST(KvCodec, ValuesBeyondFp16ScalesAreRejected) {
  const Shape s{2, 2, 64, DType::kF32, 4};
  const KvLayout layout = LayoutOf(s);
  std::vector<float> values(2 * size_t{s.layers} * s.tokens * s.heads * s.head_dim, 1.0f);
  values[Idx(s, 1, 0, 2, 1, 9)] = 3.0e38f;  // near f32's max
  const std::vector<std::byte> raw = ToRaw(values, s.dtype);
  for (KvCodec codec : {KvCodec::kInt8, KvCodec::kInt4}) {
    std::vector<std::byte> out(EncodedChunkBytes(codec, layout, s.tokens));
    const Status st = EncodeKvChunk(codec, layout, s.tokens, raw, out);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << KvCodecName(codec);
    EXPECT_NE(st.message().find("layer 1 K"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("head 1"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("65504"), std::string::npos) << st.message();
  }
  // f16 KV at its own maximum: int8 holds it, int4's rotation lifts it past fp16 (a head
  // vector of 64 values of 65504 has L2 norm 8 * 65504): rejected, saying so.
  const Shape h{1, 1, 64, DType::kF16, 2};
  const std::vector<std::byte> raw16 = ToRaw(std::vector<float>(2 * 2 * 64, 65504.0f), DType::kF16);
  std::vector<std::byte> out8(EncodedChunkBytes(KvCodec::kInt8, LayoutOf(h), 2));
  EXPECT_TRUE(EncodeKvChunk(KvCodec::kInt8, LayoutOf(h), 2, raw16, out8).ok());
  std::vector<std::byte> out4(EncodedChunkBytes(KvCodec::kInt4, LayoutOf(h), 2));
  const Status st = EncodeKvChunk(KvCodec::kInt4, LayoutOf(h), 2, raw16, out4);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("rotated values span"), std::string::npos) << st.message();
  // Finite f32 values that overflow inside int4's rotation (3e38 + 3e38 = inf, then inf - inf
  // = NaN): refused before anything is quantized, never encoded as garbage.
  const Shape o{1, 1, 64, DType::kF32, 2};
  std::vector<float> huge(2 * 2 * 64, 0.0f);
  for (size_t c = 0; c < 8; ++c) huge[c] = c % 2 ? -3.0e38f : 3.0e38f;
  std::vector<std::byte> outo(EncodedChunkBytes(KvCodec::kInt4, LayoutOf(o), 2));
  const Status so = EncodeKvChunk(KvCodec::kInt4, LayoutOf(o), 2, ToRaw(huge, DType::kF32), outo);
  EXPECT_EQ(so.code(), Code::kInvalidArgument);
  EXPECT_NE(so.message().find("65504"), std::string::npos) << so.message();
}

TEST(KvCodec, NanAndInfRejectedSayingWhere) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Shape s{3, 3, 64, dtype, 8};
    const KvLayout layout = LayoutOf(s);
    for (const float bad : {NAN, INFINITY, -INFINITY}) {
      std::vector<float> values = RandomKv(s, 3);
      values[Idx(s, 1, 1, 5, 2, 7)] = bad;
      const std::vector<std::byte> raw = ToRaw(values, dtype);
      for (KvCodec codec : {KvCodec::kInt8, KvCodec::kInt4}) {
        std::vector<std::byte> out(EncodedChunkBytes(codec, layout, s.tokens));
        const Status st = EncodeKvChunk(codec, layout, s.tokens, raw, out);
        ASSERT_EQ(st.code(), Code::kInvalidArgument) << KvCodecName(codec) << " " << DTypeName(dtype) << " " << bad;
        EXPECT_NE(st.message().find("layer 1 V token 5 head 2 channel 7"), std::string::npos) << st.message();
        EXPECT_NE(st.message().find(std::isnan(bad) ? "NaN" : "infinite"), std::string::npos) << st.message();
      }
    }
  }
}

TEST(KvCodec, SizesAndMismatches) {
  const Shape s{3, 4, 64, DType::kBF16, 256};
  const KvLayout layout = LayoutOf(s);
  const size_t tokens = 256, heads = 4, d = 64;
  EXPECT_EQ(EncodedLayerBytes(KvCodec::kNone, layout, 256), 2 * tokens * heads * d * 2);
  EXPECT_EQ(EncodedLayerBytes(KvCodec::kInt8, layout, 256), 2 * tokens * heads * (d + 2));
  EXPECT_EQ(EncodedLayerBytes(KvCodec::kInt4, layout, 256), 4 * heads * d + 4 * tokens * heads + tokens * heads * d);
  for (KvCodec codec : kCodecs) {
    EXPECT_EQ(EncodedChunkBytes(codec, layout, 37), 3 * EncodedLayerBytes(codec, layout, 37));
  }
  // Ratios against bf16 for a full chunk.
  const double raw = static_cast<double>(layout.chunk_bytes(256));
  EXPECT_GE(raw / EncodedChunkBytes(KvCodec::kInt8, layout, 256), 1.9);
  EXPECT_GE(raw / EncodedChunkBytes(KvCodec::kInt4, layout, 256), 3.5);

  const std::vector<std::byte> in = ToRaw(RandomKv(s, 5), s.dtype);
  for (KvCodec codec : kCodecs) {
    SCOPED_TRACE(KvCodecName(codec));
    const size_t enc = EncodedChunkBytes(codec, layout, 256);
    std::vector<std::byte> out(enc), short_out(enc - 1), long_out(enc + 1), back(in.size()), short_back(in.size() - 2);
    EXPECT_EQ(EncodeKvChunk(codec, layout, 256, in, short_out).code(), Code::kInvalidArgument);
    EXPECT_EQ(EncodeKvChunk(codec, layout, 256, in, long_out).code(), Code::kInvalidArgument);
    EXPECT_EQ(EncodeKvChunk(codec, layout, 255, in, out).code(), Code::kInvalidArgument);
    ASSERT_TRUE(EncodeKvChunk(codec, layout, 256, in, out).ok());
    EXPECT_EQ(DecodeKvChunk(codec, layout, 256, out, short_back).code(), Code::kInvalidArgument);
    EXPECT_EQ(DecodeKvChunk(codec, layout, 256, std::span(out).first(enc - 1), back).code(), Code::kInvalidArgument);
    long_out.assign(out.begin(), out.end());
    long_out.push_back(std::byte{0});
    EXPECT_EQ(DecodeKvChunk(codec, layout, 256, long_out, back).code(), Code::kInvalidArgument);
    const ByteRange r = layout.layer_range(0, 256);
    std::vector<std::byte> layer(EncodedLayerBytes(codec, layout, 256));
    EXPECT_EQ(EncodeKvLayer(codec, layout, 256, std::span(in).first(r.size - 1), layer).code(), Code::kInvalidArgument);
    EXPECT_EQ(DecodeKvLayer(codec, layout, 256, std::span(layer).first(layer.size() - 1),
                            std::span(back).first(r.size))
                  .code(),
              Code::kInvalidArgument);
    if (codec == KvCodec::kNone) {
      EXPECT_EQ(FirstDifference(out, in), -1) << "none is the raw payload";
    }
  }
  // A codec id no build knows (a corrupt or future record): refused, never decoded.
  const auto unknown = static_cast<KvCodec>(7);
  EXPECT_EQ(KvCodecSupports(unknown, layout).code(), Code::kInvalidArgument);
  std::vector<std::byte> any(in.size());
  EXPECT_EQ(EncodeKvChunk(unknown, layout, 256, in, any).code(), Code::kInvalidArgument);
  EXPECT_EQ(DecodeKvChunk(unknown, layout, 256, in, any).code(), Code::kInvalidArgument);
  // Unsupported layouts say why.
  KvLayout f8 = layout;
  f8.dtype = DType::kF8;
  EXPECT_NE(KvCodecSupports(KvCodec::kInt8, f8).message().find("f8"), std::string::npos);
  EXPECT_TRUE(KvCodecSupports(KvCodec::kNone, f8).ok());
  KvLayout d96 = layout;
  d96.head_dim = 96;
  EXPECT_TRUE(KvCodecSupports(KvCodec::kInt8, d96).ok());
  const Status st = KvCodecSupports(KvCodec::kInt4, d96);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("power of two"), std::string::npos);
  std::vector<std::byte> enc96(EncodedChunkBytes(KvCodec::kInt4, d96, 1)), raw96(d96.chunk_bytes(1));
  EXPECT_EQ(EncodeKvChunk(KvCodec::kInt4, d96, 1, raw96, enc96).code(), Code::kInvalidArgument);
}

// The rotation spreads an outlier channel over all channels: per-token 4-bit of the rotated
// vector (the codec's V) beats per-token 4-bit of the raw vector (computed here) by far.
TEST(KvCodec, Int4RotationTamesAnOutlierChannel) {
  const Shape s{1, 1, 128, DType::kF32, 64};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(2 * size_t{s.tokens} * s.head_dim);
  for (size_t i = 0; i < values.size(); ++i) values[i] = normal(rng) * ((i % s.head_dim) == 17 ? 100.0f : 1.0f);
  const Coded c = RoundTrip(KvCodec::kInt4, s, values);
  const std::vector<float> out = FromRaw(c.decoded, s.dtype);
  double codec_err = 0, plain_err = 0;
  for (uint32_t t = 0; t < s.tokens; ++t) {
    const float* x = &values[Idx(s, 0, 1, t, 0, 0)];
    const float lo = *std::min_element(x, x + s.head_dim), hi = *std::max_element(x, x + s.head_dim);
    const float step = (hi - lo) / 15;
    for (uint32_t c2 = 0; c2 < s.head_dim; ++c2) {
      const float plain = lo + step * std::nearbyint((x[c2] - lo) / step);
      plain_err += (plain - x[c2]) * (plain - x[c2]);
      const float e = out[Idx(s, 0, 1, t, 0, c2)] - x[c2];
      codec_err += e * e;
    }
  }
  EXPECT_LT(codec_err, 0.25 * plain_err) << "codec MSE " << codec_err << " vs unrotated per-token 4-bit " << plain_err;
}

}  // namespace
}  // namespace kvault

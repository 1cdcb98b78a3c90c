// Dequantizers: for every supported type the test packs blocks itself from chosen scales, mins
// and quants (following the ggml block layout, bit by bit) and computes each expected element
// with its own formula — never by calling the code under test. Then: scalar conversions and
// their rounding, threads, errors, and the real SmolLM2 tensors.
#include "gguf/dequantize.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gguf/gguf_file.h"
#include "smollm2_locator.h"

namespace kvault::gguf {
namespace {

constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9, kQ2_K = 10,
                   kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kI8 = 24, kI16 = 25, kI32 = 26,
                   kI64 = 27, kF64 = 28, kBF16 = 30;

// fp16 bit patterns with their exact values, worked out by hand.
struct HalfValue {
  uint16_t bits;
  double value;
};
constexpr HalfValue kHalves[] = {
    {0x3C00, 1.0},     {0x3800, 0.5},         {0x2C00, 0.0625},          {0xB400, -0.25},
    {0x3E00, 1.5},     {0x2E66, 0.0999755859375}, {0x1400, 0.0009765625}, {0xC500, -5.0},
    {0x0001, 5.9604644775390625e-08},  // smallest subnormal, 2^-24
};

// A block being packed, with the expected values of its elements.
struct Packed {
  std::vector<uint8_t> bytes;
  std::vector<double> expected;
  std::vector<double> mag;  // per element: the sum of |terms| in its formula (for the tolerance)
  void Add(double value, double magnitude) {
    expected.push_back(value);
    mag.push_back(magnitude);
  }
};

void Put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v & 0xff);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}

class Rng {
 public:
  explicit Rng(uint32_t seed) : gen_(seed) {}
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen_); }  // [lo, hi]
  HalfValue Half() { return kHalves[Int(0, static_cast<int>(std::size(kHalves)) - 1)]; }

 private:
  std::mt19937 gen_;
};

// |got - want| within a few float roundings of the terms that make up `want`.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>& mag,
                 const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = 6 * std::numeric_limits<float>::epsilon() * mag[i];
    ASSERT_NEAR(got[i], want[i], tol) << what << " element " << i;
  }
}

std::vector<float> Decode(uint32_t type, const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<float> out(n, -12345.0f);
  Status s = DequantizeToFloat(type, bytes, static_cast<int64_t>(n), out.data(), 1);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

// ---- Literal examples, computed by hand ---------------------------------------------------

TEST(DequantizeTest, Q4_0Literal) {
  // d = 0.5; byte j = 0x8F: element j is 15 -> (15-8)*0.5 = 3.5, element j+16 is 8 -> 0.
  std::vector<uint8_t> b(18, 0x8F);
  Put16(b, 0, 0x3800);
  b[2] = 0x21;  // element 0 = 1 -> -3.5, element 16 = 2 -> -3
  std::vector<float> y = Decode(kQ4_0, b, 32);
  EXPECT_EQ(y[0], -3.5f);
  EXPECT_EQ(y[16], -3.0f);
  for (int j = 1; j < 16; ++j) {
    EXPECT_EQ(y[j], 3.5f);
    EXPECT_EQ(y[j + 16], 0.0f);
  }
}

TEST(DequantizeTest, Q8_0Literal) {
  std::vector<uint8_t> b(34, 0);
  Put16(b, 0, 0xC500);  // d = -5
  b[2] = 0x80;          // -128 -> 640
  b[3] = 0x7F;          // 127 -> -635
  b[4] = 0xFF;          // -1 -> 5
  std::vector<float> y = Decode(kQ8_0, b, 32);
  EXPECT_EQ(y[0], 640.0f);
  EXPECT_EQ(y[1], -635.0f);
  EXPECT_EQ(y[2], 5.0f);
  EXPECT_EQ(y[3], 0.0f);
}

TEST(DequantizeTest, Q4_1Literal) {
  std::vector<uint8_t> b(20, 0x3F);  // low nibble 15, high nibble 3
  Put16(b, 0, 0x3800);               // d = 0.5
  Put16(b, 2, 0xB400);               // m = -0.25
  std::vector<float> y = Decode(kQ4_1, b, 32);
  EXPECT_EQ(y[0], 7.25f);   // 15*0.5 - 0.25
  EXPECT_EQ(y[31], 1.25f);  // 3*0.5 - 0.25
}

TEST(DequantizeTest, Q5_0Literal) {
  std::vector<uint8_t> b(22, 0);
  Put16(b, 0, 0x3C00);  // d = 1
  b[2] = 0x01;          // qh bit 0: element 0 gets 16
  b[5] = 0x80;          // qh bit 31: element 31 gets 16
  b[6] = 0x0F;          // element 0 low nibble 15 -> q = 31 -> 15; element 16 -> q = 0 -> -16
  b[21] = 0x70;         // element 31 high nibble 7 -> q = 23 -> 7; element 15 -> 0 -> -16
  std::vector<float> y = Decode(kQ5_0, b, 32);
  EXPECT_EQ(y[0], 15.0f);
  EXPECT_EQ(y[16], -16.0f);
  EXPECT_EQ(y[31], 7.0f);
  EXPECT_EQ(y[15], -16.0f);
  EXPECT_EQ(y[1], -16.0f);
}

// ---- Packed from chosen fields, per type ----------------------------------------------------

// Q4_0: fp16 d | 16 bytes: element i in byte i%16, low nibble for i<16, high for i>=16.
Packed PackQ4_0(Rng& r) {
  Packed p{std::vector<uint8_t>(18, 0), {}, {}};
  const HalfValue d = r.Half();
  Put16(p.bytes, 0, d.bits);
  for (int i = 0; i < 32; ++i) {
    const int q = r.Int(0, 15);
    p.bytes[2 + i % 16] |= static_cast<uint8_t>(q << (i < 16 ? 0 : 4));
    p.Add((q - 8) * d.value, std::abs((q - 8) * d.value));
  }
  return p;
}

// Q4_1: fp16 d | fp16 m | nibbles as Q4_0; q*d + m.
Packed PackQ4_1(Rng& r) {
  Packed p{std::vector<uint8_t>(20, 0), {}, {}};
  const HalfValue d = r.Half(), m = r.Half();
  Put16(p.bytes, 0, d.bits);
  Put16(p.bytes, 2, m.bits);
  for (int i = 0; i < 32; ++i) {
    const int q = r.Int(0, 15);
    p.bytes[4 + i % 16] |= static_cast<uint8_t>(q << (i < 16 ? 0 : 4));
    p.Add(q * d.value + m.value, std::abs(q * d.value) + std::abs(m.value));
  }
  return p;
}

// Q5_0: fp16 d | u32 qh (bit i = bit 4 of element i) | nibbles as Q4_0; (q-16)*d.
Packed PackQ5_0(Rng& r) {
  Packed p{std::vector<uint8_t>(22, 0), {}, {}};
  const HalfValue d = r.Half();
  Put16(p.bytes, 0, d.bits);
  for (int i = 0; i < 32; ++i) {
    const int q = r.Int(0, 31);
    p.bytes[6 + i % 16] |= static_cast<uint8_t>((q & 15) << (i < 16 ? 0 : 4));
    p.bytes[2 + i / 8] |= static_cast<uint8_t>((q >> 4) << (i % 8));
    p.Add((q - 16) * d.value, std::abs((q - 16) * d.value));
  }
  return p;
}

// Q5_1: fp16 d | fp16 m | u32 qh | nibbles; q*d + m.
Packed PackQ5_1(Rng& r) {
  Packed p{std::vector<uint8_t>(24, 0), {}, {}};
  const HalfValue d = r.Half(), m = r.Half();
  Put16(p.bytes, 0, d.bits);
  Put16(p.bytes, 2, m.bits);
  for (int i = 0; i < 32; ++i) {
    const int q = r.Int(0, 31);
    p.bytes[8 + i % 16] |= static_cast<uint8_t>((q & 15) << (i < 16 ? 0 : 4));
    p.bytes[4 + i / 8] |= static_cast<uint8_t>((q >> 4) << (i % 8));
    p.Add(q * d.value + m.value, std::abs(q * d.value) + std::abs(m.value));
  }
  return p;
}

// Q8_0: fp16 d | 32 x int8.
Packed PackQ8_0(Rng& r) {
  Packed p{std::vector<uint8_t>(34, 0), {}, {}};
  const HalfValue d = r.Half();
  Put16(p.bytes, 0, d.bits);
  for (int i = 0; i < 32; ++i) {
    const int q = r.Int(-128, 127);
    p.bytes[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    p.Add(q * d.value, std::abs(q * d.value));
  }
  return p;
}

// Q2_K: scales[16] @0 (scale low nibble, min high nibble, one per 16 elements) | qs[64] @16 |
// fp16 d @80 | fp16 dmin @82. Element i: h = i/128, j = (i%128)/32, l = i%32 -> bits 2j of
// qs[32h + l]. value = d*scale*q - dmin*min.
Packed PackQ2_K(Rng& r) {
  Packed p{std::vector<uint8_t>(84, 0), {}, {}};
  const HalfValue d = r.Half(), dmin = r.Half();
  Put16(p.bytes, 80, d.bits);
  Put16(p.bytes, 82, dmin.bits);
  int sc[16], mn[16];
  for (int g = 0; g < 16; ++g) {
    sc[g] = r.Int(0, 15);
    mn[g] = r.Int(0, 15);
    p.bytes[g] = static_cast<uint8_t>(sc[g] | (mn[g] << 4));
  }
  for (int i = 0; i < 256; ++i) {
    const int q = r.Int(0, 3);
    const int h = i / 128, j = (i % 128) / 32, l = i % 32;
    p.bytes[16 + 32 * h + l] |= static_cast<uint8_t>(q << (2 * j));
    p.Add(d.value * sc[i / 16] * q - dmin.value * mn[i / 16],
          std::abs(d.value * sc[i / 16] * q) + std::abs(dmin.value * mn[i / 16]));
  }
  return p;
}

// Q3_K: hmask[32] @0 | qs[64] @32 | scales[12] @96 | fp16 d @108. Element i (q in -4..3):
// h = i/128, j = (i%128)/32, l = i%32; low two bits (q+4 for negatives, which is q & 3) at
// bits 2j of qs[32h + l]; hmask[l] bit 4h+j set when q >= 0. Scale g (6 bits, bias 32): low
// nibble in byte g (g<8) or the high nibble of byte g-8 (g>=8); top two bits at bits 2*(g/4)
// of byte 8 + g%4. value = d*(scale-32)*q.
Packed PackQ3_K(Rng& r, const int* fixed_scales) {
  Packed p{std::vector<uint8_t>(110, 0), {}, {}};
  const HalfValue d = r.Half();
  Put16(p.bytes, 108, d.bits);
  int s[16];
  for (int g = 0; g < 16; ++g) {
    s[g] = fixed_scales ? fixed_scales[g] : r.Int(0, 63);
    const int low = s[g] & 15, high = s[g] >> 4;
    if (g < 8) p.bytes[96 + g] |= static_cast<uint8_t>(low);
    else p.bytes[96 + g - 8] |= static_cast<uint8_t>(low << 4);
    p.bytes[96 + 8 + g % 4] |= static_cast<uint8_t>(high << (2 * (g / 4)));
  }
  for (int i = 0; i < 256; ++i) {
    const int q = r.Int(-4, 3);
    const int h = i / 128, j = (i % 128) / 32, l = i % 32;
    p.bytes[32 + 32 * h + l] |= static_cast<uint8_t>((q & 3) << (2 * j));
    if (q >= 0) p.bytes[l] |= static_cast<uint8_t>(1 << (4 * h + j));
    p.Add(d.value * (s[i / 16] - 32) * q, std::abs(d.value * (s[i / 16] - 32) * q));
  }
  return p;
}

// The 12 scale bytes of Q4_K/Q5_K from 8 six-bit scales and mins: j<4 in the low 6 bits of
// bytes j (scale) and j+4 (min); j>=4: low nibbles in byte j+4 (scale low, min high), top two
// bits in bits 6-7 of byte j-4 (scale) and byte j (min).
void PackScalesK4(uint8_t* s, const int* sc, const int* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] |= static_cast<uint8_t>(sc[j]);
      s[j + 4] |= static_cast<uint8_t>(mn[j]);
    } else {
      s[j + 4] |= static_cast<uint8_t>((sc[j] & 15) | ((mn[j] & 15) << 4));
      s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
}

// Q4_K: fp16 d @0 | fp16 dmin @2 | scales[12] @4 | qs[128] @16. Element i: sub-block k = i/32,
// l = i%32: nibble (k odd: high) of qs[32*(k/2) + l]. value = d*sc[k]*q - dmin*mn[k].
Packed PackQ4_K(Rng& r, const int* fixed_sc, const int* fixed_mn) {
  Packed p{std::vector<uint8_t>(144, 0), {}, {}};
  const HalfValue d = r.Half(), dmin = r.Half();
  Put16(p.bytes, 0, d.bits);
  Put16(p.bytes, 2, dmin.bits);
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = fixed_sc ? fixed_sc[j] : r.Int(0, 63);
    mn[j] = fixed_mn ? fixed_mn[j] : r.Int(0, 63);
  }
  PackScalesK4(p.bytes.data() + 4, sc, mn);
  for (int i = 0; i < 256; ++i) {
    const int q = r.Int(0, 15);
    const int k = i / 32, l = i % 32;
    p.bytes[16 + 32 * (k / 2) + l] |= static_cast<uint8_t>(q << (4 * (k % 2)));
    p.Add(d.value * sc[k] * q - dmin.value * mn[k], std::abs(d.value * sc[k] * q) + std::abs(dmin.value * mn[k]));
  }
  return p;
}

// Q5_K: as Q4_K with qh[32] @16 and qs[128] @48; bit 4 of element i is bit k of qh[l].
Packed PackQ5_K(Rng& r, const int* fixed_sc, const int* fixed_mn) {
  Packed p{std::vector<uint8_t>(176, 0), {}, {}};
  const HalfValue d = r.Half(), dmin = r.Half();
  Put16(p.bytes, 0, d.bits);
  Put16(p.bytes, 2, dmin.bits);
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = fixed_sc ? fixed_sc[j] : r.Int(0, 63);
    mn[j] = fixed_mn ? fixed_mn[j] : r.Int(0, 63);
  }
  PackScalesK4(p.bytes.data() + 4, sc, mn);
  for (int i = 0; i < 256; ++i) {
    const int q = r.Int(0, 31);
    const int k = i / 32, l = i % 32;
    p.bytes[48 + 32 * (k / 2) + l] |= static_cast<uint8_t>((q & 15) << (4 * (k % 2)));
    p.bytes[16 + l] |= static_cast<uint8_t>((q >> 4) << k);
    p.Add(d.value * sc[k] * q - dmin.value * mn[k], std::abs(d.value * sc[k] * q) + std::abs(dmin.value * mn[k]));
  }
  return p;
}

// Q6_K: ql[128] @0 | qh[64] @128 | int8 scales[16] @192 | fp16 d @208. Element i (q in 0..63):
// h = i/128, k = (i%128)/32, l = i%32; low nibble in ql[64h + l + 32*(k%2)] (high nibble when
// k >= 2), top two bits at bits 2k of qh[32h + l]. value = d*scales[i/16]*(q-32).
Packed PackQ6_K(Rng& r) {
  Packed p{std::vector<uint8_t>(210, 0), {}, {}};
  const HalfValue d = r.Half();
  Put16(p.bytes, 208, d.bits);
  int sc[16];
  for (int g = 0; g < 16; ++g) {
    sc[g] = r.Int(-128, 127);
    p.bytes[192 + g] = static_cast<uint8_t>(static_cast<int8_t>(sc[g]));
  }
  for (int i = 0; i < 256; ++i) {
    const int q = r.Int(0, 63);
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    p.bytes[64 * h + l + 32 * (k % 2)] |= static_cast<uint8_t>((q & 15) << (4 * (k / 2)));
    p.bytes[128 + 32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
    p.Add(d.value * sc[i / 16] * (q - 32), std::abs(d.value * sc[i / 16] * (q - 32)));
  }
  return p;
}

// Packs `blocks` blocks with `pack`, decodes them all in one call and compares.
template <typename PackFn>
void CheckType(uint32_t type, int block_elements, int blocks, PackFn pack) {
  std::vector<uint8_t> bytes;
  std::vector<double> expected, mag;
  for (int b = 0; b < blocks; ++b) {
    Packed p = pack(b);
    bytes.insert(bytes.end(), p.bytes.begin(), p.bytes.end());
    expected.insert(expected.end(), p.expected.begin(), p.expected.end());
    mag.insert(mag.end(), p.mag.begin(), p.mag.end());
  }
  ASSERT_EQ(expected.size(), static_cast<size_t>(blocks * block_elements));
  auto traits = TraitsOf(type);
  ASSERT_TRUE(traits.ok());
  ASSERT_EQ(bytes.size(), static_cast<size_t>(blocks * traits->block_bytes));
  std::vector<float> got = Decode(type, bytes, expected.size());
  ExpectClose(got, expected, mag, GgmlTypeName(type).c_str());

  // bfloat16 and half outputs round the same values.
  std::vector<uint16_t> bf(expected.size()), h(expected.size());
  ASSERT_TRUE(DequantizeToBFloat16(type, bytes, static_cast<int64_t>(expected.size()), bf.data(), 1).ok());
  ASSERT_TRUE(DequantizeToFloat16(type, bytes, static_cast<int64_t>(expected.size()), h.data(), 1).ok());
  for (size_t i = 0; i < expected.size(); ++i) {
    const float bv = std::bit_cast<float>(static_cast<uint32_t>(bf[i]) << 16);
    ASSERT_LE(std::abs(bv - got[i]), std::abs(got[i]) * 0x1p-8 + 1e-30) << i;
    const float hv = HalfToFloat(h[i]);
    ASSERT_LE(std::abs(hv - got[i]), std::abs(got[i]) * 0x1p-11 + 0x1p-25) << i;
  }
}

TEST(DequantizeTest, Q4_0Packed) {
  Rng r(1);
  CheckType(kQ4_0, 32, 7, [&](int) { return PackQ4_0(r); });
}
TEST(DequantizeTest, Q4_1Packed) {
  Rng r(2);
  CheckType(kQ4_1, 32, 7, [&](int) { return PackQ4_1(r); });
}
TEST(DequantizeTest, Q5_0Packed) {
  Rng r(3);
  CheckType(kQ5_0, 32, 7, [&](int) { return PackQ5_0(r); });
}
TEST(DequantizeTest, Q5_1Packed) {
  Rng r(4);
  CheckType(kQ5_1, 32, 7, [&](int) { return PackQ5_1(r); });
}
TEST(DequantizeTest, Q8_0Packed) {
  Rng r(5);
  CheckType(kQ8_0, 32, 7, [&](int) { return PackQ8_0(r); });
}
TEST(DequantizeTest, Q2_KPacked) {
  Rng r(6);
  CheckType(kQ2_K, 256, 5, [&](int) { return PackQ2_K(r); });
}
TEST(DequantizeTest, Q3_KPacked) {
  Rng r(7);
  // Block 0: scales whose top bits are all set or clear in each of the four 4-scale groups.
  const int fixed[16] = {63, 0, 32, 48, 17, 47, 16, 31, 33, 62, 1, 49, 15, 50, 34, 63};
  CheckType(kQ3_K, 256, 5, [&](int b) { return PackQ3_K(r, b == 0 ? fixed : nullptr); });
}
TEST(DequantizeTest, Q4_KPacked) {
  Rng r(8);
  // Block 0: scales/mins >= 16 in both the j<4 and j>=4 encodings, and zeros.
  const int sc[8] = {63, 17, 0, 48, 63, 33, 16, 47};
  const int mn[8] = {0, 63, 47, 16, 62, 0, 49, 32};
  CheckType(kQ4_K, 256, 5, [&](int b) { return b == 0 ? PackQ4_K(r, sc, mn) : PackQ4_K(r, nullptr, nullptr); });
}
TEST(DequantizeTest, Q5_KPacked) {
  Rng r(9);
  const int sc[8] = {1, 63, 48, 0, 32, 63, 17, 47};
  const int mn[8] = {63, 0, 16, 33, 63, 47, 0, 48};
  CheckType(kQ5_K, 256, 5, [&](int b) { return b == 0 ? PackQ5_K(r, sc, mn) : PackQ5_K(r, nullptr, nullptr); });
}
TEST(DequantizeTest, Q6_KPacked) {
  Rng r(10);
  CheckType(kQ6_K, 256, 5, [&](int) { return PackQ6_K(r); });
}

// One Q4_K block where each sub-block has a distinct, recognisable scale: catches a swapped
// scale/min or sub-block even where the random test's tolerance would not.
TEST(DequantizeTest, Q4_KScaleRouting) {
  std::vector<uint8_t> b(144, 0);
  Put16(b, 0, 0x3C00);  // d = 1
  Put16(b, 2, 0x3C00);  // dmin = 1
  const int sc[8] = {1, 2, 3, 4, 20, 37, 54, 63};
  const int mn[8] = {0, 0, 0, 0, 16, 32, 48, 5};
  PackScalesK4(b.data() + 4, sc, mn);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) b[16 + 32 * c + l] = 0x21;  // even sub-blocks q = 1, odd q = 2
  }
  std::vector<float> y = Decode(kQ4_K, b, 256);
  const double want[8] = {1, 4, 3, 8, 20 - 16, 74 - 32, 54 - 48, 126 - 5};
  for (int k = 0; k < 8; ++k) {
    for (int l = 0; l < 32; ++l) ASSERT_EQ(y[32 * k + l], want[k]) << "sub-block " << k;
  }
}

// ---- Plain types and scalar conversions ------------------------------------------------------

TEST(DequantizeTest, PlainTypes) {
  const float f32[3] = {1.5f, -0.0f, 3.0e38f};
  std::vector<uint8_t> b(12);
  std::memcpy(b.data(), f32, 12);
  std::vector<float> y = Decode(kF32, b, 3);
  EXPECT_EQ(std::memcmp(y.data(), f32, 12), 0);

  std::vector<uint8_t> h;
  for (const HalfValue& v : kHalves) {
    h.push_back(static_cast<uint8_t>(v.bits));
    h.push_back(static_cast<uint8_t>(v.bits >> 8));
  }
  y = Decode(kF16, h, std::size(kHalves));
  for (size_t i = 0; i < std::size(kHalves); ++i) EXPECT_EQ(y[i], kHalves[i].value) << i;

  const uint16_t bf[4] = {0x3F80, 0xC040, 0x0001, 0x7F80};  // 1, -3, 2^-133, inf
  std::vector<uint8_t> bb(8);
  std::memcpy(bb.data(), bf, 8);
  y = Decode(kBF16, bb, 4);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isinf(y[3]));

  // Same-type outputs are copied bit for bit.
  std::vector<uint16_t> out(4);
  ASSERT_TRUE(DequantizeToBFloat16(kBF16, bb, 4, out.data()).ok());
  EXPECT_EQ(std::memcmp(out.data(), bf, 8), 0);
  std::vector<uint16_t> hout(std::size(kHalves));
  ASSERT_TRUE(DequantizeToFloat16(kF16, h, static_cast<int64_t>(hout.size()), hout.data()).ok());
  EXPECT_EQ(std::memcmp(hout.data(), h.data(), h.size()), 0);
}

// Every half bit pattern decodes to (-1)^s * 2^(e-15) * 1.m (normal) or 2^-24 * m (subnormal),
// and encodes back to itself.
TEST(DequantizeTest, HalfExhaustive) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    const float got = HalfToFloat(h);
    if (e == 31) {
      if (m == 0) EXPECT_TRUE(std::isinf(got) && std::signbit(got) == (s != 0)) << bits;
      else EXPECT_TRUE(std::isnan(got)) << bits;
      EXPECT_EQ(FloatToHalf(got) & 0x7c00, 0x7c00);
      if (m != 0) {
        EXPECT_NE(FloatToHalf(got) & 0x3ff, 0);
      } else {
        EXPECT_EQ(FloatToHalf(got), h);
      }
      continue;
    }
    const double mag = e == 0 ? std::ldexp(static_cast<double>(m), -24) : std::ldexp(1024.0 + m, e - 25);
    const double want = s ? -mag : mag;
    ASSERT_EQ(static_cast<double>(got), want) << bits;
    ASSERT_EQ(std::signbit(got), s != 0) << bits;
    ASSERT_EQ(FloatToHalf(got), h) << bits;
  }
}

TEST(DequantizeTest, HalfRounding) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2E66);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // the tie above the largest half goes to inf
  EXPECT_EQ(FloatToHalf(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00);         // tie -> even (down)
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02);     // tie -> even (up)
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);                // tie -> even (zero)
  EXPECT_EQ(FloatToHalf(0x1p-25f + 0x1p-40f), 0x0001);
  EXPECT_EQ(FloatToHalf(1.5f * 0x1p-24f), 0x0002);         // tie between 1 and 2 -> 2
  EXPECT_EQ(FloatToHalf(2.5f * 0x1p-24f), 0x0002);         // tie between 2 and 3 -> 2
  EXPECT_EQ(FloatToHalf(0x1p-14f - 0x1p-25f), 0x0400);     // rounds up into the smallest normal
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(-1e-10f), 0x8000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
}

// bfloat16 reference: the nearer of the two bfloat16 values around x, ties to the even one.
uint16_t RefBF16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint16_t lo = static_cast<uint16_t>(bits >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double dlo = std::abs(static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(lo) << 16)) - x);
  const double dhi = std::abs(static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(hi) << 16)) - x);
  if ((bits & 0xffff) == 0) return lo;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(DequantizeTest, BFloat16Rounding) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(-3.0f), 0xC040);
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f), 0x3F80);      // tie -> even (down)
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * 0x1p-8f), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(FloatToBFloat16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7F80);
  const uint16_t nan = FloatToBFloat16(std::bit_cast<float>(0x7F800001u));  // NaN only in the low bits
  EXPECT_EQ(nan & 0x7F80, 0x7F80);
  EXPECT_NE(nan & 0x007F, 0);
  EXPECT_EQ(BFloat16ToFloat(0x3F80), 1.0f);
  std::mt19937 gen(99);
  for (int i = 0; i < 200000; ++i) {
    float x = std::bit_cast<float>(static_cast<uint32_t>(gen()));
    if (!std::isfinite(x) || std::abs(x) > 3.0e38f) continue;
    ASSERT_EQ(FloatToBFloat16(x), RefBF16(x)) << std::hexfloat << x;
  }
}

// ---- Threads, errors, traits ----------------------------------------------------------------

// Random blocks with sane fp16 scales at the given byte positions.
std::vector<uint8_t> RandomBlocks(uint32_t type, int64_t nblocks, const std::vector<int>& half_at) {
  const int64_t bb = TraitsOf(type)->block_bytes;
  std::vector<uint8_t> b(static_cast<size_t>(nblocks * bb));
  std::mt19937 gen(42);
  for (auto& x : b) x = static_cast<uint8_t>(gen());
  for (int64_t i = 0; i < nblocks; ++i) {
    for (int at : half_at) Put16(b, static_cast<size_t>(i * bb + at), kHalves[gen() % 6].bits);
  }
  return b;
}

TEST(DequantizeTest, ThreadsGiveTheSameResult) {
  struct Case {
    uint32_t type;
    int64_t nblocks;
    std::vector<int> halves;
  };
  const Case cases[] = {{kQ4_K, 4099, {0, 2}}, {kQ8_0, 40001, {0}}, {kQ6_K, 1031, {208}}, {kQ5_1, 33333, {0, 2}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(GgmlTypeName(c.type));
    const std::vector<uint8_t> src = RandomBlocks(c.type, c.nblocks, c.halves);
    const int64_t n = c.nblocks * TraitsOf(c.type)->block_elements;
    ASSERT_GT(n, int64_t{1} << 16);
    std::vector<float> one(n), many(n);
    ASSERT_TRUE(DequantizeToFloat(c.type, src, n, one.data(), 1).ok());
    for (int threads : {0, 2, 3, 7, 64}) {
      std::fill(many.begin(), many.end(), 0.0f);
      ASSERT_TRUE(DequantizeToFloat(c.type, src, n, many.data(), threads).ok());
      ASSERT_EQ(std::memcmp(one.data(), many.data(), n * sizeof(float)), 0) << threads;
    }
    std::vector<uint16_t> bf1(n), bfn(n), h1(n), hn(n);
    ASSERT_TRUE(DequantizeToBFloat16(c.type, src, n, bf1.data(), 1).ok());
    ASSERT_TRUE(DequantizeToBFloat16(c.type, src, n, bfn.data(), 3).ok());
    ASSERT_TRUE(DequantizeToFloat16(c.type, src, n, h1.data(), 1).ok());
    ASSERT_TRUE(DequantizeToFloat16(c.type, src, n, hn.data(), 3).ok());
    EXPECT_EQ(bf1, bfn);
    EXPECT_EQ(h1, hn);
    for (int64_t i = 0; i < n; i += 97) {
      ASSERT_EQ(bf1[i], RefBF16(one[i])) << i;
      if (std::abs(one[i]) < 60000) {
        ASSERT_EQ(HalfToFloat(h1[i]), HalfToFloat(FloatToHalf(one[i]))) << i;
      }
    }
  }
}

TEST(DequantizeTest, UnsupportedTypesNameThemselves) {
  std::vector<uint8_t> src(4096);
  std::vector<float> out(256);
  std::vector<uint16_t> out16(256);
  struct Case {
    uint32_t type;
    const char* name;
    int64_t n;
  };
  for (const Case& c : {Case{kQ8_K, "Q8_K", 256}, Case{kI32, "I32", 4}, Case{kQ8_1, "Q8_1", 32}, Case{kF64, "F64", 4},
                        Case{16, "IQ2_XXS", 256}, Case{kI8, "I8", 4}}) {
    SCOPED_TRACE(c.name);
    EXPECT_FALSE(CanDequantize(c.type));
    Status s = DequantizeToFloat(c.type, src, c.n, out.data());
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
    EXPECT_NE(s.message().find(c.name), std::string::npos) << s.ToString();
    EXPECT_NE(DequantizeToBFloat16(c.type, src, c.n, out16.data()).message().find(c.name), std::string::npos);
    EXPECT_NE(DequantizeToFloat16(c.type, src, c.n, out16.data()).message().find(c.name), std::string::npos);
    EXPECT_EQ(GgmlTypeName(c.type), c.name);
  }
  Status s = DequantizeToFloat(99, src, 32, out.data());
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("99"), std::string::npos) << s.ToString();
  EXPECT_EQ(GgmlTypeName(99), "type 99");
}

TEST(DequantizeTest, ArgumentErrors) {
  std::vector<uint8_t> src(18 * 4);
  std::vector<float> out(128);
  EXPECT_EQ(DequantizeToFloat(kQ4_0, src, 33, out.data()).code(), Code::kInvalidArgument);   // not whole blocks
  EXPECT_EQ(DequantizeToFloat(kQ4_0, src, -32, out.data()).code(), Code::kInvalidArgument);  // negative
  Status s = DequantizeToFloat(kQ4_0, std::span(src).first(18 * 3 + 17), 128, out.data());
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("71 bytes"), std::string::npos) << s.ToString();
  EXPECT_EQ(DequantizeToFloat(kQ4_0, src, 128, nullptr).code(), Code::kInvalidArgument);
  EXPECT_TRUE(DequantizeToFloat(kQ4_0, src, 0, nullptr).ok());
  EXPECT_TRUE(DequantizeToFloat(kQ4_0, src, 128, out.data()).ok());
  // A huge n does not overflow the size check.
  EXPECT_EQ(DequantizeToFloat(kQ4_0, src, int64_t{1} << 62, out.data()).code(), Code::kInvalidArgument);
}

TEST(DequantizeTest, Traits) {
  struct Want {
    uint32_t type;
    int64_t elements, bytes;
  };
  const Want want[] = {{kF32, 1, 4},       {kF16, 1, 2},       {kBF16, 1, 2},     {kQ4_0, 32, 18},
                       {kQ4_1, 32, 20},    {kQ5_0, 32, 22},    {kQ5_1, 32, 24},   {kQ8_0, 32, 34},
                       {kQ8_1, 32, 36},    {kQ2_K, 256, 84},   {kQ3_K, 256, 110}, {kQ4_K, 256, 144},
                       {kQ5_K, 256, 176},  {kQ6_K, 256, 210},  {kQ8_K, 256, 292}, {kI8, 1, 1},
                       {kI16, 1, 2},       {kI32, 1, 4},       {kI64, 1, 8},      {kF64, 1, 8}};
  for (const Want& w : want) {
    auto t = TraitsOf(w.type);
    ASSERT_TRUE(t.ok()) << w.type;
    EXPECT_EQ(t->block_elements, w.elements) << w.type;
    EXPECT_EQ(t->block_bytes, w.bytes) << w.type;
  }
  for (uint32_t type : {kF32, kF16, kBF16, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K}) {
    EXPECT_TRUE(CanDequantize(type)) << type;
  }
  for (uint32_t type : {4u, 5u, 31u, 99u, 0xffffffffu}) {
    auto t = TraitsOf(type);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
    EXPECT_NE(t.status().message().find(std::to_string(type)), std::string::npos);
    EXPECT_FALSE(CanDequantize(type));
  }
}

// ---- The real model -------------------------------------------------------------------------

void ExpectPlausible(const std::vector<float>& v, const char* what) {
  double sum_abs = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    ASSERT_TRUE(std::isfinite(v[i])) << what << " element " << i;
    ASSERT_LT(std::abs(v[i]), 10.0f) << what << " element " << i;
    sum_abs += std::abs(v[i]);
  }
  EXPECT_GT(sum_abs / static_cast<double>(v.size()), 1e-4) << what << " is (nearly) all zeros";
}

TEST(DequantizeTest, SmolLM2Tensors) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  auto r = GgufFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const GgufFile& f = **r;

  // token_embd.weight (Q8_0, {576, 49152}): row 0 is its first 576 elements, 18 blocks.
  const TensorInfo* emb = f.FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  std::vector<float> row(576);
  ASSERT_TRUE(DequantizeToFloat(emb->type, f.TensorData(*emb).first(18 * 34), 576, row.data()).ok());
  ExpectPlausible(row, "token_embd row 0");
  // The last row too, from the end of the tensor's bytes.
  ASSERT_TRUE(DequantizeToFloat(emb->type, f.TensorData(*emb).last(18 * 34), 576, row.data()).ok());
  ExpectPlausible(row, "token_embd last row");

  const TensorInfo* down = f.FindTensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  ASSERT_EQ(down->type, static_cast<uint32_t>(GgmlType::kQ4_1));
  std::vector<float> w(down->n_elements);
  ASSERT_TRUE(DequantizeToFloat(down->type, f.TensorData(*down), static_cast<int64_t>(w.size()), w.data()).ok());
  ExpectPlausible(w, "blk.0.ffn_down.weight");
  std::vector<uint16_t> bf(w.size());
  ASSERT_TRUE(DequantizeToBFloat16(down->type, f.TensorData(*down), static_cast<int64_t>(bf.size()), bf.data()).ok());
  for (size_t i = 0; i < w.size(); i += 7) ASSERT_EQ(bf[i], RefBF16(w[i])) << i;

  // The whole model, as a loader would: every tensor to float on all cores.
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t elements = 0;
  std::vector<float> buf;
  for (const TensorInfo& t : f.tensors()) {
    ASSERT_TRUE(CanDequantize(t.type)) << t.name << " " << GgmlTypeName(t.type);
    buf.resize(t.n_elements);
    ASSERT_TRUE(DequantizeToFloat(t.type, f.TensorData(t), static_cast<int64_t>(t.n_elements), buf.data()).ok()) << t.name;
    elements += t.n_elements;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("SmolLM2: dequantized %zu tensors, %.1fM elements, in %.3f s (%.2f GB/s of float output)\n",
              f.tensors().size(), elements / 1e6, s, elements * 4.0 / s / 1e9);
}

// Throughput on ~50M elements (run with --gtest_also_run_disabled_tests).
TEST(DequantizeTest, DISABLED_Throughput) {
  const int64_t n = 50'000'000 / 256 * 256;
  std::vector<float> out(static_cast<size_t>(n));
  struct Case {
    uint32_t type;
    std::vector<int> halves;
  };
  for (const Case& c : {Case{kQ4_1, {0, 2}}, Case{kQ8_0, {0}}, Case{kQ4_K, {0, 2}}, Case{kQ6_K, {208}}}) {
    const int64_t be = TraitsOf(c.type)->block_elements;
    const std::vector<uint8_t> src = RandomBlocks(c.type, n / be, c.halves);
    for (int threads : {1, 0}) {
      double best = 1e9;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        ASSERT_TRUE(DequantizeToFloat(c.type, src, n, out.data(), threads).ok());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-5s threads=%d: %.1f ms, %.2f GB/s of float output (%.2f GB/s input)\n", GgmlTypeName(c.type).c_str(),
                  threads, best * 1e3, n * 4.0 / best / 1e9, src.size() / best / 1e9);
    }
  }
}

}  // namespace
}  // namespace kvault::gguf

// Dequantizers for ggml block types. Each supported type has one block decoder below, with a
// comment stating its layout (all fields little-endian; "fp16" is IEEE binary16). Decoders
// write the block's elements in order into a float array; the drivers at the bottom split the
// blocks over threads and, for bfloat16/half output, convert through a small float buffer.
//
// Invariant of every decoder: it reads exactly block_bytes bytes at `b` and writes exactly
// block_elements floats at `y`; the driver has checked that `src` holds every block it hands
// out, so no decoder checks bounds.
#include "gguf/dequantize.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "gguf/gguf_file.h"

namespace kvault::gguf {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF blocks are decoded as little-endian");

constexpr int kQK = 32;    // elements in a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 block
constexpr int kQK_K = 256;  // elements in a k-quant super-block

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// binary16 -> binary32, exact. Normal numbers rebias the exponent (15 -> 127); subnormals are
// mantissa * 2^-24, computed in float (exact: at most 10 significant bits).
inline float Half(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  uint32_t bits;
  if (em >= 0x7c00u) {  // inf / NaN: all-ones exponent, mantissa kept (NaN stays NaN)
    bits = sign | 0x7f800000u | ((em & 0x3ffu) << 13);
  } else if (em >= 0x0400u) {  // normal
    bits = sign | ((em << 13) + ((127u - 15u) << 23));
  } else {  // zero or subnormal
    const float mag = static_cast<float>(em) * 0x1p-24f;
    bits = sign | std::bit_cast<uint32_t>(mag);
  }
  return std::bit_cast<float>(bits);
}

inline float BF16(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

inline uint16_t ToBF16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then truncate.
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline uint16_t ToHalf(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // NaN
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (x < 0x38800000u) {  // below 2^-14: a half subnormal (units of 2^-24) or zero
    if (x <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 itself ties to even 0)
    const uint32_t e = x >> 23;  // 102..112
    const uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((x >> 23) - 112u) << 10) | ((x & 0x7fffffu) >> 13);
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<uint16_t>(sign | h);
}

// ---------------------------------------------------------------------------------------------
// Block decoders.

// Q4_0, 32 elements in 18 bytes: fp16 d; 16 bytes of nibbles. Byte j holds element j in its
// low nibble and element j+16 in its high nibble. value = (q - 8) * d.
void DecodeQ4_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// Q4_1, 32 elements in 20 bytes: fp16 d, fp16 m; 16 bytes of nibbles laid out as in Q4_0.
// value = q * d + m.
void DecodeQ4_1(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  const float m = Half(Load16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// The fifth bits of Q5_0/Q5_1 as bytes: byte k of kSpread[v] is 16 when bit k of v is set,
// else 0, so four lookups turn the u32 qh into the 32 values to OR into the low nibbles (and
// the nibble loops vectorize: no per-lane variable shifts).
constexpr auto kSpread = [] {
  std::array<uint64_t, 256> t{};
  for (int v = 0; v < 256; ++v) {
    for (int k = 0; k < 8; ++k) {
      if (v & (1 << k)) t[v] |= uint64_t{16} << (8 * k);
    }
  }
  return t;
}();

inline void SpreadHighBits(const uint8_t* qh, uint8_t* high) {
  for (int i = 0; i < 4; ++i) std::memcpy(high + 8 * i, &kSpread[qh[i]], 8);
}

// Q5_0, 32 elements in 22 bytes: fp16 d; u32 qh (bit i is the fifth bit of element i); 16
// bytes of low nibbles laid out as in Q4_0. value = (q - 16) * d with q = nibble | bit << 4.
void DecodeQ5_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  uint8_t high[32];
  SpreadHighBits(b + 2, high);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(((qs[j] & 0x0f) | high[j]) - 16) * d;
    y[j + 16] = static_cast<float>(((qs[j] >> 4) | high[j + 16]) - 16) * d;
  }
}

// Q5_1, 32 elements in 24 bytes: fp16 d, fp16 m; u32 qh; 16 bytes of low nibbles (as Q5_0).
// value = q * d + m.
void DecodeQ5_1(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  const float m = Half(Load16(b + 2));
  uint8_t high[32];
  SpreadHighBits(b + 4, high);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) | high[j]) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | high[j + 16]) * d + m;
  }
}

// Q8_0, 32 elements in 34 bytes: fp16 d; 32 int8 q. value = q * d.
void DecodeQ8_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K, 256 elements in 84 bytes: u8 scales[16]; u8 qs[64]; fp16 d; fp16 dmin.
// Sixteen groups g of 16 elements; scales[g] holds the group's scale in its low nibble and its
// min in its high nibble. Group g = 8h + 2j + s (h: 128-element half, j: bit pair, s: which 16
// bytes of the half's 32) takes bits 2j..2j+1 of qs[32h + 16s + l] for its element l.
// value = d * scale * q - dmin * min.
void DecodeQ2_K(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = Half(Load16(b + 80));
  const float dmin = Half(Load16(b + 82));
  for (int g = 0; g < 16; ++g) {
    const int h = g / 8, j = (g % 8) / 2, s = g % 2;
    const float dl = d * static_cast<float>(scales[g] & 0x0f);
    const float ml = dmin * static_cast<float>(scales[g] >> 4);
    const uint8_t* q = qs + 32 * h + 16 * s;
    float* out = y + 16 * g;
    for (int l = 0; l < 16; ++l) out[l] = dl * static_cast<float>((q[l] >> (2 * j)) & 3) - ml;
  }
}

// Q3_K, 256 elements in 110 bytes: u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d.
// Sixteen groups of 16 as in Q2_K (g = 8h + 2j + s): the low two bits of element l of group g
// are bits 2j..2j+1 of qs[32h + 16s + l]; its third bit is bit 4h + j of hmask[16s + l], and a
// clear bit means "subtract 4", so q is in -4..3. The 16 scales are 6-bit, stored with a bias
// of 32: the low four bits of scale g are the low nibble of scales[g] for g < 8 and the high
// nibble of scales[g - 8] for g >= 8; the top two bits are bits 2*(g/4)..+1 of scales[8 + g%4].
// value = d * (scale - 32) * q.
inline int Q3KScale(const uint8_t* sc, int g) {
  const int low = g < 8 ? (sc[g] & 0x0f) : (sc[g - 8] >> 4);
  const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
  return (low | (high << 4)) - 32;
}

void DecodeQ3_K(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* scales = b + 96;
  const float d = Half(Load16(b + 108));
  for (int g = 0; g < 16; ++g) {
    const int h = g / 8, j = (g % 8) / 2, s = g % 2;
    const float dl = d * static_cast<float>(Q3KScale(scales, g));
    const uint8_t* q = qs + 32 * h + 16 * s;
    const uint8_t* hm = hmask + 16 * s;
    const int hbit = 4 * h + j;
    float* out = y + 16 * g;
    for (int l = 0; l < 16; ++l) {
      const int v = ((q[l] >> (2 * j)) & 3) - (((hm[l] >> hbit) & 1) ? 0 : 4);
      out[l] = dl * static_cast<float>(v);
    }
  }
}

// The 8 (scale, min) pairs of Q4_K and Q5_K, 6 bits each, packed into 12 bytes:
//   pairs 0..3: scale = bits 0..5 of byte j, min = bits 0..5 of byte j+4;
//   pairs 4..7: scale = low nibble of byte j+4 | (bits 6..7 of byte j-4) << 4,
//               min   = high nibble of byte j+4 | (bits 6..7 of byte j) << 4.
inline void Q4KScaleMin(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K, 256 elements in 144 bytes: fp16 d; fp16 dmin; u8 scales[12] (Q4KScaleMin); u8 qs[128].
// Eight sub-blocks of 32; sub-blocks 2c and 2c+1 share qs[32c .. 32c+32): the even one takes
// the low nibbles, the odd one the high nibbles. value = d * scale * q - dmin * min.
// Q5_K, 256 elements in 176 bytes: fp16 d; fp16 dmin; u8 scales[12] (Q4KScaleMin); u8 qh[32];
// u8 qs[128]. Low four bits as in Q4_K; the fifth bit of element l of sub-block k is bit k of
// qh[l]. value = d * scale * q - dmin * min, q in 0..31.
// kFifthBit: false decodes Q4_K, true decodes Q5_K.
template <bool kFifthBit>
void DecodeQ4_KOrQ5_K(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b));
  const float dmin = Half(Load16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;  // Q5_K only
  const uint8_t* qs = kFifthBit ? b + 48 : b + 16;
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    Q4KScaleMin(scales, 2 * c, sc0, m0);
    Q4KScaleMin(scales, 2 * c + 1, sc1, m1);
    const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
    const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
    const uint8_t* q = qs + 32 * c;
    const int bit0 = 2 * c, bit1 = 2 * c + 1;
    float* out = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      int v = q[l] & 0x0f;
      if constexpr (kFifthBit) v |= ((qh[l] >> bit0) & 1) << 4;
      out[l] = d0 * static_cast<float>(v) - min0;
    }
    for (int l = 0; l < 32; ++l) {
      int v = q[l] >> 4;
      if constexpr (kFifthBit) v |= ((qh[l] >> bit1) & 1) << 4;
      out[32 + l] = d1 * static_cast<float>(v) - min1;
    }
  }
}

// Q6_K, 256 elements in 210 bytes: u8 ql[128] (low nibbles); u8 qh[64] (high bit pairs);
// int8 scales[16]; fp16 d. Each 128-element half h uses ql[64h..64h+64), qh[32h..32h+32) and
// scales[8h..8h+8). For l in 0..31, the half's elements l, l+32, l+64, l+96 take their low
// nibble from the low nibble of ql[l], low nibble of ql[l+32], high nibble of ql[l], high nibble
// of ql[l+32], and their top two bits from bits 0-1, 2-3, 4-5, 6-7 of qh[l]. Element e of the
// block uses scales[e / 16]. value = d * scale * (q - 32), q in 0..63.
void DecodeQ6_K(const uint8_t* __restrict b, float* __restrict y) {
  const float d = Half(Load16(b + 208));
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
    float* out = y + 128 * h;
    for (int k = 0; k < 4; ++k) {  // quarter k: elements 32k .. 32k+32 of the half
      const uint8_t* lo = ql + 32 * (k & 1);
      const int nibble_shift = 4 * (k >> 1);
      for (int s = 0; s < 2; ++s) {  // two groups of 16 with their own scale
        const float dl = d * static_cast<float>(sc[2 * k + s]);
        for (int i = 0; i < 16; ++i) {
          const int l = 16 * s + i;
          const int q = ((lo[l] >> nibble_shift) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4);
          out[32 * k + l] = dl * static_cast<float>(q - 32);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Type table and drivers.

// Decodes `nblocks` consecutive blocks from `src` into dst.
using RowFn = void (*)(const uint8_t* src, int64_t nblocks, float* dst);

template <void (*Decode)(const uint8_t*, float*), int kElements, int kBytes>
void DecodeBlocks(const uint8_t* src, int64_t nblocks, float* dst) {
  for (int64_t i = 0; i < nblocks; ++i) Decode(src + i * kBytes, dst + i * kElements);
}

void RowF32(const uint8_t* src, int64_t n, float* dst) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
void RowF16(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Half(Load16(src + 2 * i));
}
void RowBF16(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = BF16(Load16(src + 2 * i));
}

struct TypeInfo {
  uint32_t type;
  const char* name;
  int64_t block_elements;
  int64_t block_bytes;
  RowFn decode;  // nullptr: known size, no decoder
};

// Numbers as in ggml.h. 4, 5 (Q4_2, Q4_3) and 31-33, 36-38 (the interleaved Q4_0/IQ4_NL
// layouts) were removed from ggml and never appear in GGUF files.
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4, RowF32},
    {1, "F16", 1, 2, RowF16},
    {2, "Q4_0", kQK, 18, DecodeBlocks<DecodeQ4_0, kQK, 18>},
    {3, "Q4_1", kQK, 20, DecodeBlocks<DecodeQ4_1, kQK, 20>},
    {6, "Q5_0", kQK, 22, DecodeBlocks<DecodeQ5_0, kQK, 22>},
    {7, "Q5_1", kQK, 24, DecodeBlocks<DecodeQ5_1, kQK, 24>},
    {8, "Q8_0", kQK, 34, DecodeBlocks<DecodeQ8_0, kQK, 34>},
    {9, "Q8_1", kQK, 36, nullptr},
    {10, "Q2_K", kQK_K, 84, DecodeBlocks<DecodeQ2_K, kQK_K, 84>},
    {11, "Q3_K", kQK_K, 110, DecodeBlocks<DecodeQ3_K, kQK_K, 110>},
    {12, "Q4_K", kQK_K, 144, DecodeBlocks<DecodeQ4_KOrQ5_K<false>, kQK_K, 144>},
    {13, "Q5_K", kQK_K, 176, DecodeBlocks<DecodeQ4_KOrQ5_K<true>, kQK_K, 176>},
    {14, "Q6_K", kQK_K, 210, DecodeBlocks<DecodeQ6_K, kQK_K, 210>},
    {15, "Q8_K", kQK_K, 292, nullptr},
    {16, "IQ2_XXS", kQK_K, 66, nullptr},
    {17, "IQ2_XS", kQK_K, 74, nullptr},
    {18, "IQ3_XXS", kQK_K, 98, nullptr},
    {19, "IQ1_S", kQK_K, 50, nullptr},
    {20, "IQ4_NL", kQK, 18, nullptr},
    {21, "IQ3_S", kQK_K, 110, nullptr},
    {22, "IQ2_S", kQK_K, 82, nullptr},
    {23, "IQ4_XS", kQK_K, 136, nullptr},
    {24, "I8", 1, 1, nullptr},
    {25, "I16", 1, 2, nullptr},
    {26, "I32", 1, 4, nullptr},
    {27, "I64", 1, 8, nullptr},
    {28, "F64", 1, 8, nullptr},
    {29, "IQ1_M", kQK_K, 56, nullptr},
    {30, "BF16", 1, 2, RowBF16},
    {34, "TQ1_0", kQK_K, 54, nullptr},
    {35, "TQ2_0", kQK_K, 66, nullptr},
    {39, "MXFP4", kQK, 17, nullptr},
};

const TypeInfo* FindType(uint32_t type) {
  for (const TypeInfo& t : kTypes) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

std::string SupportedList() {
  std::string s;
  for (const TypeInfo& t : kTypes) {
    if (t.decode == nullptr) continue;
    if (!s.empty()) s += ", ";
    s += t.name;
  }
  return s;
}

// Elements per work unit for the bfloat16/half paths' float buffer: a whole number of blocks
// of every type (256 divides it).
constexpr int64_t kChunkElements = 4096;
// Below this many elements a call runs on the calling thread only.
constexpr int64_t kParallelThreshold = int64_t{1} << 16;
// Each extra thread gets at least this many elements.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;

// Runs fn(first_block, end_block) over [0, nblocks) split into contiguous ranges, one per
// thread; the calling thread takes the last range. If a thread cannot be started, the calling
// thread does that range itself.
template <typename Fn>
void ForBlockRanges(int64_t nblocks, int64_t block_elements, int threads, const Fn& fn) {
  const int64_t n = nblocks * block_elements;
  int64_t t = threads > 0 ? threads : static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  if (n <= kParallelThreshold) t = 1;
  t = std::clamp<int64_t>(std::min(t, n / kMinElementsPerThread), 1, nblocks > 0 ? nblocks : 1);
  if (t == 1) {
    fn(int64_t{0}, nblocks);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(t - 1));
  const int64_t per = nblocks / t, extra = nblocks % t;
  int64_t begin = 0;
  for (int64_t i = 0; i < t; ++i) {
    const int64_t end = begin + per + (i < extra ? 1 : 0);
    if (i + 1 == t) {
      fn(begin, end);
    } else {
      try {
        workers.emplace_back([&fn, begin, end] { fn(begin, end); });
      } catch (const std::system_error&) {
        fn(begin, end);
      }
    }
    begin = end;
  }
  for (std::thread& w : workers) w.join();
}

// Checks the arguments shared by every DequantizeTo* and returns the type's entry.
Result<const TypeInfo*> Check(uint32_t type, std::span<const uint8_t> src, int64_t n, const void* dst) {
  const TypeInfo* info = FindType(type);
  if (info == nullptr) return Status::InvalidArgument("gguf: ggml type " + std::to_string(type) + " is unknown to kvault");
  if (info->decode == nullptr) {
    return Status::InvalidArgument(std::string("gguf: cannot dequantize ") + info->name + " tensors (kvault decodes " +
                                   SupportedList() + ")");
  }
  if (n < 0 || n % info->block_elements != 0) {
    return Status::InvalidArgument("gguf: " + std::to_string(n) + " elements of " + info->name +
                                   " is not a whole number of " + std::to_string(info->block_elements) + "-element blocks");
  }
  const int64_t nblocks = n / info->block_elements;
  if (static_cast<uint64_t>(nblocks) > src.size() / static_cast<uint64_t>(info->block_bytes)) {
    return Status::InvalidArgument("gguf: " + std::to_string(n) + " elements of " + info->name + " need " +
                                   std::to_string(nblocks) + " blocks of " + std::to_string(info->block_bytes) +
                                   " bytes, but only " + std::to_string(src.size()) + " bytes were given");
  }
  if (n > 0 && dst == nullptr) return Status::InvalidArgument("gguf: null output for dequantization");
  return info;
}

// Decodes through a float buffer and converts each value with Convert.
template <uint16_t (*Convert)(float)>
void DecodeConverted(const TypeInfo& info, const uint8_t* src, int64_t nblocks, uint16_t* dst, int threads) {
  const int64_t blocks_per_chunk = kChunkElements / info.block_elements;
  ForBlockRanges(nblocks, info.block_elements, threads, [&](int64_t first, int64_t end) {
    float buffer[kChunkElements];
    for (int64_t b = first; b < end; b += blocks_per_chunk) {
      const int64_t count = std::min(blocks_per_chunk, end - b);
      info.decode(src + b * info.block_bytes, count, buffer);
      uint16_t* out = dst + b * info.block_elements;
      const int64_t elements = count * info.block_elements;
      for (int64_t i = 0; i < elements; ++i) out[i] = Convert(buffer[i]);
    }
  });
}

// Copies 16-bit elements unchanged (a BF16 source to bfloat16, an F16 source to half).
void Copy16(const uint8_t* src, int64_t n, uint16_t* dst, int threads) {
  ForBlockRanges(n, 1, threads, [&](int64_t first, int64_t end) {
    std::memcpy(dst + first, src + 2 * first, static_cast<size_t>(end - first) * 2);
  });
}

}  // namespace

std::string GgmlTypeName(uint32_t type) {  // declared in gguf_file.h; kept next to the table
  const TypeInfo* info = FindType(type);
  return info != nullptr ? info->name : "type " + std::to_string(type);
}

Result<BlockTraits> TraitsOf(uint32_t type) {
  const TypeInfo* info = FindType(type);
  if (info == nullptr) return Status::InvalidArgument("gguf: ggml type " + std::to_string(type) + " is unknown to kvault");
  return BlockTraits{info->block_elements, info->block_bytes};
}

bool CanDequantize(uint32_t type) {
  const TypeInfo* info = FindType(type);
  return info != nullptr && info->decode != nullptr;
}

Status DequantizeToFloat(uint32_t type, std::span<const uint8_t> src, int64_t n, float* dst, int threads) {
  Result<const TypeInfo*> checked = Check(type, src, n, dst);
  if (!checked.ok()) return checked.status();
  const TypeInfo& info = **checked;
  ForBlockRanges(n / info.block_elements, info.block_elements, threads, [&](int64_t first, int64_t end) {
    info.decode(src.data() + first * info.block_bytes, end - first, dst + first * info.block_elements);
  });
  return Status::OK();
}

namespace {

// The 16-bit targets: a tensor already in the target type is copied; others decode per block.
template <auto kConvert>
Status DequantizeTo16(GgmlType same, uint32_t type, std::span<const uint8_t> src, int64_t n, uint16_t* dst,
                      int threads) {
  Result<const TypeInfo*> checked = Check(type, src, n, dst);
  if (!checked.ok()) return checked.status();
  const TypeInfo& info = **checked;
  if (type == static_cast<uint32_t>(same)) {
    Copy16(src.data(), n, dst, threads);
  } else {
    DecodeConverted<kConvert>(info, src.data(), n / info.block_elements, dst, threads);
  }
  return Status::OK();
}

}  // namespace

Status DequantizeToBFloat16(uint32_t type, std::span<const uint8_t> src, int64_t n, uint16_t* dst, int threads) {
  return DequantizeTo16<ToBF16>(GgmlType::kBF16, type, src, n, dst, threads);
}

Status DequantizeToFloat16(uint32_t type, std::span<const uint8_t> src, int64_t n, uint16_t* dst, int threads) {
  return DequantizeTo16<ToHalf>(GgmlType::kF16, type, src, n, dst, threads);
}

float HalfToFloat(uint16_t h) { return Half(h); }
float BFloat16ToFloat(uint16_t b) { return BF16(b); }
uint16_t FloatToHalf(float f) { return ToHalf(f); }
uint16_t FloatToBFloat16(float f) { return ToBF16(f); }

}  // namespace kvault::gguf

// The kernels of LlamaModel's CPU path (a CPU device, float32 or bfloat16; cpu_forward.cc).
//
// Element type: every kernel is a template over T = float or bf16 (c10::BFloat16), the
// model's dtype; instantiated for those two only. Arithmetic is in fp32. Rounding follows the
// LibTorch ops each kernel replaces: a value that the LibTorch forward (model.cc) stores in
// the model's dtype is rounded to it here too (bf16: round to nearest even).
//
// Instruction sets: each kernel has an AVX-512 version, used when the CPU has
// AVX-512F/BW/VL/DQ and FMA (the bf16 matrix-vector product, SiLU and softmax also use
// AVX512-BF16 when present), and a portable version, used otherwise. KVAULT_NO_AVX512=1 in the
// environment (read once, at the first kernel call) selects the portable versions on any CPU:
// the tests run the model and the Hugging Face parity that way too (model_cpu_test_portable,
// hf_parity_test_portable), and it rules the AVX-512 code out when comparing numbers.
//
// Determinism: the work is split over LibTorch's OpenMP threads (cpu_parallel.h), and every
// output element is computed by one thread in a fixed order, so results do not depend on the
// thread count and repeat bit for bit on the same CPU and instruction set.
//
// Thread-safety: kernels keep no state between calls (one thread_local scratch buffer in the
// softmax); concurrent calls on disjoint outputs are safe. Inputs must not change during a call.
// Layouts: row-major and contiguous unless a stride is given; "D" is the head dimension.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

namespace kvault::engine::cpu {

using bf16 = c10::BFloat16;

// Whether the AVX-512 (and AVX512-BF16) kernels run: the CPU supports them and
// KVAULT_NO_AVX512 is unset. Computed once.
bool HasAvx512();
bool HasAvx512Bf16();

// RMSNorm of `rows` rows of n: out[r] = w * T(x[r] * rsqrt(mean(x[r]^2) + eps)).
// x, out: [rows, n] (may not alias); w: [n].
template <class T>
void RmsNorm(const T* x, const T* w, int64_t rows, int64_t n, float eps, T* out);

// out[r] = T(SiLU(gate[r])) * up[r], with gate and up side by side in each row of gate_up:
// gate_up [rows, 2 f] (gate = columns [0, f), up = [f, 2 f)); out [rows, f].
template <class T>
void SiluMul(const T* gate_up, int64_t rows, int64_t f, T* out);

// y[r] = T(x[r] W^T), then (+ bias) rounded to T, then (+ residual[r]): linear() then an
// add, for a few rows of x (decode, the last position's logits). W streams from memory once
// per call, with no packing, where a BLAS GEMM would first pack all of it.
struct GemvArgs {
  const void* x;         // [rows, in]
  int64_t rows, in, out;
  const void* w;         // [out, in]
  const void* bias;      // [out], or null
  const void* residual;  // [rows, out], or null
  void* y;               // [rows, out]
};
template <class T>
void Gemv(const GemvArgs& a);

// A piece of a sequence's cached KV: `tokens` consecutive positions, pre-RoPE,
// k and v each [tokens, kv_heads, D] (a page of the KV pool, read in place).
struct KvSpan {
  const void* k;
  const void* v;
  int64_t tokens;
};

// What both forms of attention read: `queries` new tokens at positions [start, start +
// queries), pre-RoPE, and the rotary tables. Grouped-query: head h reads KV head
// h / (heads / kv_heads).
struct AttnQueries {
  const void* q;         // q of query t, head h at q + t * q_stride + h * D (pre-RoPE)
  int64_t q_stride;
  int64_t queries, start, heads, kv_heads, dim;
  const float* cos;      // rotary tables [positions, D / 2], values rounded to T, at least
  const float* sin;      //   start + queries positions
  std::vector<KvSpan> spans;  // the cached KV, consecutive positions from 0 (see each form)
};

// Attention of the queries over the cached KV of positions [0, start + queries) (the new
// tokens' own K and V included: `spans` covers them), with rotary embedding applied on the
// fly to queries and keys (the KV holds pre-RoPE keys). Query t sees keys at positions p
// with lo(t) <= p <= start + t, where lo(t) = start + t - window + 1 with a sliding window,
// else 0.
struct AttnArgs : AttnQueries {
  int64_t window;        // 0: none
  float scale;           // of the scores: 1 / sqrt(D)
  void* out;             // out of query t, head h at out + t * out_stride + h * D
  int64_t out_stride;
};

// The flash form (cpu_attention.cc): online softmax over blocks of 16 keys read straight
// from the spans, each key rotated once for all the queries; nothing gathered. A few queries
// over many keys split the keys into ranges of about 256 (by the key count only) and merge
// the ranges' softmax states. For a few queries (decode); many queries go by
// PackForGemmAttention, two bmm and MaskedSoftmax.
template <class T>
void Attend(const AttnArgs& a);

// The inputs of attention as GEMMs over blocks of `block` queries: writes rotated queries
// q_out [blocks, kv_heads, block * rep, D] (rep = heads / kv_heads; a block's queries of
// one KV head are adjacent rows: row bt * rep + h % rep), rotated keys k_out and values v_out
// [kv_heads, keys_padded, D], positions [0, start + queries) from `spans` (here the cached
// prefix [0, start) only) and from the rows of q (the new tokens: q_stride >= (heads +
// 2 kv_heads) D, each row q | k | v, pre-RoPE). Padding rows are left as they are (the
// caller zeroes them).
struct GemmAttnPack : AttnQueries {
  int64_t block;
  int64_t keys_padded;   // >= start + queries
  void* q_out;
  void* k_out;
  void* v_out;
};
template <class T>
void PackForGemmAttention(const GemmAttnPack& a);

// The masked softmax of one block of attention scores, in place. s: [kv_heads, block * rep,
// keys] as the bmm of PackForGemmAttention's blocks gives it; only the first `rows` queries
// of the block are real (their rows are written; the rest are left as they are). Row j of KV
// head g is query qpos0 + j / rep; its scores are multiplied by `scale`, those of keys outside
// [lo, qpos] (lo as in AttnArgs) become 0, the rest their softmax in fp32 rounded to T.
template <class T>
void MaskedSoftmax(T* s, int64_t kv_heads, int64_t block, int64_t rows, int64_t rep, int64_t keys, int64_t qpos0,
                   int64_t window, float scale);

}  // namespace kvault::engine::cpu

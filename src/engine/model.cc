#include "engine/model.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <type_traits>

namespace kvault::engine {
namespace {

using Clock = std::chrono::steady_clock;

thread_local ForwardProfile* t_profile = nullptr;

double Categorized(const ForwardProfile& p) {
  return p.gemm_ms + p.lm_head_ms + p.attention_ms + p.rope_ms + p.norm_ms + p.kv_ms + p.kv_wait_ms;
}

// Adds its lifetime to one field of this thread's profile (nothing when none is active).
class Section {
 public:
  explicit Section(double ForwardProfile::*field) : profile_(t_profile), field_(field) {
    if (profile_ != nullptr) start_ = Clock::now();
  }
  ~Section() {
    if (profile_ != nullptr) profile_->*field_ += std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
  }
  Section(const Section&) = delete;
  Section& operator=(const Section&) = delete;

 private:
  ForwardProfile* profile_;
  double ForwardProfile::*field_;
  Clock::time_point start_;
};

// A whole Forward/DecodeBatch call: what no Section claimed goes to other_ms.
class CallSection {
 public:
  CallSection() : profile_(t_profile) {
    if (profile_ != nullptr) {
      start_ = Clock::now();
      claimed_ = Categorized(*profile_);
    }
  }
  ~CallSection() {
    if (profile_ == nullptr) return;
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
    profile_->total_ms += ms;
    profile_->other_ms += ms - (Categorized(*profile_) - claimed_);
    ++profile_->calls;
  }
  CallSection(const CallSection&) = delete;
  CallSection& operator=(const CallSection&) = delete;

 private:
  ForwardProfile* profile_;
  Clock::time_point start_;
  double claimed_ = 0;
};

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {}) {
  return b.defined() ? torch::nn::functional::linear(x, w, b) : torch::nn::functional::linear(x, w);
}

// Per-layer KV of one sequence in plain growing tensors: ForwardNoCache's cache.
class ContiguousKv final : public KvAccess {
 public:
  explicit ContiguousKv(int64_t layers) : k_(layers), v_(layers) {}
  void Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) override {
    k_[layer] = k_[layer].defined() ? torch::cat({k_[layer].narrow(0, 0, start), k}) : k;
    v_[layer] = v_[layer].defined() ? torch::cat({v_[layer].narrow(0, 0, start), v}) : v;
  }
  std::pair<torch::Tensor, torch::Tensor> Gather(int64_t layer, int64_t end) override {
    return {k_[layer].narrow(0, 0, end), v_[layer].narrow(0, 0, end)};
  }

 private:
  std::vector<torch::Tensor> k_, v_;
};

// Hugging Face's inverse frequencies, in float32 as transformers computes them, with
// "linear" or "llama3" scaling applied.
torch::Tensor InverseFrequencies(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  auto exponents = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32) / static_cast<float>(d);
  auto inv = 1.0 / torch::pow(torch::tensor(static_cast<float>(c.rope_theta)), exponents);
  const RopeScaling& s = c.rope_scaling;
  if (!s.freq_factors.empty()) {
    RopeScaling plain = s;
    plain.freq_factors.clear();
    ModelConfig without = c;
    without.rope_scaling = plain;
    return InverseFrequencies(without) / torch::tensor(s.freq_factors, torch::kFloat64).to(torch::kFloat32);
  }
  if (s.type == "linear") return inv / s.factor;
  if (s.type != "llama3") return inv;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = old_len / s.low_freq_factor;
  const double high_wavelen = old_len / s.high_freq_factor;
  auto wavelen = 2 * M_PI / inv;
  auto scaled = torch::where(wavelen > low_wavelen, inv / s.factor, inv);
  auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  auto medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
  return torch::where(medium, smoothed, scaled);
}

// ---------------------------------------------------------------------------------------
// CPU kernels of the CPU path (LlamaModel on a CPU device in float32 or bfloat16).
//
// Each kernel has an AVX-512 version (used when the CPU has AVX-512F/BW/VL/DQ; the bf16
// matrix-vector product also uses AVX512-BF16 when present) and a portable one. Every output
// element is computed by one thread in a fixed order, so results do not depend on the thread
// count and repeat bit for bit. Rounding follows the LibTorch ops they replace: a value that
// the reference stores in the model's dtype is rounded to it (bf16: round to nearest even).
// ---------------------------------------------------------------------------------------
namespace cpu {

using bf16 = c10::BFloat16;

// GCC 12's AVX-512 headers leave the pass-through operand of unmasked conversions undefined
// on purpose (_mm512_undefined_*), which -Wmaybe-uninitialized reports at every use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define KVAULT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define KVAULT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

bool HasAvx512() {
  // KVAULT_NO_AVX512=1 runs the portable kernels (the tests cover them this way).
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

// --- threads ---------------------------------------------------------------------------------
// at::parallel_for is a template that runs in parallel only where the caller is compiled with
// OpenMP (ATen/ParallelOpenMP.h); this file is not. ParallelFor runs on the same OpenMP
// (libgomp) thread pool as LibTorch's own kernels, entered through libgomp's entry point for
// `#pragma omp parallel`, found at run time: no second pool competing for the cores. Where
// there is no libgomp in the process (or one thread), it runs inline. The split of [begin,
// end) depends only on the thread count, and every output element is computed by one thread.
struct OmpApi {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
};
const OmpApi& Omp() {
  static const OmpApi api = [] {
    OmpApi a;
    a.parallel = reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    a.thread_num = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    if (a.parallel == nullptr || a.thread_num == nullptr) a = OmpApi{};
    return a;
  }();
  return api;
}

template <class Fn>
struct ParallelJob {
  const Fn* fn;
  int64_t begin, end, chunk;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
  static void Run(void* p) {
    auto* job = static_cast<ParallelJob*>(p);
    const int64_t b = job->begin + Omp().thread_num() * job->chunk;
    if (b >= job->end) return;
    try {
      (*job->fn)(b, std::min(job->end, b + job->chunk));
    } catch (...) {
      if (!job->failed.test_and_set()) job->error = std::current_exception();
    }
  }
};

template <class Fn>
void ParallelFor(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / std::max<int64_t>(1, grain));
  if (threads <= 1 || Omp().parallel == nullptr || at::in_parallel_region()) {
    fn(begin, end);
    return;
  }
  ParallelJob<Fn> job;
  job.fn = &fn;
  job.begin = begin;
  job.end = end;
  job.chunk = (n + threads - 1) / threads;
  Omp().parallel(&ParallelJob<Fn>::Run, &job, static_cast<unsigned>(threads), 0);
  if (job.error) std::rethrow_exception(job.error);
}

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

// --- AVX-512 helpers -----------------------------------------------------------------------
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
KVAULT_AVX512 inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

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

// Lane j = the sum of the 16 lanes of v[j]: 16 dot products finished at once.
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

// With AVX512-BF16, rounding to bf16 is one instruction (vcvtneps2bf16: round to nearest
// even, as c10::BFloat16, except that denormals flush to zero) instead of eight: the two
// elementwise kernels that write the most bf16 values (SiLU, softmax) have a version built
// for it. Their bodies are written once, as macros over the store and round operations.
KVAULT_AVX512BF16 inline __m256i ToBf16BitsNe(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
KVAULT_AVX512BF16 inline void StoreMaskNe(bf16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(p), m, ToBf16BitsNe(v));
}
KVAULT_AVX512BF16 inline __m512 RoundNe(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ToBf16BitsNe(v)), 16));
}

// --- SiLU(gate) * up, gate and up side by side in each row of `gu` ------------------------
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
struct GemvArgs {
  const void* x;
  int64_t rows, in, out;
  const void* w;
  const void* bias;      // may be null
  const void* residual;  // may be null
  void* y;
};

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
struct KvSpan {
  const void* k;  // [tokens, kv_heads, D], pre-RoPE
  const void* v;
  int64_t tokens;
};

struct AttnArgs {
  const void* q;         // q of query t, head h at q + t * q_stride + h * D (pre-RoPE)
  int64_t q_stride;
  int64_t queries, start, heads, kv_heads, dim;
  int64_t window;        // 0: none
  float scale;
  const float* cos;      // [positions, D/2]
  const float* sin;
  std::vector<KvSpan> spans;  // consecutive positions from 0
  void* out;             // out of query t, head h at out + t * out_stride + h * D
  int64_t out_stride;
};

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

// --- masked softmax of a block of scores, in place ------------------------------------------
// s: [kv_heads, rows * rep, keys] (rows are queries b0.. of the pass, rep heads each), scaled
// by `scale`; query t sees keys [lo(t), start + t]; the rest become 0. Softmax in fp32, the
// probabilities rounded to T.
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
// s: [kv_heads, block * rep, keys]; only the first `rows` queries of the block are real.
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

#pragma GCC diagnostic pop

}  // namespace cpu

}  // namespace

ForwardProfile& ForwardProfile::operator+=(const ForwardProfile& o) {
  gemm_ms += o.gemm_ms;
  lm_head_ms += o.lm_head_ms;
  attention_ms += o.attention_ms;
  rope_ms += o.rope_ms;
  norm_ms += o.norm_ms;
  kv_ms += o.kv_ms;
  kv_wait_ms += o.kv_wait_ms;
  other_ms += o.other_ms;
  total_ms += o.total_ms;
  calls += o.calls;
  return *this;
}

ProfileScope::ProfileScope(ForwardProfile* profile) : previous_(t_profile) { t_profile = profile; }
ProfileScope::~ProfileScope() { t_profile = previous_; }

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, torch::Device device)
    : config_(std::move(config)), weights_(ToDevice(std::move(weights), device)), device_(device) {
  inv_freq_ = InverseFrequencies(config_).to(torch::kFloat32).to(device_);
  const auto dt = dtype();
  cpu_path_ = device_.is_cpu() && (dt == torch::kFloat32 || dt == torch::kBFloat16) && config_.head_dim % 2 == 0 &&
              config_.num_heads % config_.num_kv_heads == 0;
  if (!cpu_path_) return;
  // Fused projections: q, k, v as one [(H + 2 KV) D, hidden] matrix and gate, up as one
  // [2 FFN, hidden], so that each runs as one GEMM. The layer's own tensors become views of
  // them: the same values (the fingerprint, computed from them at load, names the same
  // weights), no second copy in memory.
  torch::NoGradGuard no_grad;
  for (LayerWeights& w : weights_.layers) {
    FusedLayer f;
    const int64_t qd = w.q_proj.size(0), kd = w.k_proj.size(0), vd = w.v_proj.size(0);
    f.qkv = torch::cat({w.q_proj, w.k_proj, w.v_proj}).contiguous();
    w.q_proj = f.qkv.narrow(0, 0, qd);
    w.k_proj = f.qkv.narrow(0, qd, kd);
    w.v_proj = f.qkv.narrow(0, qd + kd, vd);
    if (w.q_bias.defined()) {
      f.qkv_bias = torch::cat({w.q_bias, w.k_bias, w.v_bias}).contiguous();
      w.q_bias = f.qkv_bias.narrow(0, 0, qd);
      w.k_bias = f.qkv_bias.narrow(0, qd, kd);
      w.v_bias = f.qkv_bias.narrow(0, qd + kd, vd);
    }
    const int64_t ffn = w.gate_proj.size(0);
    f.gate_up = torch::cat({w.gate_proj, w.up_proj}).contiguous();
    w.gate_proj = f.gate_up.narrow(0, 0, ffn);
    w.up_proj = f.gate_up.narrow(0, ffn, w.up_proj.size(0));
    w.o_proj = w.o_proj.contiguous();
    w.down_proj = w.down_proj.contiguous();
    w.input_norm = w.input_norm.contiguous();
    w.post_norm = w.post_norm.contiguous();
    fused_.push_back(std::move(f));
  }
  const bool tied = weights_.lm_head.is_same(weights_.embed);
  weights_.embed = weights_.embed.contiguous();
  weights_.lm_head = tied ? weights_.embed : weights_.lm_head.contiguous();
  weights_.final_norm = weights_.final_norm.contiguous();
}

torch::Tensor LlamaModel::RmsNorm(const torch::Tensor& x, const torch::Tensor& w) const {
  Section timed(&ForwardProfile::norm_ms);
  auto xf = x.to(torch::kFloat32);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return w * (xf * torch::rsqrt(var + config_.rms_norm_eps)).to(x.scalar_type());
}

LlamaModel::RopeTables LlamaModel::Rope(const torch::Tensor& positions) const {
  Section timed(&ForwardProfile::rope_ms);
  auto freqs = positions.to(torch::kFloat32).unsqueeze(1) * inv_freq_.unsqueeze(0);  // [T, D/2]
  auto emb = torch::cat({freqs, freqs}, -1);                                          // [T, D]
  return {emb.cos().to(dtype()).unsqueeze(1), emb.sin().to(dtype()).unsqueeze(1)};
}

torch::Tensor LlamaModel::Rotate(const torch::Tensor& x, const RopeTables& r) const {
  Section timed(&ForwardProfile::rope_ms);
  const int64_t half = config_.head_dim / 2;
  auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * r.cos + rotated * r.sin;
}

torch::Tensor LlamaModel::ApplyRope(const torch::Tensor& x, const torch::Tensor& positions) const {
  torch::NoGradGuard no_grad;
  return Rotate(x, Rope(positions.to(device_)));
}

torch::Tensor LlamaModel::Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    int64_t start) const {
  Section timed(&ForwardProfile::attention_ms);
  const int64_t t = q.size(0), n = k.size(0), heads = q.size(1), d = q.size(2);
  const int64_t rep = heads / k.size(1);
  auto kk = rep == 1 ? k : k.repeat_interleave(rep, 1);
  auto vv = rep == 1 ? v : v.repeat_interleave(rep, 1);
  auto qh = q.transpose(0, 1);   // [H, T, D]
  auto kh = kk.transpose(0, 1);  // [H, N, D]
  auto vh = vv.transpose(0, 1);
  // Query t (at position start + t) sees keys at positions <= start + t (and, with a sliding
  // window, > start + t - window).
  torch::Tensor allowed;
  const bool windowed = config_.sliding_window && n > *config_.sliding_window;
#if TORCH_VERSION_MAJOR >= 2
  // A prefill from position 0 is plain causal: the fused (flash) kernel runs with no T x N
  // mask in memory.
  const bool plain_causal = t > 1 && !windowed && start == 0 && t == n;
#else
  const bool plain_causal = false;
#endif
  if ((t > 1 || windowed) && !plain_causal) {
    auto qpos = torch::arange(start, start + t, torch::TensorOptions().dtype(torch::kInt64).device(q.device())).unsqueeze(1);
    auto kpos = torch::arange(0, n, torch::TensorOptions().dtype(torch::kInt64).device(q.device())).unsqueeze(0);
    allowed = kpos <= qpos;
    if (windowed) allowed = allowed & (kpos > qpos - *config_.sliding_window);
  }
  torch::Tensor out;
#if TORCH_VERSION_MAJOR >= 2
  if (plain_causal) {
    out = at::scaled_dot_product_attention(qh, kh, vh, {}, 0.0, /*is_causal=*/true);
  } else {
    out = allowed.defined() ? at::scaled_dot_product_attention(qh, kh, vh, allowed)
                            : at::scaled_dot_product_attention(qh, kh, vh);
  }
#else
  // No fused attention in LibTorch 1.x: blocks of queries, each against only the keys it may
  // see, so the fp32 score matrix stays small (heads x 256 x keys) instead of heads x T x N.
  constexpr int64_t kBlock = 256;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<torch::Tensor> blocks;
  for (int64_t b0 = 0; b0 < t; b0 += kBlock) {
    const int64_t rows = std::min(kBlock, t - b0);
    const int64_t keys = std::min(n, start + b0 + rows);  // causal: later keys are masked anyway
    auto scores = torch::matmul(qh.narrow(1, b0, rows), kh.narrow(1, 0, keys).transpose(1, 2)).to(torch::kFloat32);
    scores.mul_(scale);
    if (allowed.defined()) {
      scores.masked_fill_(allowed.narrow(0, b0, rows).narrow(1, 0, keys).logical_not(),
                          -std::numeric_limits<float>::infinity());
    }
    blocks.push_back(torch::matmul(torch::softmax(scores, -1).to(vh.scalar_type()), vh.narrow(1, 0, keys)));
  }
  out = blocks.size() == 1 ? blocks[0] : torch::cat(blocks, 1);
#endif
  return out.transpose(0, 1).reshape({t, heads * d});
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> LlamaModel::Projections(const LayerWeights& w,
                                                                                const torch::Tensor& h) const {
  const int64_t t = h.size(0), d = config_.head_dim;
  auto x = RmsNorm(h, w.input_norm);
  Section timed(&ForwardProfile::gemm_ms);
  return {Linear(x, w.q_proj, w.q_bias).view({t, config_.num_heads, d}),
          Linear(x, w.k_proj, w.k_bias).view({t, config_.num_kv_heads, d}),
          Linear(x, w.v_proj, w.v_bias).view({t, config_.num_kv_heads, d})};
}

torch::Tensor LlamaModel::Mlp(const LayerWeights& w, const torch::Tensor& x) const {
  torch::Tensor gate, up;
  {
    Section timed(&ForwardProfile::gemm_ms);
    gate = Linear(x, w.gate_proj);
    up = Linear(x, w.up_proj);
  }
  auto act = torch::silu(gate) * up;
  Section timed(&ForwardProfile::gemm_ms);
  return Linear(act, w.down_proj);
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& tokens, int64_t start, KvAccess& kv, bool all_logits) const {
  torch::NoGradGuard no_grad;
  CallSection call;
  if (cpu_path_) return ForwardCpu(tokens, start, kv, all_logits);
  const int64_t t = tokens.size(0);
  auto ids = tokens.to(device_, torch::kInt64);
  auto h = weights_.embed.index_select(0, ids);  // [T, hidden]
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  // Keys are stored before RoPE; both sides are rotated here, at this sequence's positions.
  const RopeTables q_rope = Rope(torch::arange(start, start + t, i64));
  const RopeTables k_rope = Rope(torch::arange(0, start + t, i64));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    {
      Section timed(&ForwardProfile::kv_wait_ms);
      kv.BeforeLayer(l);
    }
    auto [q, k, v] = Projections(w, h);
    {
      Section timed(&ForwardProfile::kv_ms);
      kv.Append(l, start, k, v);
    }
    {
      Section timed(&ForwardProfile::kv_wait_ms);
      kv.AfterLayer(l);
    }
    torch::Tensor keys, values;
    {
      Section timed(&ForwardProfile::kv_ms);
      std::tie(keys, values) = kv.Gather(l, start + t);
    }
    auto a = Attention(Rotate(q, q_rope), Rotate(keys, k_rope), values, start);
    torch::Tensor o;
    {
      Section timed(&ForwardProfile::gemm_ms);
      o = Linear(a, w.o_proj);
    }
    h = h + o;
    h = h + Mlp(w, RmsNorm(h, w.post_norm));
  }
  if (!all_logits) h = h.narrow(0, t - 1, 1);
  auto x = RmsNorm(h, weights_.final_norm);
  Section timed(&ForwardProfile::lm_head_ms);
  return Linear(x, weights_.lm_head).to(torch::kFloat32);
}

torch::Tensor LlamaModel::DecodeBatch(const torch::Tensor& tokens, const std::vector<int64_t>& starts,
                                      const std::vector<KvAccess*>& kv) const {
  torch::NoGradGuard no_grad;
  CallSection call;
  if (cpu_path_) return DecodeBatchCpu(tokens, starts, kv);
  const int64_t b = tokens.size(0);
  auto ids = tokens.to(device_, torch::kInt64);
  auto h = weights_.embed.index_select(0, ids);  // [B, hidden]
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  // Each sequence's rotary tables, once for all layers (as Forward does).
  std::vector<RopeTables> q_rope, k_rope;
  q_rope.reserve(b);
  k_rope.reserve(b);
  for (int64_t i = 0; i < b; ++i) {
    q_rope.push_back(Rope(torch::arange(starts[i], starts[i] + 1, i64)));
    k_rope.push_back(Rope(torch::arange(0, starts[i] + 1, i64)));
  }
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    auto [q, k, v] = Projections(w, h);
    std::vector<torch::Tensor> outs;
    outs.reserve(b);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t pos = starts[i];
      kv[i]->BeforeLayer(l);
      torch::Tensor keys, values;
      {
        Section timed(&ForwardProfile::kv_ms);
        kv[i]->Append(l, pos, k.narrow(0, i, 1), v.narrow(0, i, 1));
      }
      kv[i]->AfterLayer(l);
      {
        Section timed(&ForwardProfile::kv_ms);
        std::tie(keys, values) = kv[i]->Gather(l, pos + 1);
      }
      outs.push_back(Attention(Rotate(q.narrow(0, i, 1), q_rope[i]), Rotate(keys, k_rope[i]), values, pos));
    }
    auto a = torch::cat(outs);
    torch::Tensor o;
    {
      Section timed(&ForwardProfile::gemm_ms);
      o = Linear(a, w.o_proj);
    }
    h = h + o;
    h = h + Mlp(w, RmsNorm(h, w.post_norm));
  }
  auto x = RmsNorm(h, weights_.final_norm);
  Section timed(&ForwardProfile::lm_head_ms);
  return Linear(x, weights_.lm_head).to(torch::kFloat32);
}

// --- the CPU path ---------------------------------------------------------------------------

namespace {

// Dispatches on the model's dtype (float32 or bfloat16 on the CPU path).
template <class Fn>
void ByDtype(torch::ScalarType t, Fn&& fn) {
  if (t == torch::kBFloat16) {
    fn(cpu::bf16{});
  } else {
    fn(float{});
  }
}

// Tuned on a 2-core Sapphire Rapids-class Xeon with SmolLM2-135M (`kvault bench model`).
constexpr int64_t kProjectVectorRows = 8;   // x W^T for up to this many rows: model.cc's kernel
constexpr int64_t kFlashQueriesBf16 = 1;    // attention of up to this many queries: the flash
constexpr int64_t kFlashQueriesF32 = 32;    // kernel; more: GEMMs
constexpr int64_t kScoreBlockBytes = 4 << 20;  // one block of attention scores
constexpr int64_t kMlpRowsBf16 = 512;       // rows per MLP block (bf16)

}  // namespace

std::shared_ptr<const LlamaModel::RopeCache> LlamaModel::RopeFor(int64_t positions) const {
  std::lock_guard<std::mutex> lock(rope_mu_);
  if (rope_ != nullptr && rope_->positions >= positions) return rope_;
  const int64_t cap = std::max<int64_t>({positions, rope_ != nullptr ? 2 * rope_->positions : 0, 4096});
  // The values Rope() gives, in the model's dtype, held as float: [positions, D / 2].
  auto freqs = torch::arange(0, cap, torch::kInt64).to(torch::kFloat32).unsqueeze(1) * inv_freq_.unsqueeze(0);
  auto cache = std::make_shared<RopeCache>();
  cache->cos = freqs.cos().to(dtype()).to(torch::kFloat32).contiguous();
  cache->sin = freqs.sin().to(dtype()).to(torch::kFloat32).contiguous();
  cache->positions = cap;
  rope_ = cache;
  return rope_;
}

torch::Tensor LlamaModel::RmsNormCpu(const torch::Tensor& x, const torch::Tensor& w) const {
  Section timed(&ForwardProfile::norm_ms);
  auto xc = x.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t rows = xc.size(0), n = xc.size(1);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  ByDtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(xc.data_ptr());
    const T* wp = static_cast<const T*>(w.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    cpu::ParallelFor(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) cpu::RmsNormRow(xp + r * n, wp, n, eps, op + r * n);
    });
  });
  return out;
}

torch::Tensor LlamaModel::SiluMulCpu(const torch::Tensor& gu) const {
  const int64_t rows = gu.size(0), f = gu.size(1) / 2;
  auto out = torch::empty({rows, f}, gu.options());
  ByDtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = static_cast<const T*>(gu.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    cpu::ParallelFor(0, rows, std::max<int64_t>(1, 16384 / f), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) cpu::SiluMulRow(g + r * 2 * f, g + r * 2 * f + f, f, op + r * f);
    });
  });
  return out;
}

torch::Tensor LlamaModel::Project(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias,
                                  const torch::Tensor& residual) const {
  const int64_t rows = x.size(0);
  if (rows <= kProjectVectorRows) {
    // A few rows (decode, the last position's logits): a matrix-vector kernel that reads
    // each weight once at memory speed, where a BLAS GEMM would pack the whole matrix first.
    auto xc = x.contiguous();
    auto res = residual.defined() ? residual.contiguous() : residual;
    auto out = torch::empty({rows, w.size(0)}, x.options());
    cpu::GemvArgs a{xc.data_ptr(), rows, w.size(1), w.size(0), w.data_ptr(),
                    bias.defined() ? bias.data_ptr() : nullptr, res.defined() ? res.data_ptr() : nullptr,
                    out.data_ptr()};
    ByDtype(dtype(), [&](auto tag) { cpu::Gemv<decltype(tag)>(a); });
    return out;
  }
  torch::Tensor y;
  const int64_t pad = rows >= 256 ? 64 : 16;
  const int64_t padded = (rows + pad - 1) / pad * pad;
  if (dtype() == torch::kBFloat16 && padded != rows) {
    // oneDNN compiles a kernel per shape, and some row counts run several times slower than
    // their neighbours (1060 x 1536 -> 576: 6x slower than 1072): rows are padded to a
    // multiple of 16 (of 64 from 256 rows on), so that shapes repeat and stay on the fast ones.
    auto xp = torch::empty({padded, x.size(1)}, x.options());
    xp.narrow(0, 0, rows).copy_(x);
    xp.narrow(0, rows, padded - rows).zero_();
    y = Linear(xp, w, bias).narrow(0, 0, rows);
  } else {
    y = Linear(x, w, bias);
  }
  return residual.defined() ? residual + y : y;
}

// Attention of the `t` new queries (in qkv's first H * D columns, pre-RoPE) at positions
// [start, start + t) over the KV of [0, start + t), which `kv` holds (the new tokens' too).
torch::Tensor LlamaModel::AttendCpu(const torch::Tensor& qkv, int64_t start, KvAccess& kv, int64_t layer,
                                    const RopeCache& rope) const {
  const int64_t t = qkv.size(0), heads = config_.num_heads, kvh = config_.num_kv_heads, d = config_.head_dim;
  const int64_t rep = heads / kvh, half = d / 2, n = start + t, width = qkv.size(1);
  const int64_t window = config_.sliding_window ? *config_.sliding_window : 0;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  auto out = torch::empty({t, heads * d}, qkv.options());
  const float* cs = rope.cos.data_ptr<float>();
  const float* sn = rope.sin.data_ptr<float>();
  // Contiguous [tokens, KV, D] pieces of the cached KV of [0, end), no copies where the pool allows.
  auto spans_of = [&](int64_t end, std::vector<torch::Tensor>& keep) {
    std::vector<cpu::KvSpan> spans;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> blocks;
    {
      Section timed(&ForwardProfile::kv_ms);
      blocks = kv.Blocks(layer, end);
    }
    for (auto& [k, v] : blocks) {
      keep.push_back(k.is_contiguous() ? k : k.contiguous());
      keep.push_back(v.is_contiguous() ? v : v.contiguous());
      spans.push_back({keep[keep.size() - 2].data_ptr(), keep.back().data_ptr(), k.size(0)});
    }
    return spans;
  };
  // Few queries: the flash kernel, straight over the pool's pages. More: GEMMs (bf16: oneDNN's
  // AMX kernels beat the flash kernel from 2 queries on; fp32: the two are close up to ~32).
  if (t <= (dtype() == torch::kBFloat16 ? kFlashQueriesBf16 : kFlashQueriesF32)) {
    std::vector<torch::Tensor> keep;
    cpu::AttnArgs a;
    a.spans = spans_of(n, keep);
    Section timed(&ForwardProfile::attention_ms);
    a.q = qkv.data_ptr();
    a.q_stride = width;
    a.queries = t;
    a.start = start;
    a.heads = heads;
    a.kv_heads = kvh;
    a.dim = d;
    a.window = window;
    a.scale = scale;
    a.cos = cs;
    a.sin = sn;
    a.out = out.data_ptr();
    a.out_stride = heads * d;
    ByDtype(dtype(), [&](auto tag) { cpu::Attend<decltype(tag)>(a); });
    return out;
  }
  // Many queries: GEMMs, over blocks of `block` queries, each against the keys it may see
  // (rounded up to 64). Rotated queries [blocks, KV, block * rep, D] (a block's queries of a
  // KV head are adjacent rows), rotated keys and values [KV, n rounded up to 64, D]: the
  // cached prefix from the pool, the new tokens from qkv. Padding rows are zeros. Shapes come
  // from a small set (block, multiples of 64), so oneDNN's JIT kernels are reused across
  // prompt lengths.
  const int64_t target = kScoreBlockBytes / static_cast<int64_t>(qkv.element_size());  // score elements
  const int64_t block = std::min(std::clamp<int64_t>(target / std::max<int64_t>(1, heads * n) / 16 * 16, 16, 1024),
                                 (t + 15) / 16 * 16);
  const int64_t blocks = (t + block - 1) / block;
  const int64_t npad = (n + 63) / 64 * 64;
  auto qr = torch::empty({blocks, kvh, block * rep, d}, qkv.options());
  auto kr = torch::empty({kvh, npad, d}, qkv.options());
  auto vt = torch::empty({kvh, npad, d}, qkv.options());
  {
    std::vector<torch::Tensor> keep;
    std::vector<cpu::KvSpan> spans;
    if (start > 0) spans = spans_of(start, keep);
    Section timed(&ForwardProfile::rope_ms);
    if (blocks * block > t) qr[blocks - 1].narrow(1, (t - (blocks - 1) * block) * rep, (blocks * block - t) * rep).zero_();
    if (npad > n) {
      kr.narrow(1, n, npad - n).zero_();
      vt.narrow(1, n, npad - n).zero_();
    }
    ByDtype(dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* q = static_cast<const T*>(qkv.data_ptr());
      T* qo = static_cast<T*>(qr.data_ptr());
      T* ko = static_cast<T*>(kr.data_ptr());
      T* vo = static_cast<T*>(vt.data_ptr());
      cpu::ParallelFor(0, n, 64, [&](int64_t b, int64_t e) {
        size_t span = 0;
        int64_t first = 0;
        for (int64_t p = b; p < e; ++p) {
          const float* c = cs + p * half;
          const float* s = sn + p * half;
          const T *kp, *vp;
          if (p < start) {
            while (p >= first + spans[span].tokens) first += spans[span++].tokens;
            kp = static_cast<const T*>(spans[span].k) + (p - first) * kvh * d;
            vp = static_cast<const T*>(spans[span].v) + (p - first) * kvh * d;
          } else {
            const int64_t i = p - start, bi = i / block, bt = i % block;
            kp = q + i * width + heads * d;
            vp = q + i * width + (heads + kvh) * d;
            for (int64_t h = 0; h < heads; ++h) {
              cpu::RotateToT(q + i * width + h * d, c, s, half,
                             qo + ((bi * kvh + h / rep) * block * rep + bt * rep + h % rep) * d);
            }
          }
          for (int64_t g = 0; g < kvh; ++g) {
            cpu::RotateToT(kp + g * d, c, s, half, ko + (g * npad + p) * d);
            std::memcpy(vo + (g * npad + p) * d, vp + g * d, sizeof(T) * d);
          }
        }
      });
    });
  }
  Section timed(&ForwardProfile::attention_ms);
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t b0 = bi * block, rows = std::min(block, t - b0);
    const int64_t keys = std::min(npad, (start + b0 + block + 63) / 64 * 64);
    auto qb = qr[bi];  // [KV, block * rep, D]
    auto s = torch::bmm(qb, kr.narrow(1, 0, keys).transpose(1, 2));  // [KV, block * rep, keys]
    ByDtype(dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::MaskedSoftmax(static_cast<T*>(s.data_ptr()), kvh, block, rows, rep, keys, start + b0, window, scale);
    });
    auto o = torch::bmm(s, vt.narrow(1, 0, keys));  // [KV, block * rep, D]
    out.narrow(0, b0, rows).view({rows, kvh, rep, d}).copy_(o.view({kvh, block, rep, d}).narrow(1, 0, rows).permute({1, 0, 2, 3}));
  }
  return out;
}

// h + MLP(RMSNorm(h)).
torch::Tensor LlamaModel::MlpCpu(const LayerWeights& w, const FusedLayer& f, const torch::Tensor& h) const {
  auto x = RmsNormCpu(h, w.post_norm);
  torch::Tensor gu;
  {
    Section timed(&ForwardProfile::gemm_ms);
    gu = Project(x, f.gate_up, {}, {});
  }
  auto act = SiluMulCpu(gu);
  Section timed(&ForwardProfile::gemm_ms);
  return Project(act, w.down_proj, {}, h);
}

torch::Tensor LlamaModel::ForwardCpu(const torch::Tensor& tokens, int64_t start, KvAccess& kv, bool all_logits) const {
  const int64_t t = tokens.size(0), heads = config_.num_heads, kvh = config_.num_kv_heads, d = config_.head_dim;
  auto ids = tokens.to(torch::kCPU, torch::kInt64).contiguous();
  auto h = weights_.embed.index_select(0, ids);  // [T, hidden]
  const auto rope = RopeFor(start + t);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    const FusedLayer& f = fused_[l];
    {
      Section timed(&ForwardProfile::kv_wait_ms);
      kv.BeforeLayer(l);
    }
    auto x = RmsNormCpu(h, w.input_norm);
    torch::Tensor qkv;
    {
      Section timed(&ForwardProfile::gemm_ms);
      qkv = Project(x, f.qkv, f.qkv_bias, {});  // [T, (H + 2 KV) D]
    }
    {
      Section timed(&ForwardProfile::kv_ms);
      kv.Append(l, start, qkv.narrow(1, heads * d, kvh * d).view({t, kvh, d}),
                qkv.narrow(1, (heads + kvh) * d, kvh * d).view({t, kvh, d}));
    }
    {
      Section timed(&ForwardProfile::kv_wait_ms);
      kv.AfterLayer(l);
    }
    auto a = AttendCpu(qkv, start, kv, l, *rope);
    {
      Section timed(&ForwardProfile::gemm_ms);
      h = Project(a, w.o_proj, {}, h);
    }
    // bf16: the MLP a block of rows at a time, so that its [rows, 2 FFN] intermediate stays
    // in cache (fp32: OpenBLAS is faster on the whole).
    const int64_t mlp_rows = dtype() == torch::kBFloat16 ? kMlpRowsBf16 : t;
    if (t <= mlp_rows) {
      h = MlpCpu(w, f, h);
    } else {
      auto next = torch::empty_like(h);
      for (int64_t r0 = 0; r0 < t; r0 += mlp_rows) {
        const int64_t rows = std::min(mlp_rows, t - r0);
        next.narrow(0, r0, rows).copy_(MlpCpu(w, f, h.narrow(0, r0, rows)));
      }
      h = next;
    }
  }
  if (!all_logits) h = h.narrow(0, t - 1, 1);
  auto x = RmsNormCpu(h, weights_.final_norm);
  Section timed(&ForwardProfile::lm_head_ms);
  return Project(x, weights_.lm_head, {}, {}).to(torch::kFloat32);
}

torch::Tensor LlamaModel::DecodeBatchCpu(const torch::Tensor& tokens, const std::vector<int64_t>& starts,
                                         const std::vector<KvAccess*>& kv) const {
  const int64_t b = tokens.size(0), heads = config_.num_heads, kvh = config_.num_kv_heads, d = config_.head_dim;
  auto ids = tokens.to(torch::kCPU, torch::kInt64).contiguous();
  auto h = weights_.embed.index_select(0, ids);  // [B, hidden]
  const auto rope = RopeFor(*std::max_element(starts.begin(), starts.end()) + 1);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    const FusedLayer& f = fused_[l];
    auto x = RmsNormCpu(h, w.input_norm);
    torch::Tensor qkv;
    {
      Section timed(&ForwardProfile::gemm_ms);
      qkv = Project(x, f.qkv, f.qkv_bias, {});
    }
    auto a = torch::empty({b, heads * d}, h.options());
    for (int64_t i = 0; i < b; ++i) {
      {
        Section timed(&ForwardProfile::kv_wait_ms);
        kv[i]->BeforeLayer(l);
      }
      auto row = qkv.narrow(0, i, 1);
      {
        Section timed(&ForwardProfile::kv_ms);
        kv[i]->Append(l, starts[i], row.narrow(1, heads * d, kvh * d).view({1, kvh, d}),
                      row.narrow(1, (heads + kvh) * d, kvh * d).view({1, kvh, d}));
      }
      {
        Section timed(&ForwardProfile::kv_wait_ms);
        kv[i]->AfterLayer(l);
      }
      a.narrow(0, i, 1).copy_(AttendCpu(row, starts[i], *kv[i], l, *rope));
    }
    {
      Section timed(&ForwardProfile::gemm_ms);
      h = Project(a, w.o_proj, {}, h);
    }
    h = MlpCpu(w, f, h);
  }
  auto x = RmsNormCpu(h, weights_.final_norm);
  Section timed(&ForwardProfile::lm_head_ms);
  return Project(x, weights_.lm_head, {}, {}).to(torch::kFloat32);
}

torch::Tensor LlamaModel::ForwardNoCache(const torch::Tensor& tokens) const {
  ContiguousKv kv(config_.num_layers);
  return Forward(tokens, 0, kv, /*all_logits=*/true);
}

}  // namespace kvault::engine

// LlamaModel's CPU path (a CPU device, float32 or bfloat16): fused projections, rotary tables
// computed once, the kernels of cpu_kernels.h (matrix-vector products for a few rows,
// attention over the paged pre-RoPE KV in place, RMSNorm, SiLU) and LibTorch's GEMMs where
// they are faster. model.cc chooses this path (cpu_path_) and holds the LibTorch forward that
// every other device and dtype runs; both give the same results within rounding.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "engine/cpu_kernels.h"
#include "engine/forward_profile.h"
#include "engine/model.h"

namespace kvault::engine {

namespace {

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return b.defined() ? torch::nn::functional::linear(x, w, b) : torch::nn::functional::linear(x, w);
}

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
constexpr int64_t kProjectVectorRows = 8;   // x W^T for up to this many rows: cpu::Gemv
constexpr int64_t kFlashQueriesBf16 = 1;    // attention of up to this many queries: the flash
constexpr int64_t kFlashQueriesF32 = 32;    // kernel; more: GEMMs
constexpr int64_t kScoreBlockBytes = 4 << 20;  // one block of attention scores
constexpr int64_t kMlpRowsBf16 = 512;       // rows per MLP block (bf16)

// `parts` as one tensor of their rows stacked, without a copy when they already are: each
// contiguous, of one dtype and row shape, and each starting where the previous one ends in
// the same storage (a weights image lays q, k, v and gate, up out so; weight_image.h). Then
// the result is a view over that storage; otherwise a new tensor (torch::cat).
torch::Tensor StackRows(const std::vector<torch::Tensor>& parts) {
  bool adjacent = true;
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size() && adjacent; ++i) {
    const torch::Tensor& t = parts[i];
    adjacent = t.is_contiguous() && t.dim() == parts[0].dim() && t.scalar_type() == parts[0].scalar_type() &&
               t.device() == parts[0].device() && t.sizes().slice(1) == parts[0].sizes().slice(1) &&
               t.storage().unsafeGetStorageImpl() == parts[0].storage().unsafeGetStorageImpl();
    if (adjacent && i > 0) {
      const torch::Tensor& prev = parts[i - 1];
      adjacent = static_cast<const char*>(t.data_ptr()) ==
                 static_cast<const char*>(prev.data_ptr()) + prev.numel() * prev.element_size();
    }
    rows += t.size(0);
  }
  if (!adjacent) return torch::cat(parts).contiguous();
  std::vector<int64_t> sizes = parts[0].sizes().vec();
  sizes[0] = rows;
  std::vector<int64_t> strides(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;) strides[d - 1] = strides[d] * sizes[d];
  return parts[0].as_strided(sizes, strides, parts[0].storage_offset());
}

}  // namespace

void LlamaModel::FuseForCpuPath() {
  // Fused projections: q, k, v as one [(H + 2 KV) D, hidden] matrix and gate, up as one
  // [2 FFN, hidden], so that each runs as one GEMM. The layer's own tensors become views of
  // them: the same values (the fingerprint, computed from them at load, names the same
  // weights), no second copy in memory. Weights that already lie back to back (views of a
  // weights image's arena) are fused in place, without copying (StackRows).
  torch::NoGradGuard no_grad;
  for (LayerWeights& w : weights_.layers) {
    FusedLayer f;
    const int64_t qd = w.q_proj.size(0), kd = w.k_proj.size(0), vd = w.v_proj.size(0);
    f.qkv = StackRows({w.q_proj, w.k_proj, w.v_proj});
    w.q_proj = f.qkv.narrow(0, 0, qd);
    w.k_proj = f.qkv.narrow(0, qd, kd);
    w.v_proj = f.qkv.narrow(0, qd + kd, vd);
    if (w.q_bias.defined()) {
      f.qkv_bias = StackRows({w.q_bias, w.k_bias, w.v_bias});
      w.q_bias = f.qkv_bias.narrow(0, 0, qd);
      w.k_bias = f.qkv_bias.narrow(0, qd, kd);
      w.v_bias = f.qkv_bias.narrow(0, qd + kd, vd);
    }
    const int64_t ffn = w.gate_proj.size(0);
    f.gate_up = StackRows({w.gate_proj, w.up_proj});
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
  ProfileSection timed(&ForwardProfile::norm_ms);
  auto xc = x.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t rows = xc.size(0), n = xc.size(1);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  ByDtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::RmsNorm(static_cast<const T*>(xc.data_ptr()), static_cast<const T*>(w.data_ptr()), rows, n, eps,
                 static_cast<T*>(out.data_ptr()));
  });
  return out;
}

torch::Tensor LlamaModel::SiluMulCpu(const torch::Tensor& gu) const {
  const int64_t rows = gu.size(0), f = gu.size(1) / 2;
  auto out = torch::empty({rows, f}, gu.options());
  ByDtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::SiluMul(static_cast<const T*>(gu.data_ptr()), rows, f, static_cast<T*>(out.data_ptr()));
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
  const int64_t rep = heads / kvh, n = start + t, width = qkv.size(1);
  const int64_t window = config_.sliding_window ? *config_.sliding_window : 0;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  auto out = torch::empty({t, heads * d}, qkv.options());
  const float* cs = rope.cos.data_ptr<float>();
  const float* sn = rope.sin.data_ptr<float>();
  // The new queries, the rotary tables, and contiguous [tokens, KV, D] pieces of the cached KV
  // of [0, end), no copies where the pool allows (`keep` holds the pieces).
  auto queries_over = [&](cpu::AttnQueries& in, int64_t end, std::vector<torch::Tensor>& keep) {
    in.q = qkv.data_ptr();
    in.q_stride = width;
    in.queries = t;
    in.start = start;
    in.heads = heads;
    in.kv_heads = kvh;
    in.dim = d;
    in.cos = cs;
    in.sin = sn;
    std::vector<cpu::KvSpan>& spans = in.spans;
    if (end == 0) return;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> blocks;
    {
      ProfileSection timed(&ForwardProfile::kv_ms);
      blocks = kv.Blocks(layer, end);
    }
    for (auto& [k, v] : blocks) {
      keep.push_back(k.is_contiguous() ? k : k.contiguous());
      keep.push_back(v.is_contiguous() ? v : v.contiguous());
      spans.push_back({keep[keep.size() - 2].data_ptr(), keep.back().data_ptr(), k.size(0)});
    }
  };
  // Few queries: the flash kernel, straight over the pool's pages. More: GEMMs (bf16: oneDNN's
  // AMX kernels beat the flash kernel from 2 queries on; fp32: the two are close up to ~32).
  if (t <= (dtype() == torch::kBFloat16 ? kFlashQueriesBf16 : kFlashQueriesF32)) {
    std::vector<torch::Tensor> keep;
    cpu::AttnArgs a;
    queries_over(a, n, keep);
    ProfileSection timed(&ForwardProfile::attention_ms);
    a.window = window;
    a.scale = scale;
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
    cpu::GemmAttnPack pack;
    queries_over(pack, start, keep);
    ProfileSection timed(&ForwardProfile::rope_ms);
    if (blocks * block > t) qr[blocks - 1].narrow(1, (t - (blocks - 1) * block) * rep, (blocks * block - t) * rep).zero_();
    if (npad > n) {
      kr.narrow(1, n, npad - n).zero_();
      vt.narrow(1, n, npad - n).zero_();
    }
    pack.block = block;
    pack.keys_padded = npad;
    pack.q_out = qr.data_ptr();
    pack.k_out = kr.data_ptr();
    pack.v_out = vt.data_ptr();
    ByDtype(dtype(), [&](auto tag) { cpu::PackForGemmAttention<decltype(tag)>(pack); });
  }
  ProfileSection timed(&ForwardProfile::attention_ms);
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
    ProfileSection timed(&ForwardProfile::gemm_ms);
    gu = Project(x, f.gate_up, {}, {});
  }
  auto act = SiluMulCpu(gu);
  ProfileSection timed(&ForwardProfile::gemm_ms);
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
      ProfileSection timed(&ForwardProfile::kv_wait_ms);
      kv.BeforeLayer(l);
    }
    auto x = RmsNormCpu(h, w.input_norm);
    torch::Tensor qkv;
    {
      ProfileSection timed(&ForwardProfile::gemm_ms);
      qkv = Project(x, f.qkv, f.qkv_bias, {});  // [T, (H + 2 KV) D]
    }
    {
      ProfileSection timed(&ForwardProfile::kv_ms);
      kv.Append(l, start, qkv.narrow(1, heads * d, kvh * d).view({t, kvh, d}),
                qkv.narrow(1, (heads + kvh) * d, kvh * d).view({t, kvh, d}));
    }
    {
      ProfileSection timed(&ForwardProfile::kv_wait_ms);
      kv.AfterLayer(l);
    }
    auto a = AttendCpu(qkv, start, kv, l, *rope);
    {
      ProfileSection timed(&ForwardProfile::gemm_ms);
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
  ProfileSection timed(&ForwardProfile::lm_head_ms);
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
      ProfileSection timed(&ForwardProfile::gemm_ms);
      qkv = Project(x, f.qkv, f.qkv_bias, {});
    }
    auto a = torch::empty({b, heads * d}, h.options());
    for (int64_t i = 0; i < b; ++i) {
      {
        ProfileSection timed(&ForwardProfile::kv_wait_ms);
        kv[i]->BeforeLayer(l);
      }
      auto row = qkv.narrow(0, i, 1);
      {
        ProfileSection timed(&ForwardProfile::kv_ms);
        kv[i]->Append(l, starts[i], row.narrow(1, heads * d, kvh * d).view({1, kvh, d}),
                      row.narrow(1, (heads + kvh) * d, kvh * d).view({1, kvh, d}));
      }
      {
        ProfileSection timed(&ForwardProfile::kv_wait_ms);
        kv[i]->AfterLayer(l);
      }
      a.narrow(0, i, 1).copy_(AttendCpu(row, starts[i], *kv[i], l, *rope));
    }
    {
      ProfileSection timed(&ForwardProfile::gemm_ms);
      h = Project(a, w.o_proj, {}, h);
    }
    h = MlpCpu(w, f, h);
  }
  auto x = RmsNormCpu(h, weights_.final_norm);
  ProfileSection timed(&ForwardProfile::lm_head_ms);
  return Project(x, weights_.lm_head, {}, {}).to(torch::kFloat32);
}


}  // namespace kvault::engine

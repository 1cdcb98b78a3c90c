// LlamaModel: the forward pass on LibTorch ops (any device and dtype), and the choice of the
// CPU path (cpu_forward.cc) for a CPU device in float32 or bfloat16.
#include "engine/model.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/forward_profile.h"

namespace kvault::engine {
namespace {

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

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, torch::Device device)
    : config_(std::move(config)), weights_(ToDevice(std::move(weights), device)), device_(device) {
  inv_freq_ = InverseFrequencies(config_).to(torch::kFloat32).to(device_);
  const auto dt = dtype();
  cpu_path_ = device_.is_cpu() && (dt == torch::kFloat32 || dt == torch::kBFloat16) && config_.head_dim % 2 == 0 &&
              config_.num_heads % config_.num_kv_heads == 0;
  if (cpu_path_) FuseForCpuPath();
}

torch::Tensor LlamaModel::RmsNorm(const torch::Tensor& x, const torch::Tensor& w) const {
  ProfileSection timed(&ForwardProfile::norm_ms);
  auto xf = x.to(torch::kFloat32);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return w * (xf * torch::rsqrt(var + config_.rms_norm_eps)).to(x.scalar_type());
}

LlamaModel::RopeTables LlamaModel::Rope(const torch::Tensor& positions) const {
  ProfileSection timed(&ForwardProfile::rope_ms);
  auto freqs = positions.to(torch::kFloat32).unsqueeze(1) * inv_freq_.unsqueeze(0);  // [T, D/2]
  auto emb = torch::cat({freqs, freqs}, -1);                                          // [T, D]
  return {emb.cos().to(dtype()).unsqueeze(1), emb.sin().to(dtype()).unsqueeze(1)};
}

torch::Tensor LlamaModel::Rotate(const torch::Tensor& x, const RopeTables& r) const {
  ProfileSection timed(&ForwardProfile::rope_ms);
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
  ProfileSection timed(&ForwardProfile::attention_ms);
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
  ProfileSection timed(&ForwardProfile::gemm_ms);
  return {Linear(x, w.q_proj, w.q_bias).view({t, config_.num_heads, d}),
          Linear(x, w.k_proj, w.k_bias).view({t, config_.num_kv_heads, d}),
          Linear(x, w.v_proj, w.v_bias).view({t, config_.num_kv_heads, d})};
}

torch::Tensor LlamaModel::Mlp(const LayerWeights& w, const torch::Tensor& x) const {
  torch::Tensor gate, up;
  {
    ProfileSection timed(&ForwardProfile::gemm_ms);
    gate = Linear(x, w.gate_proj);
    up = Linear(x, w.up_proj);
  }
  auto act = torch::silu(gate) * up;
  ProfileSection timed(&ForwardProfile::gemm_ms);
  return Linear(act, w.down_proj);
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& tokens, int64_t start, KvAccess& kv, bool all_logits) const {
  torch::NoGradGuard no_grad;
  ProfiledCall call;
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
      ProfileSection timed(&ForwardProfile::kv_wait_ms);
      kv.BeforeLayer(l);
    }
    auto [q, k, v] = Projections(w, h);
    {
      ProfileSection timed(&ForwardProfile::kv_ms);
      kv.Append(l, start, k, v);
    }
    {
      ProfileSection timed(&ForwardProfile::kv_wait_ms);
      kv.AfterLayer(l);
    }
    torch::Tensor keys, values;
    {
      ProfileSection timed(&ForwardProfile::kv_ms);
      std::tie(keys, values) = kv.Gather(l, start + t);
    }
    auto a = Attention(Rotate(q, q_rope), Rotate(keys, k_rope), values, start);
    torch::Tensor o;
    {
      ProfileSection timed(&ForwardProfile::gemm_ms);
      o = Linear(a, w.o_proj);
    }
    h = h + o;
    h = h + Mlp(w, RmsNorm(h, w.post_norm));
  }
  if (!all_logits) h = h.narrow(0, t - 1, 1);
  auto x = RmsNorm(h, weights_.final_norm);
  ProfileSection timed(&ForwardProfile::lm_head_ms);
  return Linear(x, weights_.lm_head).to(torch::kFloat32);
}

torch::Tensor LlamaModel::DecodeBatch(const torch::Tensor& tokens, const std::vector<int64_t>& starts,
                                      const std::vector<KvAccess*>& kv) const {
  torch::NoGradGuard no_grad;
  ProfiledCall call;
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
        ProfileSection timed(&ForwardProfile::kv_ms);
        kv[i]->Append(l, pos, k.narrow(0, i, 1), v.narrow(0, i, 1));
      }
      kv[i]->AfterLayer(l);
      {
        ProfileSection timed(&ForwardProfile::kv_ms);
        std::tie(keys, values) = kv[i]->Gather(l, pos + 1);
      }
      outs.push_back(Attention(Rotate(q.narrow(0, i, 1), q_rope[i]), Rotate(keys, k_rope[i]), values, pos));
    }
    auto a = torch::cat(outs);
    torch::Tensor o;
    {
      ProfileSection timed(&ForwardProfile::gemm_ms);
      o = Linear(a, w.o_proj);
    }
    h = h + o;
    h = h + Mlp(w, RmsNorm(h, w.post_norm));
  }
  auto x = RmsNorm(h, weights_.final_norm);
  ProfileSection timed(&ForwardProfile::lm_head_ms);
  return Linear(x, weights_.lm_head).to(torch::kFloat32);
}

torch::Tensor LlamaModel::ForwardNoCache(const torch::Tensor& tokens) const {
  ContiguousKv kv(config_.num_layers);
  return Forward(tokens, 0, kv, /*all_logits=*/true);
}

}  // namespace kvault::engine

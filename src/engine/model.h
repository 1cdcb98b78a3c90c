// LlamaModel: the Llama-family forward pass (RMSNorm, RoPE with theta and scaling,
// grouped-query attention, SwiGLU MLP) on LibTorch, CPU or CUDA, fp32 or bf16. model.cc runs
// it with LibTorch ops; on a CPU device in fp32 or bf16 the CPU path (cpu_forward.cc, over the
// kernels of cpu_kernels.h) runs instead, with the same results within rounding.
//
// Keys are handled *before* rotary embedding everywhere outside this class (the KV pool and
// the store hold pre-RoPE K: decoupled positional encoding); RoPE is applied to queries and
// keys at the positions of the current sequence when attention runs.
// Thread-safety: const methods may run concurrently.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "engine/forward_profile.h"  // ForwardProfile, ProfileScope: part of this API
#include "engine/model_config.h"
#include "engine/weights.h"

namespace kvault::engine {

// Per-layer access to a sequence's KV for one forward call. `Append` stores the new tokens'
// pre-RoPE K and V ([T, kv_heads, head_dim]) at positions [start, start + T); `Gather`
// returns pre-RoPE K and V of positions [0, end) as [end, kv_heads, head_dim].
class KvAccess {
 public:
  virtual ~KvAccess() = default;
  virtual void BeforeLayer(int64_t layer) {}  // e.g. wait until the layer's cached KV landed
  virtual void Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) = 0;
  virtual std::pair<torch::Tensor, torch::Tensor> Gather(int64_t layer, int64_t end) = 0;
  // The same K and V as consecutive pieces, each [n_i, kv_heads, head_dim] with sum n_i = end:
  // views of the storage where it allows (the paged pool: one per page), so that attention
  // reads them in place. Default: one Gather.
  virtual std::vector<std::pair<torch::Tensor, torch::Tensor>> Blocks(int64_t layer, int64_t end) {
    return {Gather(layer, end)};
  }
  virtual void AfterLayer(int64_t layer) {}   // e.g. let the saver copy this layer out
};

class LlamaModel {
 public:
  LlamaModel(ModelConfig config, ModelWeights weights, torch::Device device);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return weights_.embed.scalar_type(); }

  // One sequence: runs `tokens` at positions [start, start + T) over the KV of [0, start)
  // that `kv` already holds; returns logits [T, vocab] (fp32) of the positions selected by
  // `all_logits` (every position) or just the last one ([1, vocab]).
  torch::Tensor Forward(const torch::Tensor& tokens, int64_t start, KvAccess& kv, bool all_logits) const;

  // Decode step for a batch: one new token per sequence; kv[i] holds sequence i's KV and
  // starts[i] its current length. Returns logits [B, vocab] (fp32).
  torch::Tensor DecodeBatch(const torch::Tensor& tokens, const std::vector<int64_t>& starts,
                            const std::vector<KvAccess*>& kv) const;

  // Full forward of `tokens` from position 0 with no cache: logits [T, vocab] (fp32).
  torch::Tensor ForwardNoCache(const torch::Tensor& tokens) const;

  // Rotary embedding of x [T, heads, head_dim] at `positions` [T] (int64), HF convention.
  torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& positions) const;

 private:
  struct RopeTables {
    torch::Tensor cos, sin;  // [T, 1, head_dim] in the model's dtype
  };
  RopeTables Rope(const torch::Tensor& positions) const;
  torch::Tensor Rotate(const torch::Tensor& x, const RopeTables& r) const;
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          int64_t start) const;  // q [T,H,D] at positions start..; k,v [N,KV,D] rotated
  torch::Tensor Mlp(const LayerWeights& w, const torch::Tensor& x) const;
  // RMSNorm then the q, k, v projections of hidden states [T, hidden]: [T, heads or kv_heads, D].
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Projections(const LayerWeights& w, const torch::Tensor& h) const;

  // The CPU path (cpu_forward.cc; a CPU device, float32 or bfloat16): fused projections,
  // rotary tables computed once, and the kernels of cpu_kernels.h (matrix-vector products for
  // a few rows, attention over the paged pre-RoPE KV in place, RMSNorm, SiLU). Other devices
  // and dtypes run the LibTorch ops above.
  struct FusedLayer {
    torch::Tensor qkv, qkv_bias;  // [(heads + 2 kv_heads) head_dim, hidden]; bias if any
    torch::Tensor gate_up;        // [2 intermediate, hidden]
  };
  struct RopeCache {
    torch::Tensor cos, sin;  // [positions, head_dim / 2] float32, values rounded to the dtype
    int64_t positions = 0;
  };
  // At construction: q/k/v and gate/up fused into fused_, the layer's tensors views of them.
  void FuseForCpuPath();
  std::shared_ptr<const RopeCache> RopeFor(int64_t positions) const;  // grows on demand
  torch::Tensor ForwardCpu(const torch::Tensor& tokens, int64_t start, KvAccess& kv, bool all_logits) const;
  torch::Tensor DecodeBatchCpu(const torch::Tensor& tokens, const std::vector<int64_t>& starts,
                               const std::vector<KvAccess*>& kv) const;
  torch::Tensor AttendCpu(const torch::Tensor& qkv, int64_t start, KvAccess& kv, int64_t layer,
                          const RopeCache& rope) const;
  torch::Tensor RmsNormCpu(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor SiluMulCpu(const torch::Tensor& gate_up) const;
  torch::Tensor MlpCpu(const LayerWeights& w, const FusedLayer& f, const torch::Tensor& h) const;
  // x W^T (+ bias) (+ residual).
  torch::Tensor Project(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias,
                        const torch::Tensor& residual) const;

  ModelConfig config_;
  ModelWeights weights_;
  torch::Device device_;
  torch::Tensor inv_freq_;  // [head_dim / 2] fp32, scaling applied
  bool cpu_path_ = false;
  std::vector<FusedLayer> fused_;
  mutable std::mutex rope_mu_;
  mutable std::shared_ptr<const RopeCache> rope_;  // GUARDED_BY(rope_mu_)
};

}  // namespace kvault::engine

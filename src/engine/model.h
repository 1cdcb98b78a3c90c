// LlamaModel: the Llama-family forward pass (RMSNorm, RoPE with theta and scaling,
// grouped-query attention, SwiGLU MLP) on LibTorch, CPU or CUDA, fp32 or bf16.
//
// Keys are handled *before* rotary embedding everywhere outside this class (the KV pool and
// the store hold pre-RoPE K: decoupled positional encoding); RoPE is applied to queries and
// keys at the positions of the current sequence when attention runs.
// Thread-safety: const methods may run concurrently.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

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

  ModelConfig config_;
  ModelWeights weights_;
  torch::Device device_;
  torch::Tensor inv_freq_;  // [head_dim / 2] fp32, scaling applied
};

}  // namespace kvault::engine

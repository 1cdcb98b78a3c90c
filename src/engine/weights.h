// Model weights: loaded from .safetensors (single file or sharded with
// model.safetensors.index.json) or initialised deterministically from a seed.
// Tensor names follow Hugging Face's Llama/Qwen2/Mistral checkpoints.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "kvault/key.h"
#include "kvault/status.h"

namespace kvault::engine {

struct LayerWeights {
  torch::Tensor input_norm;            // [hidden]
  torch::Tensor q_proj, k_proj, v_proj, o_proj;  // [out, in] (nn.Linear layout)
  torch::Tensor q_bias, k_bias, v_bias;          // undefined unless attention_bias
  torch::Tensor post_norm;             // [hidden]
  torch::Tensor gate_proj, up_proj, down_proj;   // [out, in]
};

struct ModelWeights {
  torch::Tensor embed;       // [vocab, hidden]
  std::vector<LayerWeights> layers;
  torch::Tensor final_norm;  // [hidden]
  torch::Tensor lm_head;     // [vocab, hidden]; the same tensor as embed when tied
  // SHA-256 over the canonical config, every tensor's name and shape, and a digest of every
  // weight byte: equal for equal weights, wherever they were loaded from (DESIGN.md §2).
  Digest fingerprint;
};

// Loads every tensor of `dir` (model.safetensors, or the shards listed in
// model.safetensors.index.json), converted to `dtype`. Missing or misshapen tensors are an
// InvalidArgument naming the tensor.
Result<ModelWeights> LoadWeights(const ModelConfig& config, const std::string& dir, torch::ScalarType dtype);

// Where LoadWeightsFrom gets each tensor: `name` is the Hugging Face name, `shape` the shape
// the config expects ([out, in] for linear layers). Returns a float tensor (any float dtype)
// of exactly that shape, or a Status naming the tensor.
using TensorSource = std::function<Result<torch::Tensor>(const std::string& name, const std::vector<int64_t>& shape)>;

// Loads every tensor of `config` from `source` (e.g. a GGUF file), converted to `dtype`;
// ties the LM head to the embedding when the config says so and computes the fingerprint,
// as LoadWeights does. A tensor of the wrong shape is an InvalidArgument naming it.
Result<ModelWeights> LoadWeightsFrom(const ModelConfig& config, torch::ScalarType dtype, const TensorSource& source);

// The fingerprint of `weights` (ModelWeights::fingerprint's definition above): what every
// loader sets, recomputed from the tensors' values (one hash pass over every byte).
Digest WeightsFingerprint(const ModelConfig& config, const ModelWeights& weights);

// Calls fn(name, shape, slot) for every tensor of `config` (Hugging Face name, the shape the
// config expects, its slot in `weights`) in the fixed order loading and the fingerprint use:
// embedding; per layer input norm, q, k, v (+ their biases), o, post norm, gate, up, down;
// final norm; lm_head unless tied. Resizes weights.layers to num_layers first.
void ForEachWeightTensor(
    const ModelConfig& config, ModelWeights& weights,
    const std::function<void(const std::string& name, const std::vector<int64_t>& shape, torch::Tensor& slot)>& fn);

// Deterministic random weights (same seed, same weights on every machine), scaled so that
// activations stay in range: for tests, benchmarks and the demo.
ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed, torch::ScalarType dtype);

// The same weights on `device` (a tied lm_head stays the embedding's tensor); the
// fingerprint is kept, since it names the values, not where they live.
ModelWeights ToDevice(ModelWeights weights, torch::Device device);

// Writes `weights` as a single model.safetensors (+ config.json) into `dir` with Hugging
// Face's names: used by tests and `kvault demo --save-model`.
Status SaveWeights(const ModelConfig& config, const ModelWeights& weights, const std::string& dir);

}  // namespace kvault::engine

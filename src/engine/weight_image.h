// A model's weights as one contiguous byte image: every tensor as the engine uses it (after
// dequantization, in the engine's dtype), laid out so that the tensors the CPU path fuses sit
// back to back (q, k, v; their biases; gate, up). Loading an image is one copy into one
// buffer (the arena) whose views are the model's tensors: LlamaModel then fuses them without
// copying (FuseForCpuPath keeps adjacent views as they are).
//
// The image is what the store holds for a model (models/weight_store.h); its table of tensors
// (WeightImagePlan) travels in the stored manifest.
//
// Thread-safety: plain functions over values; an arena may be filled by several threads at once
// (disjoint ranges).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/weights.h"
#include "kvault/status.h"

namespace kvault::engine {

// One tensor of the image.
struct ImageTensor {
  std::string name;            // Hugging Face name ("model.layers.3.self_attn.q_proj.weight")
  std::vector<int64_t> shape;  // as ModelWeights holds it
  uint64_t offset = 0;         // byte offset in the image; a multiple of the element size
  uint64_t bytes = 0;          // numel * element size
};

struct WeightImagePlan {
  torch::ScalarType dtype = torch::kFloat32;
  std::vector<ImageTensor> tensors;  // image order; a tied lm_head is not listed (it is embed)
  uint64_t bytes = 0;                // image size: a multiple of kImageAlignment
};

// Every group of tensors (and the image size) starts at a multiple of this; tensors inside a
// fused group (q, k, v) follow each other with no gap.
inline constexpr uint64_t kImageAlignment = 4096;

// The plan for `config`'s tensors in `dtype` (shapes from the config, tied lm_head omitted).
WeightImagePlan PlanWeightImage(const ModelConfig& config, torch::ScalarType dtype);

// Copies `weights` (on the CPU, in plan.dtype, shapes as planned) into `image`
// (plan.bytes bytes; gaps are zero-filled). kInvalidArgument naming a tensor that does not fit.
Status WriteWeightImage(const ModelConfig& config, const ModelWeights& weights, const WeightImagePlan& plan,
                        std::span<std::byte> image);

// The same for image bytes [offset, offset + out.size()) only (out may be a piece of a store
// chunk): writes an image piece by piece without building it whole.
Status WriteWeightImageRange(const ModelConfig& config, const ModelWeights& weights, const WeightImagePlan& plan,
                             uint64_t offset, std::span<std::byte> out);

// ModelWeights whose tensors are views of `arena` (a CPU uint8 tensor of at least plan.bytes
// bytes, 64-byte aligned, filled with the image): no copy. The views keep the arena alive.
// `fingerprint` is set as given (the caller knows it from the stored manifest; see
// VerifyFingerprint). kInvalidArgument when the plan does not match the config.
Result<ModelWeights> WeightsFromImage(const ModelConfig& config, const WeightImagePlan& plan, const torch::Tensor& arena,
                                      const Digest& fingerprint);

// The fingerprint `weights` have (the same computation LoadWeights does); costs one hash pass
// over every byte.
Digest ComputeFingerprint(const ModelConfig& config, const ModelWeights& weights);

// A CPU uint8 tensor of `bytes` bytes whose data is 64-byte aligned (and backed by huge pages
// where the kernel allows), not zero-filled.
torch::Tensor AllocateArena(uint64_t bytes);

}  // namespace kvault::engine

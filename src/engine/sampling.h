// Sampling the next token from one row of logits, and the model's log-probabilities there.
//
// Thread-safety: pure functions of their arguments (the generator is the caller's).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>

#include "engine/engine.h"

namespace kvault::engine {

// Samples from one fp32 CPU row of logits: argmax at temperature 0, else top_p (nucleus)
// sampling from the softmax at the temperature.
uint32_t SampleFrom(const torch::Tensor& row, const SamplingParams& params, std::mt19937_64& rng);

// The model's log-probabilities at one step (log_softmax of the fp32 CPU row of logits): the
// sampled token's and the k most likely, ties ordered by id (NaN ranks last).
TokenLogprobs LogprobsOf(const torch::Tensor& row, uint32_t token, int k);

}  // namespace kvault::engine

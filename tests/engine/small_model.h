// The engine tests' random-weight model and prompts: 3 layers, 4 query heads and 2 KV heads
// of 16 dims, a 128-token vocabulary (f32 KV: small, fast, and enough to exercise GQA, RoPE and
// paging); prompts of random token ids, reproducible by seed.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/model_config.h"

namespace kvault::engine::testing_model {

inline ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 4096;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-6;
  return c;
}

inline std::vector<uint32_t> RandomTokens(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = static_cast<uint32_t>(rng() % 128);
  return t;
}

}  // namespace kvault::engine::testing_model

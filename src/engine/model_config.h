// ModelConfig: the Llama-family architecture read from a Hugging Face config.json
// (model_type llama, qwen2, mistral), or built in code for tests and the demo.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvault/status.h"

namespace kvault::engine {

struct RopeScaling {
  std::string type = "none";  // "none", "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  // Per-frequency divisors of the inverse frequencies, applied after the scaling above: what
  // GGUF files of Llama 3.1+ carry as the tensor rope_freqs.weight instead of the llama3
  // parameters ([head_dim / 2] positive values; empty: none). Written to and read from
  // config.json as kvault's own key "rope_freq_factors".
  std::vector<double> freq_factors;
};

struct ModelConfig {
  std::string model_type = "llama";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;         // num_hidden_layers
  int64_t num_heads = 0;          // num_attention_heads
  int64_t num_kv_heads = 0;       // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;           // defaults to hidden_size / num_heads
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;    // q/k/v projections carry a bias (Qwen2: true)
  std::optional<int64_t> sliding_window;  // Mistral; none = full attention
  std::string torch_dtype = "float32";

  // Parses a config.json text / file. Unknown keys are ignored; missing required keys,
  // wrong types and inconsistent sizes are a clear InvalidArgument.
  static Result<ModelConfig> FromJson(const std::string& text);
  static Result<ModelConfig> FromFile(const std::string& path);
  // The demo's small Llama-shaped model: fast on 2 CPU cores.
  static ModelConfig DemoTiny();

  Status Validate() const;
  std::string ToJson() const;  // canonical JSON, also hashed into the model fingerprint
};

}  // namespace kvault::engine

// GGUF metadata -> ModelConfig, and GGUF tensors -> ModelWeights (through LoadWeightsFrom,
// so names, shapes, tying and the fingerprint are those of every other way to load weights).
#include "engine/gguf_model.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "engine/safetensors.h"
#include "gguf/dequantize.h"

namespace kvault::engine {
namespace {

Status Invalid(const gguf::GgufFile& file, const std::string& what) {
  return Status::InvalidArgument("gguf: " + file.path() + ": " + what);
}

// Reads ARCH.key as a positive integer into `out`; absent keys keep `out` unless required.
Status ReadInt(const gguf::GgufFile& file, const std::string& key, int64_t& out, bool required) {
  Result<uint64_t> v = file.GetUint(key);
  if (!v.ok()) {
    if (v.status().code() == Code::kNotFound && !required) return Status::OK();
    return Invalid(file, v.status().code() == Code::kNotFound ? "missing metadata " + key : v.status().message());
  }
  if (*v == 0 || *v > static_cast<uint64_t>(INT32_MAX)) {
    return Invalid(file, "metadata " + key + " = " + std::to_string(*v) + " is out of range");
  }
  out = static_cast<int64_t>(*v);
  return Status::OK();
}

// Reads ARCH.key as a number into `out`; absent keys keep `out`. A float32 value is taken as
// the shortest decimal that names it (1e-5f -> 1e-05, not 9.99999974e-06), which is what the
// converter was given, so a GGUF's config equals the checkpoint's.
Status ReadFloat(const gguf::GgufFile& file, const std::string& key, double& out) {
  Result<double> v = file.GetFloat(key);
  if (!v.ok()) {
    return v.status().code() == Code::kNotFound ? Status::OK() : Invalid(file, v.status().message());
  }
  out = *v;
  if (file.Find(key)->type == gguf::ValueType::kFloat32 && std::isfinite(*v)) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, static_cast<float>(*v));
    if (ec == std::errc()) out = std::strtod(std::string(buf, end).c_str(), nullptr);
  }
  return Status::OK();
}

// Dequantizes `info` into a new tensor of `dtype` (float32 or bfloat16 directly; others via
// float32) with the torch shape `shape` (GGUF dims reversed).
Result<torch::Tensor> Dequantize(const gguf::GgufFile& file, const gguf::TensorInfo& info,
                                 const std::vector<int64_t>& shape, torch::ScalarType dtype, int threads) {
  if (!gguf::CanDequantize(info.type)) {
    return Invalid(file, "tensor " + info.name + " has ggml type " + gguf::GgmlTypeName(info.type) +
                             ", which kvault cannot dequantize");
  }
  const int64_t n = static_cast<int64_t>(info.n_elements);
  if (dtype == torch::kBFloat16) {
    torch::Tensor t = torch::empty(shape, torch::kBFloat16);
    KVAULT_RETURN_IF_ERROR(gguf::DequantizeToBFloat16(info.type, file.TensorData(info), n,
                                                      reinterpret_cast<uint16_t*>(t.data_ptr()), threads));
    return t;
  }
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  KVAULT_RETURN_IF_ERROR(gguf::DequantizeToFloat(info.type, file.TensorData(info), n, t.data_ptr<float>(), threads));
  return dtype == torch::kFloat32 ? t : t.to(dtype);
}

// llama.cpp's converter stores the rows of a llama Q or K projection (or bias) of `heads`
// heads as [head][pair i][half j] where Hugging Face has [head][half j][pair i]; this puts
// them back.
torch::Tensor UnpermuteRows(const torch::Tensor& t, int64_t heads) {
  const int64_t rows = t.size(0), head_dim = rows / heads;
  std::vector<int64_t> view = {heads, head_dim / 2, 2};
  for (int64_t d = 1; d < t.dim(); ++d) view.push_back(t.size(d));
  return t.reshape(view).transpose(1, 2).reshape(t.sizes()).contiguous();
}

}  // namespace

std::string GgufTensorName(const std::string& hf_name) {
  static const std::vector<std::pair<std::string, std::string>> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (!hf_name.starts_with(prefix)) return "";
  const size_t dot = hf_name.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf_name.substr(prefix.size(), dot - prefix.size());
  const std::string rest = hf_name.substr(dot + 1);
  for (const auto& [hf, gg] : kLayer) {
    if (rest == hf) return "blk." + layer + "." + gg;
  }
  return "";
}

Result<ModelConfig> ModelConfigFromGguf(const gguf::GgufFile& file) {
  Result<std::string> arch = file.GetString("general.architecture");
  if (!arch.ok()) return Invalid(file, "no general.architecture (is this a model file?)");
  if (*arch != "llama" && *arch != "qwen2") {
    return Invalid(file, "architecture \"" + *arch + "\" is not supported (supported: llama, qwen2)");
  }
  const std::string a = *arch + ".";
  ModelConfig c;
  c.model_type = *arch;
  c.torch_dtype = "float32";
  if (Result<uint64_t> experts = file.GetUint(a + "expert_count"); experts.ok() && *experts > 0) {
    return Invalid(file, "mixture-of-experts models (" + a + "expert_count " + std::to_string(*experts) +
                             ") are not supported");
  }
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "block_count", c.num_layers, true));
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "embedding_length", c.hidden_size, true));
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "feed_forward_length", c.intermediate_size, true));
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "attention.head_count", c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "attention.head_count_kv", c.num_kv_heads, false));
  if (c.hidden_size % c.num_heads != 0 && !file.Find(a + "attention.key_length")) {
    return Invalid(file, "embedding_length is not a multiple of head_count and there is no attention.key_length");
  }
  c.head_dim = c.hidden_size / c.num_heads;
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "attention.key_length", c.head_dim, false));
  int64_t value_dim = c.head_dim, rope_dim = c.head_dim;
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "attention.value_length", value_dim, false));
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "rope.dimension_count", rope_dim, false));
  if (value_dim != c.head_dim) return Invalid(file, "key and value head sizes differ, which is not supported");
  if (rope_dim != c.head_dim) {
    return Invalid(file, "partial rotary embedding (rope.dimension_count " + std::to_string(rope_dim) +
                             " of head size " + std::to_string(c.head_dim) + ") is not supported");
  }
  KVAULT_RETURN_IF_ERROR(ReadInt(file, a + "context_length", c.max_position_embeddings, false));
  KVAULT_RETURN_IF_ERROR(ReadFloat(file, a + "attention.layer_norm_rms_epsilon", c.rms_norm_eps));
  KVAULT_RETURN_IF_ERROR(ReadFloat(file, a + "rope.freq_base", c.rope_theta));

  // RoPE scaling: metadata (linear), or Llama 3.1's per-frequency factors as a tensor.
  std::string scaling = "none";
  if (Result<std::string> t = file.GetString(a + "rope.scaling.type"); t.ok()) scaling = *t;
  if (scaling == "linear") {
    c.rope_scaling.type = "linear";
    KVAULT_RETURN_IF_ERROR(ReadFloat(file, a + "rope.scaling.factor", c.rope_scaling.factor));
  } else if (scaling != "none") {
    return Invalid(file, "rope scaling \"" + scaling + "\" is not supported (supported: none, linear)");
  }
  if (const gguf::TensorInfo* f = file.FindTensor("rope_freqs.weight")) {
    if (f->n_elements != static_cast<uint64_t>(c.head_dim / 2)) {
      return Invalid(file, "rope_freqs.weight has " + std::to_string(f->n_elements) + " values, expected " +
                               std::to_string(c.head_dim / 2));
    }
    std::vector<float> factors(f->n_elements);
    KVAULT_RETURN_IF_ERROR(gguf::DequantizeToFloat(f->type, file.TensorData(*f),
                                                   static_cast<int64_t>(f->n_elements), factors.data(), 1));
    c.rope_scaling.freq_factors.assign(factors.begin(), factors.end());
  }

  const gguf::TensorInfo* embed = file.FindTensor("token_embd.weight");
  if (embed == nullptr) return Invalid(file, "no token_embd.weight tensor");
  if (embed->dims.size() != 2 || embed->dims[0] != static_cast<uint64_t>(c.hidden_size)) {
    return Invalid(file, "token_embd.weight does not have embedding_length columns");
  }
  c.vocab_size = static_cast<int64_t>(embed->dims[1]);
  c.tie_word_embeddings = file.FindTensor("output.weight") == nullptr;
  c.attention_bias = file.FindTensor("blk.0.attn_q.bias") != nullptr;
  KVAULT_RETURN_IF_ERROR(c.Validate());
  return c;
}

Result<ModelWeights> LoadGgufWeights(const gguf::GgufFile& file, const ModelConfig& config,
                                     torch::ScalarType dtype, int threads) {
  const bool permuted = config.model_type == "llama";  // llama.cpp permutes only llama's Q/K
  return LoadWeightsFrom(config, dtype, [&](const std::string& name, const std::vector<int64_t>& shape)
                                            -> Result<torch::Tensor> {
    const std::string gguf_name = GgufTensorName(name);
    const gguf::TensorInfo* info = gguf_name.empty() ? nullptr : file.FindTensor(gguf_name);
    if (info == nullptr) return Invalid(file, "missing tensor " + gguf_name + " (" + name + ")");
    // GGUF lists dimensions innermost first; torch outermost first.
    std::vector<int64_t> dims(info->dims.rbegin(), info->dims.rend());
    if (dims != shape) {
      return Invalid(file, "tensor " + gguf_name + " has shape " + ShapeString(dims) + ", the config expects " +
                               ShapeString(shape));
    }
    Result<torch::Tensor> t = Dequantize(file, *info, shape, dtype, threads);
    if (!t.ok() || !permuted) return t;
    if (name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias")) return UnpermuteRows(*t, config.num_heads);
    if (name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias")) return UnpermuteRows(*t, config.num_kv_heads);
    return t;
  });
}

}  // namespace kvault::engine

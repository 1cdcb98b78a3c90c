// ModelConfig parsing (Hugging Face config.json, transformers 4.x and 5.x spellings),
// validation and canonical serialisation.
//
// Every nlohmann::json access goes through the typed helpers below, so a wrong type is a
// Status naming the key; the whole parse is also wrapped in a catch, so nothing throws out.
#include "engine/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace kvault::engine {
namespace {

using json = nlohmann::json;

Status Invalid(const std::string& what) { return Status::InvalidArgument("config: " + what); }

// Returns the value of `key` in `j`, or nullptr when it is absent or null (HF writes null for
// "not set", e.g. "rope_scaling": null, "sliding_window": null).
const json* Find(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

// The Get* helpers leave `out` untouched when the key is absent (so it keeps its default) and
// fail when it is absent but `required`, or present with the wrong type.
Status GetInt(const json& j, const char* key, int64_t& out, bool required = false) {
  const json* v = Find(j, key);
  if (v == nullptr) return required ? Invalid(std::string("missing required key \"") + key + "\"") : Status::OK();
  if (!v->is_number_integer()) return Invalid(std::string("\"") + key + "\" must be an integer, got " + v->dump());
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return Invalid(std::string("\"") + key + "\" is out of range");
  }
  out = v->get<int64_t>();
  return Status::OK();
}

Status GetDouble(const json& j, const char* key, double& out, bool required = false) {
  const json* v = Find(j, key);
  if (v == nullptr) return required ? Invalid(std::string("missing required key \"") + key + "\"") : Status::OK();
  if (!v->is_number()) return Invalid(std::string("\"") + key + "\" must be a number, got " + v->dump());
  out = v->get<double>();
  return Status::OK();
}

Status GetBool(const json& j, const char* key, bool& out) {
  const json* v = Find(j, key);
  if (v == nullptr) return Status::OK();
  if (!v->is_boolean()) return Invalid(std::string("\"") + key + "\" must be true or false, got " + v->dump());
  out = v->get<bool>();
  return Status::OK();
}

Status GetString(const json& j, const char* key, std::string& out, bool required = false) {
  const json* v = Find(j, key);
  if (v == nullptr) return required ? Invalid(std::string("missing required key \"") + key + "\"") : Status::OK();
  if (!v->is_string()) return Invalid(std::string("\"") + key + "\" must be a string, got " + v->dump());
  out = v->get<std::string>();
  return Status::OK();
}

// Reads one RoPE scaling object: transformers 4.x "rope_scaling" ({"rope_type"|"type", ...})
// or 5.x "rope_parameters" (the same fields plus "rope_theta").
Status ParseRopeScaling(const json& r, const char* where, RopeScaling& out) {
  if (!r.is_object()) return Invalid(std::string("\"") + where + "\" must be an object or null");
  std::string type = "default";
  KVAULT_RETURN_IF_ERROR(GetString(r, "type", type));
  KVAULT_RETURN_IF_ERROR(GetString(r, "rope_type", type));  // the newer spelling wins
  RopeScaling s;
  if (type == "default" || type == "none") {
    out = s;  // type "none"
    return Status::OK();
  }
  if (type != "linear" && type != "llama3") {
    return Invalid(std::string("unsupported rope type \"") + type + "\" in \"" + where +
                   "\" (supported: default, linear, llama3)");
  }
  s.type = type;
  KVAULT_RETURN_IF_ERROR(GetDouble(r, "factor", s.factor, /*required=*/true));
  if (type == "llama3") {
    KVAULT_RETURN_IF_ERROR(GetDouble(r, "low_freq_factor", s.low_freq_factor, true));
    KVAULT_RETURN_IF_ERROR(GetDouble(r, "high_freq_factor", s.high_freq_factor, true));
    KVAULT_RETURN_IF_ERROR(GetInt(r, "original_max_position_embeddings", s.original_max_position_embeddings, true));
  }
  out = s;
  return Status::OK();
}

// rope_theta and rope scaling: 5.x "rope_parameters" when present, else 4.x "rope_theta" and
// "rope_scaling".
Status ParseRope(const json& j, ModelConfig& c) {
  KVAULT_RETURN_IF_ERROR(GetDouble(j, "rope_theta", c.rope_theta));
  if (const json* r = Find(j, "rope_scaling")) {
    KVAULT_RETURN_IF_ERROR(ParseRopeScaling(*r, "rope_scaling", c.rope_scaling));
  }
  if (const json* p = Find(j, "rope_parameters")) {
    if (!p->is_object()) return Invalid("\"rope_parameters\" must be an object or null");
    KVAULT_RETURN_IF_ERROR(GetDouble(*p, "rope_theta", c.rope_theta));
    KVAULT_RETURN_IF_ERROR(ParseRopeScaling(*p, "rope_parameters", c.rope_scaling));
  }
  return Status::OK();
}

// Sliding-window attention. Llama: none. Mistral: "sliding_window" (null = full attention).
// Qwen2: only with "use_sliding_window", and then only on layers >= "max_window_layers";
// one window for every layer is all LlamaModel supports, so a mixed pattern is rejected.
Status ParseSlidingWindow(const json& j, ModelConfig& c) {
  if (c.model_type == "llama") return Status::OK();
  int64_t window = 0;
  const bool has_window = Find(j, "sliding_window") != nullptr;
  KVAULT_RETURN_IF_ERROR(GetInt(j, "sliding_window", window));
  if (c.model_type == "qwen2") {
    bool use = false;
    KVAULT_RETURN_IF_ERROR(GetBool(j, "use_sliding_window", use));
    if (!use || !has_window) return Status::OK();
    int64_t max_window_layers = 0;
    KVAULT_RETURN_IF_ERROR(GetInt(j, "max_window_layers", max_window_layers));
    if (max_window_layers >= c.num_layers) return Status::OK();  // no layer slides
    if (max_window_layers > 0) {
      return Invalid("qwen2 sliding window on only some layers (max_window_layers " +
                     std::to_string(max_window_layers) + " of " + std::to_string(c.num_layers) +
                     ") is not supported");
    }
  }
  if (has_window) c.sliding_window = window;
  return Status::OK();
}

Result<ModelConfig> Parse(const json& j) {
  if (!j.is_object()) return Invalid("top level must be a JSON object");
  ModelConfig c;
  KVAULT_RETURN_IF_ERROR(GetString(j, "model_type", c.model_type, true));
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "mistral") {
    return Invalid("unsupported model_type \"" + c.model_type + "\" (supported: llama, qwen2, mistral)");
  }
  KVAULT_RETURN_IF_ERROR(GetInt(j, "vocab_size", c.vocab_size, true));
  KVAULT_RETURN_IF_ERROR(GetInt(j, "hidden_size", c.hidden_size, true));
  KVAULT_RETURN_IF_ERROR(GetInt(j, "intermediate_size", c.intermediate_size, true));
  KVAULT_RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", c.num_layers, true));
  KVAULT_RETURN_IF_ERROR(GetInt(j, "num_attention_heads", c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  KVAULT_RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", c.num_kv_heads));
  if (Find(j, "head_dim") != nullptr) {
    KVAULT_RETURN_IF_ERROR(GetInt(j, "head_dim", c.head_dim));
  } else if (c.num_heads > 0 && c.hidden_size % c.num_heads == 0) {
    c.head_dim = c.hidden_size / c.num_heads;
  } else {
    return Invalid("no \"head_dim\" and hidden_size " + std::to_string(c.hidden_size) +
                   " is not divisible by num_attention_heads " + std::to_string(c.num_heads));
  }
  KVAULT_RETURN_IF_ERROR(GetInt(j, "max_position_embeddings", c.max_position_embeddings));
  KVAULT_RETURN_IF_ERROR(GetDouble(j, "rms_norm_eps", c.rms_norm_eps));
  KVAULT_RETURN_IF_ERROR(ParseRope(j, c));
  if (const json* f = Find(j, "rope_freq_factors")) {
    if (!f->is_array()) return Invalid("\"rope_freq_factors\" must be an array of numbers");
    for (const json& v : *f) {
      if (!v.is_number()) return Invalid("\"rope_freq_factors\" must be an array of numbers");
      c.rope_scaling.freq_factors.push_back(v.get<double>());
    }
  }
  KVAULT_RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", c.tie_word_embeddings));
  c.attention_bias = c.model_type == "qwen2";  // Qwen2's q/k/v always carry a bias
  KVAULT_RETURN_IF_ERROR(GetBool(j, "attention_bias", c.attention_bias));
  KVAULT_RETURN_IF_ERROR(ParseSlidingWindow(j, c));
  KVAULT_RETURN_IF_ERROR(GetString(j, "torch_dtype", c.torch_dtype));
  KVAULT_RETURN_IF_ERROR(GetString(j, "dtype", c.torch_dtype));  // transformers 5.x
  KVAULT_RETURN_IF_ERROR(c.Validate());
  return c;
}

Status Positive(const char* name, int64_t v) {
  if (v > 0) return Status::OK();
  return Invalid(std::string(name) + " must be positive, got " + std::to_string(v));
}

const char* Architecture(const std::string& model_type) {
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

Result<ModelConfig> ModelConfig::FromJson(const std::string& text) {
  try {
    json j = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Invalid("malformed JSON");
    return Parse(j);
  } catch (const std::exception& e) {  // defensive: the helpers check types before reading
    return Invalid(std::string("malformed config: ") + e.what());
  }
}

Result<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("config: cannot open " + path);
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return Status::IOError("config: cannot read " + path);
  Result<ModelConfig> c = FromJson(buf.str());
  if (!c.ok()) return Status(c.status().code(), c.status().message() + " (" + path + ")");
  return c;
}

ModelConfig ModelConfig::DemoTiny() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 32000;
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_layers = 8;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = false;
  c.torch_dtype = "float32";
  return c;
}

Status ModelConfig::Validate() const {
  if (model_type != "llama" && model_type != "qwen2" && model_type != "mistral") {
    return Invalid("unsupported model_type \"" + model_type + "\" (supported: llama, qwen2, mistral)");
  }
  KVAULT_RETURN_IF_ERROR(Positive("vocab_size", vocab_size));
  KVAULT_RETURN_IF_ERROR(Positive("hidden_size", hidden_size));
  KVAULT_RETURN_IF_ERROR(Positive("intermediate_size", intermediate_size));
  KVAULT_RETURN_IF_ERROR(Positive("num_hidden_layers", num_layers));
  KVAULT_RETURN_IF_ERROR(Positive("num_attention_heads", num_heads));
  KVAULT_RETURN_IF_ERROR(Positive("num_key_value_heads", num_kv_heads));
  KVAULT_RETURN_IF_ERROR(Positive("head_dim", head_dim));
  KVAULT_RETURN_IF_ERROR(Positive("max_position_embeddings", max_position_embeddings));
  if (num_heads % num_kv_heads != 0) {
    return Invalid("num_attention_heads " + std::to_string(num_heads) +
                   " is not divisible by num_key_value_heads " + std::to_string(num_kv_heads));
  }
  if (head_dim % 2 != 0) return Invalid("head_dim " + std::to_string(head_dim) + " must be even (RoPE rotates pairs)");
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) return Invalid("rms_norm_eps must be positive");
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) return Invalid("rope_theta must be positive");
  const RopeScaling& s = rope_scaling;
  if (s.type != "none" && s.type != "linear" && s.type != "llama3") {
    return Invalid("unsupported rope type \"" + s.type + "\" (supported: none, linear, llama3)");
  }
  if (s.type != "none" && (!(s.factor > 0) || !std::isfinite(s.factor))) {
    return Invalid("rope scaling factor must be positive");
  }
  if (s.type == "llama3") {
    if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor)) {
      return Invalid("llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor");
    }
    KVAULT_RETURN_IF_ERROR(Positive("original_max_position_embeddings", s.original_max_position_embeddings));
  }
  if (!s.freq_factors.empty()) {
    if (static_cast<int64_t>(s.freq_factors.size()) != head_dim / 2) {
      return Invalid("rope_freq_factors has " + std::to_string(s.freq_factors.size()) + " values, head_dim / 2 is " +
                     std::to_string(head_dim / 2));
    }
    for (double f : s.freq_factors) {
      if (!(f > 0) || !std::isfinite(f)) return Invalid("rope_freq_factors must be positive and finite");
    }
  }
  if (sliding_window && *sliding_window <= 0) return Invalid("sliding_window must be positive or null");
  if (torch_dtype != "float32" && torch_dtype != "float16" && torch_dtype != "bfloat16") {
    return Invalid("unsupported torch_dtype \"" + torch_dtype + "\" (supported: float32, float16, bfloat16)");
  }
  return Status::OK();
}

// HF's spelling (transformers 4.x keys, which 5.x also reads), so a saved directory loads in
// transformers too. nlohmann::json objects are std::maps: keys come out sorted, and numbers
// print in their shortest round-trip form, so equal configs give byte-equal text.
std::string ModelConfig::ToJson() const {
  json j;
  j["architectures"] = json::array({Architecture(model_type)});
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == "none") {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  if (!rope_scaling.freq_factors.empty()) j["rope_freq_factors"] = rope_scaling.freq_factors;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  if (model_type == "qwen2") {  // Qwen2 reads the window only with these two set
    j["use_sliding_window"] = sliding_window.has_value();
    j["max_window_layers"] = 0;
  }
  j["hidden_act"] = "silu";
  j["torch_dtype"] = torch_dtype;
  return j.dump();
}

}  // namespace kvault::engine

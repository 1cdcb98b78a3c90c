// Model weights: the HF tensor names, loading (single file or sharded), deterministic random
// initialisation, saving, and the fingerprint.
//
// One table, ForEachTensor(), lists every tensor of a config in a fixed order with its HF name,
// expected shape and slot in ModelWeights; loading, saving, random init and the fingerprint
// all walk it, so they agree on names, shapes and order by construction.
#include "engine/weights.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/safetensors.h"

namespace kvault::engine {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Calls fn(name, expected shape, tensor slot) for every tensor of `config`, in the fixed order
// the fingerprint hashes: embedding; per layer input norm, q/k/v (+ biases), o, post norm,
// gate/up/down; final norm; lm_head unless tied. `w.layers` must have num_layers entries.
template <typename Weights, typename Fn>
void ForEachTensor(const ModelConfig& c, Weights& w, Fn&& fn) {
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  fn("model.embed_tokens.weight", std::vector<int64_t>{c.vocab_size, h}, w.embed);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto& l = w.layers[static_cast<size_t>(i)];
    fn(p + "input_layernorm.weight", std::vector<int64_t>{h}, l.input_norm);
    fn(p + "self_attn.q_proj.weight", std::vector<int64_t>{q, h}, l.q_proj);
    fn(p + "self_attn.k_proj.weight", std::vector<int64_t>{kv, h}, l.k_proj);
    fn(p + "self_attn.v_proj.weight", std::vector<int64_t>{kv, h}, l.v_proj);
    if (c.attention_bias) {
      fn(p + "self_attn.q_proj.bias", std::vector<int64_t>{q}, l.q_bias);
      fn(p + "self_attn.k_proj.bias", std::vector<int64_t>{kv}, l.k_bias);
      fn(p + "self_attn.v_proj.bias", std::vector<int64_t>{kv}, l.v_bias);
    }
    fn(p + "self_attn.o_proj.weight", std::vector<int64_t>{h, q}, l.o_proj);
    fn(p + "post_attention_layernorm.weight", std::vector<int64_t>{h}, l.post_norm);
    fn(p + "mlp.gate_proj.weight", std::vector<int64_t>{inter, h}, l.gate_proj);
    fn(p + "mlp.up_proj.weight", std::vector<int64_t>{inter, h}, l.up_proj);
    fn(p + "mlp.down_proj.weight", std::vector<int64_t>{h, inter}, l.down_proj);
  }
  fn("model.norm.weight", std::vector<int64_t>{h}, w.final_norm);
  if (!c.tie_word_embeddings) fn("lm_head.weight", std::vector<int64_t>{c.vocab_size, h}, w.lm_head);
}

const char* DtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: return "unsupported";
  }
}

Status CheckFloatDtype(torch::ScalarType t) {
  if (t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16) return Status::OK();
  return Status::InvalidArgument(std::string("weights: dtype ") + c10::toString(t) +
                                 " is not float32, float16 or bfloat16");
}

void AppendU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));  // little-endian
}

// SHA-256 over a domain tag, the canonical config (with torch_dtype set to the loaded dtype,
// so where the weights came from does not matter, only what they are), then per tensor in
// ForEachTensor order: name, rank and dims, and XXH3-64 of its bytes in the loaded dtype.
Digest Fingerprint(const ModelConfig& config, const ModelWeights& w) {
  ModelConfig c = config;
  c.torch_dtype = DtypeName(w.embed.scalar_type());
  std::string buf = "kvault-model-fingerprint-v1\n" + c.ToJson() + "\n";
  ForEachTensor(c, w, [&](const std::string& name, const std::vector<int64_t>&, const torch::Tensor& t) {
    torch::Tensor cpu = t.to(torch::kCPU).contiguous();
    AppendU64(buf, name.size());
    buf += name;
    AppendU64(buf, static_cast<uint64_t>(cpu.dim()));
    for (int64_t d : cpu.sizes()) AppendU64(buf, static_cast<uint64_t>(d));
    AppendU64(buf, XXH3_64bits(cpu.data_ptr(), static_cast<size_t>(cpu.numel()) * cpu.element_size()));
  });
  return Sha256(std::string_view(buf));
}

// --- Loading ---------------------------------------------------------------------------

// Which file holds each tensor: every name -> "model.safetensors", or the index's weight_map.
Result<std::map<std::string, std::string>> ReadWeightMap(const fs::path& dir, std::vector<std::string>& files) {
  const fs::path index = dir / "model.safetensors.index.json";
  std::error_code ec;
  if (!fs::exists(index, ec)) {
    if (!fs::exists(dir / "model.safetensors", ec)) {
      return Status::NotFound("weights: no model.safetensors or model.safetensors.index.json in " + dir.string());
    }
    files = {"model.safetensors"};
    return std::map<std::string, std::string>{};  // empty map: everything is in files[0]
  }
  std::ifstream in(index, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return Status::IOError("weights: cannot read " + index.string());
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return Status::Corruption("weights: " + index.string() + " has no \"weight_map\" object");
  }
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) return Status::Corruption("weights: weight_map[\"" + name + "\"] is not a file name");
    std::string f = file.get<std::string>();
    // Shards live in `dir`: a path that could leave it is refused.
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
      return Status::Corruption("weights: weight_map[\"" + name + "\"] names an invalid file \"" + f + "\"");
    }
    map.emplace(name, f);
    if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
  }
  return map;
}

// Opens the shards on demand and keeps them mapped until the load ends.
class ShardSet {
 public:
  ShardSet(fs::path dir, std::map<std::string, std::string> weight_map, std::string single)
      : dir_(std::move(dir)), weight_map_(std::move(weight_map)), single_(std::move(single)) {}

  // The tensor `name` converted to `dtype` (a copy: independent of the mapping).
  Result<torch::Tensor> Load(const std::string& name, const std::vector<int64_t>& shape, torch::ScalarType dtype) {
    std::string file = single_;
    if (weight_map_.size() > 0 || single_.empty()) {
      auto it = weight_map_.find(name);
      if (it == weight_map_.end()) {
        return Status::InvalidArgument("weights: missing tensor " + name + " (not in the weight_map of " + dir_.string() + ")");
      }
      file = it->second;
    }
    Result<SafetensorsFile*> f = Open(file);
    if (!f.ok()) return f.status();
    auto info = (*f)->tensors().find(name);
    if (info == (*f)->tensors().end()) {
      return Status::InvalidArgument("weights: missing tensor " + name + " in " + (dir_ / file).string());
    }
    const std::string& st = info->second.dtype;
    if (st != "F32" && st != "F16" && st != "BF16") {
      return Status::InvalidArgument("weights: tensor " + name + " has dtype " + st + "; weights must be F32, F16 or BF16");
    }
    if (info->second.shape != shape) {
      return Status::InvalidArgument("weights: tensor " + name + " has shape " + ShapeString(info->second.shape) +
                                     ", the config expects " + ShapeString(shape));
    }
    Result<torch::Tensor> view = (*f)->Get(name);
    if (!view.ok()) return view.status();
    return view->to(dtype, /*non_blocking=*/false, /*copy=*/true);
  }

 private:
  Result<SafetensorsFile*> Open(const std::string& file) {
    auto it = open_.find(file);
    if (it != open_.end()) return it->second.get();
    auto f = SafetensorsFile::Open((dir_ / file).string());
    if (!f.ok()) return f.status();
    SafetensorsFile* raw = f->get();
    open_.emplace(file, std::move(f.value()));
    return raw;
  }

  fs::path dir_;
  std::map<std::string, std::string> weight_map_;  // empty: every tensor is in single_
  std::string single_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> open_;
};

Result<ModelWeights> LoadWeightsFromImpl(const ModelConfig& config, torch::ScalarType dtype, const TensorSource& source) {
  KVAULT_RETURN_IF_ERROR(config.Validate());
  KVAULT_RETURN_IF_ERROR(CheckFloatDtype(dtype));
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  Status status;
  ForEachTensor(config, w, [&](const std::string& name, const std::vector<int64_t>& shape, torch::Tensor& slot) {
    if (!status.ok()) return;
    Result<torch::Tensor> t = source(name, shape);
    if (!t.ok()) {
      status = t.status();
    } else if (t->sizes().vec() != shape) {
      status = Status::InvalidArgument("weights: tensor " + name + " has shape " + ShapeString(t->sizes()) +
                                       ", the config expects " + ShapeString(shape));
    } else {
      slot = t->scalar_type() == dtype ? std::move(t.value()) : t->to(dtype);
    }
  });
  KVAULT_RETURN_IF_ERROR(status);
  if (config.tie_word_embeddings) w.lm_head = w.embed;
  w.fingerprint = Fingerprint(config, w);
  return w;
}

Result<ModelWeights> LoadWeightsImpl(const ModelConfig& config, const fs::path& dir, torch::ScalarType dtype) {
  KVAULT_RETURN_IF_ERROR(config.Validate());
  KVAULT_RETURN_IF_ERROR(CheckFloatDtype(dtype));
  std::vector<std::string> files;
  Result<std::map<std::string, std::string>> map = ReadWeightMap(dir, files);
  if (!map.ok()) return map.status();
  const bool sharded = !map->empty();
  ShardSet shards(dir, std::move(map.value()), sharded ? std::string() : files[0]);

  return LoadWeightsFromImpl(config, dtype, [&](const std::string& name, const std::vector<int64_t>& shape) {
    return shards.Load(name, shape, dtype);
  });
}

// --- Random weights --------------------------------------------------------------------

// splitmix64's output function. Element i of a tensor is Mix(stream + (i + 1) * gamma): a
// counter-based generator, so values do not depend on thread count or fill order.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

// Fills a float32 tensor with uniform values of standard deviation `stddev` (half-width
// stddev * sqrt(3)), from 24 random bits per element. Only integer ops and one IEEE multiply
// per element (with a step computed from correctly rounded sqrt and divide): bit-identical on
// every machine.
torch::Tensor Uniform(const std::vector<int64_t>& shape, uint64_t stream, double stddev) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* out = t.data_ptr<float>();
  const double step = stddev * std::sqrt(3.0) / 8388608.0;  // half-width / 2^23
  at::parallel_for(0, t.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t r = Mix(stream + static_cast<uint64_t>(i + 1) * kGamma) >> 40;  // [0, 2^24)
      out[i] = static_cast<float>((static_cast<double>(r) - 8388607.5) * step);        // (-a, a)
    }
  });
  return t;
}

// Standard deviations that keep activations O(1): linear layers 1/sqrt(fan_in) (unit-variance
// outputs for unit-RMS inputs, which RMSNorm provides); the projections that write into the
// residual stream (o, down) further divided by sqrt(2 * layers), so the stream grows by O(1)
// over the whole stack; the embedding 1/sqrt(hidden) so that, tied or not, the LM head gives
// unit-variance logits; norms 1; biases small but non-zero so the bias path is exercised.
double InitStd(const ModelConfig& c, const std::string& name, const std::vector<int64_t>& shape) {
  if (name.ends_with("norm.weight")) return -1;  // sentinel: ones
  if (name.ends_with(".bias")) return 0.02;
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return 1.0 / std::sqrt(double(c.hidden_size));
  const double std = 1.0 / std::sqrt(static_cast<double>(shape[1]));
  if (name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight")) return std / std::sqrt(2.0 * double(c.num_layers));
  return std;
}

}  // namespace

Digest WeightsFingerprint(const ModelConfig& config, const ModelWeights& weights) { return Fingerprint(config, weights); }

void ForEachWeightTensor(
    const ModelConfig& config, ModelWeights& weights,
    const std::function<void(const std::string& name, const std::vector<int64_t>& shape, torch::Tensor& slot)>& fn) {
  weights.layers.resize(static_cast<size_t>(std::max<int64_t>(config.num_layers, 0)));
  ForEachTensor(config, weights, fn);
}

Result<ModelWeights> LoadWeights(const ModelConfig& config, const std::string& dir, torch::ScalarType dtype) {
  try {
    return LoadWeightsImpl(config, dir, dtype);
  } catch (const std::exception& e) {  // c10::Error, bad_alloc, filesystem errors
    return Status::InvalidArgument(std::string("weights: loading ") + dir + " failed: " + e.what());
  }
}

Result<ModelWeights> LoadWeightsFrom(const ModelConfig& config, torch::ScalarType dtype, const TensorSource& source) {
  try {
    return LoadWeightsFromImpl(config, dtype, source);
  } catch (const std::exception& e) {  // c10::Error, bad_alloc
    return Status::InvalidArgument(std::string("weights: loading failed: ") + e.what());
  }
}

ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed, torch::ScalarType dtype) {
  const Status valid = config.Validate();
  TORCH_CHECK(valid.ok(), "RandomWeights: ", valid.message());  // a programming error: throws
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(std::max<int64_t>(config.num_layers, 0)));
  ForEachTensor(config, w, [&](const std::string& name, const std::vector<int64_t>& shape, torch::Tensor& slot) {
    // Each tensor has its own stream, a function of the seed and its name only.
    const uint64_t stream = Mix(seed ^ Mix(XXH3_64bits(name.data(), name.size())));
    const double std = InitStd(config, name, shape);
    torch::Tensor t = std < 0 ? torch::ones(shape, torch::kFloat32) : Uniform(shape, stream, std);
    slot = t.to(dtype);
  });
  if (config.tie_word_embeddings) w.lm_head = w.embed;
  w.fingerprint = Fingerprint(config, w);
  return w;
}

ModelWeights ToDevice(ModelWeights w, torch::Device device) {
  const bool tied = w.lm_head.defined() && w.lm_head.is_same(w.embed);
  auto move = [&](torch::Tensor& t) {
    if (t.defined() && t.device() != device) t = t.to(device);
  };
  move(w.embed);
  move(w.final_norm);
  for (LayerWeights& l : w.layers) {
    for (torch::Tensor* t : {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.post_norm,
                             &l.gate_proj, &l.up_proj, &l.down_proj, &l.q_bias, &l.k_bias, &l.v_bias}) {
      move(*t);
    }
  }
  if (tied) {
    w.lm_head = w.embed;
  } else {
    move(w.lm_head);
  }
  return w;
}

Status SaveWeights(const ModelConfig& config, const ModelWeights& weights, const std::string& dir) {
  try {
    KVAULT_RETURN_IF_ERROR(config.Validate());
    if (!weights.embed.defined()) return Status::InvalidArgument("weights: nothing to save");
    if (weights.layers.size() != static_cast<size_t>(config.num_layers)) {
      return Status::InvalidArgument("weights: " + std::to_string(weights.layers.size()) + " layers, the config has " +
                                     std::to_string(config.num_layers));
    }
    const torch::ScalarType dtype = weights.embed.scalar_type();
    KVAULT_RETURN_IF_ERROR(CheckFloatDtype(dtype));
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    Status status;
    ForEachTensor(config, weights, [&](const std::string& name, const std::vector<int64_t>& shape, const torch::Tensor& t) {
      if (!status.ok()) return;
      if (!t.defined() || t.sizes().vec() != shape || t.scalar_type() != dtype) {
        status = Status::InvalidArgument("weights: tensor " + name + " is " +
                                         (t.defined() ? ShapeString(t.sizes()) + " " + c10::toString(t.scalar_type()) : "missing") +
                                         ", expected " + ShapeString(shape) + " " + c10::toString(dtype));
        return;
      }
      tensors.emplace_back(name, t);
    });
    KVAULT_RETURN_IF_ERROR(status);

    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return Status::IOError("weights: cannot create " + dir + ": " + ec.message());
    ModelConfig c = config;
    c.torch_dtype = DtypeName(dtype);  // describes the file as written
    const std::string config_path = (fs::path(dir) / "config.json").string();
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << c.ToJson() << "\n";
    out.close();
    if (!out) return Status::IOError("weights: cannot write " + config_path);
    return WriteSafetensors((fs::path(dir) / "model.safetensors").string(), tensors);
  } catch (const std::exception& e) {
    return Status::IOError(std::string("weights: saving to ") + dir + " failed: " + e.what());
  }
}

}  // namespace kvault::engine

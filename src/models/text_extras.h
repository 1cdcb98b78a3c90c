// A model's text side (tokenizer, chat template, BOS) as JSON, for the extras of a stored weights
// manifest (weight_store.h), so that a model whose source file is gone can still be served from
// the store: a GGUF file's vocabulary (tokenizer::GgufVocab, every field) and chat template; a
// Hugging Face directory's configuration and tokenizer files (not the weights). Byte strings
// that are not UTF-8 are written as {"hex": "..."}. Plain functions, no state.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "kvault/status.h"
#include "models/model_loader.h"

namespace kvault::gguf {
class GgufFile;
}  // namespace kvault::gguf

namespace kvault::models {

// {"vocab": {...}, "chat_template": text or null} of a GGUF file.
Result<nlohmann::json> GgufTextExtras(const gguf::GgufFile& file);
// The text side those extras describe (the tokenizer built as from the file).
Result<ModelText> GgufTextFromExtras(const nlohmann::json& text);

// {"files": {name: content}}: every *.json, *.jinja and tokenizer.model file of `dir` except
// the safetensors index.
Result<nlohmann::json> HuggingFaceTextExtras(const std::string& dir);
// Writes those files into a fresh temporary directory, loads the text side from it with
// `load_text` (the loader's reader of a Hugging Face directory), and removes it.
using TextOfDirectory = std::function<Result<ModelText>(const std::string& dir)>;
Result<ModelText> HuggingFaceTextFromExtras(const nlohmann::json& text, const TextOfDirectory& load_text);

}  // namespace kvault::models

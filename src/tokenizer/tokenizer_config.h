// The parts of tokenizer_config.json (and of tokenizer.json's added_tokens) the tokenizers use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvault/status.h"

namespace kvault::tokenizer {

// A Hugging Face AddedToken: matched in text verbatim.
struct AddedTokenSpec {
  uint32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
};

struct TokenizerConfig {
  std::optional<std::string> bos_token;  // absent or null: none
  std::optional<std::string> eos_token;
  std::vector<AddedTokenSpec> added_tokens;  // from added_tokens_decoder
};

// Parses tokenizer_config.json; empty text gives an empty config. Errors name the file.
Result<TokenizerConfig> ParseTokenizerConfig(std::string_view json_text);

// Parses one AddedToken object ({"content", "special", "lstrip", "rstrip", ...}); `id` comes
// from the caller. `where` names the file and field for errors.
Result<AddedTokenSpec> ParseAddedToken(const nlohmann::json& j, uint32_t id, const std::string& where);

// Reads a non-negative integer id that fits uint32_t.
std::optional<uint32_t> JsonToId(const nlohmann::json& j);

}  // namespace kvault::tokenizer

#include "tokenizer/tokenizer_config.h"

#include <charconv>

namespace kvault::tokenizer {
namespace {

using nlohmann::json;

// A token name is a string or an AddedToken object with "content"; null means none.
Result<std::optional<std::string>> TokenName(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      return std::optional<std::string>(content->get<std::string>());
    }
  }
  return Status::InvalidArgument(std::string("tokenizer_config.json: ") + key +
                                 " is neither a string nor an object with \"content\"");
}

bool FlagOr(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

}  // namespace

std::optional<uint32_t> JsonToId(const json& j) {
  if (!j.is_number_unsigned()) return std::nullopt;
  const uint64_t v = j.get<uint64_t>();
  if (v > UINT32_MAX - 1) return std::nullopt;
  return static_cast<uint32_t>(v);
}

Result<AddedTokenSpec> ParseAddedToken(const json& j, uint32_t id, const std::string& where) {
  if (!j.is_object()) return Status::InvalidArgument(where + ": an added token is not an object");
  auto content = j.find("content");
  if (content == j.end() || !content->is_string() || content->get<std::string>().empty()) {
    return Status::InvalidArgument(where + ": an added token has no \"content\" string");
  }
  AddedTokenSpec spec;
  spec.id = id;
  spec.content = content->get<std::string>();
  spec.special = FlagOr(j, "special", false);
  spec.lstrip = FlagOr(j, "lstrip", false);
  spec.rstrip = FlagOr(j, "rstrip", false);
  return spec;
}

Result<TokenizerConfig> ParseTokenizerConfig(std::string_view json_text) {
  TokenizerConfig config;
  if (json_text.empty()) return config;
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument("tokenizer_config.json: not a JSON object");
  }
  auto bos = TokenName(j, "bos_token");
  if (!bos.ok()) return bos.status();
  auto eos = TokenName(j, "eos_token");
  if (!eos.ok()) return eos.status();
  config.bos_token = bos.value();
  config.eos_token = eos.value();
  auto decoder = j.find("added_tokens_decoder");
  if (decoder != j.end() && decoder->is_object()) {
    for (const auto& [key, value] : decoder->items()) {
      uint32_t id = 0;
      auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || id == UINT32_MAX) {
        return Status::InvalidArgument("tokenizer_config.json: added_tokens_decoder key '" + key +
                                       "' is not an id");
      }
      auto spec = ParseAddedToken(value, id, "tokenizer_config.json added_tokens_decoder");
      if (!spec.ok()) return spec.status();
      config.added_tokens.push_back(std::move(spec.value()));
    }
  }
  return config;
}

}  // namespace kvault::tokenizer

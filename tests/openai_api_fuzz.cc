#include "openai_api_fuzz.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "openai/openai_api.h"
#include "openai/prompt.h"
#include "tokenizer/byte_tokenizer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::openai::fuzz {
namespace {

using tokenizer::ChatFamily;
using tokenizer::ChatMessage;
using tokenizer::ChatTemplate;

[[noreturn]] void Broken(const char* what, std::string_view detail) {
  std::fprintf(stderr, "openai_api fuzz: invariant broken: %s\n  %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

#define FUZZ_CHECK(cond, detail) \
  do {                           \
    if (!(cond)) Broken(#cond, detail); \
  } while (false)

const tokenizer::Tokenizer& ByteTokenizer() {
  static const std::unique_ptr<tokenizer::Tokenizer> tok = tokenizer::MakeByteTokenizer();
  return *tok;
}

std::vector<uint32_t> SpecialIds(const std::vector<uint32_t>& ids) {
  std::vector<uint32_t> out;
  for (uint32_t id : ids) {
    if (ByteTokenizer().IsSpecial(id)) out.push_back(id);
  }
  return out;
}

void CheckError(const ApiError& e, std::string_view body) {
  FUZZ_CHECK(e.http_status == 400, body);
  FUZZ_CHECK(!e.message.empty(), body);
  FUZZ_CHECK(tokenizer::IsValidUtf8(e.message) && tokenizer::IsValidUtf8(e.param), body);
  const auto j = nlohmann::json::parse(ErrorJson(e), nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(!j.is_discarded() && j["error"]["message"].is_string() && j["error"]["type"] == "invalid_request_error",
             body);
}

void CheckAccepted(const GenerationRequest& r, std::string_view body) {
  FUZZ_CHECK(r.max_tokens == -1 || (r.max_tokens >= 1 && r.max_tokens <= kMaxTokensLimit), body);
  FUZZ_CHECK(r.temperature >= 0 && r.temperature <= 2, body);
  FUZZ_CHECK(r.top_p > 0 && r.top_p <= 1, body);
  FUZZ_CHECK(r.stop.size() <= 4, body);
  for (const std::string& s : r.stop) FUZZ_CHECK(!s.empty(), body);
  FUZZ_CHECK(r.top_logprobs >= -1 && r.top_logprobs <= (r.chat ? 20 : 5), body);
  if (r.chat) {
    FUZZ_CHECK(!r.messages.empty() && r.prompt.empty(), body);
    for (const ChatMessage& m : r.messages) {
      FUZZ_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", body);
    }
  } else {
    FUZZ_CHECK(r.messages.empty(), body);
  }
  // Responses and stream chunks serialize (strings with any content included).
  std::vector<LogprobEntry> logprobs(1);
  logprobs[0].token.bytes.assign(1, '\xff');
  std::vector<std::string> texts(1, "ok");
  if (!r.stop.empty()) texts.push_back(r.stop[0]);
  for (const std::string& text : texts) {
    const auto whole = nlohmann::json::parse(CompletionJson(r, "id", 1, text, "stop", Usage{}, logprobs), nullptr, false);
    FUZZ_CHECK(!whole.is_discarded(), body);
    const auto chunk = nlohmann::json::parse(ChunkJson(r, "id", 1, text, true, "", logprobs), nullptr, false);
    FUZZ_CHECK(!chunk.is_discarded(), body);
  }
}

void CheckPrompt(const GenerationRequest& r, std::string_view body) {
  const tokenizer::Tokenizer& tok = ByteTokenizer();
  PromptOptions plain_options;
  PromptOptions legacy_options;
  legacy_options.special_tokens_in_content = true;
  if (!r.chat) {
    // A raw prompt parses its special tokens, flag or not (the byte tokenizer has no BOS).
    auto plain = PromptTokens(r, tok, ChatTemplate::ForFamily(ChatFamily::kChatML), plain_options);
    FUZZ_CHECK(plain.ok() && *plain == tok.Encode(r.prompt, false), body);
    auto legacy = PromptTokens(r, tok, ChatTemplate::ForFamily(ChatFamily::kChatML), legacy_options);
    FUZZ_CHECK(legacy.ok() && *legacy == *plain, body);
    return;
  }
  GenerationRequest harmless = r;
  for (ChatMessage& m : harmless.messages) m.content.assign(1, 'x');
  for (ChatFamily family : {ChatFamily::kChatML, ChatFamily::kLlama3, ChatFamily::kMistral}) {
    const ChatTemplate chat = ChatTemplate::ForFamily(family);
    auto text = chat.Render(r.messages, true);
    auto plain = PromptTokens(r, tok, chat, plain_options);
    FUZZ_CHECK(plain.ok() == text.ok(), body);
    if (!text.ok()) continue;  // e.g. Mistral's alternation
    FUZZ_CHECK(tok.Decode(*plain, false) == *text, body);
    auto template_only = PromptTokens(harmless, tok, chat, plain_options);
    FUZZ_CHECK(template_only.ok() && SpecialIds(*plain) == SpecialIds(*template_only), body);
    auto legacy = PromptTokens(r, tok, chat, legacy_options);
    FUZZ_CHECK(legacy.ok() && *legacy == tok.Encode(*text, false), body);
  }
}

}  // namespace

void FuzzOne(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {true, false}) {
    GenerationRequest r;
    if (auto e = ParseGenerationRequest(body, chat, &r)) {
      CheckError(*e, body);
      continue;
    }
    FUZZ_CHECK(r.chat == chat, body);
    CheckAccepted(r, body);
    CheckPrompt(r, body);
  }
}

}  // namespace kvault::openai::fuzz

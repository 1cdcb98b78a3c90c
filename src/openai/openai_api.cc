#include "openai/openai_api.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace kvault::openai {
namespace {

// Insertion-ordered objects: responses list their fields in OpenAI's order, and the legacy
// completions' top_logprobs maps keep the most likely token first.
using json = nlohmann::ordered_json;

ApiError Invalid(std::string message, std::string param = "", std::string code = "") {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::string Quoted(std::string_view name) {
  std::string q;
  q.reserve(name.size() + 2);
  q.push_back('\'');
  q.append(name);
  q.push_back('\'');
  return q;
}

ApiError WrongType(const std::string& param, const std::string& expected) {
  return Invalid("Invalid type for " + Quoted(param) + ": expected " + expected, param, "invalid_type");
}

// ---- The fields of a request, per endpoint (see ParseGenerationRequest in the header) ----

enum Endpoint : uint8_t { kChat = 1, kCompletions = 2, kBoth = 3 };

// An OpenAI field. `accepts` is null for the fields kvault implements (parsed one by one
// below); for the others it says which non-null values ask for nothing kvault does not do,
// and `accepted` names them for the error message.
struct Field {
  std::string_view name;
  uint8_t endpoints;
  bool (*accepts)(const json&);
  std::string_view accepted;
};

bool IsZero(const json& v) { return v.is_number() && v.get<double>() == 0; }
bool IsOne(const json& v) { return v.is_number() && v.get<double>() == 1; }
bool IsFalse(const json& v) { return v.is_boolean() && !v.get<bool>(); }
bool IsEmptyArray(const json& v) { return v.is_array() && v.empty(); }
bool IsEmptyObject(const json& v) { return v.is_object() && v.empty(); }
bool IsEmptyString(const json& v) { return v.is_string() && v.get<std::string>().empty(); }
bool IsObject(const json& v) { return v.is_object(); }
bool IsString(const json& v) { return v.is_string(); }
bool IsBoolean(const json& v) { return v.is_boolean(); }
bool IsNoToolChoice(const json& v) { return v == "none" || v == "auto"; }  // with no tools: no call
bool IsTextFormat(const json& v) { return v.is_object() && v.size() == 1 && v.value("type", json()) == "text"; }
bool IsTextModality(const json& v) { return v == json::array({"text"}); }
bool IsStandardTier(const json& v) { return v == "auto" || v == "default"; }
bool NeverButNull(const json&) { return false; }

constexpr Field kRequestFields[] = {
    // Implemented.
    {"model", kBoth, nullptr, ""},
    {"messages", kChat, nullptr, ""},
    {"prompt", kCompletions, nullptr, ""},
    {"max_tokens", kBoth, nullptr, ""},
    {"max_completion_tokens", kChat, nullptr, ""},
    {"temperature", kBoth, nullptr, ""},
    {"top_p", kBoth, nullptr, ""},
    {"seed", kBoth, nullptr, ""},
    {"stream", kBoth, nullptr, ""},
    {"stream_options", kBoth, nullptr, ""},
    {"stop", kBoth, nullptr, ""},
    {"user", kBoth, nullptr, ""},
    {"logprobs", kBoth, nullptr, ""},
    {"top_logprobs", kChat, nullptr, ""},
    // Not implemented: accepted only with the value that asks for what kvault does anyway.
    {"n", kBoth, IsOne, "1"},
    {"frequency_penalty", kBoth, IsZero, "0"},
    {"presence_penalty", kBoth, IsZero, "0"},
    {"logit_bias", kBoth, IsEmptyObject, "{}"},
    {"best_of", kCompletions, IsOne, "1"},
    {"echo", kCompletions, IsFalse, "false"},
    {"suffix", kCompletions, IsEmptyString, "\"\""},
    {"tools", kChat, IsEmptyArray, "[]"},
    {"tool_choice", kChat, IsNoToolChoice, "\"none\" or \"auto\" (there are no tools to call)"},
    {"functions", kChat, IsEmptyArray, "[]"},
    {"function_call", kChat, IsNoToolChoice, "\"none\" or \"auto\" (there are no functions to call)"},
    {"response_format", kChat, IsTextFormat, "{\"type\": \"text\"} (constrained decoding is not implemented)"},
    {"modalities", kChat, IsTextModality, "[\"text\"]"},
    {"store", kChat, IsFalse, "false (kvault serve stores no completions)"},
    {"service_tier", kChat, IsStandardTier, "\"auto\" or \"default\""},
    {"audio", kChat, NeverButNull, "null"},
    {"prediction", kChat, NeverButNull, "null"},
    {"reasoning_effort", kChat, NeverButNull, "null"},
    {"verbosity", kChat, NeverButNull, "null"},
    {"web_search_options", kChat, NeverButNull, "null"},
    // Labels and hints that cannot change the answer: any value of their type.
    {"metadata", kChat, IsObject, "an object"},
    {"prompt_cache_key", kChat, IsString, "a string"},
    {"safety_identifier", kChat, IsString, "a string"},
    {"parallel_tool_calls", kChat, IsBoolean, "a boolean (there are no tools to call)"},
};

// Fields of a chat message beside its role and content (parsed in ParseMessage).
constexpr Field kMessageFields[] = {
    {"role", kChat, nullptr, ""},
    {"content", kChat, nullptr, ""},
    {"name", kChat, NeverButNull, "null (the chat template has no place for names)"},
    {"tool_calls", kChat, IsEmptyArray, "[]"},
    {"function_call", kChat, NeverButNull, "null"},
    {"tool_call_id", kChat, NeverButNull, "null"},
    {"refusal", kChat, NeverButNull, "null"},
    {"audio", kChat, NeverButNull, "null"},
};

// The fields of stream_options.
constexpr Field kStreamOptionFields[] = {
    {"include_usage", kBoth, nullptr, ""},
    {"include_obfuscation", kBoth, IsBoolean, "a boolean (kvault serve adds no obfuscation padding)"},
};

// A value as JSON text for an error message: at most ~200 bytes, cut on a character border
// (the message must stay valid UTF-8).
std::string Excerpt(const json& value) {
  constexpr size_t kMax = 200;
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() <= kMax) return text;
  text.resize(tokenizer::CompleteUtf8PrefixLength(std::string_view(text).substr(0, kMax)));
  return text + "...";
}

// Checks every key of `object` against `fields` for `endpoint`: the first key that is not a
// field there (unknown_parameter) or an unimplemented field with a value other than null and
// its accepted ones (unsupported_parameter) is the error. `prefix` is the key's path ("" at
// the top, "messages[2]." in a message).
template <size_t N>
std::optional<ApiError> CheckFields(const json& object, const Field (&fields)[N], Endpoint endpoint,
                                    const std::string& prefix) {
  for (const auto& [key, value] : object.items()) {
    const std::string param = prefix + key;
    const Field* field = nullptr;
    for (const Field& f : fields) {
      if (f.name == key && (f.endpoints & endpoint) != 0) field = &f;
    }
    if (field == nullptr) {
      return Invalid("Unrecognized request argument supplied: " + param, param, "unknown_parameter");
    }
    if (field->accepts == nullptr || value.is_null() || field->accepts(value)) continue;
    return Invalid("Unsupported parameter: " + Quoted(param) + " is not supported by kvault serve with the value " +
                       Excerpt(value) + "; it accepts only " + std::string(field->accepted) + " (or null)",
                   param, "unsupported_parameter");
  }
  return std::nullopt;
}

// An integer field's value. JSON numbers that are integers (a float such as 5.0 or 1e20 whose
// value is whole counts too) give kOk, or kOutOfInt64 beyond int64_t (*out is then INT64_MAX,
// or INT64_MIN below it); other values kNotInteger.
enum class IntegerKind { kOk, kOutOfInt64, kNotInteger };
IntegerKind IntegerOf(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      *out = std::numeric_limits<int64_t>::max();
      return IntegerKind::kOutOfInt64;
    }
    *out = static_cast<int64_t>(u);
    return IntegerKind::kOk;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return IntegerKind::kOk;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::trunc(d) != d) return IntegerKind::kNotInteger;
    if (d >= 0x1p63 || d < -0x1p63) {
      *out = d > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
      return IntegerKind::kOutOfInt64;
    }
    *out = static_cast<int64_t>(d);
    return IntegerKind::kOk;
  }
  return IntegerKind::kNotInteger;
}

// The text of a number as the client wrote it (for messages about huge values).
std::string NumberText(const json& v) { return v.dump(); }

// A message's content: a string, or an array of {"type": "text", "text": ...} parts. Null or
// absent is refused: OpenAI allows it only beside tool calls, which kvault does not implement.
std::optional<ApiError> ContentOf(const json& m, const std::string& prefix, std::string* out) {
  const std::string param = prefix + "content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) {
    return Invalid("Invalid value for " + Quoted(param) +
                       ": a message needs content, a string or an array of text parts (null content goes "
                       "with tool calls, which kvault serve does not support)",
                   param, it == m.end() ? "missing_required_parameter" : "invalid_type");
  }
  if (it->is_string()) {
    *out = it->get<std::string>();
    return std::nullopt;
  }
  if (!it->is_array()) return WrongType(param, "a string or an array of text parts");
  out->clear();
  for (size_t k = 0; k < it->size(); ++k) {
    const json& part = (*it)[k];
    const std::string part_param = param + "[" + std::to_string(k) + "]";
    if (!part.is_object()) return WrongType(part_param, "an object {\"type\": \"text\", \"text\": ...}");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) return WrongType(part_param + ".type", "a string");
    if (*type != "text") {
      return Invalid("Unsupported value for " + Quoted(part_param + ".type") + ": only text content parts are supported",
                     part_param + ".type", "unsupported_value");
    }
    for (const auto& [key, value] : part.items()) {
      if (key != "type" && key != "text") {
        return Invalid("Unrecognized request argument supplied: " + part_param + "." + key, part_param + "." + key,
                       "unknown_parameter");
      }
    }
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) return WrongType(part_param + ".text", "a string");
    *out += text->get<std::string>();
  }
  return std::nullopt;
}

std::optional<ApiError> ParseMessage(const json& m, size_t i, tokenizer::ChatMessage* out) {
  const std::string prefix = "messages[" + std::to_string(i) + "].";
  if (!m.is_object()) return WrongType("messages[" + std::to_string(i) + "]", "an object");
  if (auto e = CheckFields(m, kMessageFields, kChat, prefix)) return e;
  auto role = m.find("role");
  if (role == m.end() || !role->is_string()) return WrongType(prefix + "role", "a string");
  out->role = role->get<std::string>();
  if (out->role == "developer") out->role = "system";  // OpenAI's newer name for it
  if (out->role == "tool" || out->role == "function") {
    return Invalid("Unsupported value for " + Quoted(prefix + "role") + ": '" + out->role +
                       "' messages are not supported (kvault serve implements no tool calls)",
                   prefix + "role", "unsupported_value");
  }
  if (out->role != "system" && out->role != "user" && out->role != "assistant") {
    return Invalid("Invalid value for " + Quoted(prefix + "role") + ": '" + out->role +
                       "'; supported roles are system, developer, user and assistant",
                   prefix + "role", "invalid_value");
  }
  return ContentOf(m, prefix, &out->content);
}

json UsageObject(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json Base(const GenerationRequest& r, const std::string& id, int64_t created, bool chunk) {
  return {{"id", id},
          {"object", r.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", created},
          {"model", r.model}};
}

json FinishReason(const std::string& f) { return f.empty() ? json(nullptr) : json(f); }

// A log-probability for JSON, which has no infinities: OpenAI's floor stands for -inf.
double FiniteLogprob(double lp) { return std::isfinite(lp) ? lp : -9999.0; }

json ChatToken(const TokenLogprob& t) {
  json bytes = json::array();
  for (unsigned char b : t.bytes) bytes.push_back(b);
  return {{"token", tokenizer::SanitizeUtf8(t.bytes)}, {"logprob", FiniteLogprob(t.logprob)}, {"bytes", std::move(bytes)}};
}

// choices[i].logprobs: null when not asked (or, in a stream chunk, no token to report).
// Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}],
// "refusal": null}; completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}],
// text_offset}.
json LogprobsObject(const GenerationRequest& r, const std::vector<LogprobEntry>& entries, bool chunk) {
  if (r.top_logprobs < 0 || (chunk && entries.empty())) return nullptr;
  if (r.chat) {
    json content = json::array();
    for (const LogprobEntry& e : entries) {
      json top = json::array();
      for (const TokenLogprob& t : e.top) top.push_back(ChatToken(t));
      json item = ChatToken(e.token);
      item["top_logprobs"] = std::move(top);
      content.push_back(std::move(item));
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  for (const LogprobEntry& e : entries) {
    tokens.push_back(tokenizer::SanitizeUtf8(e.token.bytes));
    token_logprobs.push_back(FiniteLogprob(e.token.logprob));
    json top = json::object();
    for (const TokenLogprob& t : e.top) {
      const std::string text = tokenizer::SanitizeUtf8(t.bytes);
      if (!top.contains(text)) top[text] = FiniteLogprob(t.logprob);  // tokens that read the same: the likeliest
    }
    top_logprobs.push_back(std::move(top));
    offsets.push_back(e.text_offset);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

// "choices" of a response or stream chunk: its one choice, {"index": 0, <body_key>: body,
// "logprobs", "finish_reason"} in that order; body_key is "message" (chat), "delta" (chat
// chunk) or "text" (completions).
json OneChoice(const GenerationRequest& r, const char* body_key, json body, const std::vector<LogprobEntry>& logprobs,
               bool chunk, const std::string& finish_reason) {
  json choice = json::object();
  choice["index"] = 0;
  choice[body_key] = std::move(body);
  choice["logprobs"] = LogprobsObject(r, logprobs, chunk);
  choice["finish_reason"] = FinishReason(finish_reason);
  return json::array({std::move(choice)});
}

}  // namespace

std::string ErrorJson(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);  // never throws on a bad message
}

std::optional<ApiError> ParseGenerationRequest(std::string_view body, bool chat, GenerationRequest* out) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);  // also rejects invalid UTF-8
  if (j.is_discarded()) return Invalid("the request body is not valid JSON (or not valid UTF-8)");
  if (!j.is_object()) return Invalid("the request body must be a JSON object");
  const Endpoint endpoint = chat ? kChat : kCompletions;
  if (auto e = CheckFields(j, kRequestFields, endpoint, "")) return e;
  GenerationRequest r;
  r.chat = chat;
  auto str = [&](const char* key, std::string* dst, bool required) -> std::optional<ApiError> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) return Invalid(std::string("missing required parameter '") + key + "'", key, "missing_required_parameter");
      return std::nullopt;
    }
    if (!it->is_string()) return WrongType(key, "a string");
    *dst = it->get<std::string>();
    return std::nullopt;
  };
  if (auto e = str("model", &r.model, true)) return e;
  if (auto e = str("user", &r.user, false)) return e;
  if (chat) {
    auto it = j.find("messages");
    if (it == j.end() || it->is_null()) {
      return Invalid("missing required parameter 'messages'", "messages", "missing_required_parameter");
    }
    if (!it->is_array()) return WrongType("messages", "an array of messages");
    if (it->empty()) return Invalid("'messages' must be a non-empty array", "messages", "invalid_value");
    for (size_t i = 0; i < it->size(); ++i) {
      tokenizer::ChatMessage msg;
      if (auto e = ParseMessage((*it)[i], i, &msg)) return e;
      r.messages.push_back(std::move(msg));
    }
  } else {
    auto it = j.find("prompt");
    if (it == j.end() || it->is_null()) {
      return Invalid("missing required parameter 'prompt'", "prompt", "missing_required_parameter");
    }
    if (it->is_array()) {
      return Invalid("Unsupported value for 'prompt': arrays (of strings or of token ids) are not supported; send one "
                     "string",
                     "prompt", "unsupported_value");
    }
    if (!it->is_string()) return WrongType("prompt", "a string");
    r.prompt = it->get<std::string>();
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    int64_t v = 0;
    const IntegerKind kind = IntegerOf(*it, &v);
    if (kind == IntegerKind::kNotInteger) return WrongType(key, "an integer");
    if (v <= 0) {
      return Invalid(Quoted(key) + " must be at least 1 (got " + NumberText(*it) + ")", key, "integer_below_min_value");
    }
    if (v > kMaxTokensLimit) {
      return Invalid(Quoted(key) + " is too large: " + NumberText(*it) +
                         " tokens exceeds the context length of any model kvault serves (at most " +
                         std::to_string(kMaxTokensLimit) + ")",
                     key, "context_length_exceeded");
    }
    r.max_tokens = v;
  }
  if (auto it = j.find("temperature"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return WrongType("temperature", "a number");
    r.temperature = it->get<double>();
    if (!(r.temperature >= 0 && r.temperature <= 2)) return Invalid("'temperature' must be in [0, 2]", "temperature", "invalid_value");
  }
  if (auto it = j.find("top_p"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return WrongType("top_p", "a number");
    r.top_p = it->get<double>();
    if (!(r.top_p > 0 && r.top_p <= 1)) return Invalid("'top_p' must be in (0, 1]", "top_p", "invalid_value");
  }
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    if (it->is_number_unsigned()) {
      r.seed = it->get<uint64_t>();  // the whole uint64 range
    } else if (int64_t v = 0; IntegerOf(*it, &v) == IntegerKind::kOk) {
      r.seed = static_cast<uint64_t>(v);
    } else {
      return WrongType("seed", "an integer in the int64 or uint64 range");
    }
  }
  if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return WrongType("stream", "a boolean");
    r.stream = it->get<bool>();
  }
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("stream_options", "an object");
    if (auto e = CheckFields(*it, kStreamOptionFields, endpoint, "stream_options.")) return e;
    if (auto u = it->find("include_usage"); u != it->end() && !u->is_null()) {
      if (!u->is_boolean()) return WrongType("stream_options.include_usage", "a boolean");
      r.include_usage = u->get<bool>();
    }
  }
  if (chat) {
    bool logprobs = false;
    if (auto it = j.find("logprobs"); it != j.end() && !it->is_null()) {
      if (!it->is_boolean()) return WrongType("logprobs", "a boolean");
      logprobs = it->get<bool>();
    }
    if (logprobs) r.top_logprobs = 0;
    if (auto it = j.find("top_logprobs"); it != j.end() && !it->is_null()) {
      int64_t k = 0;
      const IntegerKind kind = IntegerOf(*it, &k);
      if (kind == IntegerKind::kNotInteger) return WrongType("top_logprobs", "an integer");
      if (kind != IntegerKind::kOk || k < 0 || k > 20) {
        return Invalid("'top_logprobs' must be in [0, 20]", "top_logprobs", "invalid_value");
      }
      if (!logprobs) return Invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value");
      r.top_logprobs = static_cast<int>(k);
    }
  } else if (auto it = j.find("logprobs"); it != j.end() && !it->is_null()) {
    int64_t k = 0;
    const IntegerKind kind = IntegerOf(*it, &k);
    if (kind == IntegerKind::kNotInteger) return WrongType("logprobs", "an integer");
    if (kind != IntegerKind::kOk || k < 0 || k > 5) return Invalid("'logprobs' must be in [0, 5]", "logprobs", "invalid_value");
    r.top_logprobs = static_cast<int>(k);
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      r.stop.push_back(it->get<std::string>());
    } else if (it->is_array() && it->size() <= 4) {
      for (const json& s : *it) {
        if (!s.is_string()) return WrongType("stop", "a string or an array of up to 4 strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      return Invalid("'stop' must be a string or an array of up to 4 strings", "stop", "invalid_value");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) return Invalid("stop strings must not be empty", "stop", "invalid_value");
    }
  }
  *out = std::move(r);
  return std::nullopt;
}

std::string CompletionJson(const GenerationRequest& r, const std::string& id, int64_t created, const std::string& text,
                           const std::string& finish_reason, const Usage& usage,
                           const std::vector<LogprobEntry>& logprobs) {
  json j = Base(r, id, created, false);
  if (r.chat) {
    json message = {{"role", "assistant"}, {"content", text}};
    j["choices"] = OneChoice(r, "message", std::move(message), logprobs, false, finish_reason);
  } else {
    j["choices"] = OneChoice(r, "text", text, logprobs, false, finish_reason);
  }
  j["usage"] = UsageObject(usage);
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ChunkJson(const GenerationRequest& r, const std::string& id, int64_t created, const std::string& delta,
                      bool first, const std::string& finish_reason, const std::vector<LogprobEntry>& logprobs) {
  json j = Base(r, id, created, true);
  if (r.chat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || finish_reason.empty()) d["content"] = delta;
    j["choices"] = OneChoice(r, "delta", std::move(d), logprobs, true, finish_reason);
  } else {
    j["choices"] = OneChoice(r, "text", delta, logprobs, true, finish_reason);
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string UsageChunkJson(const GenerationRequest& r, const std::string& id, int64_t created, const Usage& usage) {
  json j = Base(r, id, created, true);
  j["choices"] = json::array();
  j["usage"] = UsageObject(usage);
  return j.dump();
}

namespace {
json ModelObject(const std::string& model_id, int64_t created) {
  return {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "kvault"}};
}
}  // namespace

std::string ModelsJson(const std::string& model_id, int64_t created) {
  return json({{"object", "list"}, {"data", json::array({ModelObject(model_id, created)})}}).dump();
}

std::string ModelJson(const std::string& model_id, int64_t created) { return ModelObject(model_id, created).dump(); }

}  // namespace kvault::openai

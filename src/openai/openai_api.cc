#include "openai/openai_api.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace kvault::openai {
namespace {

// Insertion-ordered objects: responses list their fields in OpenAI's order, and the legacy
// completions' top_logprobs maps keep the most likely token first.
using json = nlohmann::ordered_json;

ApiError Invalid(std::string message, std::string param = "") {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::optional<ApiError> ContentOf(const json& m, size_t i, std::string* out) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) {
    out->clear();
    return std::nullopt;
  }
  if (it->is_string()) {
    *out = it->get<std::string>();
    return std::nullopt;
  }
  if (!it->is_array()) return Invalid("content must be a string or an array of text parts", param);
  out->clear();
  for (const json& part : *it) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string() || part["type"] != "text" ||
        !part.contains("text") || !part["text"].is_string()) {
      return Invalid("only text content parts are supported", param);
    }
    *out += part["text"].get<std::string>();
  }
  return std::nullopt;
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
  return j.dump();
}

std::optional<ApiError> ParseGenerationRequest(std::string_view body, bool chat, GenerationRequest* out) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);  // also rejects invalid UTF-8
  if (j.is_discarded()) return Invalid("the request body is not valid JSON (or not valid UTF-8)");
  if (!j.is_object()) return Invalid("the request body must be a JSON object");
  GenerationRequest r;
  r.chat = chat;
  auto str = [&](const char* key, std::string* dst, bool required) -> std::optional<ApiError> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) return Invalid(std::string("missing required parameter '") + key + "'", key);
      return std::nullopt;
    }
    if (!it->is_string()) return Invalid(std::string("'") + key + "' must be a string", key);
    *dst = it->get<std::string>();
    return std::nullopt;
  };
  if (auto e = str("model", &r.model, true)) return e;
  if (auto e = str("user", &r.user, false)) return e;
  if (chat) {
    auto it = j.find("messages");
    if (it == j.end() || !it->is_array() || it->empty()) return Invalid("'messages' must be a non-empty array", "messages");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return Invalid("each message needs a string 'role'", "messages[" + std::to_string(i) + "].role");
      }
      tokenizer::ChatMessage msg;
      msg.role = m["role"].get<std::string>();
      if (msg.role == "developer") msg.role = "system";  // OpenAI's newer name for it
      if (auto e = ContentOf(m, i, &msg.content)) return e;
      r.messages.push_back(std::move(msg));
    }
  } else {
    auto it = j.find("prompt");
    if (it == j.end() || !it->is_string()) return Invalid("'prompt' must be a string", "prompt");
    r.prompt = it->get<std::string>();
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_number_integer()) return Invalid(std::string("'") + key + "' must be an integer", key);
    r.max_tokens = it->get<int64_t>();
    if (r.max_tokens <= 0) return Invalid(std::string("'") + key + "' must be at least 1", key);
  }
  if (auto it = j.find("temperature"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return Invalid("'temperature' must be a number", "temperature");
    r.temperature = it->get<double>();
    if (r.temperature < 0 || r.temperature > 2) return Invalid("'temperature' must be in [0, 2]", "temperature");
  }
  if (auto it = j.find("top_p"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return Invalid("'top_p' must be a number", "top_p");
    r.top_p = it->get<double>();
    if (!(r.top_p > 0 && r.top_p <= 1)) return Invalid("'top_p' must be in (0, 1]", "top_p");
  }
  if (auto it = j.find("n"); it != j.end() && !it->is_null() && !(it->is_number_integer() && it->get<int64_t>() == 1)) {
    return Invalid("only n = 1 is supported", "n");
  }
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) return Invalid("'seed' must be an integer", "seed");
    r.seed = static_cast<uint64_t>(it->get<int64_t>());
  }
  if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return Invalid("'stream' must be a boolean", "stream");
    r.stream = it->get<bool>();
  }
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Invalid("'stream_options' must be an object", "stream_options");
    if (auto u = it->find("include_usage"); u != it->end() && !u->is_null()) {
      if (!u->is_boolean()) return Invalid("'stream_options.include_usage' must be a boolean", "stream_options");
      r.include_usage = u->get<bool>();
    }
  }
  if (chat) {
    bool logprobs = false;
    if (auto it = j.find("logprobs"); it != j.end() && !it->is_null()) {
      if (!it->is_boolean()) return Invalid("'logprobs' must be a boolean", "logprobs");
      logprobs = it->get<bool>();
    }
    if (logprobs) r.top_logprobs = 0;
    if (auto it = j.find("top_logprobs"); it != j.end() && !it->is_null()) {
      if (!it->is_number_integer()) return Invalid("'top_logprobs' must be an integer", "top_logprobs");
      const auto k = it->get<int64_t>();
      if (k < 0 || k > 20) return Invalid("'top_logprobs' must be in [0, 20]", "top_logprobs");
      if (!logprobs) return Invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
      r.top_logprobs = static_cast<int>(k);
    }
  } else if (auto it = j.find("logprobs"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) return Invalid("'logprobs' must be an integer", "logprobs");
    const auto k = it->get<int64_t>();
    if (k < 0 || k > 5) return Invalid("'logprobs' must be in [0, 5]", "logprobs");
    r.top_logprobs = static_cast<int>(k);
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      r.stop.push_back(it->get<std::string>());
    } else if (it->is_array() && it->size() <= 4) {
      for (const json& s : *it) {
        if (!s.is_string()) return Invalid("'stop' must be a string or an array of up to 4 strings", "stop");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      return Invalid("'stop' must be a string or an array of up to 4 strings", "stop");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) return Invalid("stop strings must not be empty", "stop");
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

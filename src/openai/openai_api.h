// The OpenAI-compatible wire format of `kvault serve`: parsing and validating requests, and
// building responses, stream chunks and error objects. No I/O, no engine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_template.h"

namespace kvault::openai {

// An error as OpenAI reports it: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" = null
  std::string code;   // "" = null
};
std::string ErrorJson(const ApiError& e);

// A chat completion (messages) or a completion (prompt).
struct GenerationRequest {
  bool chat = true;
  std::string model;
  std::vector<tokenizer::ChatMessage> messages;  // chat
  std::string prompt;                 // completions
  int64_t max_tokens = -1;            // -1: not given (the server's default)
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<uint64_t> seed;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  std::vector<std::string> stop;
  std::string user;
  // Log-probabilities of the output tokens: -1 not asked; else how many most likely tokens to
  // list for each. Chat: "logprobs": true with "top_logprobs" (0..20, default 0); completions:
  // "logprobs": N (0..5).
  int top_logprobs = -1;
};

// A token in a logprobs listing: its exact bytes (the response's `token` is them with invalid
// UTF-8 replaced by U+FFFD, `bytes` the exact values) and its log-probability.
struct TokenLogprob {
  std::string bytes;
  double logprob = 0;
};
// One generated token's entry: the token, the most likely tokens at its step (most likely
// first), and (completions) its offset in characters in the generated text.
struct LogprobEntry {
  TokenLogprob token;
  std::vector<TokenLogprob> top;
  int64_t text_offset = 0;
};

// The largest max_tokens / max_completion_tokens a request may ask for: more than any context
// kvault serves (a larger value is refused with code context_length_exceeded here; the server
// refuses one above its own --ctx-size the same way). Keeps prompt + max_tokens far from
// int64_t overflow.
inline constexpr int64_t kMaxTokensLimit = 2147483647;

// Parses and validates a request body (JSON) for /v1/chat/completions (chat) or
// /v1/completions; the ApiError says what is wrong and where (param, and an OpenAI-style code).
//
// Every key of the body (and of each message, content part and stream_options) is checked
// against the fields OpenAI defines for that endpoint, before anything else:
//   - a key OpenAI does not define there: 400 unknown_parameter ("Unrecognized request
//     argument supplied: KEY"), as OpenAI answers;
//   - a field kvault implements (model, messages / prompt, max_tokens, max_completion_tokens,
//     temperature, top_p, seed, stream, stream_options.include_usage, stop, user, logprobs,
//     top_logprobs): parsed and validated;
//   - a field kvault does not implement: accepted only when null or the value that asks for
//     what kvault does anyway (n 1, penalties 0, logit_bias {}, tools / functions [],
//     tool_choice / function_call "none" or "auto", response_format {"type": "text"}, echo /
//     store false, best_of 1, suffix "", modalities ["text"], service_tier "auto" / "default",
//     a message's tool_calls []); labels and hints that cannot change an answer (metadata,
//     prompt_cache_key, safety_identifier, parallel_tool_calls, stream_options.
//     include_obfuscation) with any value of their type. Any other value: 400
//     unsupported_parameter naming the field.
// Then: malformed JSON, invalid UTF-8, wrong types (invalid_type), missing fields, content
// null or absent (any role: null content only goes with tool calls), roles other than system,
// developer, user, assistant (tool/function: unsupported_value), content parts other than
// text, prompt arrays, max_tokens below 1 (integer_below_min_value) or above kMaxTokensLimit
// (context_length_exceeded; integers beyond int64 included), temperature outside [0, 2], top_p
// outside (0, 1], more than 4 stop strings, top_logprobs outside [0, 20] or without logprobs =
// true (chat), logprobs outside [0, 5] (completions). Integers may be written as whole floats
// (5.0); seed takes the whole int64 and uint64 ranges.
std::optional<ApiError> ParseGenerationRequest(std::string_view body, bool chat, GenerationRequest* out);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // usage.prompt_tokens_details.cached_tokens
};

// Whole responses. `logprobs`: one entry per generated token, reported when the request asked
// (r.top_logprobs >= 0; choices[0].logprobs is null otherwise).
std::string CompletionJson(const GenerationRequest& r, const std::string& id, int64_t created, const std::string& text,
                           const std::string& finish_reason, const Usage& usage,
                           const std::vector<LogprobEntry>& logprobs = {});
// One server-sent event's data for a stream: a text delta (chat: the first one also carries
// the role), or the final chunk with its finish_reason; usage-only chunk when include_usage.
// `logprobs`: the entries of the tokens this chunk reports (null when none or not asked).
std::string ChunkJson(const GenerationRequest& r, const std::string& id, int64_t created, const std::string& delta,
                      bool first, const std::string& finish_reason, const std::vector<LogprobEntry>& logprobs = {});
std::string UsageChunkJson(const GenerationRequest& r, const std::string& id, int64_t created, const Usage& usage);
std::string ModelsJson(const std::string& model_id, int64_t created);
std::string ModelJson(const std::string& model_id, int64_t created);  // GET /v1/models/{id}

}  // namespace kvault::openai

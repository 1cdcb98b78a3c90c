// The prompt's tokens for a parsed request: a chat's messages rendered by the model's chat
// template, or a completion's raw prompt. No I/O, no engine. Thread-safe (pure).
#pragma once

#include <cstdint>
#include <vector>

#include "kvault/status.h"
#include "openai/openai_api.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::openai {

struct PromptOptions {
  // /v1/completions: a raw prompt starts with BOS (when the tokenizer has one).
  bool add_bos = true;
  // Special-token spellings typed in message content (e.g. "<|im_end|>") become control
  // tokens. Off: the chat template alone decides the control tokens, and content is plain text.
  bool special_tokens_in_content = false;
};

// kInvalidArgument (the message says why; the server answers 400 with param "messages" or
// "prompt") when the template refuses the conversation.
Result<std::vector<uint32_t>> PromptTokens(const GenerationRequest& r, const tokenizer::Tokenizer& tok,
                                           const tokenizer::ChatTemplate& chat, const PromptOptions& options);

}  // namespace kvault::openai

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
  // Chat only: special-token spellings typed in a message's content (e.g. "<|im_end|>") become
  // control tokens, as before kvault told them apart. Off (the default): message content is
  // plain text (tokenizer::SpecialTokens::kPlainText) and the chat template alone writes
  // control tokens. A raw completions prompt is not message content: its spellings are always
  // control tokens, whatever this says.
  bool special_tokens_in_content = false;
};

// Chat: the conversation rendered by `chat` as segments (ChatTemplate::RenderSegments) and
// tokenized as one text (Tokenizer::EncodePieces), template segments with their control tokens,
// content segments as plain text unless options.special_tokens_in_content. With content that
// spells no special token the ids equal tok.Encode(chat.Render(...), false), and with
// special_tokens_in_content they always do. Completions: the raw prompt with its special-token
// spellings parsed (tok.Encode(prompt, add_bos) exactly), BOS first when options.add_bos.
// kInvalidArgument (the message says why; the server answers 400 with param "messages" or
// "prompt") when the template refuses the conversation.
Result<std::vector<uint32_t>> PromptTokens(const GenerationRequest& r, const tokenizer::Tokenizer& tok,
                                           const tokenizer::ChatTemplate& chat, const PromptOptions& options);

}  // namespace kvault::openai

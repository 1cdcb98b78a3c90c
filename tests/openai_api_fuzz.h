// The OpenAI request parser's fuzz target (issue 16): one request body in, every path of
// ParseGenerationRequest and PromptTokens exercised, invariants checked. Test-only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvault::openai::fuzz {

// Parses `data` as a /v1/chat/completions and as a /v1/completions body. A refusal must be a
// well-formed 400 OpenAI error object with a valid UTF-8 message; an accepted request must hold only values the parser
// promises (max_tokens, temperature, top_p, stop, roles ...), must serialize as a response and
// a stream chunk, and its prompt's tokens (PromptTokens over the byte tokenizer with each chat
// family's template, special tokens in content off and on) must keep item 5's invariants:
// content adds no control token (the same control tokens as a conversation with harmless
// content), the ids decode back to the rendered text, and with the flag on they equal
// Encode(Render(...)). A broken invariant prints it to stderr and aborts; the function must
// never crash, hang, leak or throw. Thread-compatible (keeps a lazily built tokenizer).
void FuzzOne(const uint8_t* data, size_t size);

}  // namespace kvault::openai::fuzz

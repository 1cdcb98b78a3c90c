#include "openai/prompt.h"

namespace kvault::openai {

Result<std::vector<uint32_t>> PromptTokens(const GenerationRequest& r, const tokenizer::Tokenizer& tok,
                                           const tokenizer::ChatTemplate& chat, const PromptOptions& options) {
  if (!r.chat) return tok.Encode(r.prompt, options.add_bos);
  auto text = chat.Render(r.messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return text.status();
  return tok.Encode(*text, /*add_bos=*/false);  // the template wrote BOS where it belongs
}

}  // namespace kvault::openai

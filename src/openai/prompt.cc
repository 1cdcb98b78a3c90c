#include "openai/prompt.h"

namespace kvault::openai {

Result<std::vector<uint32_t>> PromptTokens(const GenerationRequest& r, const tokenizer::Tokenizer& tok,
                                           const tokenizer::ChatTemplate& chat, const PromptOptions& options) {
  using tokenizer::SpecialTokens;
  // A raw prompt spells its control tokens on purpose (fill-in-the-middle markers, a
  // client-side template, "<|endoftext|>" separators): they are always parsed.
  if (!r.chat) return tok.Encode(r.prompt, options.add_bos, SpecialTokens::kParse);
  const SpecialTokens user_text =
      options.special_tokens_in_content ? SpecialTokens::kParse : SpecialTokens::kPlainText;
  auto segments = chat.RenderSegments(r.messages, /*add_generation_prompt=*/true);
  if (!segments.ok()) return segments.status();
  // One text, tokenized in one run: the template's pieces may spell control tokens, the
  // messages' content only as its user_text setting allows. The template wrote BOS where it
  // belongs, so none is added.
  std::vector<tokenizer::TextPiece> pieces;
  pieces.reserve(segments->size());
  for (const tokenizer::PromptSegment& s : *segments) {
    pieces.push_back({s.text, s.source == tokenizer::PromptSegment::Source::kTemplate ? SpecialTokens::kParse
                                                                                       : user_text});
  }
  return tok.EncodePieces(pieces, /*add_bos=*/false);
}

}  // namespace kvault::openai

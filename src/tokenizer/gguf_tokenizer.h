// Tokenizers and chat templates from the metadata of a GGUF file (no LibTorch).
//
// A GGUF file carries its tokenizer as tokenizer.ggml.* keys (tokens, token types, scores,
// merges, special ids, flags) and its prompt format as tokenizer.chat_template. The
// tokenizers built here reproduce llama.cpp's llama_tokenize(text, add_special, parse_special
// = true) for the supported models, token for token:
//
//   model "gpt2"   byte-level BPE (Llama 3, Qwen2, SmolLM, GPT-2): the pre-tokenizer regexes
//                  named by tokenizer.ggml.pre run one after the other (each splits the pieces
//                  of the one before into matches and the gaps between them), every piece is
//                  mapped to GPT-2's byte-level characters, and merges apply by rank (lowest
//                  first, ties to the leftmost pair). Known pre-tokenizers:
//                    gpt2, gpt-2                    the GPT-2 pattern
//                    smollm, starcoder, refact,     each digit on its own (\p{N}), then the
//                    codeshell, exaone, minerva-7b  GPT-2 pattern
//                    llama3, llama-bpe, llama-v3    Llama 3's pattern; a word that is a token is
//                                                   that token (ignore_merges)
//                    qwen2, deepseek-r1-qwen,       Qwen2's pattern (one digit per piece)
//                    stablelm2, megrez
//                    default                        llama.cpp's fallback: punctuation runs, the
//                                                   GPT-2 pattern, digit runs, 3-digit groups
//                  A piece character that is not a token (an incomplete vocabulary) is written
//                  as the tokens of its single bytes where those exist, else dropped.
//   model "llama"  SentencePiece BPE (Llama 1/2, Mistral v0.1-v0.2, TinyLlama): spaces become
//                  '▁', a space is prepended to every text segment when add_space_prefix
//                  (llama.cpp does so at the start and after every special token), pieces merge
//                  by score (highest first, ties to the leftmost pair), and a piece that is not
//                  a token falls back to its "<0xXX>" byte tokens (else the unknown token).
//
// Token types (tokenizer.ggml.token_type): control (3), unknown (2) and user-defined (4)
// tokens are matched verbatim in text before anything else (leftmost, then longest) and never
// split; control and unknown tokens are special (Decode(skip_special) drops them); user-defined
// ones are ordinary text. Byte tokens (6) are the "<0xXX>" fallback of "llama" models.
//
// BOS/EOS: Tokenizer::Encode(text, add_bos) keeps its meaning (BOS when asked and the vocabulary
// has one). Whether a model *wants* them is GgufVocab::add_bos / add_eos, which the caller reads
// from ReadGgufVocab; EncodeLikeLlamaCpp applies them the way llama_tokenize(add_special=true)
// does.
//
// Thread safety: a loaded Tokenizer is immutable (see tokenizer.h); the functions here keep no
// state and may be called from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvault/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::gguf {
class GgufFile;
}  // namespace kvault::gguf

namespace kvault::tokenizer {

// The tokenizer.ggml.* metadata of a GGUF file.
struct GgufVocab {
  std::string model;                 // "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;                   // tokenizer.ggml.pre ("default" when absent)
  std::vector<std::string> tokens;
  std::vector<float> scores;         // llama: merge priority per token (may be empty for gpt2)
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // gpt2: "left right" in rank order
  std::optional<uint32_t> bos_id, eos_id, eot_id, unk_id, pad_id;
  // Defaults as llama.cpp assumes per model when the keys are absent (ReadGgufVocab sets them):
  // gpt2 add_bos false (true for the llama3 pre-tokenizers), add_space_prefix false; llama
  // add_bos true, add_space_prefix true. add_eos is false for both.
  bool add_bos = false, add_eos = false, add_space_prefix = true;
};

// Reads the tokenizer.ggml.* keys. kNotFound when tokenizer.ggml.model or tokenizer.ggml.tokens
// is absent; kInvalidArgument naming the key when one has the wrong type. Only reads: the
// consistency checks are LoadGgufTokenizer's. For model "llama" the special ids default to
// llama.cpp's (bos 1, eos 2, unknown 0) when absent and inside the vocabulary.
Result<GgufVocab> ReadGgufVocab(const gguf::GgufFile& file);

// Builds the tokenizer of `vocab` (see the top of this file). kInvalidArgument, naming the
// metadata key, for: an unknown model or pre-tokenizer (the known ones are listed), scores or
// token types whose count differs from the tokens', an unknown token type, a duplicate token, a
// malformed merge or one naming a missing token, a special id outside the vocabulary, a byte
// token not spelled "<0xXX>", a gpt2 vocabulary without merges, a llama one without scores.
Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufVocab& vocab);
Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const gguf::GgufFile& file);

// tokenizer.chat_template recognized as one of the families chat_template.h renders, with the
// texts of the vocabulary's bos/eos tokens. kNotFound when the file has no chat template;
// kInvalidArgument (from ChatTemplate::FromTemplateText, prefixed with the file's path) for a
// template of an unsupported family.
Result<ChatTemplate> LoadGgufChatTemplate(const gguf::GgufFile& file);

// llama_tokenize(text, add_special=true, parse_special=true): BOS first when vocab.add_bos,
// EOS last when vocab.add_eos (each only when the tokenizer has that token).
std::vector<uint32_t> EncodeLikeLlamaCpp(const Tokenizer& tokenizer, const GgufVocab& vocab,
                                         std::string_view text);

// The tokenizer.ggml.pre values LoadGgufTokenizer knows for model "gpt2", in the order above.
const std::vector<std::string>& KnownGgufPreTokenizers();

}  // namespace kvault::tokenizer

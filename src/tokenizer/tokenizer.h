// Tokenizers for Hugging Face model directories (no LibTorch).
//
// LoadTokenizer reads, in this order of preference:
//   tokenizer.json   Hugging Face `tokenizers` format, model BPE, either
//                    - byte-level (Llama 3, Qwen2/2.5, GPT-2): Split-regex and ByteLevel
//                      pre-tokenizers, ByteLevel decoder, optional NFC normalizer; or
//                    - SentencePiece-style (Llama 2 / Mistral conversions): Prepend/Replace
//                      normalizers or a Metaspace pre-tokenizer, byte_fallback, and the
//                      Replace/ByteFallback/Fuse/Strip (or Metaspace) decoder.
//   tokenizer.model  SentencePiece ModelProto of model_type BPE (byte fallback, '▁' for
//                    spaces, add_dummy_prefix, identity normalization).
// tokenizer_config.json, when present, names bos_token and eos_token.
//
// Special tokens (tokenizer.json added_tokens; SentencePiece control, unknown and
// user-defined pieces) are matched in the text verbatim (leftmost, then longest) and never
// split, the way Hugging Face tokenizers treat them. Text a user wrote is encoded with
// SpecialTokens::kPlainText instead: the spellings of special tokens in it are ordinary text
// (Hugging Face's split_special_tokens, llama.cpp's parse_special = false), so only the
// program (a chat template) decides where control tokens go.
//
// Thread safety: a loaded Tokenizer is immutable; every const method may be called from many
// threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvault/status.h"

namespace kvault::tokenizer {

class SpecialTokenMatcher;

// What Encode makes of the spelling of a special token (IsSpecial: control and unknown tokens,
// Hugging Face added tokens marked special) found in text. Verbatim tokens that are not special
// (user-defined pieces, added tokens not marked special) are vocabulary text and match in both.
enum class SpecialTokens {
  kParse,      // the spelling becomes the token: for text the program wrote (a chat template)
  kPlainText,  // the spelling is ordinary text, tokenized like any other: for text a user wrote
};

// A piece of a text to encode, and what its special-token spellings become.
struct TextPiece {
  std::string_view text;
  SpecialTokens special_tokens = SpecialTokens::kParse;
};

class Tokenizer {
 public:
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  virtual ~Tokenizer();

  // The ids of `text`, preceded by bos_id() when add_bos and the tokenizer has one. Text that
  // is not valid UTF-8 is tokenized as if every invalid byte were U+FFFD (callers that must
  // reject it check IsValidUtf8 first).
  // Special-token spellings become their tokens (SpecialTokens::kParse).
  std::vector<uint32_t> Encode(std::string_view text, bool add_bos) const;
  std::vector<uint32_t> Encode(std::string_view text, bool add_bos, SpecialTokens special_tokens) const;

  // The ids of the concatenation of `pieces`, each piece's special-token spellings treated as
  // it says. The pieces are tokenized as ONE text: a special token is taken only where its
  // whole spelling lies in kParse text (adjacent kParse pieces count as one; a spelling in, or
  // straddling into, a kPlainText piece is text), and everything between two taken special
  // tokens goes through the tokenizer's pre-tokenizer and merges in one run, across piece
  // borders (a taken token's lstrip/rstrip whitespace may come from a plain piece, as in
  // Encode). So when no special-token spelling touches a kPlainText piece, the result equals
  // Encode(concatenation, add_bos): splitting a prompt into pieces never changes how it
  // tokenizes at their borders. A piece that is not valid UTF-8 is sanitized on its own.
  std::vector<uint32_t> EncodePieces(std::span<const TextPiece> pieces, bool add_bos) const;

  // The bytes `ids` stand for. Special tokens are written verbatim unless skip_special; ids
  // outside the vocabulary are skipped. A prefix of a sequence may end inside a multi-byte
  // UTF-8 character (byte tokens): stream with StreamDecoder rather than slicing this.
  virtual std::string Decode(std::span<const uint32_t> ids, bool skip_special) const;

  // The id of a token written the way the vocabulary spells it ("<|eot_id|>", "▁Hello",
  // "ĠHello"), if there is one.
  std::optional<uint32_t> TokenId(std::string_view token) const;
  // The vocabulary's spelling of `id`; empty for ids outside the vocabulary.
  std::string_view TokenText(uint32_t id) const;

  // One more than the largest id (the embedding table may be larger).
  uint32_t vocab_size() const { return static_cast<uint32_t>(id_to_token_.size()); }
  std::optional<uint32_t> bos_id() const { return bos_id_; }
  std::optional<uint32_t> eos_id() const { return eos_id_; }
  bool IsSpecial(uint32_t id) const { return id < is_special_.size() && is_special_[id]; }

  // Appends the bytes of one token. `at_output_start` is true for the first token decoded
  // (skipped ones aside): SentencePiece-style tokenizers drop their dummy-prefix space there. Used by Decode
  // and StreamDecoder; ids outside the vocabulary append nothing.
  virtual void AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const = 0;

 protected:
  Tokenizer();

  // Appends the ids of a text segment that holds no special token. `at_text_start` is true
  // when the segment begins at offset 0 of the caller's text (where a dummy prefix goes).
  // `text` is valid UTF-8.
  virtual void EncodeSegment(std::string_view text, bool at_text_start,
                             std::vector<uint32_t>* out) const = 0;

  // Vocabulary set up by the loaders. Invariants: token_to_id_[id_to_token_[i]] == i for every
  // id that has a spelling (later duplicates lose); is_special_.size() == id_to_token_.size().
  void SetToken(uint32_t id, std::string text, bool special);
  // Registers a token that is matched verbatim in text (must already have been SetToken).
  // lstrip/rstrip: the match swallows whitespace on that side (Hugging Face AddedToken).
  void AddVerbatimToken(uint32_t id, bool lstrip, bool rstrip);
  void set_bos_id(std::optional<uint32_t> id) { bos_id_ = id; }
  void set_eos_id(std::optional<uint32_t> id) { eos_id_ = id; }
  const std::string& token(uint32_t id) const { return id_to_token_[id]; }

 private:
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, uint32_t> token_to_id_;
  std::vector<bool> is_special_;
  std::unique_ptr<SpecialTokenMatcher> verbatim_tokens_;
  std::optional<uint32_t> bos_id_;
  std::optional<uint32_t> eos_id_;
};

// Loads the tokenizer of a Hugging Face model directory (see the top of this file). Errors:
// kNotFound when the directory has neither file; kInvalidArgument naming the file and the
// unsupported or malformed part; kIOError when a file cannot be read.
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir);

// The same from bytes already in memory (tests, fuzzing). `config_json` may be empty.
Result<std::unique_ptr<Tokenizer>> LoadTokenizerJson(std::string_view tokenizer_json,
                                                     std::string_view config_json);
Result<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(std::string_view model_bytes,
                                                          std::string_view config_json);

// Turns generated ids into text token by token for streaming, never splitting a UTF-8
// character: Push returns the text that became complete with this id (possibly empty), and
// Finish returns what is left (an unfinished character as U+FFFD). The concatenation of
// every Push and Finish equals SanitizeUtf8(tokenizer.Decode(all ids, skip_special)).
// Bytes that can never become valid UTF-8 come out as U+FFFD at once, so output never stalls.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  std::string Push(uint32_t id);
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  bool wrote_any_ = false;  // a token was decoded (the dummy prefix is behind us)
  std::string pending_;     // bytes decoded but not returned: a prefix of one UTF-8 character
};

// UTF-8 helpers (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s);
// The length of the longest prefix of `s` that does not end inside an unfinished but still
// possibly valid character; invalid bytes count as complete (SanitizeUtf8 replaces them).
size_t CompleteUtf8PrefixLength(std::string_view s);
// `s` with every maximal invalid subsequence replaced by U+FFFD.
std::string SanitizeUtf8(std::string_view s);

}  // namespace kvault::tokenizer

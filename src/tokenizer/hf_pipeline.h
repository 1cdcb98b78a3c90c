// The normalizer, pre-tokenizer and decoder of a Hugging Face tokenizer.json, reduced to the
// forms kvault supports, and the byte-level (GPT-2) byte <-> character mapping.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvault/status.h"
#include "tokenizer/regex_splitter.h"

namespace kvault::tokenizer {

struct NormalizerStep {
  enum Kind { kNfc, kPrepend, kReplace } kind;
  std::string text;         // kPrepend: what to prepend; kReplace: the literal to find
  std::string replacement;  // kReplace
};

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  std::shared_ptr<RegexSplitter> regex;  // kSplit; kByteLevel with use_regex (GPT-2 pattern)
  bool add_prefix_space = false;         // kByteLevel
  std::string replacement;               // kMetaspace ("▁")
  enum Prepend { kNever, kFirst, kAlways } prepend = kNever;  // kMetaspace
  bool split = false;                    // kMetaspace: split before each replacement
};

// What the decoder chain does to each token; every supported chain reduces to this.
struct DecoderSpec {
  bool byte_level = false;         // ByteLevel: map GPT-2 characters back to bytes
  std::string space_replacement;   // Replace/Metaspace: this string becomes ' ' (empty: none)
  bool byte_fallback = false;      // ByteFallback: "<0xXX>" becomes that byte
  int strip_leading_spaces = 0;    // Strip / Metaspace prepend: spaces dropped at output start
};

// Parse tokenizer.json's "normalizer", "pre_tokenizer" and "decoder" (null allowed for the
// first two). Errors are kInvalidArgument naming tokenizer.json and the unsupported part.
Result<std::vector<NormalizerStep>> ParseNormalizer(const nlohmann::json& j);
Result<std::vector<PreTokenizerStep>> ParsePreTokenizer(const nlohmann::json& j);
Result<DecoderSpec> ParseDecoder(const nlohmann::json& j);

// Applies the steps to one text segment (valid UTF-8). `at_text_start`: the segment starts at
// offset 0 of the caller's text (Metaspace prepend_scheme "first").
std::string ApplyNormalizer(const std::vector<NormalizerStep>& steps, std::string_view text);
std::vector<std::string> ApplyPreTokenizer(const std::vector<PreTokenizerStep>& steps, std::string text,
                                           bool at_text_start);

// GPT-2's reversible byte <-> printable character mapping, as UTF-8 strings.
const std::array<std::string, 256>& ByteLevelCharOfByte();
// The byte a byte-level character (code point) stands for, or -1.
int ByteLevelByteOfChar(int32_t cp);

}  // namespace kvault::tokenizer

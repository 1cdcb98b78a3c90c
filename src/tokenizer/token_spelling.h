// How SentencePiece-style vocabularies spell their tokens, shared by the tokenizers that read
// them (tokenizer.json, tokenizer.model and GGUF "llama" vocabularies; internal to the
// tokenizers): '▁' for a space, and "<0xXX>" for a byte token.
#pragma once

#include <string>
#include <string_view>

namespace kvault::tokenizer {

inline constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 '▁'

// "<0x0A>" -> 10; -1 when `token` is not spelled like a byte token (exactly "<0x", two hex
// digits of either case, ">").
inline int ByteTokenValue(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return -1;
  int value = 0;
  for (char c : token.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else return -1;
    value = value * 16 + digit;
  }
  return value;
}

// Appends `piece` with every '▁' written as a space (the rest as it is).
inline void AppendWithSpaces(std::string_view piece, std::string* out) {
  while (!piece.empty()) {
    if (piece.starts_with(kSpaceMark)) {
      out->push_back(' ');
      piece.remove_prefix(kSpaceMark.size());
    } else {
      out->push_back(piece.front());
      piece.remove_prefix(1);
    }
  }
}

}  // namespace kvault::tokenizer

// UTF-8 decoding and encoding of single code points (internal to the tokenizers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvault::tokenizer {

// Decodes the character at s[pos]. Returns its length in bytes (>= 1) and sets *cp; when the
// bytes there are not a valid character, returns the length of the maximal invalid
// subsequence (>= 1) and sets *cp to -1. Requires pos < s.size().
size_t DecodeUtf8(std::string_view s, size_t pos, int32_t* cp);

// Appends the UTF-8 encoding of a valid code point.
void AppendUtf8(uint32_t cp, std::string* out);

// The byte length of the character that starts with lead byte `b` (1 for invalid leads).
inline size_t Utf8LengthFromLead(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  if (b >= 0xE0) return b <= 0xEF ? 3 : 1;
  if (b >= 0xC2) return 2;
  return 1;
}

}  // namespace kvault::tokenizer

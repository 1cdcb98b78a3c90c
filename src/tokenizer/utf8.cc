#include "tokenizer/utf8.h"

#include "tokenizer/tokenizer.h"

namespace kvault::tokenizer {

size_t DecodeUtf8(std::string_view s, size_t pos, int32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t avail = s.size() - pos;
  const unsigned char b0 = p[0];
  *cp = -1;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  const size_t len = Utf8LengthFromLead(b0);
  if (len == 1) return 1;
  // The valid range of the second byte depends on the lead (excludes overlongs, surrogates
  // and code points above U+10FFFF); later bytes are always 80..BF.
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 == 0xE0) lo = 0xA0;
  if (b0 == 0xED) hi = 0x9F;
  if (b0 == 0xF0) lo = 0x90;
  if (b0 == 0xF4) hi = 0x8F;
  uint32_t value = b0 & (0xFF >> (len + 1));
  for (size_t i = 1; i < len; ++i) {
    if (i >= avail) return i;  // truncated: the bytes so far are the invalid subsequence
    const unsigned char b = p[i];
    const bool ok = (i == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return i;
    value = (value << 6) | (b & 0x3F);
  }
  *cp = static_cast<int32_t>(value);
  return len;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view s) {
  int32_t cp;
  for (size_t pos = 0; pos < s.size();) {
    pos += DecodeUtf8(s, pos, &cp);
    if (cp < 0) return false;
  }
  return true;
}

size_t CompleteUtf8PrefixLength(std::string_view s) {
  // Only the last (up to 3) bytes can be an unfinished character: find the last lead byte.
  size_t start = s.size();
  for (size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const auto b = static_cast<unsigned char>(s[s.size() - back]);
    if ((b & 0xC0) != 0x80) {
      start = s.size() - back;
      break;
    }
  }
  if (start == s.size()) return s.size();
  int32_t cp;
  const size_t len = DecodeUtf8(s, start, &cp);
  // Unfinished iff decoding stopped only because the input ended.
  const bool unfinished = cp < 0 && start + len == s.size() &&
                          Utf8LengthFromLead(static_cast<unsigned char>(s[start])) > len;
  return unfinished ? start : s.size();
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  int32_t cp;
  for (size_t pos = 0; pos < s.size();) {
    const size_t len = DecodeUtf8(s, pos, &cp);
    if (cp < 0) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(s.substr(pos, len));
    }
    pos += len;
  }
  return out;
}

}  // namespace kvault::tokenizer

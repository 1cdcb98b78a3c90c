#include "tokenizer/unicode_nfc.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "tokenizer/tokenizer.h"

namespace kvault::tokenizer {
namespace {

// ICU's NFC normalizer. Its data is compiled into libicudata, so getting it fails only on a
// broken installation; the instance is owned by ICU, immutable and safe to share between threads.
const icu::Normalizer2& Nfc() {
  static const icu::Normalizer2* const nfc = [] {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status) || n == nullptr) {
      std::fprintf(stderr, "kvault: ICU has no NFC data (%s)\n", u_errorName(status));
      std::abort();
    }
    return n;
  }();
  return *nfc;
}

}  // namespace

std::string NfcNormalize(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return std::string(text);  // ASCII is always in NFC
  }
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    sanitized = SanitizeUtf8(text);
    text = sanitized;
  }
  if (text.size() > static_cast<size_t>(INT32_MAX)) return std::string(text);  // ICU's length limit
  std::string out;
  out.reserve(text.size());
  icu::StringByteSink<std::string> sink(&out);
  UErrorCode status = U_ZERO_ERROR;
  Nfc().normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink, nullptr, status);
  return U_SUCCESS(status) ? out : std::string(text);
}

}  // namespace kvault::tokenizer

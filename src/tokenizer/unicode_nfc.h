// Unicode Normalization Form C (UAX #15), for tokenizers whose normalizer is NFC (Qwen2).
// The work is ICU's (libicu-dev: Debian bookworm's ICU 72, Unicode 15.0).
#pragma once

#include <string>
#include <string_view>

namespace kvault::tokenizer {

// The NFC form of `text`. Invalid UTF-8 is first replaced as SanitizeUtf8 does (one U+FFFD per
// maximal invalid subsequence). Thread-safe: ICU's normalizer instance is immutable and shared.
std::string NfcNormalize(std::string_view text);

}  // namespace kvault::tokenizer

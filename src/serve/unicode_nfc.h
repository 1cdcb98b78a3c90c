// Unicode Normalization Form C (UAX #15), for tokenizers whose normalizer is NFC (Qwen2).
#pragma once

#include <string>
#include <string_view>

namespace kvault::serve {

// The NFC form of valid UTF-8 `text` (tables from scripts/make_unicode_nfc_table.py).
std::string NfcNormalize(std::string_view text);

}  // namespace kvault::serve

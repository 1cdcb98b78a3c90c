// ByteTokenizer: a tokenizer for random-weight models (`kvault serve --random-model`), which
// come without a tokenizer file: one token per byte (ids 0..255) plus ChatML's special tokens,
// so any text round-trips and the ChatML template works.
#pragma once

#include <memory>

#include "tokenizer/tokenizer.h"

namespace kvault::tokenizer {

std::unique_ptr<Tokenizer> MakeByteTokenizer();

}  // namespace kvault::tokenizer

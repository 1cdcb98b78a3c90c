// ByteTokenizer: a tokenizer for random-weight models (`kvault serve --random-model`), which
// come without a tokenizer file: one token per byte (ids 0..255) plus ChatML's special tokens,
// so any text round-trips and the ChatML template works.
#pragma once

#include <memory>

#include "serve/tokenizer.h"

namespace kvault::serve {

std::unique_ptr<Tokenizer> MakeByteTokenizer();

}  // namespace kvault::serve

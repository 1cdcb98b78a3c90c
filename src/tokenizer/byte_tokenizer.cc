#include "tokenizer/byte_tokenizer.h"

namespace kvault::tokenizer {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer() {
    for (uint32_t b = 0; b < 256; ++b) SetToken(b, std::string(1, static_cast<char>(b)), false);
    const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (uint32_t i = 0; i < 3; ++i) {
      SetToken(256 + i, specials[i], true);
      AddVerbatimToken(256 + i, false, false);
    }
    set_eos_id(258);  // <|im_end|>: ChatML's end of turn
  }
  void AppendTokenBytes(uint32_t id, bool, std::string* out) const override {
    if (id < 256) {
      out->push_back(static_cast<char>(id));
    } else if (id < 259) {
      *out += TokenText(id);
    }
  }

 protected:
  void EncodeSegment(std::string_view text, bool, std::vector<uint32_t>* out) const override {
    for (unsigned char c : text) out->push_back(c);
  }
};

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace kvault::tokenizer

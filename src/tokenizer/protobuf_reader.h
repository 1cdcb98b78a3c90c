// A minimal reader of the protobuf wire format: enough to walk a SentencePiece ModelProto.
// Every read is bounds-checked; a malformed buffer makes Next() return false with error() set.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace kvault::tokenizer {

class ProtobufReader {
 public:
  enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

  explicit ProtobufReader(std::string_view buffer) : data_(buffer) {}

  // Reads the next field's tag and value. Returns false at the end or on malformed input
  // (then error() is true). After true: field(), wire_type(), and varint()/fixed32()/bytes()
  // for the matching wire type.
  bool Next() {
    if (pos_ >= data_.size() || error_) return false;
    uint64_t tag;
    if (!ReadVarint(&tag) || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX) return Fail();
    field_ = static_cast<uint32_t>(tag >> 3);
    wire_type_ = static_cast<uint32_t>(tag & 7);
    switch (wire_type_) {
      case kVarint:
        return ReadVarint(&varint_) || Fail();
      case kFixed64:
        if (data_.size() - pos_ < 8) return Fail();
        pos_ += 8;
        return true;
      case kFixed32:
        if (data_.size() - pos_ < 4) return Fail();
        std::memcpy(&fixed32_, data_.data() + pos_, 4);  // little-endian host (x86-64, arm64)
        pos_ += 4;
        return true;
      case kBytes: {
        uint64_t len;
        if (!ReadVarint(&len) || len > data_.size() - pos_) return Fail();
        bytes_ = data_.substr(pos_, len);
        pos_ += len;
        return true;
      }
      default:  // groups (3, 4) and reserved types are not used by ModelProto
        return Fail();
    }
  }

  bool error() const { return error_; }
  uint32_t field() const { return field_; }
  uint32_t wire_type() const { return wire_type_; }
  uint64_t varint() const { return varint_; }
  float fixed32_as_float() const {
    float f;
    std::memcpy(&f, &fixed32_, 4);
    return f;
  }
  std::string_view bytes() const { return bytes_; }

 private:
  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;  // more than 10 bytes
  }
  bool Fail() {
    error_ = true;
    return false;
  }

  std::string_view data_;
  size_t pos_ = 0;
  bool error_ = false;
  uint32_t field_ = 0;
  uint32_t wire_type_ = 0;
  uint64_t varint_ = 0;
  uint32_t fixed32_ = 0;
  std::string_view bytes_;
};

}  // namespace kvault::tokenizer

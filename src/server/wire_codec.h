// WireWriter / WireReader: the little-endian field encoding of kvaultd's protocol.
//
// WireReader never reads past its input: every getter checks the remaining length first and
// latches a failure (ok() turns false, later getters return zeros), so a decoder can read a
// whole message and check ok() once. Counts are checked against the bytes left before
// anything is allocated, so a forged count cannot make the reader allocate more than the
// message's own size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kvault/key.h"

namespace kvault::wire {

class WireWriter {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void U32(uint32_t v) { Le(v); }
  void U64(uint64_t v) { Le(v); }
  void Bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void Str(const std::string& s) {
    U32(static_cast<uint32_t>(s.size()));
    Bytes(std::as_bytes(std::span(s.data(), s.size())));
  }
  void Key(const Digest& d) { Bytes(std::as_bytes(std::span(d.bytes))); }
  void U32Array(std::span<const uint32_t> v) {
    U32(static_cast<uint32_t>(v.size()));
    for (uint32_t x : v) U32(x);
  }
  std::vector<std::byte>& buffer() { return out_; }

 private:
  template <typename T>
  void Le(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
  }
  std::vector<std::byte> out_;
};

class WireReader {
 public:
  explicit WireReader(std::span<const std::byte> in) : in_(in) {}

  bool ok() const { return ok_; }
  // True when every byte was consumed and nothing failed: a message must be read exactly.
  bool done() const { return ok_ && at_ == in_.size(); }
  size_t left() const { return ok_ ? in_.size() - at_ : 0; }

  uint8_t U8() { return static_cast<uint8_t>(Le(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  uint64_t U64() { return Le(8); }
  bool Bool() {
    uint8_t v = U8();
    if (v > 1) ok_ = false;
    return v == 1;
  }
  // A span into the input; empty (and failed) when fewer than n bytes are left.
  std::span<const std::byte> Bytes(size_t n) {
    if (!Need(n)) return {};
    auto s = in_.subspan(at_, n);
    at_ += n;
    return s;
  }
  // A length-prefixed string of at most max_len bytes.
  std::string Str(size_t max_len) {
    uint32_t n = U32();
    if (n > max_len) ok_ = false;
    auto b = Bytes(n);
    return ok_ ? std::string(reinterpret_cast<const char*>(b.data()), b.size()) : std::string();
  }
  Digest Key() {
    Digest d;
    auto b = Bytes(d.bytes.size());
    if (ok_) std::memcpy(d.bytes.data(), b.data(), d.bytes.size());
    return d;
  }
  // A u32 count then that many u32s; the count must fit in the bytes left and max_count.
  std::vector<uint32_t> U32Array(size_t max_count) {
    uint32_t n = U32();
    if (n > max_count || uint64_t{n} * 4 > left()) ok_ = false;
    std::vector<uint32_t> v;
    if (!ok_) return v;
    v.resize(n);
    for (uint32_t& x : v) x = U32();
    return v;
  }
  void Fail() { ok_ = false; }

 private:
  bool Need(size_t n) {
    if (!ok_ || in_.size() - at_ < n) ok_ = false;
    return ok_;
  }
  uint64_t Le(size_t n) {
    if (!Need(n)) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(in_[at_ + i]) << (8 * i);
    at_ += n;
    return v;
  }
  std::span<const std::byte> in_;
  size_t at_ = 0;
  bool ok_ = true;
};

}  // namespace kvault::wire

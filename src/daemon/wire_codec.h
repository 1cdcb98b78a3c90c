// WireWriter / WireReader: the little-endian field encoding of kvaultd's protocol.
// FieldWriter / FieldReader: the two visitors a message's Fields() description is walked with
// (protocol.h), so one description gives both its encoder and its decoder.
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
#include "kvault/status.h"

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
    // Token arrays dominate big messages: one resize (vector growth stays geometric), then
    // the bytes in place.
    const size_t at = out_.size();
    out_.resize(at + 4 * v.size());
    std::byte* p = out_.data() + at;
    for (uint32_t x : v) {
      for (int i = 0; i < 4; ++i) *p++ = static_cast<std::byte>((x >> (8 * i)) & 0xff);
    }
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

// The field kinds a message's Fields(m, v) may use. Each is a method of both visitors with the
// same name: FieldWriter's take const references and append the field; FieldReader's take
// references and read the field into them. Checks only apply when decoding.
//
//   U32(x), U64(x)          fixed-width integers (any integral or enum type x)
//   Enum8(e)                an enum as one byte (its range is checked with Check)
//   Bool(b) -> bool         one byte, 0 or 1; returns the value, for optional fields
//   Str(s, max_len)         u32 length + bytes; at most max_len bytes
//   Key(d)                  32 raw bytes
//   U32Array(v, max_count)  u32 count + that many u32s
//   Blob(span)              u64 length + bytes (decoded as a view into the input)
//   StatusOf(st)            u8 code + message (at most kMaxErrorMessageBytes, truncated when encoding;
//                           empty when the code is OK)
//   List(v, max_count, min_item_bytes, item_fields)   u32 count + items; the count must fit
//                           in the bytes left at min_item_bytes each before anything is allocated
//   Check(cond)             decoding: the message is malformed unless cond
//   arena_bytes()           decoding: the shared-memory arena pieces must lie in (0: no bound)
inline constexpr size_t kMaxErrorMessageBytes = 4096;

class FieldWriter {
 public:
  template <typename T>
  void U32(const T& v) { w_.U32(static_cast<uint32_t>(v)); }
  template <typename T>
  void U64(const T& v) { w_.U64(static_cast<uint64_t>(v)); }
  template <typename E>
  void Enum8(const E& e) { w_.U8(static_cast<uint8_t>(e)); }
  bool Bool(const bool& b) {
    w_.U8(b ? 1 : 0);
    return b;
  }
  void Str(const std::string& s, size_t /*max_len*/) { w_.Str(s); }
  void Key(const Digest& d) { w_.Key(d); }
  void U32Array(const std::vector<uint32_t>& v, size_t /*max_count*/) { w_.U32Array(v); }
  void Blob(const std::span<const std::byte>& b) {
    w_.U64(b.size());
    w_.Bytes(b);
  }
  void StatusOf(const Status& st) {
    w_.U8(static_cast<uint8_t>(st.code()));
    w_.Str(st.message().size() > kMaxErrorMessageBytes ? st.message().substr(0, kMaxErrorMessageBytes) : st.message());
  }
  template <typename T, typename ItemFields>
  void List(const std::vector<T>& items, size_t /*max_count*/, size_t /*min_item_bytes*/, ItemFields item_fields) {
    w_.U32(static_cast<uint32_t>(items.size()));
    for (const T& item : items) item_fields(item);
  }
  void Check(bool /*cond*/) {}
  uint64_t arena_bytes() const { return 0; }

  std::vector<std::byte> Take() { return std::move(w_.buffer()); }

 private:
  WireWriter w_;
};

class FieldReader {
 public:
  FieldReader(std::span<const std::byte> in, uint64_t arena_bytes) : r_(in), arena_bytes_(arena_bytes) {}

  template <typename T>
  void U32(T& v) { v = static_cast<T>(r_.U32()); }
  template <typename T>
  void U64(T& v) { v = static_cast<T>(r_.U64()); }
  template <typename E>
  void Enum8(E& e) { e = static_cast<E>(r_.U8()); }
  bool Bool(bool& b) {
    b = r_.Bool();
    return b;
  }
  void Str(std::string& s, size_t max_len) { s = r_.Str(max_len); }
  void Key(Digest& d) { d = r_.Key(); }
  void U32Array(std::vector<uint32_t>& v, size_t max_count) { v = r_.U32Array(max_count); }
  void Blob(std::span<const std::byte>& b) {
    const uint64_t n = r_.U64();
    if (n > r_.left()) r_.Fail();
    b = r_.Bytes(static_cast<size_t>(n));
  }
  void StatusOf(Status& st) {
    const uint8_t code = r_.U8();
    std::string message = r_.Str(kMaxErrorMessageBytes);
    // One encoding per status: an unknown code, or an OK status with a message, is malformed
    // (a decoded message then re-encodes to exactly its bytes).
    if (code > static_cast<uint8_t>(Code::kPermissionDenied) || (code == 0 && !message.empty())) r_.Fail();
    st = !r_.ok() || code == 0 ? Status::OK() : Status(static_cast<Code>(code), std::move(message));
  }
  template <typename T, typename ItemFields>
  void List(std::vector<T>& items, size_t max_count, size_t min_item_bytes, ItemFields item_fields) {
    const uint32_t n = r_.U32();
    if (n > max_count || uint64_t{n} * min_item_bytes > r_.left()) r_.Fail();
    items.clear();
    if (!r_.ok()) return;
    items.resize(n);
    for (T& item : items) {
      if (!r_.ok()) break;
      item_fields(item);
    }
  }
  void Check(bool cond) {
    if (!cond) r_.Fail();
  }
  uint64_t arena_bytes() const { return arena_bytes_; }

  // OK when the whole input was read and every check passed.
  Status Finish(const char* what) const {
    if (r_.done()) return Status::OK();
    return Status::InvalidArgument(std::string("malformed ") + what + " message");
  }

 private:
  WireReader r_;
  const uint64_t arena_bytes_;
};

}  // namespace kvault::wire

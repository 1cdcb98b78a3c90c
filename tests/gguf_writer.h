// A small GGUF writer for tests (header-only, test-only): builds files with any metadata value
// (nested arrays and arrays of strings included) and tensors of any type, and can be told to
// lie (counts, n_dims, offsets, version, magic) so the reader's checks can be exercised.
//
// Layout written (all little-endian): "GGUF" | u32 version | u64 tensor_count | u64 kv_count |
// kvs | tensor infos | zero padding to `alignment` | data, each tensor at its offset from the
// data section's start. Nothing follows the last tensor's bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace kvault::gguf::testing {

// GGUF metadata value type numbers (as in the file).
enum : uint32_t {
  kTU8 = 0, kTI8 = 1, kTU16 = 2, kTI16 = 3, kTU32 = 4, kTI32 = 5, kTF32 = 6,
  kTBool = 7, kTString = 8, kTArray = 9, kTU64 = 10, kTI64 = 11, kTF64 = 12,
};

// Little-endian encoders of the file's primitives.
template <typename T>
inline std::string Enc(T v) {
  std::string s(sizeof(T), '\0');
  std::memcpy(s.data(), &v, sizeof(T));
  return s;
}
inline std::string EncU32(uint32_t v) { return Enc(v); }
inline std::string EncU64(uint64_t v) { return Enc(v); }
inline std::string EncStr(const std::string& s) { return EncU64(s.size()) + s; }
// An array value's payload: element type, count, then the encoded elements.
inline std::string EncArray(uint32_t element_type, uint64_t count, const std::string& elements) {
  return EncU32(element_type) + EncU64(count) + elements;
}
inline std::string EncStrArray(const std::vector<std::string>& v) {
  std::string e;
  for (const std::string& s : v) e += EncStr(s);
  return EncArray(kTString, v.size(), e);
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  std::string data;                        // written at the offset
  std::optional<uint64_t> offset;          // default: after the previous tensor, aligned
  std::optional<uint32_t> n_dims;          // default: dims.size() (a lie writes dims.size() dims anyway)
};

class GgufWriter {
 public:
  std::string magic = "GGUF";
  uint32_t version = 3;
  uint64_t alignment = 32;                 // used for padding; add general.alignment yourself
  std::optional<uint64_t> tensor_count;    // lies: written instead of the real counts
  std::optional<uint64_t> kv_count;

  // A key with a raw type number and an already encoded value.
  GgufWriter& Kv(const std::string& key, uint32_t type, const std::string& value) {
    kvs_ += EncStr(key) + EncU32(type) + value;
    ++n_kv_;
    return *this;
  }
  GgufWriter& U8(const std::string& k, uint8_t v) { return Kv(k, kTU8, Enc(v)); }
  GgufWriter& I8(const std::string& k, int8_t v) { return Kv(k, kTI8, Enc(v)); }
  GgufWriter& U16(const std::string& k, uint16_t v) { return Kv(k, kTU16, Enc(v)); }
  GgufWriter& I16(const std::string& k, int16_t v) { return Kv(k, kTI16, Enc(v)); }
  GgufWriter& U32(const std::string& k, uint32_t v) { return Kv(k, kTU32, Enc(v)); }
  GgufWriter& I32(const std::string& k, int32_t v) { return Kv(k, kTI32, Enc(v)); }
  GgufWriter& F32(const std::string& k, float v) { return Kv(k, kTF32, Enc(v)); }
  GgufWriter& Bool(const std::string& k, bool v) { return Kv(k, kTBool, Enc<uint8_t>(v ? 1 : 0)); }
  GgufWriter& Str(const std::string& k, const std::string& v) { return Kv(k, kTString, EncStr(v)); }
  GgufWriter& U64(const std::string& k, uint64_t v) { return Kv(k, kTU64, Enc(v)); }
  GgufWriter& I64(const std::string& k, int64_t v) { return Kv(k, kTI64, Enc(v)); }
  GgufWriter& F64(const std::string& k, double v) { return Kv(k, kTF64, Enc(v)); }
  GgufWriter& Array(const std::string& k, uint32_t element_type, uint64_t count, const std::string& elements) {
    return Kv(k, kTArray, EncArray(element_type, count, elements));
  }
  GgufWriter& StrArray(const std::string& k, const std::vector<std::string>& v) {
    return Kv(k, kTArray, EncStrArray(v));
  }

  GgufWriter& Tensor(TensorSpec t) {
    tensors_.push_back(std::move(t));
    return *this;
  }
  GgufWriter& Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::string data) {
    TensorSpec t;
    t.name = name;
    t.dims = std::move(dims);
    t.type = type;
    t.data = std::move(data);
    return Tensor(std::move(t));
  }

  // The byte offsets (from the file's start) of the last Build()'s fields, for tests that
  // corrupt one field in place.
  struct Layout {
    uint64_t kvs_begin = 0;
    uint64_t tensor_infos_begin = 0;
    std::vector<uint64_t> tensor_info_begin;  // each tensor info's first byte (its name length)
    std::vector<uint64_t> tensor_n_dims_at;   // each tensor's u32 n_dims
    std::vector<uint64_t> tensor_type_at;     // each tensor's u32 ggml type
    std::vector<uint64_t> tensor_offset_at;   // each tensor's u64 offset
    uint64_t data_begin = 0;
  };
  const Layout& layout() const { return layout_; }

  std::string Build() {
    std::string out = magic;
    out += EncU32(version);
    out += EncU64(tensor_count.value_or(tensors_.size()));
    out += EncU64(kv_count.value_or(n_kv_));
    layout_ = Layout{};
    layout_.kvs_begin = out.size();
    out += kvs_;
    layout_.tensor_infos_begin = out.size();
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const TensorSpec& t : tensors_) {
      const uint64_t off = t.offset.value_or(AlignUp(next));
      offsets.push_back(off);
      next = std::max(next, off + t.data.size());
      layout_.tensor_info_begin.push_back(out.size());
      out += EncStr(t.name);
      layout_.tensor_n_dims_at.push_back(out.size());
      out += EncU32(t.n_dims.value_or(static_cast<uint32_t>(t.dims.size())));
      for (uint64_t d : t.dims) out += EncU64(d);
      layout_.tensor_type_at.push_back(out.size());
      out += EncU32(t.type);
      layout_.tensor_offset_at.push_back(out.size());
      out += EncU64(off);
    }
    out.resize(AlignUp(out.size()), '\0');
    layout_.data_begin = out.size();
    uint64_t end = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) end = std::max(end, out.size() + offsets[i] + tensors_[i].data.size());
    const uint64_t data_begin = out.size();
    out.resize(end, '\0');
    for (size_t i = 0; i < tensors_.size(); ++i) {
      std::memcpy(out.data() + data_begin + offsets[i], tensors_[i].data.data(), tensors_[i].data.size());
    }
    return out;
  }

 private:
  uint64_t AlignUp(uint64_t v) const { return (v + alignment - 1) / alignment * alignment; }

  std::string kvs_;
  uint64_t n_kv_ = 0;
  std::vector<TensorSpec> tensors_;
  Layout layout_;
};

}  // namespace kvault::gguf::testing

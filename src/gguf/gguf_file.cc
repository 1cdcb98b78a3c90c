// GGUF reader (versions 2 and 3). Layout, all little-endian:
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x  { string key | u32 value type | value }
//   tensor_count x { string name | u32 n_dims | n_dims x u64 dim | u32 ggml type | u64 offset }
//   padding to general.alignment (u32 metadata, default 32) | data section
// where a string is u64 length + bytes and an array value is u32 element type + u64 count +
// elements (arrays of strings and of arrays included).
//
// Invariants established by Parse() before Open()/FromBytes() return a file:
//   every byte read lies in [0, size_) — each read checks the remaining bytes first, and every
//   count is checked against what the remaining bytes could hold before anything is reserved;
//   keys and tensor names are unique; alignment is a non-zero power of two; every tensor has
//   1..4 non-zero dims whose product does not overflow, a type of known block size with dims[0]
//   a multiple of the block, an aligned offset, and its bytes [data_offset_ + offset,
//   + n_bytes) inside the file; no two tensors' bytes overlap.
#include "gguf/gguf_file.h"


#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "gguf/dequantize.h"

namespace kvault::gguf {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF is read as little-endian");

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kMaxDims = 4;
// Arrays of arrays are legal; deeper nesting than this is a corrupt (or hostile) file, and
// the limit keeps the recursive reader's stack small.
constexpr int kMaxArrayDepth = 8;
// Smallest encodings, used to bound counts by the bytes left before reserving memory.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, a u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, one dim

const char* ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kUint8: return "uint8";
    case ValueType::kInt8: return "int8";
    case ValueType::kUint16: return "uint16";
    case ValueType::kInt16: return "int16";
    case ValueType::kUint32: return "uint32";
    case ValueType::kInt32: return "int32";
    case ValueType::kFloat32: return "float32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kUint64: return "uint64";
    case ValueType::kInt64: return "int64";
    case ValueType::kFloat64: return "float64";
  }
  return "unknown";
}

bool IsUnsigned(ValueType t) {
  return t == ValueType::kUint8 || t == ValueType::kUint16 || t == ValueType::kUint32 || t == ValueType::kUint64;
}
bool IsSigned(ValueType t) {
  return t == ValueType::kInt8 || t == ValueType::kInt16 || t == ValueType::kInt32 || t == ValueType::kInt64;
}
bool IsFloat(ValueType t) { return t == ValueType::kFloat32 || t == ValueType::kFloat64; }

// Bytes a value of scalar type t occupies; 0 for strings and arrays (variable).
uint64_t ScalarBytes(ValueType t) {
  switch (t) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kBool: return 1;
    case ValueType::kUint16: case ValueType::kInt16: return 2;
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kFloat32: return 4;
    case ValueType::kUint64: case ValueType::kInt64: case ValueType::kFloat64: return 8;
    case ValueType::kString: case ValueType::kArray: return 0;
  }
  return 0;
}

// Fewest bytes one element of type t can take (strings: the length; arrays: type + count).
uint64_t MinElementBytes(ValueType t) {
  if (t == ValueType::kString) return 8;
  if (t == ValueType::kArray) return 12;
  return ScalarBytes(t);
}

// A bounds-checked cursor over the file's bytes. Every read first checks that the bytes are
// there and fails with a Corruption naming the file, what was being read and its offset.
class Reader {
 public:
  Reader(const uint8_t* base, uint64_t size, const std::string& name) : base_(base), size_(size), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  Status Fail(const std::string& what, uint64_t at) const {
    return Status::Corruption("gguf: " + name_ + ": " + what + " at offset " + std::to_string(at));
  }

  Status Bytes(void* out, uint64_t n, const char* what) {
    if (n > remaining()) {
      return Fail(std::string("truncated ") + what + " (" + std::to_string(n) + " bytes needed, " +
                      std::to_string(remaining()) + " left)",
                  pos_);
    }
    std::memcpy(out, base_ + pos_, n);
    pos_ += n;
    return Status::OK();
  }
  template <typename T>
  Status Scalar(T& out, const char* what) {
    return Bytes(&out, sizeof(T), what);
  }

  // A string: u64 length + bytes; the length is checked against the bytes left.
  Status String(std::string& out, const char* what) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    KVAULT_RETURN_IF_ERROR(Scalar(len, what));
    if (len > remaining()) {
      return Fail(std::string(what) + " of length " + std::to_string(len) + " runs past the end of the file (" +
                      std::to_string(remaining()) + " bytes left)",
                  at);
    }
    out.assign(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return Status::OK();
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& name_;
};

Status ReadValue(Reader& r, ValueType type, Value& out, int depth, const std::string& key);

// Reads the u32 type tag of a value or array element; unknown tags are corruption.
Status ReadValueType(Reader& r, ValueType& out, const std::string& key) {
  const uint64_t at = r.pos();
  uint32_t raw = 0;
  KVAULT_RETURN_IF_ERROR(r.Scalar(raw, "value type"));
  if (raw > static_cast<uint32_t>(ValueType::kFloat64)) {
    return r.Fail("key \"" + key + "\" has unknown value type " + std::to_string(raw), at);
  }
  out = static_cast<ValueType>(raw);
  return Status::OK();
}

Status ReadArray(Reader& r, Value& out, int depth, const std::string& key) {
  if (depth >= kMaxArrayDepth) {
    return r.Fail("key \"" + key + "\" nests arrays deeper than " + std::to_string(kMaxArrayDepth), r.pos());
  }
  KVAULT_RETURN_IF_ERROR(ReadValueType(r, out.element_type, key));
  const uint64_t at = r.pos();
  uint64_t count = 0;
  KVAULT_RETURN_IF_ERROR(r.Scalar(count, "array length"));
  // Bound the count by what the remaining bytes could hold before reserving anything.
  const uint64_t min_bytes = MinElementBytes(out.element_type);
  if (count > r.remaining() / min_bytes) {
    return r.Fail("key \"" + key + "\": array of " + std::to_string(count) + " " + ValueTypeName(out.element_type) +
                      " elements runs past the end of the file (" + std::to_string(r.remaining()) + " bytes left)",
                  at);
  }
  out.array.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) {
    KVAULT_RETURN_IF_ERROR(ReadValue(r, out.element_type, out.array.emplace_back(), depth + 1, key));
  }
  return Status::OK();
}

// Reads one value of `type` (known valid) into out; depth counts enclosing arrays.
Status ReadValue(Reader& r, ValueType type, Value& out, int depth, const std::string& key) {
  out.type = type;
  switch (type) {
    case ValueType::kUint8: { uint8_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "uint8 value")); out.u = v; break; }
    case ValueType::kUint16: { uint16_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "uint16 value")); out.u = v; break; }
    case ValueType::kUint32: { uint32_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "uint32 value")); out.u = v; break; }
    case ValueType::kUint64: { uint64_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "uint64 value")); out.u = v; break; }
    case ValueType::kInt8: { int8_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "int8 value")); out.i = v; break; }
    case ValueType::kInt16: { int16_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "int16 value")); out.i = v; break; }
    case ValueType::kInt32: { int32_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "int32 value")); out.i = v; break; }
    case ValueType::kInt64: { int64_t v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "int64 value")); out.i = v; break; }
    case ValueType::kFloat32: { float v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "float32 value")); out.f = v; break; }
    case ValueType::kFloat64: { double v; KVAULT_RETURN_IF_ERROR(r.Scalar(v, "float64 value")); out.f = v; break; }
    case ValueType::kBool: {
      uint8_t v;
      KVAULT_RETURN_IF_ERROR(r.Scalar(v, "bool value"));
      out.u = v != 0 ? 1 : 0;
      break;
    }
    case ValueType::kString: return r.String(out.s, "string value");
    case ValueType::kArray: return ReadArray(r, out, depth, key);
  }
  return Status::OK();
}

std::string DimsString(const std::vector<uint64_t>& dims) {
  std::string s = "{";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "}";
}

}  // namespace

Result<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  auto mapped = MappedFile::Open(path, "gguf");
  if (!mapped.ok()) return mapped.status();
  const uint64_t size = (*mapped)->size();
  if (size < 4 + 4 + 8 + 8) {
    return Status::Corruption("gguf: " + path + ": too short for a GGUF header (" + std::to_string(size) +
                              " bytes) at offset 0");
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->map_ = std::move(mapped.value());
  f->base_ = f->map_->data();
  f->size_ = size;
  KVAULT_RETURN_IF_ERROR(f->Parse());
  return f;
}

Result<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::string bytes, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->owned_ = std::move(bytes);
  f->base_ = reinterpret_cast<const uint8_t*>(f->owned_.data());
  f->size_ = f->owned_.size();
  KVAULT_RETURN_IF_ERROR(f->Parse());
  return f;
}

GgufFile::~GgufFile() = default;

Status GgufFile::Parse() {
  Reader r(base_, size_, path_);

  // Header.
  char magic[4];
  KVAULT_RETURN_IF_ERROR(r.Bytes(magic, 4, "magic"));
  if (std::memcmp(magic, kMagic, 4) != 0) return r.Fail("bad magic (not a GGUF file)", 0);
  KVAULT_RETURN_IF_ERROR(r.Scalar(version_, "version"));
  if (version_ != 2 && version_ != 3) {
    std::string why = "unsupported GGUF version " + std::to_string(version_) + " (kvault reads versions 2 and 3)";
    if (version_ == 1) why += "; version 1 files have 32-bit counts: convert the file with a newer llama.cpp";
    if (version_ == 0x02000000u || version_ == 0x03000000u) why += "; the file looks big-endian, which kvault cannot read";
    return r.Fail(why, 4);
  }
  uint64_t tensor_count = 0, kv_count = 0;
  KVAULT_RETURN_IF_ERROR(r.Scalar(tensor_count, "tensor count"));
  KVAULT_RETURN_IF_ERROR(r.Scalar(kv_count, "metadata count"));
  if (kv_count > r.remaining() / kMinKvBytes) {
    return r.Fail("metadata count " + std::to_string(kv_count) + " cannot fit in the " +
                      std::to_string(r.remaining()) + " bytes left",
                  16);
  }
  if (tensor_count > r.remaining() / kMinTensorInfoBytes ||
      kv_count * kMinKvBytes > r.remaining() - tensor_count * kMinTensorInfoBytes) {
    return r.Fail("tensor count " + std::to_string(tensor_count) + " with " + std::to_string(kv_count) +
                      " metadata entries cannot fit in the " + std::to_string(r.remaining()) + " bytes left",
                  8);
  }

  // Metadata.
  uint64_t alignment_at = 0;  // where general.alignment's entry starts, for messages
  for (uint64_t i = 0; i < kv_count; ++i) {
    const uint64_t at = r.pos();
    std::string key;
    KVAULT_RETURN_IF_ERROR(r.String(key, "metadata key"));
    if (metadata_.count(key) != 0) return r.Fail("duplicate metadata key \"" + key + "\"", at);
    if (key == "general.alignment") alignment_at = at;
    ValueType type;
    KVAULT_RETURN_IF_ERROR(ReadValueType(r, type, key));
    Value value;
    KVAULT_RETURN_IF_ERROR(ReadValue(r, type, value, 0, key));
    metadata_.emplace(std::move(key), std::move(value));
  }
  if (const Value* a = Find("general.alignment"); a != nullptr) {
    if (a->type != ValueType::kUint32) {
      return r.Fail(std::string("general.alignment is a ") + ValueTypeName(a->type) + ", not a uint32", alignment_at);
    }
    if (a->u == 0 || !std::has_single_bit(a->u)) {
      return r.Fail("general.alignment " + std::to_string(a->u) + " is not a non-zero power of two", alignment_at);
    }
    alignment_ = a->u;
  }

  // Tensor infos.
  if (tensor_count > r.remaining() / kMinTensorInfoBytes) {
    return r.Fail("tensor count " + std::to_string(tensor_count) + " cannot fit in the " +
                      std::to_string(r.remaining()) + " bytes left",
                  8);
  }
  tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    const uint64_t at = r.pos();
    TensorInfo t;
    KVAULT_RETURN_IF_ERROR(r.String(t.name, "tensor name"));
    if (tensor_index_.count(t.name) != 0) return r.Fail("duplicate tensor name \"" + t.name + "\"", at);
    const uint64_t dims_at = r.pos();
    uint32_t n_dims = 0;
    KVAULT_RETURN_IF_ERROR(r.Scalar(n_dims, "tensor dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return r.Fail("tensor \"" + t.name + "\" has " + std::to_string(n_dims) + " dimensions (GGUF allows 1 to " +
                        std::to_string(kMaxDims) + ")",
                    dims_at);
    }
    t.dims.resize(n_dims);
    t.n_elements = 1;
    for (uint64_t& d : t.dims) {
      const uint64_t dim_at = r.pos();
      KVAULT_RETURN_IF_ERROR(r.Scalar(d, "tensor dimension"));
      if (d == 0) return r.Fail("tensor \"" + t.name + "\" has a zero dimension", dim_at);
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(t.n_elements, d, &t.n_elements) ||
          t.n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return r.Fail("tensor \"" + t.name + "\": dimensions overflow 63 bits", dim_at);
      }
    }
    const uint64_t type_at = r.pos();
    KVAULT_RETURN_IF_ERROR(r.Scalar(t.type, "tensor type"));
    const uint64_t offset_at = r.pos();
    KVAULT_RETURN_IF_ERROR(r.Scalar(t.offset, "tensor offset"));

    Result<BlockTraits> traits = TraitsOf(t.type);
    if (!traits.ok()) {
      return Status::InvalidArgument("gguf: " + path_ + ": tensor \"" + t.name + "\" has ggml type " +
                                     std::to_string(t.type) + ", which kvault cannot read, at offset " +
                                     std::to_string(type_at));
    }
    const uint64_t block_elements = static_cast<uint64_t>(traits->block_elements);
    const uint64_t block_bytes = static_cast<uint64_t>(traits->block_bytes);
    if (t.dims[0] % block_elements != 0) {
      return r.Fail("tensor \"" + t.name + "\" of type " + GgmlTypeName(t.type) + ": dims " + DimsString(t.dims) +
                        ", the first is not a multiple of the block size " + std::to_string(block_elements),
                    dims_at);
    }
    if (__builtin_mul_overflow(t.n_elements / block_elements, block_bytes, &t.n_bytes)) {
      return r.Fail("tensor \"" + t.name + "\": byte size overflows 64 bits", dims_at);
    }
    if (t.offset % alignment_ != 0) {
      return r.Fail("tensor \"" + t.name + "\" offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                        std::to_string(alignment_),
                    offset_at);
    }
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // Data section: the header's end rounded up to the alignment (pos() <= size_ < 2^64 - 2^32,
  // so the rounding cannot overflow). A file without tensors may end before it.
  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (const TensorInfo& t : tensors_) {
    if (data_offset_ > size_ || t.offset > data_size || t.n_bytes > data_size - t.offset) {
      return Status::Corruption("gguf: " + path_ + ": tensor \"" + t.name + "\" (" + GgmlTypeName(t.type) + " " +
                                DimsString(t.dims) + ", " + std::to_string(t.n_bytes) + " bytes) at data offset " +
                                std::to_string(t.offset) + " runs past the end of the file (data section of " +
                                std::to_string(data_size) + " bytes) at offset " +
                                std::to_string(std::min(size_, data_offset_ + std::min(t.offset, data_size))));
    }
  }
  std::vector<const TensorInfo*> order;
  order.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i]->offset < order[i - 1]->offset + order[i - 1]->n_bytes) {
      return Status::Corruption("gguf: " + path_ + ": tensors \"" + order[i - 1]->name + "\" and \"" + order[i]->name +
                                "\" overlap at offset " + std::to_string(data_offset_ + order[i]->offset));
    }
  }
  return Status::OK();
}

const Value* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

Status Missing(const std::string& path, std::string_view key) {
  return Status::NotFound("gguf: " + path + ": no metadata key \"" + std::string(key) + "\"");
}

Status WrongType(const std::string& path, std::string_view key, const Value& v, const char* wanted) {
  std::string have = ValueTypeName(v.type);
  if (v.type == ValueType::kArray) have += std::string(" of ") + ValueTypeName(v.element_type);
  return Status::InvalidArgument("gguf: " + path + ": metadata key \"" + std::string(key) + "\" has type " + have +
                                 ", not " + wanted);
}

// A non-negative integer value (any integer type).
bool AsUint(const Value& v, uint64_t& out) {
  if (IsUnsigned(v.type)) {
    out = v.u;
    return true;
  }
  if (IsSigned(v.type) && v.i >= 0) {
    out = static_cast<uint64_t>(v.i);
    return true;
  }
  return false;
}

// Any float or integer value, as a double.
bool AsFloat(const Value& v, double& out) {
  if (IsFloat(v.type)) out = v.f;
  else if (IsUnsigned(v.type)) out = static_cast<double>(v.u);
  else if (IsSigned(v.type)) out = static_cast<double>(v.i);
  else return false;
  return true;
}

// Any integer value that fits in int64.
bool AsInt(const Value& v, int64_t& out) {
  if (IsSigned(v.type)) {
    out = v.i;
    return true;
  }
  if (IsUnsigned(v.type) && v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    out = static_cast<int64_t>(v.u);
    return true;
  }
  return false;
}

}  // namespace

Result<std::string> GgufFile::GetString(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != ValueType::kString) return WrongType(path_, key, *v, "a string");
  return v->s;
}

Result<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  uint64_t out = 0;
  if (!AsUint(*v, out)) {
    if (IsSigned(v->type)) {
      return Status::InvalidArgument("gguf: " + path_ + ": metadata key \"" + std::string(key) + "\" is negative (" +
                                     std::to_string(v->i) + ")");
    }
    return WrongType(path_, key, *v, "an unsigned integer");
  }
  return out;
}

Result<double> GgufFile::GetFloat(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  double out = 0;
  if (!AsFloat(*v, out)) return WrongType(path_, key, *v, "a number");
  return out;
}

Result<bool> GgufFile::GetBool(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != ValueType::kBool) return WrongType(path_, key, *v, "a bool");
  return v->u != 0;
}

Result<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != ValueType::kArray || v->element_type != ValueType::kString) {
    return WrongType(path_, key, *v, "an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const Value& e : v->array) out.push_back(e.s);
  return out;
}

Result<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != ValueType::kArray ||
      !(IsFloat(v->element_type) || IsSigned(v->element_type) || IsUnsigned(v->element_type))) {
    return WrongType(path_, key, *v, "an array of numbers");
  }
  std::vector<double> out(v->array.size());
  for (size_t i = 0; i < out.size(); ++i) AsFloat(v->array[i], out[i]);
  return out;
}

Result<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  if (v->type != ValueType::kArray || !(IsSigned(v->element_type) || IsUnsigned(v->element_type))) {
    return WrongType(path_, key, *v, "an array of integers");
  }
  std::vector<int64_t> out(v->array.size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (!AsInt(v->array[i], out[i])) {
      return Status::InvalidArgument("gguf: " + path_ + ": metadata key \"" + std::string(key) + "\": element " +
                                     std::to_string(i) + " (" + std::to_string(v->array[i].u) + ") does not fit in int64");
    }
  }
  return out;
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::TensorData(const TensorInfo& t) const {
  return {base_ + data_offset_ + t.offset, static_cast<size_t>(t.n_bytes)};
}

}  // namespace kvault::gguf

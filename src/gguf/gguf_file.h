// A reader for GGUF files (versions 2 and 3), the format llama.cpp, Ollama and LM Studio keep
// models in: a header (magic "GGUF", version, tensor count, metadata count), typed metadata
// key/value pairs (nested arrays included), tensor infos (name, dims, ggml type, offset),
// padding to `general.alignment` (default 32), then the tensor data.
//
// Open() memory-maps the file and validates everything against it before returning: every
// count, length, offset and size is checked with overflow-safe arithmetic, every tensor's
// bytes lie inside the data section, so a truncated or lying file is a clear Status (naming
// the file, the section and the offset), never a crash or an out-of-bounds read.
//
// No LibTorch. Thread-safety: an opened GgufFile is immutable; const methods may be called
// from many threads at once.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvault/status.h"
#include "store/mapped_file.h"

namespace kvault::gguf {

// ggml's tensor types, numbered as in GGUF files.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// "F32", "Q4_K", ...; "type N" for numbers this reader does not know.
std::string GgmlTypeName(uint32_t type);

// GGUF metadata value types, numbered as in the file.
enum class ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

// One metadata value. Scalars are held widened (integers in i or u, floats in f); arrays hold
// their elements (which may be arrays themselves).
struct Value {
  ValueType type = ValueType::kUint8;
  uint64_t u = 0;          // kUint*, kBool
  int64_t i = 0;           // kInt*
  double f = 0;            // kFloat32, kFloat64
  std::string s;           // kString
  ValueType element_type = ValueType::kUint8;  // kArray: the elements' type
  std::vector<Value> array;                    // kArray
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the innermost (contiguous) dimension
  uint32_t type = 0;           // a GgmlType number (possibly one this reader cannot dequantize)
  uint64_t offset = 0;         // from the start of the data section (as in the file)
  uint64_t n_elements = 0;     // product of dims
  uint64_t n_bytes = 0;        // bytes in the file for this tensor
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors: kNotFound / kIOError for the file itself; kCorruption
  // for bad magic, unsupported version, truncation or any count/offset/size that does not fit
  // the file; kInvalidArgument for a tensor type of unknown block size.
  static Result<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // The same over bytes in memory (tests, fuzzing); the buffer is copied and owned.
  static Result<std::unique_ptr<GgufFile>> FromBytes(std::string bytes, std::string name = "<memory>");

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }  // where the data section starts

  const std::map<std::string, Value>& metadata() const { return metadata_; }
  const Value* Find(std::string_view key) const;  // nullptr when absent

  // Typed access. kNotFound when absent; kInvalidArgument naming the key when the type does
  // not fit (GetUint accepts any non-negative integer type, GetFloat any float or integer).
  Result<std::string> GetString(std::string_view key) const;
  Result<uint64_t> GetUint(std::string_view key) const;
  Result<double> GetFloat(std::string_view key) const;
  Result<bool> GetBool(std::string_view key) const;
  Result<std::vector<std::string>> GetStringArray(std::string_view key) const;
  Result<std::vector<double>> GetFloatArray(std::string_view key) const;
  Result<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent
  // The tensor's bytes in the mapping (valid while this file lives).
  std::span<const uint8_t> TensorData(const TensorInfo& t) const;

 private:
  GgufFile() = default;
  Status Parse();

  std::string path_;
  std::string owned_;              // FromBytes: the bytes
  std::unique_ptr<MappedFile> map_;  // Open: the file, mapped
  const uint8_t* base_ = nullptr;  // the file's first byte
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, Value> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kvault::gguf

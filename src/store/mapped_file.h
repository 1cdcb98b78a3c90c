// MappedFile: a whole regular file mapped read-only (MAP_PRIVATE), for the model files kvault
// reads in place (GGUF, safetensors). The mapping keeps the file's bytes alive after the
// descriptor is closed; the destructor unmaps.
//
// Thread-safety: immutable after Open; any thread may read data() concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kvault/status.h"

namespace kvault {

class MappedFile {
 public:
  // `what` prefixes the error messages ("gguf", "safetensors"): kNotFound (or the errno's code)
  // when the file cannot be opened, kInvalidArgument when it is not a regular file. An empty
  // file maps to data() == nullptr, size() == 0.
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path, const std::string& what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kvault

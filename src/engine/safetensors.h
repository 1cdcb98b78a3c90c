// A reader (and a small writer) for the safetensors format: an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the tensor bytes. The reader memory-maps the file and checks
// every entry (dtype known, shape x dtype size == end - begin, offsets inside the file, no
// overlaps) before handing out a tensor, so a lying header is an error, never a crash.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvault/status.h"
#include "store/mapped_file.h"

namespace kvault::engine {

struct SafetensorInfo {
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets after the header
};

class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  const std::map<std::string, SafetensorInfo>& tensors() const { return tensors_; }
  // A tensor viewing the mapped bytes (valid while this file lives); clone or convert to keep.
  Result<torch::Tensor> Get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;  // first byte after the header
  std::map<std::string, SafetensorInfo> tensors_;
};

// Writes tensors (contiguous, F32/F16/BF16) to `path`.
// "[2, 3, 4]": how error messages print a tensor shape.
std::string ShapeString(std::span<const int64_t> shape);

Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace kvault::engine

#include "kvault/layout.h"

namespace kvault {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kF8: return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF8: return "f8";
  }
  return "unknown";
}

Status KvLayout::Validate() const {
  if (num_layers == 0 || num_layers > 4096) return Status::InvalidArgument("num_layers out of range");
  if (num_kv_heads == 0 || num_kv_heads > 4096) return Status::InvalidArgument("num_kv_heads out of range");
  if (head_dim == 0 || head_dim > 65536) return Status::InvalidArgument("head_dim out of range");
  if (DTypeSize(dtype) == 0) return Status::InvalidArgument("unknown dtype");
  if (chunk_tokens == 0 || chunk_tokens > (1u << 20)) return Status::InvalidArgument("chunk_tokens out of range");
  if (rope != RopeMode::kPostRope && rope != RopeMode::kPreRope) return Status::InvalidArgument("unknown rope mode");
  if (chunk_bytes(chunk_tokens) > (1ull << 36)) return Status::InvalidArgument("chunk larger than 64 GiB");
  return Status::OK();
}

std::string KvLayout::ToString() const {
  return "layers=" + std::to_string(num_layers) + " kv_heads=" + std::to_string(num_kv_heads) +
         " head_dim=" + std::to_string(head_dim) + " dtype=" + DTypeName(dtype) +
         " chunk_tokens=" + std::to_string(chunk_tokens) +
         (rope == RopeMode::kPreRope ? " rope=pre" : " rope=post");
}

}  // namespace kvault

// A heap buffer aligned for O_DIRECT I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kvault {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size, size_t alignment = 4096) { Resize(size, alignment); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr; o.size_ = 0; }

  // Grows to at least `size` bytes (contents are not kept), zero-filled.
  void Resize(size_t size, size_t alignment = 4096) {
    if (size <= size_) {
      std::memset(data_, 0, size_);
      return;
    }
    std::free(data_);
    data_ = static_cast<uint8_t*>(std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment));
    if (data_ == nullptr) throw std::bad_alloc();
    size_ = size;
    std::memset(data_, 0, size_);
  }
  // Grows to at least `size` bytes, contents unspecified: for a buffer that is overwritten
  // whole before it is read (a disk read into it), where zero-filling would be a wasted pass.
  void Reserve(size_t size, size_t alignment = 4096) {
    if (size <= size_) return;
    std::free(data_);
    data_ = static_cast<uint8_t*>(std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment));
    if (data_ == nullptr) throw std::bad_alloc();
    size_ = size;
  }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvault

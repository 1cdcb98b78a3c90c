// The hardware limits benchmarks compare with, measured in the same run: memcpy between
// huge-page buffers and an O_DIRECT sequential read of a directory's files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace kvault::bench {

// Memory like the store's T1 arena: an anonymous mapping advised for transparent huge pages
// *before* its first touch (touching first would fault in 4 KiB pages), filled with `fill`.
// The limits are measured on such memory, so they are the best this machine does.
// Not thread-safe; one owner.
class HugeBuffer {
 public:
  HugeBuffer(size_t bytes, int fill);
  ~HugeBuffer();
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  uint8_t* data() { return data_; }
  size_t size() const { return bytes_; }

 private:
  uint8_t* data_;
  size_t bytes_;
};

// memcpy bandwidth (GB/s, 1e9 bytes) between two warm buffers of `bytes`, copied for about
// `seconds`: on one thread, and summed over one thread per core.
std::pair<double, double> MeasureMemcpy(size_t bytes, double seconds);

// O_DIRECT sequential read (GB/s) of every regular file in `dir`, 32 MiB reads through the
// store's I/O engine (kvault::Env): the read limit for exactly those bytes and that file
// layout. 0 when a file cannot be read.
double MeasureRawRead(const std::string& dir);

}  // namespace kvault::bench

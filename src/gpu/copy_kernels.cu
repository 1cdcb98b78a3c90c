// ScatterRanges: the one CUDA kernel of kvault::gpu, behind TransferStream::ScatterFromStaging.
// Compiled by nvcc when CMake's check_language(CUDA) finds it (KVAULT_WITH_CUDA_KERNELS=1).
//
// Copies N (src offset, dst pointer, bytes) ranges out of one contiguous staging buffer on
// the device in a single launch, where N small cudaMemcpyAsync calls would each pay a few
// microseconds of launch overhead: the store's chunks land in one staging buffer with one
// host->device copy, then scatter to the engine's KV pages. The range descriptors travel as
// the kernel's parameter (no descriptor upload, no host synchronization); a launch takes up
// to kLargeBatch of them, so N ranges need ceil(N / kLargeBatch) launches.
//
// Grid: blockIdx.y picks the range, the blockIdx.x blocks split it with a grid-stride loop.
// Each range is copied in 16-, 8-, 4- or 1-byte words, the widest that src, dst and the
// start alignment allow (the tail of a range that is not a multiple goes byte by byte).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <span>

#include "gpu/cuda_transfer.h"

namespace kvault::gpu {
namespace {

constexpr unsigned kThreads = 256;
// A block copies about this much of its range (16 B x 256 threads x 16 iterations).
constexpr uint64_t kBytesPerBlock = 64 * 1024;
constexpr uint64_t kMaxBlocksPerRange = 512;

struct ScatterRange {
  uint64_t src_offset;
  unsigned char* dst;
  uint64_t bytes;
};

// Two parameter sizes so a launch with few ranges does not carry 24 KiB of parameters.
// CUDA 12.1+ takes up to 32764 bytes of kernel parameters on Volta and newer; older, 4096.
constexpr int kSmallBatch = 64;  // 1.5 KiB
#if CUDART_VERSION >= 12010
constexpr int kLargeBatch = 1024;  // 24 KiB
#else
constexpr int kLargeBatch = 160;  // 3.75 KiB
#endif

template <int kCapacity>
struct ScatterBatch {
  ScatterRange ranges[kCapacity];
};

template <typename Word>
__device__ __forceinline__ void CopyStrided(const unsigned char* __restrict__ src, unsigned char* __restrict__ dst,
                                            uint64_t bytes, uint64_t first, uint64_t stride) {
  const uint64_t words = bytes / sizeof(Word);
  const Word* s = reinterpret_cast<const Word*>(src);
  Word* d = reinterpret_cast<Word*>(dst);
  for (uint64_t i = first; i < words; i += stride) d[i] = s[i];
  for (uint64_t i = words * sizeof(Word) + first; i < bytes; i += stride) dst[i] = src[i];
}

// __grid_constant__: the descriptors are read in place from the parameter space, not copied
// per thread (the index blockIdx.y is not known at compile time).
template <int kCapacity>
__global__ void __launch_bounds__(kThreads)
    ScatterRanges(const unsigned char* __restrict__ staging, const __grid_constant__ ScatterBatch<kCapacity> batch) {
  const ScatterRange& r = batch.ranges[blockIdx.y];
  const unsigned char* src = staging + r.src_offset;
  unsigned char* dst = r.dst;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  if ((align & 15) == 0) {
    CopyStrided<uint4>(src, dst, r.bytes, first, stride);
  } else if ((align & 7) == 0) {
    CopyStrided<uint2>(src, dst, r.bytes, first, stride);
  } else if ((align & 3) == 0) {
    CopyStrided<unsigned int>(src, dst, r.bytes, first, stride);
  } else {
    CopyStrided<unsigned char>(src, dst, r.bytes, first, stride);
  }
}

// cudaLaunchKernel with the arguments packed as the runtime wants them; returns the launch's
// own error instead of leaving it for cudaGetLastError.
template <typename Kernel, typename Batch>
cudaError_t LaunchWith(Kernel kernel, dim3 grid, dim3 block, const unsigned char* staging, const Batch& batch,
                       cudaStream_t stream) {
  void* args[] = {const_cast<unsigned char**>(&staging), const_cast<Batch*>(&batch)};
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, args, 0, stream);
}

template <int kCapacity>
cudaError_t Launch(const unsigned char* staging, std::span<const CopyRange> ranges, cudaStream_t stream) {
  ScatterBatch<kCapacity> batch{};
  uint64_t max_bytes = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    batch.ranges[i] = ScatterRange{static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ranges[i].src)),
                                   static_cast<unsigned char*>(ranges[i].dst), ranges[i].bytes};
    max_bytes = std::max<uint64_t>(max_bytes, ranges[i].bytes);
  }
  const uint64_t blocks = std::clamp<uint64_t>((max_bytes + kBytesPerBlock - 1) / kBytesPerBlock, 1, kMaxBlocksPerRange);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(ranges.size()));
  return LaunchWith(ScatterRanges<kCapacity>, grid, dim3(kThreads), staging, batch, stream);
}

}  // namespace

namespace internal {

// Declared in cuda_transfer.cc. REQUIRES: ranges merged and non-empty, every staging range in
// bounds (checked by the caller as far as it can), the current device the stream's.
cudaError_t LaunchScatterRanges(const void* staging, std::span<const CopyRange> ranges, cudaStream_t stream,
                                size_t* launches) {
  const auto* base = static_cast<const unsigned char*>(staging);
  *launches = 0;
  while (!ranges.empty()) {
    const size_t n = std::min<size_t>(ranges.size(), kLargeBatch);
    const cudaError_t err = n <= static_cast<size_t>(kSmallBatch) ? Launch<kSmallBatch>(base, ranges.first(n), stream)
                                                                    : Launch<kLargeBatch>(base, ranges.first(n), stream);
    if (err != cudaSuccess) return err;
    ++*launches;
    ranges = ranges.subspan(n);
  }
  return cudaSuccess;
}

}  // namespace internal
}  // namespace kvault::gpu

// kvault::gpu: moves KV between host memory and GPU pages over the CUDA runtime, layer by layer.
//
// The engine loads a prefix by copying layer 0, 1, 2... from the store's host pages into its
// GPU pages on a TransferStream, recording event `l` after layer l's copies; the compute
// stream waits on event l before it runs layer l (MakeStreamWait), so layer l computes while
// layer l+1 is still on the PCIe bus. Saves go the other way after WaitForStream(compute).
//
// Builds: cuda_transfer.cc over the CUDA runtime when CMake finds the toolkit
// (KVAULT_WITH_CUDA=1), else cuda_transfer_none.cc, where CudaAvailable() is false and every
// call returns Unavailable. ScatterFromStaging also needs copy_kernels.cu compiled by nvcc
// (KVAULT_WITH_CUDA_KERNELS=1); without it that one call returns Unavailable.
// No CUDA header is included here: streams and pointers are plain void*, so users of this
// header compile without the toolkit.
//
// Devices: a TransferStream or DeviceBuffer belongs to the CUDA device that was current on
// the creating thread; its calls switch to that device and restore the caller's device.
// Errors: every CUDA failure becomes a Status carrying the call, the error's name and
// cudaGetErrorString's text; the runtime's last-error state is cleared so that a later
// cudaGetLastError (LibTorch's launch checks) does not see it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvault/status.h"

namespace kvault::gpu {

// True when built with CUDA and at least one device is usable (cudaGetDeviceCount > 0).
// Computed once per process; thread-safe.
bool CudaAvailable();
// The current device and runtime, e.g. "NVIDIA H100 80GB HBM3 (sm_90), device 0 of 1, CUDA
// runtime 13000, driver 13000", or why CUDA is unavailable.
std::string CudaDescription();
// True when copy_kernels.cu was compiled in (ScatterFromStaging can work on a GPU).
bool CudaKernelsBuilt();

// Page-locks host memory that is already allocated (cudaHostRegister, portable to every
// device), so DMA copies from and to it run at PCIe speed; unregisters on destruction or
// Reset(). The memory must outlive the region and must not be freed while registered.
// Registering takes time proportional to the size (the kernel pins every page): do it once.
// Move-only. Thread-safety: none; one owner.
class PinnedRegion {
 public:
  PinnedRegion() = default;  // not registered
  // InvalidArgument for a null pointer or zero bytes (or memory already registered),
  // Unavailable without CUDA.
  static Result<PinnedRegion> Register(void* p, size_t bytes);
  ~PinnedRegion() { Reset(); }
  PinnedRegion(PinnedRegion&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedRegion& operator=(PinnedRegion&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  PinnedRegion(const PinnedRegion&) = delete;
  PinnedRegion& operator=(const PinnedRegion&) = delete;

  bool registered() const { return data_ != nullptr; }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  // Unregisters now (no-op when not registered). REQUIRES: no copy in flight uses it.
  void Reset();

 private:
  PinnedRegion(void* p, size_t bytes) : data_(p), bytes_(bytes) {}
  void* data_ = nullptr;  // non-null iff registered
  size_t bytes_ = 0;
};

// Device memory from cudaMalloc on the current device; freed on destruction. Staging buffers
// for ScatterFromStaging and test buffers; the engine's KV pages usually come from LibTorch.
// Move-only. Thread-safety: none; one owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // InvalidArgument for zero bytes, ResourceExhausted when the device is out of memory,
  // Unavailable without CUDA.
  static Result<DeviceBuffer> Allocate(size_t bytes);
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), device_(o.device_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      device_ = o.device_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  // Frees now (cudaFree synchronizes the device). REQUIRES: no copy in flight uses it.
  void Reset();

 private:
  DeviceBuffer(void* p, size_t bytes, int device) : data_(p), bytes_(bytes), device_(device) {}
  void* data_ = nullptr;  // non-null iff allocated
  size_t bytes_ = 0;
  int device_ = 0;
};

// One copy of `bytes` from src to dst. Zero-byte ranges are skipped.
struct CopyRange {
  void* dst;
  const void* src;
  size_t bytes;
};

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

// Rewrites `ranges` into `out` (cleared first) with every range whose src and dst both start
// where the previous range's end merged into it, and zero-byte ranges dropped; the order is
// kept. Pure arithmetic on the addresses (src may be an offset, as in ScatterFromStaging).
inline void MergeAdjacentRanges(std::span<const CopyRange> ranges, std::vector<CopyRange>& out) {
  out.clear();
  for (const CopyRange& r : ranges) {
    if (r.bytes == 0) continue;
    if (!out.empty()) {
      CopyRange& last = out.back();
      const auto end_dst = reinterpret_cast<uintptr_t>(last.dst) + last.bytes;
      const auto end_src = reinterpret_cast<uintptr_t>(last.src) + last.bytes;
      if (end_dst == reinterpret_cast<uintptr_t>(r.dst) && end_src == reinterpret_cast<uintptr_t>(r.src)) {
        last.bytes += r.bytes;
        continue;
      }
    }
    out.push_back(r);
  }
}

// One non-blocking CUDA stream (it does not synchronize with the legacy default stream) with
// `slots` reusable events, one per model layer. Streams and events are created once, in
// Create, never per copy; the destructor waits for the enqueued work, then destroys them.
// Everything enqueued runs in order on the stream. Host memory in copies should be pinned
// (PinnedRegion, cudaHostAlloc): pageable memory works but is staged by the driver and the
// host->device copy may return only after the data was read.
// Thread-safety: one thread at a time per object; different objects are independent.
class TransferStream {
 public:
  // 1 <= slots <= kMaxSlots. Unavailable without CUDA or without a device.
  static constexpr int kMaxSlots = 4096;
  static Result<std::unique_ptr<TransferStream>> Create(int slots);
  ~TransferStream();
  TransferStream(const TransferStream&) = delete;
  TransferStream& operator=(const TransferStream&) = delete;

  int slots() const;
  int device() const;

  // Enqueues the copies; ranges with adjacent src and dst are merged into one copy first
  // (MergeAdjacentRanges). REQUIRES: no range's dst overlaps another range's src or dst in
  // the same call (the copies of one call may run in any order). With many ranges and a
  // runtime that has it (CUDA 12.8+), one cudaMemcpyBatchAsync issues them all; otherwise one
  // cudaMemcpyAsync each. InvalidArgument for a null pointer in a non-empty range.
  Status Copy(CopyKind kind, std::span<const CopyRange> ranges);
  // Event `slot` completes when everything enqueued so far on this stream has. Re-recording a
  // slot replaces the previous record (waits issued before keep the old one).
  Status Record(int slot);
  // cudaStreamWaitEvent(stream, event slot): work enqueued on `stream` after this call waits
  // for the slot's last Record. stream == nullptr: the legacy default stream (what LibTorch
  // uses unless told otherwise). REQUIRES: `stream` is on this object's device.
  Status MakeStreamWait(int slot, void* stream);
  // This stream waits for all work enqueued so far on `stream` (nullptr = legacy default
  // stream), e.g. the compute that produced KV before a device->host save.
  // REQUIRES: `stream` is on this object's device.
  Status WaitForStream(void* stream);
  // Whether the slot's last Record has completed (true for a slot never recorded).
  Result<bool> Query(int slot);
  // Blocks the calling thread until the slot's last Record has completed.
  Status Synchronize(int slot);
  // Blocks the calling thread until everything enqueued on this stream has completed.
  Status SynchronizeAll();
  // Copies device->device out of one contiguous staging buffer with one kernel launch
  // (ScatterRanges in copy_kernels.cu; one launch per 1024 ranges after merging), instead of
  // one cudaMemcpyAsync per small range. In each range, src is an OFFSET into
  // `staging_device` (reinterpret_cast<const void*>(offset)), dst a device pointer.
  // REQUIRES: every [offset, offset + bytes) lies inside the staging buffer and no dst
  // overlaps another or the staging buffer. Unavailable when the kernels were not built.
  Status ScatterFromStaging(const void* staging_device, std::span<const CopyRange> ranges_with_src_as_offsets);

  // The cudaStream_t, for LibTorch (c10::cuda::getStreamFromExternal) or raw CUDA calls.
  void* native_handle() const;

  // Whether Copy may use cudaMemcpyBatchAsync for kBatchMinRanges or more merged ranges
  // (default true; it turns itself off for good on this stream if the driver refuses it).
  static constexpr size_t kBatchMinRanges = 8;
  void set_use_batch_api(bool on);
  // How many CUDA copy calls (cudaMemcpyAsync, cudaMemcpyBatchAsync or kernel launches) the
  // last Copy or ScatterFromStaging issued, and how many ranges were left after merging.
  size_t last_calls() const;
  size_t last_merged_ranges() const;

  struct Impl;  // defined by the implementation file

 private:
  explicit TransferStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The host<->device peak this process reaches: a pinned host buffer (cudaHostAlloc) of
// `bytes`, a device buffer, one warm-up copy, then `iterations` cudaMemcpyAsync timed with
// events on a non-blocking stream; returns the best GB/s (1e9 bytes/s). For kDeviceToDevice
// two device buffers (bytes copied, not read + written). The figure the store's host->GPU
// path is compared with (DESIGN.md, Measuring).
Result<double> MeasurePinnedPeakGBps(size_t bytes, CopyKind kind, int iterations);

}  // namespace kvault::gpu

// kvault::gpu over the CUDA runtime API (built when CMake finds the CUDA toolkit).
// Compiled by the host C++ compiler; the one kernel lives in copy_kernels.cu.
#include "gpu/cuda_transfer.h"

#ifndef KVAULT_WITH_CUDA
#error "cuda_transfer.cc needs the CUDA toolkit; cuda_transfer_none.cc is the build without it"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <string_view>

namespace kvault::gpu {

#ifdef KVAULT_WITH_CUDA_KERNELS
namespace internal {
// Defined in copy_kernels.cu: enqueues ScatterRanges over `ranges` (src = offsets into
// `staging`, already merged, none empty) on `stream`; `launches` gets the kernel launches
// issued. A signature drift between the two files is a link error, not a silent mismatch.
cudaError_t LaunchScatterRanges(const void* staging, std::span<const CopyRange> ranges, cudaStream_t stream,
                                size_t* launches);
}  // namespace internal
#endif

namespace {

// Non-sticky errors stay the runtime's "last error" until read; clear them so a later
// cudaGetLastError (LibTorch checks it after its launches) does not report ours.
Status FromCuda(cudaError_t err, std::string_view call) {
  (void)cudaGetLastError();
  std::string msg = std::string(call) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
  switch (err) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidResourceHandle:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorInvalidDevice:
    case cudaErrorHostMemoryAlreadyRegistered:
    case cudaErrorHostMemoryNotRegistered:
      return Status::InvalidArgument(std::move(msg));
    case cudaErrorMemoryAllocation:
      return Status::ResourceExhausted(std::move(msg));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNotSupported:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorStubLibrary:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInitializationError:
      return Status::Unavailable(std::move(msg));
    default:
      return Status::IOError(std::move(msg));
  }
}

#define KVAULT_CUDA_RETURN_IF_ERROR(call)                      \
  do {                                                         \
    const cudaError_t _err = (call);                           \
    if (_err != cudaSuccess) return FromCuda(_err, #call);     \
  } while (0)

// Makes `device` current for the scope and restores the caller's device after.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    cudaError_t err = cudaGetDevice(&previous_);
    if (err == cudaSuccess && previous_ != device) {
      err = cudaSetDevice(device);
      switched_ = err == cudaSuccess;
    }
    if (err != cudaSuccess) status_ = FromCuda(err, "cudaSetDevice");
  }
  ~ScopedDevice() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  Status status_;
};

cudaMemcpyKind ToCuda(CopyKind kind) {
  switch (kind) {
    case CopyKind::kHostToDevice: return cudaMemcpyHostToDevice;
    case CopyKind::kDeviceToHost: return cudaMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice: return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}

cudaStream_t StreamOrLegacy(void* stream) {
  return stream == nullptr ? cudaStreamLegacy : static_cast<cudaStream_t>(stream);
}

// Null pointers in non-empty ranges and ranges whose end wraps around are refused before any
// CUDA call.
Status ValidateRanges(std::span<const CopyRange> ranges, bool src_is_offset, std::string_view what) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    const CopyRange& r = ranges[i];
    if (r.bytes == 0) continue;
    const auto dst = reinterpret_cast<uintptr_t>(r.dst);
    const auto src = reinterpret_cast<uintptr_t>(r.src);
    if (dst == 0 || (!src_is_offset && src == 0)) {
      return Status::InvalidArgument(std::string(what) + ": range " + std::to_string(i) + " has a null pointer");
    }
    constexpr uintptr_t kMax = std::numeric_limits<uintptr_t>::max();
    if (r.bytes > kMax - dst || r.bytes > kMax - src) {
      return Status::InvalidArgument(std::string(what) + ": range " + std::to_string(i) + " wraps around");
    }
  }
  return Status::OK();
}

struct DeviceCount {
  cudaError_t err = cudaSuccess;
  int count = 0;
};

const DeviceCount& Devices() {
  static const DeviceCount devices = [] {
    DeviceCount d;
    d.err = cudaGetDeviceCount(&d.count);
    if (d.err != cudaSuccess) {
      (void)cudaGetLastError();
      d.count = 0;
    }
    return d;
  }();
  return devices;
}

Status RequireCuda() {
  const DeviceCount& d = Devices();
  if (d.err != cudaSuccess) {
    return Status::Unavailable(std::string("CUDA unavailable: cudaGetDeviceCount: ") + cudaGetErrorName(d.err) +
                               ": " + cudaGetErrorString(d.err));
  }
  if (d.count == 0) return Status::Unavailable("CUDA unavailable: no CUDA device");
  return Status::OK();
}

}  // namespace

bool CudaAvailable() { return RequireCuda().ok(); }

bool CudaKernelsBuilt() {
#ifdef KVAULT_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

std::string CudaDescription() {
  int runtime = 0;
  int driver = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  (void)cudaDriverGetVersion(&driver);
  const std::string versions =
      "CUDA runtime " + std::to_string(runtime) + ", driver " + (driver > 0 ? std::to_string(driver) : "none");
  if (Status st = RequireCuda(); !st.ok()) return st.message() + " (" + versions + ")";
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return FromCuda(err, "cudaGetDevice").message();
  if (cudaError_t err = cudaGetDeviceProperties(&prop, device); err != cudaSuccess) {
    return FromCuda(err, "cudaGetDeviceProperties").message();
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + "), device " +
         std::to_string(device) + " of " + std::to_string(Devices().count) + ", " + versions;
}

// --- PinnedRegion ---

Result<PinnedRegion> PinnedRegion::Register(void* p, size_t bytes) {
  if (p == nullptr) return Status::InvalidArgument("PinnedRegion::Register: null pointer");
  if (bytes == 0) return Status::InvalidArgument("PinnedRegion::Register: zero bytes");
  KVAULT_RETURN_IF_ERROR(RequireCuda());
  KVAULT_CUDA_RETURN_IF_ERROR(cudaHostRegister(p, bytes, cudaHostRegisterPortable));
  return PinnedRegion(p, bytes);
}

void PinnedRegion::Reset() {
  if (data_ == nullptr) return;
  if (cudaHostUnregister(data_) != cudaSuccess) (void)cudaGetLastError();
  data_ = nullptr;
  bytes_ = 0;
}

// --- DeviceBuffer ---

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return Status::InvalidArgument("DeviceBuffer::Allocate: zero bytes");
  KVAULT_RETURN_IF_ERROR(RequireCuda());
  int device = 0;
  KVAULT_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  void* p = nullptr;
  KVAULT_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes));
  return DeviceBuffer(p, bytes, device);
}

void DeviceBuffer::Reset() {
  if (data_ == nullptr) return;
  ScopedDevice on(device_);
  if (cudaFree(data_) != cudaSuccess) (void)cudaGetLastError();
  data_ = nullptr;
  bytes_ = 0;
}

// --- TransferStream ---

// Invariant: stream and every event are valid from Create until the destructor; all belong
// to `device`.
struct TransferStream::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;     // one per slot
  cudaEvent_t foreign = nullptr;       // recorded on the stream given to WaitForStream
  bool use_batch = true;
  // Scratch reused by every call (one thread at a time), so copies allocate nothing once warm.
  std::vector<CopyRange> merged;
  std::vector<void*> batch_dsts;
  std::vector<void*> batch_srcs;
  std::vector<size_t> batch_sizes;
  size_t last_calls = 0;

  ~Impl() {
    ScopedDevice on(device);
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    for (cudaEvent_t e : events) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    if (foreign != nullptr) (void)cudaEventDestroy(foreign);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)cudaGetLastError();
  }

  Status CheckSlot(int slot, std::string_view what) const {
    if (slot < 0 || static_cast<size_t>(slot) >= events.size()) {
      return Status::InvalidArgument(std::string(what) + ": slot " + std::to_string(slot) + " out of range [0, " +
                                     std::to_string(events.size()) + ")");
    }
    return Status::OK();
  }

  // Issues `merged` as one cudaMemcpyBatchAsync (CUDA 12.8+; 12.8 and 12.9 have an extra
  // failIdx argument); older runtimes use the loop.
  cudaError_t CopyBatch() {
#if CUDART_VERSION >= 12080
    batch_dsts.clear();
    batch_srcs.clear();
    batch_sizes.clear();
    for (const CopyRange& r : merged) {
      batch_dsts.push_back(r.dst);
      batch_srcs.push_back(const_cast<void*>(r.src));
      batch_sizes.push_back(r.bytes);
    }
    cudaMemcpyAttributes attrs{};
    attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;  // like cudaMemcpyAsync: in stream order
    size_t attrs_index = 0;
#if CUDART_VERSION >= 13000
    return cudaMemcpyBatchAsync(batch_dsts.data(), batch_srcs.data(), batch_sizes.data(), merged.size(), &attrs,
                                &attrs_index, 1, stream);
#else
    size_t failed_index = 0;
    return cudaMemcpyBatchAsync(batch_dsts.data(), batch_srcs.data(), batch_sizes.data(), merged.size(), &attrs,
                                &attrs_index, 1, &failed_index, stream);
#endif
#else
    return cudaErrorNotSupported;
#endif
  }
};

TransferStream::TransferStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TransferStream::~TransferStream() = default;

Result<std::unique_ptr<TransferStream>> TransferStream::Create(int slots) {
  if (slots < 1 || slots > kMaxSlots) {
    return Status::InvalidArgument("TransferStream::Create: slots " + std::to_string(slots) + " not in [1, " +
                                   std::to_string(kMaxSlots) + "]");
  }
  KVAULT_RETURN_IF_ERROR(RequireCuda());
  auto impl = std::make_unique<Impl>();
  KVAULT_CUDA_RETURN_IF_ERROR(cudaGetDevice(&impl->device));
  // From here on a failure destroys what was created (Impl's destructor).
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  impl->events.assign(static_cast<size_t>(slots), nullptr);
  for (cudaEvent_t& e : impl->events) {
    KVAULT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&impl->foreign, cudaEventDisableTiming));
  return std::unique_ptr<TransferStream>(new TransferStream(std::move(impl)));
}

int TransferStream::slots() const { return static_cast<int>(impl_->events.size()); }
int TransferStream::device() const { return impl_->device; }
void* TransferStream::native_handle() const { return impl_->stream; }
void TransferStream::set_use_batch_api(bool on) { impl_->use_batch = on; }
size_t TransferStream::last_calls() const { return impl_->last_calls; }
size_t TransferStream::last_merged_ranges() const { return impl_->merged.size(); }

Status TransferStream::Copy(CopyKind kind, std::span<const CopyRange> ranges) {
  Impl& s = *impl_;
  s.last_calls = 0;
  s.merged.clear();
  KVAULT_RETURN_IF_ERROR(ValidateRanges(ranges, /*src_is_offset=*/false, "TransferStream::Copy"));
  MergeAdjacentRanges(ranges, s.merged);
  if (s.merged.empty()) return Status::OK();
  ScopedDevice on(s.device);
  KVAULT_RETURN_IF_ERROR(on.status());
  if (s.use_batch && s.merged.size() >= kBatchMinRanges) {
    if (s.CopyBatch() == cudaSuccess) {
      s.last_calls = 1;
      return Status::OK();
    }
    // Refused (an old driver, a memory kind it does not take...): the loop below redoes every
    // range, which is idempotent since ranges do not overlap. A real error (a bad pointer)
    // fails there too, with its message; otherwise the batch API stays off on this stream.
    (void)cudaGetLastError();
    s.use_batch = false;
  }
  const cudaMemcpyKind cuda_kind = ToCuda(kind);
  for (const CopyRange& r : s.merged) {
    KVAULT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(r.dst, r.src, r.bytes, cuda_kind, s.stream));
    ++s.last_calls;
  }
  return Status::OK();
}

Status TransferStream::Record(int slot) {
  KVAULT_RETURN_IF_ERROR(impl_->CheckSlot(slot, "TransferStream::Record"));
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventRecord(impl_->events[slot], impl_->stream));
  return Status::OK();
}

Status TransferStream::MakeStreamWait(int slot, void* stream) {
  KVAULT_RETURN_IF_ERROR(impl_->CheckSlot(slot, "TransferStream::MakeStreamWait"));
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(StreamOrLegacy(stream), impl_->events[slot], 0));
  return Status::OK();
}

Status TransferStream::WaitForStream(void* stream) {
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  // Reusing one event is safe: cudaStreamWaitEvent waits for the record made just before it.
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventRecord(impl_->foreign, StreamOrLegacy(stream)));
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(impl_->stream, impl_->foreign, 0));
  return Status::OK();
}

Result<bool> TransferStream::Query(int slot) {
  KVAULT_RETURN_IF_ERROR(impl_->CheckSlot(slot, "TransferStream::Query"));
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  const cudaError_t err = cudaEventQuery(impl_->events[slot]);
  if (err == cudaSuccess) return true;
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not an error; do not leave it behind
    return false;
  }
  return FromCuda(err, "cudaEventQuery");
}

Status TransferStream::Synchronize(int slot) {
  KVAULT_RETURN_IF_ERROR(impl_->CheckSlot(slot, "TransferStream::Synchronize"));
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(impl_->events[slot]));
  return Status::OK();
}

Status TransferStream::SynchronizeAll() {
  ScopedDevice on(impl_->device);
  KVAULT_RETURN_IF_ERROR(on.status());
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream));
  return Status::OK();
}

Status TransferStream::ScatterFromStaging(const void* staging_device,
                                          std::span<const CopyRange> ranges_with_src_as_offsets) {
  Impl& s = *impl_;
  s.last_calls = 0;
  s.merged.clear();
#ifdef KVAULT_WITH_CUDA_KERNELS
  if (staging_device == nullptr) return Status::InvalidArgument("TransferStream::ScatterFromStaging: null staging");
  KVAULT_RETURN_IF_ERROR(
      ValidateRanges(ranges_with_src_as_offsets, /*src_is_offset=*/true, "TransferStream::ScatterFromStaging"));
  const auto base = reinterpret_cast<uintptr_t>(staging_device);
  constexpr uintptr_t kMax = std::numeric_limits<uintptr_t>::max();
  for (const CopyRange& r : ranges_with_src_as_offsets) {
    const auto offset = reinterpret_cast<uintptr_t>(r.src);
    if (r.bytes != 0 && (offset > kMax - base || r.bytes > kMax - base - offset)) {
      return Status::InvalidArgument("TransferStream::ScatterFromStaging: staging + offset + bytes wraps around");
    }
  }
  MergeAdjacentRanges(ranges_with_src_as_offsets, s.merged);
  if (s.merged.empty()) return Status::OK();
  ScopedDevice on(s.device);
  KVAULT_RETURN_IF_ERROR(on.status());
  const cudaError_t err = internal::LaunchScatterRanges(staging_device, s.merged, s.stream, &s.last_calls);
  if (err != cudaSuccess) return FromCuda(err, "ScatterRanges launch");
  return Status::OK();
#else
  (void)staging_device;
  (void)ranges_with_src_as_offsets;
  return Status::Unavailable(
      "TransferStream::ScatterFromStaging: built without CUDA kernels (nvcc was not found when configuring)");
#endif
}

// --- MeasurePinnedPeakGBps ---

namespace {

// Owns what MeasurePinnedPeakGBps allocates; frees it on every return path.
struct PeakResources {
  void* host = nullptr;
  void* dev_a = nullptr;
  void* dev_b = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  ~PeakResources() {
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    if (start != nullptr) (void)cudaEventDestroy(start);
    if (stop != nullptr) (void)cudaEventDestroy(stop);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    if (host != nullptr) (void)cudaFreeHost(host);
    if (dev_a != nullptr) (void)cudaFree(dev_a);
    if (dev_b != nullptr) (void)cudaFree(dev_b);
    (void)cudaGetLastError();
  }
};

}  // namespace

Result<double> MeasurePinnedPeakGBps(size_t bytes, CopyKind kind, int iterations) {
  if (bytes == 0) return Status::InvalidArgument("MeasurePinnedPeakGBps: zero bytes");
  if (iterations < 1) return Status::InvalidArgument("MeasurePinnedPeakGBps: iterations < 1");
  KVAULT_RETURN_IF_ERROR(RequireCuda());
  PeakResources r;
  void* dst = nullptr;
  const void* src = nullptr;
  KVAULT_CUDA_RETURN_IF_ERROR(cudaMalloc(&r.dev_a, bytes));
  switch (kind) {
    case CopyKind::kHostToDevice:
    case CopyKind::kDeviceToHost:
      KVAULT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&r.host, bytes, cudaHostAllocDefault));
      std::fill_n(static_cast<unsigned char*>(r.host), bytes, static_cast<unsigned char>(0x5a));
      dst = kind == CopyKind::kHostToDevice ? r.dev_a : r.host;
      src = kind == CopyKind::kHostToDevice ? r.host : r.dev_a;
      break;
    case CopyKind::kDeviceToDevice:
      KVAULT_CUDA_RETURN_IF_ERROR(cudaMalloc(&r.dev_b, bytes));
      dst = r.dev_b;
      src = r.dev_a;
      break;
  }
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventCreate(&r.start));
  KVAULT_CUDA_RETURN_IF_ERROR(cudaEventCreate(&r.stop));
  const cudaMemcpyKind cuda_kind = ToCuda(kind);
  KVAULT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cuda_kind, r.stream));  // warm-up
  KVAULT_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(r.stream));
  double best = 0;
  for (int i = 0; i < iterations; ++i) {
    KVAULT_CUDA_RETURN_IF_ERROR(cudaEventRecord(r.start, r.stream));
    KVAULT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cuda_kind, r.stream));
    KVAULT_CUDA_RETURN_IF_ERROR(cudaEventRecord(r.stop, r.stream));
    KVAULT_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(r.stop));
    float ms = 0;
    KVAULT_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, r.start, r.stop));
    if (ms > 0) best = std::max(best, static_cast<double>(bytes) / (static_cast<double>(ms) * 1e6));
  }
  if (best <= 0) return Status::IOError("MeasurePinnedPeakGBps: no copy took measurable time");
  return best;
}

}  // namespace kvault::gpu

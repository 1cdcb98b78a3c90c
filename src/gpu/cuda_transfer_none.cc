// kvault::gpu without the CUDA toolkit: the same API, where CudaAvailable() is false and every
// call returns Unavailable. Built instead of cuda_transfer.cc when CMake does not find the
// toolkit, so the engine and the tests build and run on any machine.
#include "gpu/cuda_transfer.h"

#ifdef KVAULT_WITH_CUDA
#error "cuda_transfer_none.cc is the build without CUDA; cuda_transfer.cc is the one with it"
#endif

namespace kvault::gpu {
namespace {

constexpr const char* kNoCuda = "kvault was built without the CUDA toolkit (it was not found at configure time)";

Status NoCuda(const char* call) { return Status::Unavailable(std::string(call) + ": " + kNoCuda); }

}  // namespace

bool CudaAvailable() { return false; }
std::string CudaDescription() { return std::string("CUDA unavailable: ") + kNoCuda; }
bool CudaKernelsBuilt() { return false; }

Result<PinnedRegion> PinnedRegion::Register(void*, size_t) { return NoCuda("PinnedRegion::Register"); }
void PinnedRegion::Reset() {  // never registered here
  data_ = nullptr;
  bytes_ = 0;
}

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t) { return NoCuda("DeviceBuffer::Allocate"); }
void DeviceBuffer::Reset() {  // never allocated here
  data_ = nullptr;
  bytes_ = 0;
}

// No TransferStream is ever created here; the members exist so that the API links.
struct TransferStream::Impl {};

TransferStream::TransferStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TransferStream::~TransferStream() = default;

Result<std::unique_ptr<TransferStream>> TransferStream::Create(int) { return NoCuda("TransferStream::Create"); }
int TransferStream::slots() const { return 0; }
int TransferStream::device() const { return -1; }
void* TransferStream::native_handle() const { return nullptr; }
void TransferStream::set_use_batch_api(bool) {}
size_t TransferStream::last_calls() const { return 0; }
size_t TransferStream::last_merged_ranges() const { return 0; }
Status TransferStream::Copy(CopyKind, std::span<const CopyRange>) { return NoCuda("TransferStream::Copy"); }
Status TransferStream::Record(int) { return NoCuda("TransferStream::Record"); }
Status TransferStream::MakeStreamWait(int, void*) { return NoCuda("TransferStream::MakeStreamWait"); }
Status TransferStream::WaitForStream(void*) { return NoCuda("TransferStream::WaitForStream"); }
Result<bool> TransferStream::Query(int) { return NoCuda("TransferStream::Query"); }
Status TransferStream::Synchronize(int) { return NoCuda("TransferStream::Synchronize"); }
Status TransferStream::SynchronizeAll() { return NoCuda("TransferStream::SynchronizeAll"); }
Status TransferStream::ScatterFromStaging(const void*, std::span<const CopyRange>) {
  return NoCuda("TransferStream::ScatterFromStaging");
}

Result<double> MeasurePinnedPeakGBps(size_t, CopyKind, int) { return NoCuda("MeasurePinnedPeakGBps"); }

}  // namespace kvault::gpu

// kvault::gpu (src/gpu/cuda_transfer.h): host<->GPU copies on a TransferStream, per-layer
// events, cross-stream waits, the ScatterRanges kernel and the pinned peak. Every test that
// needs a GPU skips, saying why, when CudaAvailable() is false; the "Everywhere" tests run on
// any machine, with or without the CUDA toolkit, and check that nothing crashes there.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "gpu/cuda_transfer.h"

namespace {

using kvault::Code;
using kvault::gpu::CopyKind;
using kvault::gpu::CopyRange;
using kvault::gpu::CudaAvailable;
using kvault::gpu::CudaDescription;
using kvault::gpu::DeviceBuffer;
using kvault::gpu::PinnedRegion;
using kvault::gpu::TransferStream;

#define SKIP_WITHOUT_GPU()                                                      \
  do {                                                                          \
    if (!CudaAvailable()) GTEST_SKIP() << "needs a CUDA GPU: " << CudaDescription(); \
  } while (0)

// Page-aligned host memory, freed on destruction.
struct HostBuffer {
  explicit HostBuffer(size_t n) : bytes(n), data(static_cast<unsigned char*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~HostBuffer() { std::free(data); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  void Fill(uint32_t seed) {
    std::mt19937 rng(seed);
    for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<unsigned char>(rng());
  }
  size_t bytes;
  unsigned char* data;
};

PinnedRegion Pin(HostBuffer& b) {
  auto r = PinnedRegion::Register(b.data, b.bytes);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : PinnedRegion();
}

DeviceBuffer Alloc(size_t bytes) {
  auto r = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : DeviceBuffer();
}

std::unique_ptr<TransferStream> NewStream(int slots) {
  auto r = TransferStream::Create(slots);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

unsigned char* At(void* base, size_t offset) { return static_cast<unsigned char*>(base) + offset; }
const void* Offset(size_t offset) { return reinterpret_cast<const void*>(static_cast<uintptr_t>(offset)); }

// Copies the whole device buffer back to a fresh host vector.
std::vector<unsigned char> ReadBack(TransferStream& s, const DeviceBuffer& d) {
  std::vector<unsigned char> out(d.bytes());
  const CopyRange r{out.data(), d.data(), d.bytes()};
  EXPECT_TRUE(s.Copy(CopyKind::kDeviceToHost, {&r, 1}).ok());
  EXPECT_TRUE(s.SynchronizeAll().ok());
  return out;
}

// --- Everywhere (no GPU needed) ---

TEST(GpuEverywhereTest, WithoutGpuEveryCallFailsCleanly) {
  const std::string description = CudaDescription();
  EXPECT_FALSE(description.empty());
  std::printf("CUDA: %s (kernels built: %d)\n", description.c_str(), kvault::gpu::CudaKernelsBuilt() ? 1 : 0);
  // Arguments out of range fail with or without a GPU.
  EXPECT_FALSE(TransferStream::Create(0).ok());
  EXPECT_FALSE(TransferStream::Create(-1).ok());
  EXPECT_FALSE(PinnedRegion::Register(nullptr, 4096).ok());
  if (CudaAvailable()) {
    auto s = TransferStream::Create(4);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return;
  }
  auto s = TransferStream::Create(4);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kUnavailable) << s.status().ToString();
  HostBuffer host(4096);
  auto pinned = PinnedRegion::Register(host.data, host.bytes);
  ASSERT_FALSE(pinned.ok());
  EXPECT_EQ(pinned.status().code(), Code::kUnavailable);
  auto dev = DeviceBuffer::Allocate(4096);
  ASSERT_FALSE(dev.ok());
  EXPECT_EQ(dev.status().code(), Code::kUnavailable);
  auto peak = kvault::gpu::MeasurePinnedPeakGBps(1 << 20, CopyKind::kHostToDevice, 2);
  ASSERT_FALSE(peak.ok());
  EXPECT_EQ(peak.status().code(), Code::kUnavailable);
}

TEST(GpuEverywhereTest, MergeAdjacentRanges) {
  alignas(16) static unsigned char a[64];
  alignas(16) static unsigned char b[64];
  const std::vector<CopyRange> in = {
      {b, a, 8},           {b + 8, a + 8, 8},   // continues: merged
      {b + 16, a + 20, 4},                      // src jumps: new range
      {b + 20, a + 24, 0},                      // empty: dropped
      {b + 20, a + 24, 4}, {b + 32, a + 28, 4},  // the first continues; the second's dst jumps
  };
  std::vector<CopyRange> out;
  kvault::gpu::MergeAdjacentRanges(in, out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].dst, b);
  EXPECT_EQ(out[0].bytes, 16u);
  EXPECT_EQ(out[1].dst, b + 16);
  EXPECT_EQ(out[1].bytes, 8u);
  EXPECT_EQ(out[2].dst, b + 32);
  EXPECT_EQ(out[2].bytes, 4u);
}

// --- On a GPU ---

// 2048 4 KiB chunks copied host->device to permuted places (runs of 4 stay adjacent, so
// merging has work to do; a free chunk after each run keeps runs apart), then device->host
// back to the original places.
TEST(GpuCopyTest, ManyRangesRoundTripThroughPinnedMemory) {
  SKIP_WITHOUT_GPU();
  constexpr size_t kChunk = 4096;
  constexpr size_t kChunks = 2048;
  constexpr size_t kRun = 4;  // chunks kept adjacent in both src and dst
  HostBuffer src(kChunk * kChunks);
  HostBuffer back(kChunk * kChunks);
  src.Fill(1);
  PinnedRegion pin_src = Pin(src);
  PinnedRegion pin_back = Pin(back);
  ASSERT_TRUE(pin_src.registered());
  ASSERT_TRUE(pin_back.registered());
  EXPECT_EQ(pin_src.bytes(), src.bytes);
  DeviceBuffer dev = Alloc(kChunks / kRun * (kRun + 1) * kChunk);
  auto stream = NewStream(1);
  ASSERT_TRUE(stream);

  std::vector<size_t> runs(kChunks / kRun);
  std::iota(runs.begin(), runs.end(), 0);
  std::shuffle(runs.begin(), runs.end(), std::mt19937(7));
  for (bool batch : {true, false}) {
    SCOPED_TRACE(batch ? "cudaMemcpyBatchAsync allowed" : "cudaMemcpyAsync loop");
    stream->set_use_batch_api(batch);
    std::memset(back.data, 0, back.bytes);
    std::vector<CopyRange> up;
    std::vector<CopyRange> down;
    for (size_t i = 0; i < kChunks; ++i) {
      const size_t to = (runs[i / kRun] * (kRun + 1) + i % kRun) * kChunk;
      up.push_back({At(dev.data(), to), src.data + i * kChunk, kChunk});
      down.push_back({back.data + i * kChunk, At(dev.data(), to), kChunk});
    }
    ASSERT_TRUE(stream->Copy(CopyKind::kHostToDevice, up).ok());
    EXPECT_EQ(stream->last_merged_ranges(), kChunks / kRun);
    if (!batch) {
      EXPECT_EQ(stream->last_calls(), kChunks / kRun);
    } else {
      std::printf("512 ranges host->device took %zu copy call(s)\n", stream->last_calls());
    }
    ASSERT_TRUE(stream->Copy(CopyKind::kDeviceToHost, down).ok());
    ASSERT_TRUE(stream->SynchronizeAll().ok());
    EXPECT_EQ(std::memcmp(src.data, back.data, src.bytes), 0);
  }
}

// The engine's load: layer l's copies, then Record(l); each slot completes once its layer
// has landed, and waiting on slot l says nothing about later slots being recorded.
TEST(GpuCopyTest, EventPerLayerSlot) {
  SKIP_WITHOUT_GPU();
  constexpr int kLayers = 8;
  constexpr size_t kLayerBytes = 4 << 20;
  HostBuffer src(kLayers * kLayerBytes);
  src.Fill(2);
  PinnedRegion pin = Pin(src);
  DeviceBuffer dev = Alloc(src.bytes);
  auto stream = NewStream(kLayers);
  ASSERT_TRUE(stream);
  EXPECT_EQ(stream->slots(), kLayers);
  auto never = stream->Query(kLayers - 1);
  ASSERT_TRUE(never.ok());
  EXPECT_TRUE(*never) << "a slot never recorded reads as complete";
  for (int l = 0; l < kLayers; ++l) {
    // Two half-layer ranges (K and V) per layer.
    const size_t half = kLayerBytes / 2;
    const CopyRange kv[2] = {
        {At(dev.data(), l * kLayerBytes), src.data + l * kLayerBytes, half},
        {At(dev.data(), l * kLayerBytes + half + 0), src.data + l * kLayerBytes + half, half},
    };
    ASSERT_TRUE(stream->Copy(CopyKind::kHostToDevice, kv).ok());
    ASSERT_TRUE(stream->Record(l).ok());
  }
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(stream->Synchronize(l).ok());
    auto done = stream->Query(l);
    ASSERT_TRUE(done.ok()) << done.status().ToString();
    EXPECT_TRUE(*done);
  }
  const std::vector<unsigned char> back = ReadBack(*stream, dev);
  EXPECT_EQ(std::memcmp(src.data, back.data(), src.bytes), 0);
}

// Stream B reads what stream A wrote only after waiting for it: through A's slot event
// (MakeStreamWait) and through WaitForStream; the legacy default stream takes both calls.
TEST(GpuCopyTest, WaitOnFromAnotherStream) {
  SKIP_WITHOUT_GPU();
  constexpr size_t kBytes = 64 << 20;  // long enough that B would overtake A without the wait
  HostBuffer src(kBytes);
  HostBuffer back(kBytes);
  PinnedRegion pin_src = Pin(src);
  PinnedRegion pin_back = Pin(back);
  DeviceBuffer dev = Alloc(kBytes);
  auto a = NewStream(2);
  auto b = NewStream(1);
  ASSERT_TRUE(a && b);
  const CopyRange up{dev.data(), src.data, kBytes};
  const CopyRange down{back.data, dev.data(), kBytes};

  src.Fill(3);
  ASSERT_TRUE(a->Copy(CopyKind::kHostToDevice, {&up, 1}).ok());
  ASSERT_TRUE(a->Record(0).ok());
  ASSERT_TRUE(a->MakeStreamWait(0, b->native_handle()).ok());
  ASSERT_TRUE(b->Copy(CopyKind::kDeviceToHost, {&down, 1}).ok());
  ASSERT_TRUE(b->SynchronizeAll().ok());
  EXPECT_EQ(std::memcmp(src.data, back.data, kBytes), 0) << "MakeStreamWait";

  src.Fill(4);
  ASSERT_TRUE(a->Copy(CopyKind::kHostToDevice, {&up, 1}).ok());
  ASSERT_TRUE(b->WaitForStream(a->native_handle()).ok());
  ASSERT_TRUE(b->Copy(CopyKind::kDeviceToHost, {&down, 1}).ok());
  ASSERT_TRUE(b->SynchronizeAll().ok());
  EXPECT_EQ(std::memcmp(src.data, back.data, kBytes), 0) << "WaitForStream";

  ASSERT_TRUE(a->Record(1).ok());
  EXPECT_TRUE(a->MakeStreamWait(1, nullptr).ok());
  EXPECT_TRUE(a->WaitForStream(nullptr).ok());
  EXPECT_TRUE(a->SynchronizeAll().ok());
}

// ScatterRanges (one launch per 1024 ranges) writes exactly what one cudaMemcpyAsync per
// range writes: 2500 ranges of odd and aligned sizes and offsets, so every word width and the
// byte tails run, and more than one launch is needed.
TEST(GpuCopyTest, ScatterFromStagingEqualsPerRangeCopy) {
  SKIP_WITHOUT_GPU();
  auto stream = NewStream(1);
  ASSERT_TRUE(stream);
  if (!kvault::gpu::CudaKernelsBuilt()) {
    DeviceBuffer staging = Alloc(4096);
    const CopyRange r{staging.data(), Offset(0), 16};
    const kvault::Status st = stream->ScatterFromStaging(staging.data(), {&r, 1});
    EXPECT_EQ(st.code(), Code::kUnavailable) << st.ToString();
    GTEST_SKIP() << "copy_kernels.cu was not compiled (no nvcc at configure time)";
  }
  constexpr size_t kRanges = 2500;
  std::mt19937 rng(5);
  std::vector<CopyRange> scatter;
  std::vector<size_t> dst_offsets;
  size_t staging_bytes = 0;
  size_t dst_bytes = 0;
  for (size_t i = 0; i < kRanges; ++i) {
    const bool aligned = i % 3 != 0;
    const size_t bytes = aligned ? 16 * (1 + rng() % 512) : 1 + rng() % 3000;
    // Aligned ranges start on 16 bytes in both buffers (cudaMalloc aligns the bases); there
    // is always a gap in dst, so nothing merges.
    const size_t src_pad = aligned ? (16 - staging_bytes % 16) % 16 : rng() % 7;
    const size_t dst_pad = aligned ? 16 + (16 - dst_bytes % 16) % 16 : 1 + rng() % 7;
    staging_bytes += src_pad;
    dst_bytes += dst_pad;
    scatter.push_back({reinterpret_cast<void*>(dst_bytes), Offset(staging_bytes), bytes});
    dst_offsets.push_back(dst_bytes);
    staging_bytes += bytes;
    dst_bytes += bytes;
  }
  scatter.push_back({nullptr, Offset(0), 0});  // empty ranges are skipped, even with null dst
  HostBuffer host(staging_bytes);
  host.Fill(6);
  PinnedRegion pin = Pin(host);
  DeviceBuffer staging = Alloc(staging_bytes);
  DeviceBuffer by_kernel = Alloc(dst_bytes);
  DeviceBuffer by_copy = Alloc(dst_bytes);
  std::vector<unsigned char> zeros(dst_bytes, 0);
  const CopyRange setup[3] = {{staging.data(), host.data, staging_bytes},
                              {by_kernel.data(), zeros.data(), dst_bytes},
                              {by_copy.data(), zeros.data(), dst_bytes}};
  ASSERT_TRUE(stream->Copy(CopyKind::kHostToDevice, setup).ok());

  std::vector<CopyRange> per_range;
  for (size_t i = 0; i < kRanges; ++i) {
    scatter[i].dst = At(by_kernel.data(), dst_offsets[i]);
    const size_t offset = reinterpret_cast<uintptr_t>(scatter[i].src);
    per_range.push_back({At(by_copy.data(), dst_offsets[i]), At(staging.data(), offset), scatter[i].bytes});
  }
  const kvault::Status st = stream->ScatterFromStaging(staging.data(), scatter);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(stream->last_merged_ranges(), kRanges);
  EXPECT_EQ(stream->last_calls(), 3u) << "2500 ranges: launches of 1024, 1024 and 452";
  stream->set_use_batch_api(false);
  ASSERT_TRUE(stream->Copy(CopyKind::kDeviceToDevice, per_range).ok());
  const std::vector<unsigned char> kernel_out = ReadBack(*stream, by_kernel);
  const std::vector<unsigned char> copy_out = ReadBack(*stream, by_copy);
  ASSERT_EQ(kernel_out.size(), copy_out.size());
  EXPECT_TRUE(kernel_out == copy_out);
  // And both are what the host expects.
  std::vector<unsigned char> expected(dst_bytes, 0);
  for (size_t i = 0; i < kRanges; ++i) {
    std::memcpy(expected.data() + dst_offsets[i], host.data + reinterpret_cast<uintptr_t>(scatter[i].src),
                scatter[i].bytes);
  }
  EXPECT_TRUE(kernel_out == expected);
}

TEST(GpuCopyTest, PinnedPeakIsAboveOneGBps) {
  SKIP_WITHOUT_GPU();
  for (CopyKind kind : {CopyKind::kHostToDevice, CopyKind::kDeviceToHost, CopyKind::kDeviceToDevice}) {
    auto gbps = kvault::gpu::MeasurePinnedPeakGBps(64 << 20, kind, 5);
    ASSERT_TRUE(gbps.ok()) << gbps.status().ToString();
    std::printf("pinned peak, kind %d: %.1f GB/s\n", static_cast<int>(kind), *gbps);
    EXPECT_GT(*gbps, 1.0);
  }
}

TEST(GpuCopyTest, ErrorsAreStatuses) {
  SKIP_WITHOUT_GPU();
  auto null_region = PinnedRegion::Register(nullptr, 4096);
  ASSERT_FALSE(null_region.ok());
  EXPECT_EQ(null_region.status().code(), Code::kInvalidArgument);
  HostBuffer host(1 << 20);
  EXPECT_EQ(PinnedRegion::Register(host.data, 0).status().code(), Code::kInvalidArgument);
  {
    PinnedRegion pin = Pin(host);
    auto twice = PinnedRegion::Register(host.data, host.bytes);
    EXPECT_FALSE(twice.ok()) << "registering the same memory twice";
  }
  PinnedRegion again = Pin(host);  // unregistered by the destructor above
  EXPECT_TRUE(again.registered());
  again.Reset();
  EXPECT_FALSE(again.registered());

  EXPECT_EQ(TransferStream::Create(0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(TransferStream::Create(TransferStream::kMaxSlots + 1).status().code(), Code::kInvalidArgument);
  auto stream = NewStream(4);
  ASSERT_TRUE(stream);
  for (int slot : {-1, 4, 1000}) {
    SCOPED_TRACE(slot);
    EXPECT_EQ(stream->Record(slot).code(), Code::kInvalidArgument);
    EXPECT_EQ(stream->Query(slot).status().code(), Code::kInvalidArgument);
    EXPECT_EQ(stream->Synchronize(slot).code(), Code::kInvalidArgument);
    EXPECT_EQ(stream->MakeStreamWait(slot, nullptr).code(), Code::kInvalidArgument);
  }
  DeviceBuffer dev = Alloc(4096);
  const CopyRange null_dst{nullptr, host.data, 16};
  EXPECT_EQ(stream->Copy(CopyKind::kHostToDevice, {&null_dst, 1}).code(), Code::kInvalidArgument);
  const CopyRange null_src{dev.data(), nullptr, 16};
  EXPECT_EQ(stream->Copy(CopyKind::kHostToDevice, {&null_src, 1}).code(), Code::kInvalidArgument);
  EXPECT_EQ(stream->ScatterFromStaging(nullptr, {&null_src, 1}).code(),
            kvault::gpu::CudaKernelsBuilt() ? Code::kInvalidArgument : Code::kUnavailable);
  EXPECT_EQ(DeviceBuffer::Allocate(0).status().code(), Code::kInvalidArgument);
  // The stream still works after the refused calls.
  const CopyRange fine{dev.data(), host.data, 4096};
  EXPECT_TRUE(stream->Copy(CopyKind::kHostToDevice, {&fine, 1}).ok());
  EXPECT_TRUE(stream->SynchronizeAll().ok());
}

}  // namespace

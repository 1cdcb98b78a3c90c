#include "engine/kv_transfer.h"

#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "gpu/cuda_transfer.h"

namespace kvault::engine {
namespace {

// Payload bytes of K (or V) of one chunk's layer, and where its K starts in the payload.
struct LayerSpan {
  size_t offset;
  size_t half;
};
LayerSpan SpanOf(const KvLayout& layout, int64_t layer, uint32_t tokens) {
  const ByteRange r = layout.layer_range(static_cast<uint32_t>(layer), tokens);
  return {r.offset, r.size / 2};
}

class HostKvTransfer final : public KvTransfer {
 public:
  HostKvTransfer(KvPool& pool, const KvLayout& layout) : pool_(pool), layout_(layout) {}

  Status LoadLayer(int64_t layer, std::span<const LoadItem> items) override {
    for (const LoadItem& it : items) {
      const LayerSpan s = SpanOf(layout_, layer, it.reader->tokens());
      KVAULT_RETURN_IF_ERROR(it.reader->ReadRange(s.offset, {pool_.KPage(layer, it.page), s.half}));
      KVAULT_RETURN_IF_ERROR(it.reader->ReadRange(s.offset + s.half, {pool_.VPage(layer, it.page), s.half}));
    }
    return Status::OK();
  }
  Status LoadsLanded() override { return Status::OK(); }
  void ComputeAfterLoad(int64_t) override {}
  Status ComputeFinished() override { return Status::OK(); }

  Status SaveLayer(int64_t layer, std::span<const SaveItem> items) override {
    for (const SaveItem& it : items) {
      const LayerSpan s = SpanOf(layout_, layer, it.tokens);
      KVAULT_RETURN_IF_ERROR(it.writer->WriteRange(s.offset, {pool_.KPage(layer, it.page), s.half}));
      KVAULT_RETURN_IF_ERROR(it.writer->WriteRange(s.offset + s.half, {pool_.VPage(layer, it.page), s.half}));
    }
    return Status::OK();
  }
  Status SavesLanded() override { return Status::OK(); }
  bool asynchronous() const override { return false; }
  const char* name() const override { return "host"; }

 private:
  KvPool& pool_;
  const KvLayout layout_;
};

// Page-locked host regions shared by every engine of the process: a store used by two engines
// is registered once and unregistered when the last of them goes (cudaHostRegister refuses
// memory already registered, and unregistering under a live engine would slow its DMA).
class PinnedRegistry {
 public:
  static Status Acquire(std::span<std::byte> region) {
    std::lock_guard<std::mutex> lock(mu());
    auto& held = map()[region.data()];
    if (held.users == 0) {
      auto pinned = gpu::PinnedRegion::Register(region.data(), region.size());
      if (!pinned.ok()) {
        map().erase(region.data());
        return pinned.status();
      }
      held.region = std::move(pinned.value());
    }
    ++held.users;
    return Status::OK();
  }
  static void Release(std::span<std::byte> region) {
    std::lock_guard<std::mutex> lock(mu());
    auto it = map().find(region.data());
    if (it != map().end() && --it->second.users == 0) map().erase(it);  // unregisters
  }

 private:
  struct Held {
    gpu::PinnedRegion region;
    int users = 0;
  };
  static std::mutex& mu() {
    static std::mutex m;
    return m;
  }
  static std::map<const void*, Held>& map() {
    static std::map<const void*, Held> m;
    return m;
  }
};

class CudaKvTransfer final : public KvTransfer {
 public:
  static Result<std::unique_ptr<KvTransfer>> Create(KvPool& pool, const KvLayout& layout, Store* store) {
    if (!gpu::CudaAvailable()) return Status::Unavailable("the KV pool is on a GPU but " + gpu::CudaDescription());
    // Streams, events and "the compute stream" (the legacy default stream) are those of the
    // current device, which is device 0 unless the process chose another.
    if (pool.k(0).device().index() > 0) {
      return Status::InvalidArgument("a KV pool on " + pool.k(0).device().str() + ": the store path runs on cuda:0 only");
    }
    const int slots = static_cast<int>(pool.num_layers());
    auto t = std::unique_ptr<CudaKvTransfer>(new CudaKvTransfer(pool, layout));
    for (auto [stream, slot_count] : {std::pair{&t->load_, slots}, {&t->save_, 1}, {&t->compute_sync_, 1}}) {
      auto created = gpu::TransferStream::Create(slot_count);
      if (!created.ok()) return created.status();
      *stream = std::move(created.value());
    }
    // The pool was zero-filled on the compute stream: the first load must land after that.
    KVAULT_RETURN_IF_ERROR(t->load_->WaitForStream(nullptr));
    for (std::span<std::byte> region : store->HostMemory()) {
      Status st = PinnedRegistry::Acquire(region);
      if (st.ok()) {
        t->pinned_.push_back(region);
      } else {  // still correct, at pageable-copy speed
        std::fprintf(stderr, "kvault engine: T1 memory not page-locked (%s): KV copies run at pageable speed\n",
                     st.ToString().c_str());
      }
    }
    return std::unique_ptr<KvTransfer>(std::move(t));
  }
  ~CudaKvTransfer() override {
    // The engine's workers finished their jobs (each waits for its copies) before this; wait
    // anyway, so that no DMA reads or writes a region after it is unregistered.
    for (auto* stream : {load_.get(), save_.get()}) {
      if (stream != nullptr) (void)stream->SynchronizeAll();
    }
    for (std::span<std::byte> region : pinned_) PinnedRegistry::Release(region);
  }

  Status LoadLayer(int64_t layer, std::span<const LoadItem> items) override {
    load_ranges_.clear();
    for (const LoadItem& it : items) {
      const LayerSpan s = SpanOf(layout_, layer, it.reader->tokens());
      KVAULT_RETURN_IF_ERROR(AddReads(*it.reader, s.offset, s.half, pool_.KPage(layer, it.page)));
      KVAULT_RETURN_IF_ERROR(AddReads(*it.reader, s.offset + s.half, s.half, pool_.VPage(layer, it.page)));
    }
    KVAULT_RETURN_IF_ERROR(load_->Copy(gpu::CopyKind::kHostToDevice, load_ranges_));
    return load_->Record(static_cast<int>(layer));
  }
  Status LoadsLanded() override { return load_->SynchronizeAll(); }
  void ComputeAfterLoad(int64_t layer) override {
    // LibTorch computes on the legacy default stream (nullptr) unless told otherwise.
    Status st = load_->MakeStreamWait(static_cast<int>(layer), nullptr);
    if (!st.ok()) throw std::runtime_error("ordering the compute after the KV load: " + st.ToString());
  }
  Status ComputeFinished() override {
    KVAULT_RETURN_IF_ERROR(compute_sync_->WaitForStream(nullptr));
    return compute_sync_->SynchronizeAll();
  }

  Status SaveLayer(int64_t layer, std::span<const SaveItem> items) override {
    save_ranges_.clear();
    for (const SaveItem& it : items) {
      const LayerSpan s = SpanOf(layout_, layer, it.tokens);
      KVAULT_RETURN_IF_ERROR(AddWrites(*it.writer, s.offset, s.half, pool_.KPage(layer, it.page)));
      KVAULT_RETURN_IF_ERROR(AddWrites(*it.writer, s.offset + s.half, s.half, pool_.VPage(layer, it.page)));
      written_.push_back({it.writer, s.offset, 2 * s.half});
    }
    return save_->Copy(gpu::CopyKind::kDeviceToHost, save_ranges_);
  }
  Status SavesLanded() override {
    Status st = save_->SynchronizeAll();
    for (const Written& w : written_) {
      if (st.ok()) st = w.writer->MarkWritten(w.offset, w.bytes);
    }
    written_.clear();
    return st;
  }
  bool asynchronous() const override { return true; }
  const char* name() const override { return "cuda"; }

 private:
  struct Written {
    ChunkWriter* writer;
    size_t offset, bytes;
  };
  CudaKvTransfer(KvPool& pool, const KvLayout& layout) : pool_(pool), layout_(layout) {}

  // Device bytes at `dst` <- payload [offset, offset + size) of the reader, piece by piece.
  Status AddReads(const ChunkReader& r, size_t offset, size_t size, std::byte* dst) {
    return r.ForEachPiece(offset, size, [&](std::span<const std::byte> piece) {
      load_ranges_.push_back({dst, piece.data(), piece.size()});
      dst += piece.size();
    });
  }
  // The writer's memory for payload [offset, offset + size) <- device bytes at `src`.
  Status AddWrites(ChunkWriter& w, size_t offset, size_t size, const std::byte* src) {
    return w.ForEachPiece(offset, size, [&](std::span<std::byte> piece) {
      save_ranges_.push_back({piece.data(), src, piece.size()});
      src += piece.size();
    });
  }

  KvPool& pool_;
  const KvLayout layout_;
  std::unique_ptr<gpu::TransferStream> load_, save_, compute_sync_;
  std::vector<std::span<std::byte>> pinned_;  // regions acquired from the PinnedRegistry
  std::vector<gpu::CopyRange> load_ranges_;  // loader thread's scratch
  std::vector<gpu::CopyRange> save_ranges_;  // saver thread's scratch
  std::vector<Written> written_;             // saver thread: copies enqueued, not yet marked
};

}  // namespace

Result<std::unique_ptr<KvTransfer>> MakeKvTransfer(KvPool& pool, const KvLayout& layout, Store* store) {
  // Without a store nothing is ever loaded or saved: any device will do.
  if (pool.k(0).device().is_cpu() || store == nullptr) {
    return std::unique_ptr<KvTransfer>(std::make_unique<HostKvTransfer>(pool, layout));
  }
  if (!pool.k(0).device().is_cuda()) return Status::InvalidArgument("KV pools live on the CPU or a CUDA GPU");
  return CudaKvTransfer::Create(pool, layout, store);
}

}  // namespace kvault::engine

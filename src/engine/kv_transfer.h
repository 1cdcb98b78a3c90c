// KvTransfer: moves chunk payloads between store memory (T1) and the engine's KV pool pages,
// one layer of many chunks at a time — the loader's and the saver's copy step.
//
//   host (CPU pool)   memcpy on the calling thread; a copy is done when the call returns.
//   CUDA (GPU pool)   DMA on two side streams (loads, saves) straight between the store's
//                     page-locked T1 memory and the GPU pages. LoadLayer enqueues layer l's
//                     copies and records event l; the compute stream waits on event l before
//                     layer l runs (ComputeAfterLoad), so layer l computes while layer l+1 is
//                     on the bus. Saves copy device->host after the prefill's compute finished
//                     (ComputeFinished); decode never waits for them.
//
// A chunk's layer l is K then V (KvLayout::layer_range), each the first `tokens` slots of
// the chunk's page in that layer's K (or V) pool tensor.
//
// Thread-safety: LoadLayer/LoadsLanded from the loader thread, SaveLayer/SavesLanded from
// the saver thread, ComputeAfterLoad/ComputeFinished from the engine loop's thread; each of
// those is called by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "engine/kv_pool.h"
#include "kvault/store.h"

namespace kvault::engine {

struct LoadItem {
  const ChunkReader* reader;
  int32_t page;
};

struct SaveItem {
  ChunkWriter* writer;
  int32_t page;
  uint32_t tokens;
};

class KvTransfer {
 public:
  virtual ~KvTransfer() = default;

  // Copies (host) or enqueues the copies of (CUDA) layer `layer` of every item into its page.
  virtual Status LoadLayer(int64_t layer, std::span<const LoadItem> items) = 0;
  // After the last LoadLayer of a prefill: returns when every load copy has landed, so that
  // the readers may unpin.
  virtual Status LoadsLanded() = 0;
  // Before layer `layer` computes, once LoadLayer(layer) has returned: orders the compute
  // after that layer's copies (nothing to do on the host).
  virtual void ComputeAfterLoad(int64_t layer) = 0;
  // Returns when every compute issued so far has finished (CUDA; the host: at once).
  virtual Status ComputeFinished() = 0;

  // Copies (or enqueues the copies of) layer `layer` of every item's page into its writer.
  virtual Status SaveLayer(int64_t layer, std::span<const SaveItem> items) = 0;
  // After the last SaveLayer of a batch: returns when the copies have landed and marks their
  // bytes written, so that the writers may commit.
  virtual Status SavesLanded() = 0;

  // Whether copies and compute run on the device, apart from the host (CUDA): the compute's
  // stalls on loads then show in the forward pass's time, not in the host's waits, and a
  // layer's new KV is in its pages only once ComputeFinished says so (the engine saves after
  // it). False (host): a layer's KV may be saved as soon as its compute returned.
  virtual bool asynchronous() const = 0;
  virtual const char* name() const = 0;  // "host" or "cuda"
};

// The transfer for `pool`'s device: host for a CPU pool (or when there is no store: nothing
// moves); CUDA for a GPU pool, which page-locks `store`'s HostMemory() (shared by every engine
// of the process, released with the last; when that fails copies still work, at pageable
// speed, and a warning says so). Unavailable when the pool is on a GPU and CUDA cannot be used
// (a build without the toolkit, no device); InvalidArgument for a pool on a GPU other than
// cuda:0. The CUDA path orders its copies against the legacy default stream, LibTorch's
// compute stream unless the caller set another current stream.
Result<std::unique_ptr<KvTransfer>> MakeKvTransfer(KvPool& pool, const KvLayout& layout, Store* store);

}  // namespace kvault::engine

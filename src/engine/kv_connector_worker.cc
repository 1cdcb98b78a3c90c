// KvConnectorWorker and PrefillKvIo: the connector's worker side (see kv_connector.h).
#include <exception>

#include "engine/kv_connector.h"

namespace kvault::engine {

KvConnectorWorker::KvConnectorWorker(Store* store, std::unique_ptr<KvTransfer> transfer, int64_t layers)
    : store_(store), layers_(layers), transfer_(std::move(transfer)) {}

KvConnectorWorker::~KvConnectorWorker() = default;

std::unique_ptr<PrefillKvIo> KvConnectorWorker::StartLoads(const Namespace& ns, std::vector<ChunkLoad> loads,
                                                           std::shared_ptr<PrefillMeasurements> measured) {
  auto loaded = std::make_shared<LayerProgress>();
  std::future<OpenedPrefix> opened;
  if (loads.empty()) {
    loaded->Set(layers_);
  } else {
    auto promise = std::make_shared<std::promise<OpenedPrefix>>();
    opened = promise->get_future();
    loader_.Post([this, ns, loads = std::move(loads), promise, loaded, measured] {
      Load(ns, loads, *promise, *loaded, *measured);
    });
  }
  // Made once the load is posted: a handle always has a loader that will finish.
  return std::unique_ptr<PrefillKvIo>(new PrefillKvIo(*this, std::move(measured), std::move(loaded), std::move(opened)));
}

// On the loader thread. Everything written to `measured` is written before `loaded` says the
// last layer is done (or failed).
void KvConnectorWorker::Load(const Namespace& ns, const std::vector<ChunkLoad>& loads,
                             std::promise<OpenedPrefix>& opened, LayerProgress& loaded,
                             PrefillMeasurements& measured) {
  std::vector<std::pair<ChunkReader, int32_t>> readers;
  bool promised = false;
  try {
    OpenedPrefix o;
    for (const ChunkLoad& chunk : loads) {
      const auto t0 = Clock::now();
      auto r = store_->OpenChunk(ns, chunk.key);
      if (!r.ok()) break;  // gone or unreadable since the lookup: recompute from here
      if (r->served_from() == Tier::kT2 || r->served_from() == Tier::kT3) {
        measured.reads.push_back({r->served_from(), r->size(), MsSince(t0) / 1e3});
      }
      o.served.emplace_back(r->served_from(), chunk.tokens);
      o.tokens += chunk.tokens;
      readers.emplace_back(std::move(r.value()), chunk.page);
    }
    opened.set_value(o);
    promised = true;
    const auto copy_start = Clock::now();
    std::vector<LoadItem> items;
    uint64_t bytes = 0;
    for (const auto& [r, page] : readers) {
      items.push_back({&r, page});
      bytes += r.size();
    }
    for (int64_t l = 0; l < layers_; ++l) {
      const bool last = l + 1 == layers_;
      if (!transfer_->LoadLayer(l, items).ok() || (last && !transfer_->LoadsLanded().ok())) {
        (void)transfer_->LoadsLanded();  // nothing in flight reads a reader about to unpin
        readers.clear();
        loaded.Fail(layers_);
        return;
      }
      if (last) {
        readers.clear();  // landed: unpin before the compute may finish
        measured.copies_landed = true;
        measured.copy_ms = MsSince(copy_start);
        measured.copied_bytes = bytes;
      }
      loaded.Set(l + 1);
    }
  } catch (...) {  // (out of memory): the prefill fails, nothing waits forever
    (void)transfer_->LoadsLanded();
    readers.clear();
    if (!promised) opened.set_value(OpenedPrefix{});
    loaded.Fail(layers_);
  }
}

void KvConnectorWorker::SaveComputed(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease) {
  auto all = std::make_shared<LayerProgress>();
  all->Set(layers_);
  PostSaves(std::move(saves), std::move(lease), std::move(all));
}

void KvConnectorWorker::PostSaves(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease,
                                  std::shared_ptr<LayerProgress> computed) {
  if (saves.empty()) return;
  auto items = std::make_shared<std::vector<PendingSave>>(std::move(saves));
  saver_.Post([this, items, computed, lease = std::move(lease)] {
    std::vector<SaveItem> batch;
    for (PendingSave& it : *items) batch.push_back({&it.writer, it.page, it.tokens});
    for (int64_t l = 0; l < layers_; ++l) {
      if (!computed->WaitFor(l) || !transfer_->SaveLayer(l, batch).ok()) {
        (void)transfer_->SavesLanded();  // nothing in flight writes a slot about to be dropped
        return;  // the prefill failed, or a copy did: the writers drop uncommitted
      }
    }
    if (!transfer_->SavesLanded().ok()) return;
    for (PendingSave& it : *items) (void)it.writer.Commit();
  });
}

Status KvConnectorWorker::ComputeFinished() {
  return transfer_->asynchronous() ? transfer_->ComputeFinished() : Status::OK();
}

void KvConnectorWorker::WaitForSaves() {
  loader_.WaitIdle();
  saver_.WaitIdle();
}

PrefillKvIo::PrefillKvIo(KvConnectorWorker& worker, std::shared_ptr<PrefillMeasurements> measured,
                         std::shared_ptr<LayerProgress> loaded, std::future<OpenedPrefix> opened)
    : worker_(worker),
      transfer_(*worker.transfer_),
      layers_(worker.layers_),
      measured_(std::move(measured)),
      opened_(std::move(opened)),
      loaded_(std::move(loaded)),
      computed_(std::make_shared<LayerProgress>()) {}

PrefillKvIo::~PrefillKvIo() {
  if (ended_) return;
  computed_->Fail(layers_);
  if (opened_.valid()) opened_.wait();
  loaded_->WaitFor(layers_ - 1);
  (void)transfer_.ComputeFinished();
}

OpenedPrefix PrefillKvIo::WaitOpened() { return opened_.valid() ? opened_.get() : OpenedPrefix{}; }

double PrefillKvIo::HeadComputed(int64_t tokens, Clock::time_point started) {
  if (transfer_.asynchronous()) (void)transfer_.ComputeFinished();  // time the device's work
  const double ms = MsSince(started);
  measured_->passes.push_back({tokens, 0, ms / 1e3});
  return ms;
}

void PrefillKvIo::StartSaves(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease) {
  worker_.PostSaves(std::move(saves), std::move(lease), computed_);
}

PrefillKvIo::ForwardHooks::ForwardHooks(PrefillKvIo& io, SequenceKv& kv) : kv_(kv) {
  kv_.SetHooks([&io](int64_t l) { io.BeforeLayer(l); }, [&io](int64_t l) { io.AfterLayer(l); });
}

PrefillKvIo::ForwardHooks::~ForwardHooks() { kv_.SetHooks(nullptr, nullptr); }

void PrefillKvIo::BeforeLayer(int64_t layer) {
  const auto t0 = Clock::now();
  if (!loaded_->WaitFor(layer)) {
    load_failed_ = true;
  } else {
    transfer_.ComputeAfterLoad(layer);
  }
  wait_ms_ += MsSince(t0);
}

// Where copies run on the device beside the compute, a layer's new KV is in its pages only
// once the device has computed it: the saves then start after the whole pass (EndSaves).
void PrefillKvIo::AfterLayer(int64_t layer) {
  if (!transfer_.asynchronous()) computed_->Set(layer + 1);
}

Status PrefillKvIo::PassFinished() { return transfer_.asynchronous() ? transfer_.ComputeFinished() : Status::OK(); }

void PrefillKvIo::RecordPass(int64_t tokens, int64_t cached, double ms) {
  if (!transfer_.asynchronous() || measured_->copied_bytes == 0) {
    measured_->passes.push_back({tokens, cached, (ms - wait_ms_) / 1e3});
  }
}

void PrefillKvIo::EndSaves(bool computed_ok) {
  if (computed_ok) {
    computed_->Set(layers_);
  } else {
    computed_->Fail(layers_);
  }
  ended_ = true;
}

}  // namespace kvault::engine

// The models one `kvault serve` serves, and which of them are resident (docs/SERVE.md,
// "Several models").
//
// Every model has an id, a text side (tokenizer, chat template: known from the first load on
// and kept, so a request is tokenized whether or not its model is resident) and, while it is
// resident, its own engine (its own KV pool; its KV namespace is its fingerprint's, so KV
// never crosses models). At most `max_loaded` models are resident (0: all); the others live
// in the store (or only in their source) and are switched in on demand:
//
//   - Submit hands a request for a resident, admitting model to its engine at once; any
//     other request waits in its model's queue (in arrival order) and wakes the switcher.
//   - The switcher (one thread of its own) picks the non-resident model whose oldest live
//     request is the oldest, and makes room when max_loaded are resident: it evicts the least
//     recently used resident model with nothing in flight; when every resident model is busy,
//     the least recently used one stops admitting (its new requests queue too) until its
//     requests in flight finish, and is evicted then. It loads the model on its own thread
//     (the engine thread keeps stepping the other resident engines meanwhile), then submits
//     the model's queued requests in arrival order. A load that fails ends that model's queued
//     requests with kUnavailable naming the cause; the model stays servable (the next request
//     retries).
//   - An evicted model's weights buffer (ModelLoad::arena) is handed to the next load when
//     nothing else references it any more (its engine and network destroyed).
//   - A queued request whose cancel flag is set (its client left) is ended without a load.
//
// Thread-safety: Find/text/Submit/Snapshot/metrics from any thread; StepAll from one thread at
// a time (the engine thread); LoadAll and Stop from the owner's thread (LoadAll before the
// first Submit).
#pragma once

#include <torch/torch.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"
#include "kvault/status.h"
#include "metrics/latency_histogram.h"
#include "store/mutex.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::openai {

// What loading one model gives the server.
struct ModelLoad {
  std::shared_ptr<const engine::LlamaModel> model;
  // The buffer the weights are views of, when they are (a load from the store); may be undefined.
  torch::Tensor arena;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::optional<tokenizer::ChatTemplate> chat;  // required
  bool add_bos = true;          // raw /v1/completions prompts start with BOS
  std::string fingerprint;      // 64 hex digits
  std::string description;      // for the log
  uint64_t weights_bytes = 0;
  std::string weights_from;     // "file", "T1", "T2", "T3", "generated"
  bool in_store = false;        // the store holds these weights now (a switch can read them there)
  std::string note;             // why the store's copy was not used, or ""
};

// Loads model `index` (in the order given to ModelSet) from wherever the caller's flags say.
// `reuse_arena`: a weights buffer nothing else references, to fill if it is large enough
// (undefined: none). Runs on the switcher thread (or LoadAll's caller); must be thread-safe
// with itself only across different calls in sequence (the set never runs two at once).
using ModelLoader = std::function<Result<ModelLoad>(size_t index, torch::Tensor reuse_arena)>;

struct ServedModel {
  std::string id;    // what requests name
  std::string spec;  // what it loads (models/model_loader.h)
};

struct ModelSetOptions {
  size_t max_loaded = 0;          // resident models at most; 0: all
  engine::EngineOptions engine;   // every model's engine (the store in it is shared)
};

// A request held by the set until its model is resident.
struct ModelRequest {
  std::vector<uint32_t> prompt;
  engine::SamplingParams params;
  std::function<void(engine::RequestResult)> done;  // exactly once: the engine's, or the set's
};

enum class ModelState { kLoaded, kLoading, kQueued, kStored, kSource };
const char* ModelStateName(ModelState s);  // "loaded", "loading", "queued", "stored", "source"

// One model as /v1/models and /metrics report it.
struct ModelStatus {
  std::string id, spec, fingerprint, description;
  ModelState state = ModelState::kSource;
  uint64_t weights_bytes = 0;
  std::string weights_from;  // of the last load
  double last_load_s = 0;
  uint64_t loads = 0;
  std::map<std::string, uint64_t> loads_by_from;  // "T1" -> n
  uint64_t requests = 0;   // submitted to the set
  uint64_t queued = 0;     // waiting for the model now
  uint64_t in_flight = 0;  // in its engine now
  bool draining = false;   // resident, admitting nothing new until its requests end (then out)
  uint64_t load_failures = 0;
};

// The text side of a model: immutable once LoadAll has returned.
struct ModelText {
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::optional<tokenizer::ChatTemplate> chat;
  bool add_bos = true;
};

class ModelSet {
 public:
  ModelSet(std::vector<ServedModel> models, ModelLoader loader, ModelSetOptions options);
  ~ModelSet();  // Stop()
  ModelSet(const ModelSet&) = delete;
  ModelSet& operator=(const ModelSet&) = delete;

  // Loads every model once, in order (so that the store holds it and its text side is known),
  // keeping the first max_loaded resident; `progress` gets one line per model. Then starts the
  // switcher. The first error stops it (prefixed with the model's id).
  Status LoadAll(const std::function<void(const std::string&)>& progress);

  size_t size() const { return models_.size(); }
  const std::vector<std::string>& ids() const { return ids_; }
  std::optional<size_t> Find(const std::string& id) const;
  const ModelText& text(size_t index) const { return texts_[index]; }

  // Called (from any thread, no lock held) whenever an engine got work: the engine thread's
  // wakeup. Set before the first Submit (the switcher calls it only for submitted requests).
  void SetWakeup(std::function<void()> wakeup) { wakeup_ = std::move(wakeup); }

  // Gives `request` to model `index`: to its engine now when it is resident and admitting,
  // else to its queue (the switcher loads it). Any thread.
  void Submit(size_t index, ModelRequest request) EXCLUDES(mu_);

  // Steps every resident engine once, in turn; true when any did work. The engine thread only.
  bool StepAll() EXCLUDES(mu_);

  // Ends the switcher (a load in progress finishes first) and every queued request (with
  // kUnavailable "the server is stopping"). Requests in engines are the caller's to cancel and
  // step to their end. Idempotent.
  void Stop() EXCLUDES(mu_);

  std::vector<ModelStatus> Snapshot() const EXCLUDES(mu_);
  size_t resident() const EXCLUDES(mu_);
  HistogramSnapshot load_seconds() const { return load_seconds_.Snapshot(); }

 private:
  struct Slot {
    ServedModel served;
    std::shared_ptr<engine::Engine> engine;  // resident when set
    torch::Tensor arena;                     // of the resident weights (may be undefined)
    bool loading = false;
    bool admitting = true;                   // false while draining to be evicted
    std::deque<std::pair<uint64_t, ModelRequest>> queue;  // (arrival sequence, request)
    uint64_t in_flight = 0;
    uint64_t last_used = 0;                  // a sequence number: larger is more recent
    bool in_store = false;
    // Reported.
    std::string fingerprint, description, weights_from;
    uint64_t weights_bytes = 0, loads = 0, requests = 0, load_failures = 0;
    double last_load_s = 0;
    std::map<std::string, uint64_t> loads_by_from;
  };

  void SwitcherLoop() EXCLUDES(mu_);
  // The non-resident model to load next (oldest live request first), after dropping queued
  // requests whose client left; nullopt when none. (Invariant, re-established here: a
  // resident model that admits has an empty queue.)
  std::optional<size_t> NextToLoad(std::vector<ModelRequest>* dropped) REQUIRES(mu_);
  size_t ResidentLocked() const REQUIRES(mu_);
  // Takes model `index`'s engine away (it has nothing in flight) and frees it; keeps its
  // weights buffer for the next load when nothing else holds it. Releases mu_ meanwhile.
  void EvictLocked(size_t index, MutexLock& lock) REQUIRES(mu_);
  // Every resident model that was draining admits again (its queued requests go to its
  // engine); true when there was one.
  bool ReadmitDrainingLocked() REQUIRES(mu_);
  // Submits the queued requests of a resident model, in order.
  void SubmitQueuedLocked(size_t index) REQUIRES(mu_);
  void SubmitToEngineLocked(size_t index, ModelRequest request) REQUIRES(mu_);
  void Wake() const;
  std::shared_ptr<engine::Engine> MakeEngine(const ModelLoad& load) const;
  void Record(Slot& s, const ModelLoad& load, double seconds) REQUIRES(mu_);

  const std::vector<ServedModel> models_;
  std::vector<std::string> ids_;
  std::vector<ModelText> texts_;  // written by LoadAll only, before any reader
  const ModelLoader loader_;
  const ModelSetOptions options_;
  std::function<void()> wakeup_;

  mutable Mutex mu_;
  std::condition_variable cv_;  // the switcher's: a request queued, a request ended, Stop
  std::vector<Slot> slots_ GUARDED_BY(mu_);
  torch::Tensor spare_arena_ GUARDED_BY(mu_);  // an evicted model's buffer nobody references
  uint64_t clock_ GUARDED_BY(mu_) = 0;         // arrival / use sequence
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread switcher_;
  LatencyHistogram load_seconds_;
};

}  // namespace kvault::openai

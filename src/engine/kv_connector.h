// The engine's seam to the store (CachedAttention), in two sides:
//
//   scheduler side — KvConnectorScheduler, on the engine loop's thread: keys a prompt's chunks
//     once, hints the store with the queue, matches a request's cached prefix once and plans
//     what of it to load and what to recompute, begins the saves of new chunks, and is the one
//     place the load planner is asked and taught.
//   worker side — KvConnectorWorker (the loader and saver threads) and one PrefillKvIo per
//     prefill: starts the loads (open the chunks, then copy them into the pages layer by
//     layer), waits for layer l's loaded KV before layer l computes, releases layer l's new
//     KV to the saver once it is computed, and waits for the saves.
//
// A prefill runs: MatchAndPlan -> StartLoads -> [head pass] -> WaitOpened -> BeginSaves +
// StartSaves -> forward pass under ForwardHooks -> PassFinished -> EndSaves -> Learn.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/job_thread.h"
#include "engine/kv_pool.h"
#include "engine/kv_transfer.h"
#include "engine/sequence.h"
#include "kvault/store.h"
#include "planner/load_planner.h"

namespace kvault::engine {

// A cached chunk the worker side loads into a page of the sequence.
struct ChunkLoad {
  ChunkKey key;
  int64_t tokens = 0;  // the chunk's tokens that the kept prompt uses
  int32_t page = 0;
};

// The scheduler side's decision for one prefill.
struct PrefillPlan {
  planner::LoadPlan plan;  // what the planner chose (RequestResult::plan)
  // Tokens of a cached head recomputed as a pass of its own while the tail loads; 0 when
  // nothing is loaded (a prefix recomputed whole is just a longer forward pass).
  int64_t head_tokens = 0;
  std::vector<ChunkLoad> loads;  // the chunks to load, in page order, right after the head
};

// A chunk with new KV to save: its writer (begun, not yet written) and the page holding it.
struct PendingSave {
  ChunkWriter writer;
  int32_t page = 0;
  uint32_t tokens = 0;
};

// What one prefill measured, for the planner (KvConnectorScheduler::Learn). The loader
// writes reads and copies before it marks its last layer loaded (or failed); the engine loop
// writes passes; Learn reads all of it once the loader is done with the prefill.
struct PrefillMeasurements {
  struct Read {
    Tier tier;
    uint64_t bytes;
    double seconds;
  };
  struct Pass {
    int64_t tokens, cached;
    double seconds;
  };
  std::vector<Read> reads;     // each T2/T3 chunk read into T1, in order
  bool copies_landed = false;  // every copy into the pages landed
  uint64_t copied_bytes = 0;   // those copies' bytes, and their time from first to last landed
  double copy_ms = 0;
  std::vector<Pass> passes;    // forward passes that timed the compute, head first
};

// The chunks the loader opened: a prefix of the plan's loads (a chunk gone or unreadable
// since the lookup ends it; the rest is recomputed).
struct OpenedPrefix {
  std::vector<std::pair<Tier, int64_t>> served;  // tier and tokens of each opened chunk
  int64_t tokens = 0;                            // contiguous after the recomputed head
};

// The scheduler side. Thread-safety: KeyPrompt from any thread; the rest from the engine
// loop's thread (Learn feeds the planner, which is itself thread-safe).
class KvConnectorScheduler {
 public:
  // `options` (its store may be null: nothing is keyed, looked up or saved) and `planner`
  // must outlive this.
  KvConnectorScheduler(const EngineOptions& options, planner::LoadPlanner& planner);

  // Keys the submitted prompt's whole chunks once (Sequence::keys) when there is a store.
  void KeyPrompt(Sequence& s) const;

  // How many queued requests to hint the store with before a prefill (0: no hints).
  size_t hint_window() const;
  // Hints the store with `admitted` first (its chunks must not be evicted before its lookup
  // pins them), then `queued` (keyed prompts of the same namespace, in queue order): their
  // cached KV should be in DRAM when they run.
  void Hint(const Sequence& admitted, const std::vector<const KeyedTokens*>& queued);

  // Matches s's cached prefix (once, by its keys) and plans which of its chunks load and which
  // recompute. s has its pages and its kept prompt (prompt_len, head and dropped chunks).
  PrefillPlan MatchAndPlan(const Sequence& s);

  bool saves_prompt() const;     // the prompt's new KV is saved
  bool saves_generated() const;  // generated tokens' KV is saved when the request finishes
  // Begins the puts of the chunks that hold new positions [from, to) of s, each keyed once
  // (whole prompt chunks by s.keys). After a context overflow only the head is saved. Stops at
  // the first put the store refuses; skips chunks it holds already.
  std::vector<PendingSave> BeginSaves(const Sequence& s, int64_t from, int64_t to);

  // The planner learns what a prefill measured.
  void Learn(const PrefillMeasurements& measured);

 private:
  // The cached chunks for pages 0, 1, ... by their original keys.
  std::vector<CachedChunk> MatchPages(const Sequence& s);
  planner::LoadPlan Plan(std::span<const planner::PlanChunk> chunks, int64_t found, int64_t kept_tokens) const;

  const EngineOptions& options_;
  Store* const store_;
  planner::LoadPlanner& planner_;
};

class PrefillKvIo;

// The worker side: the loader and saver threads over the KV transfer.
// Thread-safety: StartLoads, SaveComputed and WaitForSaves from the engine loop's thread.
class KvConnectorWorker {
 public:
  // `store` may be null when nothing loads or saves; `layers`: the model's.
  KvConnectorWorker(Store* store, std::unique_ptr<KvTransfer> transfer, int64_t layers);
  ~KvConnectorWorker();  // runs the jobs posted, then stops the threads

  // Starts one prefill's loads: the loader opens `loads` (T2/T3 chunks are read into T1 here,
  // while a head computes), then copies each one's layers into its page, in layer order.
  // `measured` receives the loader's reads and copies, and the prefill's passes.
  std::unique_ptr<PrefillKvIo> StartLoads(const Namespace& ns, std::vector<ChunkLoad> loads,
                                          std::shared_ptr<PrefillMeasurements> measured);
  // Saves KV already in the pages (generated tokens, when a request finishes). The lease keeps
  // the pages until the saves are done.
  void SaveComputed(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease);
  // Returns when every load and save posted so far is done.
  void WaitForSaves();
  // Returns when the device has finished the compute queued so far (CUDA; at once on the host):
  // a pass's new KV is in the pages before SaveComputed copies it out.
  Status ComputeFinished();

 private:
  friend class PrefillKvIo;
  void Load(const Namespace& ns, const std::vector<ChunkLoad>& loads, std::promise<OpenedPrefix>& opened,
            LayerProgress& loaded, PrefillMeasurements& measured);
  // Copies each layer once `computed` says it is, then commits; drops the writers on failure.
  void PostSaves(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease,
                 std::shared_ptr<LayerProgress> computed);

  Store* const store_;
  const int64_t layers_;
  std::unique_ptr<KvTransfer> transfer_;  // before the threads: their jobs use it
  JobThread loader_;  // opens the chunks to load, copies them into pages, layer by layer
  JobThread saver_;   // copies new KV out of pages into the store, layer by layer
};

// One prefill's loads and saves on the worker side; the engine loop's thread only.
// If it is destroyed before EndSaves (a prefill leaving by an exception), it fails the saves
// (none waits forever for a compute that will not come), waits until the loader is done with
// the pages, and for the device to finish the compute that writes them.
class PrefillKvIo {
 public:
  PrefillKvIo(const PrefillKvIo&) = delete;
  PrefillKvIo& operator=(const PrefillKvIo&) = delete;
  ~PrefillKvIo();

  bool loading() const { return opened_.valid(); }
  // Blocks until the loader has opened the chunks to load (nothing when !loading()).
  OpenedPrefix WaitOpened();
  // After the pass of a recomputed head of `tokens` that began at `started`: waits for the
  // device (CUDA), records the pass (it waited for no load) and returns its milliseconds.
  double HeadComputed(int64_t tokens, Clock::time_point started);
  // Starts saving `saves`, each layer as soon as the compute releases it (below).
  void StartSaves(std::vector<PendingSave> saves, std::shared_ptr<PageLease> lease);

  // Sets kv's layer hooks to this prefill's while the new tokens' pass runs: before layer l,
  // wait for its loaded KV; after it, release its new KV to the saver.
  class ForwardHooks {
   public:
    ForwardHooks(PrefillKvIo& io, SequenceKv& kv);
    ~ForwardHooks();
    ForwardHooks(const ForwardHooks&) = delete;
    ForwardHooks& operator=(const ForwardHooks&) = delete;

   private:
    SequenceKv& kv_;
  };

  // After the pass: returns when the device has finished it (CUDA; saves wait for it too).
  Status PassFinished();
  // Records a pass of `tokens` after `cached` that took `ms`, its waits for loads excluded,
  // when it measured the compute: on a device whose copies run beside the compute its stalls
  // are inside the pass, so only a pass with nothing loaded says.
  void RecordPass(int64_t tokens, int64_t cached, double ms);
  // Whether a layer's load failed (the pass computed over garbage: nothing is saved).
  bool load_failed() const { return load_failed_; }
  double load_wait_ms() const { return wait_ms_; }  // the pass's waits for loaded KV
  // Ends the prefill's saves: they go on with every layer (computed_ok), or drop.
  void EndSaves(bool computed_ok);

 private:
  friend class KvConnectorWorker;
  PrefillKvIo(KvConnectorWorker& worker, std::shared_ptr<PrefillMeasurements> measured,
              std::shared_ptr<LayerProgress> loaded, std::future<OpenedPrefix> opened);
  void BeforeLayer(int64_t layer);
  void AfterLayer(int64_t layer);

  KvConnectorWorker& worker_;
  KvTransfer& transfer_;
  const int64_t layers_;
  std::shared_ptr<PrefillMeasurements> measured_;
  std::future<OpenedPrefix> opened_;           // valid while chunks are being opened
  std::shared_ptr<LayerProgress> loaded_;      // layers landed in the pages
  std::shared_ptr<LayerProgress> computed_;    // layers whose new KV the saver may copy
  double wait_ms_ = 0;
  bool load_failed_ = false;
  bool ended_ = false;
};

}  // namespace kvault::engine

// The discrete-event replay behind `kvault replay`: a request trace through a model of one
// serving node — `engines` prefill engines (one per GPU, as in prefill/decode disaggregated
// serving) taking requests from one FIFO queue — in front of the node's shared kvault tiers
// (ReplayTiers: the store's tier core, payloads elided).
//
// Per request, at the time it reaches the engine:
//   1. lookup of the prompt's chunk chain (T1 / T2 hits; the hit chunks are pinned);
//   2. this request and the next `window` requests already queued are hinted to the store:
//      the policies see the window, and the prefetcher reads the queued ones' T2 chunks into
//      T1 in the background on the disk's read timeline, never evicting a window entry or one
//      without a disk copy, while prefetched-but-unused bytes stay within
//      `prefetch_budget_bytes`;
//   3. plan and service time: the engine's planner (planner::LoadPlanner, its rates pinned
//      from the cost model) chooses what to load and what to recompute from the hits' tiers
//      (a chunk whose prefetch is still reading counts as T2) and the disk's read backlog,
//      as the engine asks it (the engine's backlog is 0 until the store reports one). The
//      plan is then charged on the node: the loaded T2 chunks are read into DRAM on the
//      disk's read timeline (behind the reads queued there; a prefetched one waits for the
//      rest of its read) while a recomputed head computes, then the loaded chunks cross
//      PCIe layer by layer while the rest computes (planner::PipelinedPrefillSeconds, the
//      planner's own formula, with the disk wait the timeline gives);
//   4. the new chunks are put into T1, visible to lookups when the prefill ends, and written
//      behind to T2 on the disk's write timeline; a write that would leave more than half of
//      T1 waiting for the disk is dropped (the store would evict those entries before they
//      reached the disk).
// The disk has two FIFO timelines at their own bandwidths: reads (demand and prefetch) and
// writes. With a T2 codec (t2_codec), T2 holds records of the encoded size (so about the
// codec's ratio more chunks), a read moves the stored bytes and then decodes the raw ones on
// the reading thread (both on the read timeline), and a write encodes the raw bytes on the
// write-behind thread before writing the stored ones (both on the write timeline).
//
// Thread-safety: RunReplay is reentrant (no globals).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvault/status.h"
#include "planner/load_planner.h"
#include "replay/cost_model.h"
#include "replay/trace.h"

namespace kvault::replay {

struct ReplayOptions {
  ModelShape model;
  CostModel cost;
  uint64_t t1_bytes = 64ull << 30;
  uint64_t t2_bytes = 512ull << 30;
  uint32_t page_bytes = 256u << 10;
  std::string policy = "lru";
  uint32_t engines = 4;                  // prefill engines (GPUs) sharing the store and the disk
  uint32_t window = 32;                  // queued requests hinted; 0: no hints, no prefetch
  uint64_t prefetch_budget_bytes = 0;    // prefetched, not yet used; 0 = a quarter of T1
  double speed = 1.0;                    // arrival rate multiplier
  // How T2 stores chunks (StoreOptions::t2_codec), with the model's KV layout
  // (model.Layout(trace chunk tokens)); decode and encode at cost.codec_decode_gbps /
  // codec_encode_gbps, which must then be positive.
  KvCodec t2_codec = KvCodec::kNone;
  // Where cost.codec_decode_gbps / codec_encode_gbps came from, for the report: "measured"
  // (MeasureCodecRates) or "flag".
  std::string codec_decode_source = "flag", codec_encode_source = "flag";
  // The planner's options, as the engine's (EngineOptions::planner); its layers, rates and
  // prefill model are pinned from `model` and `cost` (CostModel::PinnedPlannerOptions).
  planner::LoadPlanner::Options planner;
  // Called about every 0.5 s of wall time with (requests done, total).
  std::function<void(size_t, size_t)> progress;
};

struct ReplayResult {
  size_t requests = 0;
  uint64_t prompt_tokens = 0, output_tokens = 0;
  uint64_t hit_tokens_t1 = 0, hit_tokens_t2 = 0;  // lookup hits (what the cache held)
  uint64_t reused_tokens = 0;                      // hits actually loaded (after the planner)
  // Requests with a cached prefix by the planner's choice: all of it loaded; all of it
  // recomputed; some loaded and some recomputed (a split head or a recomputed T2 tail).
  uint64_t planner_loads = 0, planner_recomputes = 0, planner_splits = 0;
  std::vector<double> ttft_ms;                     // per request, trace order
  std::vector<double> service_ms;                  // per request: TTFT minus queueing
  double makespan_s = 0;        // first arrival to last completion
  double prefill_busy_s = 0;    // engine time spent prefilling
  double last_prefill_end_s = 0;  // the latest prefill end
  // Queue length (requests waiting) sampled at each request's start: (time s, length).
  std::vector<std::pair<double, uint32_t>> queue;
  // Bytes moved per path.
  // bytes_t2_to_t1 and bytes_t1_to_t2 are stored bytes (encoded with a T2 codec, as the
  // store counts them); the others are raw KV.
  uint64_t bytes_t1_to_gpu = 0, bytes_t2_to_t1 = 0, bytes_prefetched = 0;
  uint64_t bytes_gpu_to_t1 = 0, bytes_t1_to_t2 = 0, writes_dropped = 0;
  uint64_t t1_evictions = 0, t2_evictions = 0, t1_put_failures = 0;
  uint64_t prefetch_hit_tokens = 0;  // T1 hits that a prefetch brought in
  double wall_s = 0;

  double token_hit_rate() const;
  double Percentile(double p) const;  // of ttft_ms
};

Result<ReplayResult> RunReplay(const Trace& trace, const ReplayOptions& options);

// The p-th percentile (0..100, nearest rank) of `values`; 0 when empty.
double Percentile(std::vector<double> values, double p);

}  // namespace kvault::replay

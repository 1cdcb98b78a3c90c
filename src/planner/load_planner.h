// LoadPlanner: for a prefill whose prompt starts with a cached prefix, chooses what to load
// from the store and what to recompute, from rates measured while the engine runs.
//
// Options, for a prefix of n cached chunks: load all of it; recompute all of it; or split at
// chunk k — recompute the head [0, k) while the tail [k, n) is read from its tiers and copied
// into the engine's KV pages, the new tokens then computing layer by layer as the tail's
// layers land. The predicted time of split k (k = 0 is "load", k = n "recompute"):
//
//   read  = sum over the tail's T2/T3 chunks of stored bytes / that tier's read rate (into
//           T1), plus, for a chunk its tier holds encoded (PlanChunk::codec), its raw bytes /
//           the codec's decode rate (the reading thread decodes it into T1 after the read);
//           plus the T2 read backlog when the tail has a T2 chunk (reads queued on the disk first)
//   copy  = tail bytes / copy rate (T1 -> engine pages: memcpy on a CPU, PCIe on a GPU)
//   head  = prefill(head tokens, 0 cached);  new = prefill(new tokens, all cached)
//   T(k)  = max(head + new,  read + copy/L + new,  read + copy + new/L)    (L = layers)
//
// i.e. the slower of the compute path and the load path of a two-stage layer pipeline
// (PipelinedPrefillSeconds). The planner picks the k of least T(k), preferring the fewest
// recomputed chunks among ties. With Options::recompute_slow_tail it also weighs keeping only
// the prefix before the first T2/T3 chunk (j chunks): the rest of the cached prefix is then
// recomputed with the new tokens, so `new` becomes prefill(new + dropped tokens, j cached
// tokens) and only [k, j) is read and copied.
// prefill(n, c) = n * (per_token + per_pair * (c + n/2)) (weights' GEMMs plus causal
// attention over c cached and n new tokens), fitted by least squares over the forward passes
// the engine observed, recent ones weighing more. Until a rate is measured (a read, copy or
// decode rate) the planner assumes it is fast enough to load (loading is the default, and an
// unmeasured decode costs nothing), and it recomputes anything
// only when that is predicted to beat loading all by `min_gain` (model error and the
// compute's own cost make a marginal win not worth it).
//
// Thread-safety: every method may be called from any thread (one mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kvault/kv_codec.h"
#include "kvault/layout.h"
#include "kvault/store.h"
#include "store/mutex.h"

namespace kvault::planner {

struct PlanChunk {
  Tier tier = Tier::kT1;    // where the chunk is now (a lookup's CachedChunk::tier)
  int64_t tokens = 0;
  uint64_t bytes = 0;       // raw KV bytes: what lands in T1 and is copied into engine pages
  // How a T2/T3 chunk is stored there (ignored for T1, which holds raw KV): a read moves
  // `stored_bytes` (0: `bytes`, a raw record), and a codec other than none is then decoded
  // (`bytes` at that codec's decode rate).
  KvCodec codec = KvCodec::kNone;
  uint64_t stored_bytes = 0;
};

// A chunk of `tokens` tokens of `layout` on `tier`, stored there with `codec` (T1: raw
// whatever `codec` says): raw bytes layout.chunk_bytes(tokens), stored bytes
// EncodedChunkBytes(codec, layout, tokens). For a caller that knows its tiers' codecs.
PlanChunk StoredPlanChunk(Tier tier, const KvLayout& layout, uint32_t tokens, KvCodec codec);

enum class PlanKind : uint8_t { kLoad, kRecompute, kSplit };
const char* PlanKindName(PlanKind kind);  // "load", "recompute", "split"

// The decision and its inputs, as logged and exported.
struct LoadPlan {
  PlanKind kind = PlanKind::kLoad;
  size_t cached_chunks = 0;       // chunks of the cached prefix planned for (0: nothing cached)
  size_t recompute_chunks = 0;    // head chunks recomputed; the ones after them are loaded
  int64_t recompute_tokens = 0;   // their tokens
  // Chunks at the end of the cached prefix recomputed with the new tokens as if they were not
  // cached (0 unless Options::recompute_slow_tail): the chunks [recompute_chunks,
  // cached_chunks - tail_recompute_chunks) are the ones loaded.
  size_t tail_recompute_chunks = 0;
  double predicted_ms = 0;        // T(k) of the choice
  double load_all_ms = 0;         // T(0)
  double recompute_all_ms = 0;    // T(n)
  // Inputs: the rates used (0 = not measured yet), the T2 read backlog and the prefill model.
  double t2_read_gbps = 0, t3_read_gbps = 0, copy_gbps = 0;
  // The decode rate (raw GB/s) of the first encoded chunk's codec; 0 when no chunk is
  // encoded or its rate is not measured yet.
  double decode_gbps = 0;
  double t2_backlog_ms = 0;
  double prefill_per_token_us = 0, prefill_per_pair_ns = 0;
  std::string reason;  // why, in words (e.g. "no prefill measured yet: load")
  std::string ToJson() const;
};

// The time of a prefill whose recomputed head (`head_s`) runs while the loaded chunks are read
// into T1 (`read_s`); their copy into engine pages (`copy_s`) and the compute of the rest
// (`fresh_s`) then pipeline layer by layer over `layers`:
//   max(head + fresh, read + copy/L + fresh, read + copy + fresh/L)
// (head + fresh when nothing is loaded). The planner's T(k); the replay charges it too.
double PipelinedPrefillSeconds(double head_s, double read_s, double copy_s, double fresh_s, int layers);

// Prefill time model: seconds(n new, c cached) = n * (per_token + per_pair * (c + n/2)).
struct PrefillModel {
  double per_token_s = 0;
  double per_pair_s = 0;
  bool known() const { return per_token_s > 0 || per_pair_s > 0; }
  double Seconds(int64_t n, int64_t cached) const;
};

class LoadPlanner {
 public:
  struct Options {
    int layers = 1;                // the model's layers (L above)
    double recent_weight = 0.1;    // weight of the newest observation in the running averages
    double min_gain = 0.05;        // least predicted gain over loading all to recompute anything
    // Also weigh dropping the cached prefix from its first T2/T3 chunk on (see above): load
    // the T1 lead, recompute the slow tail with the new tokens. Every caller honours
    // LoadPlan::tail_recompute_chunks (the engine's connector, the replay simulator).
    bool recompute_slow_tail = true;
    // Fixed rates and prefill model for tests and benchmarks; 0 / unknown = measured.
    double fixed_t2_read_gbps = 0, fixed_t3_read_gbps = 0, fixed_copy_gbps = 0;
    // Decode rate of every codec, GB/s of raw (decoded) KV; 0 = measured per codec.
    double fixed_decode_gbps = 0;
    PrefillModel fixed_prefill;
  };
  explicit LoadPlanner(Options options);

  // The plan for a prefix of `chunks` (head first) followed by `new_tokens` to compute (>= 1).
  // `t2_backlog_s`: seconds of reads already queued on the T2 device ahead of this prefill's
  // (prefetches, other prefills' loads), which a plan reading T2 chunks waits for first; 0
  // for an idle disk. The rates are bandwidths, so without it a plan on a shared disk that
  // is busy is predicted as if it had the disk to itself.
  LoadPlan Plan(std::span<const PlanChunk> chunks, int64_t new_tokens, double t2_backlog_s = 0) const;
  // T(k) for one split point, as Plan() predicts it (seconds), with the last
  // `tail_recompute_chunks` recomputed with the new tokens.
  double PredictSeconds(std::span<const PlanChunk> chunks, int64_t new_tokens, size_t recompute_chunks,
                        size_t tail_recompute_chunks = 0, double t2_backlog_s = 0) const;

  // Measurements. A forward pass of `n` new tokens after `cached` ones took `seconds` of
  // compute (its waits for loads excluded).
  void ObservePrefill(int64_t n, int64_t cached, double seconds);
  // `bytes` read from `tier` (kT2 or kT3) into T1 in `seconds`. For an encoded chunk: its
  // stored bytes and the read alone (its decode goes to ObserveDecode); a caller that cannot
  // separate the two passes raw bytes and the whole time, and its chunks with codec none.
  void ObserveRead(Tier tier, uint64_t bytes, double seconds);
  // `raw_bytes` of KV decoded from `codec` (not none) in `seconds` (one decode's wall time).
  void ObserveDecode(KvCodec codec, uint64_t raw_bytes, double seconds);
  // `bytes` copied from T1 into engine pages in `seconds`.
  void ObserveCopy(uint64_t bytes, double seconds);

  PrefillModel prefill_model() const;
  const Options& options() const { return options_; }

 private:
  struct Rate {  // exponentially weighted bytes/s
    double bytes_per_s = 0;
    void Add(double sample, double weight) { bytes_per_s = bytes_per_s == 0 ? sample : bytes_per_s + weight * (sample - bytes_per_s); }
  };
  struct Split {  // recompute chunks [0, k), load the rest
    int64_t head_tokens = 0;
    double tail_bytes = 0;
    double tail_read_s = 0;  // the tail's T2/T3 reads at the measured rates
    size_t tail_t2_chunks = 0;
  };
  double ReadRateLocked(Tier tier) const REQUIRES(mu_);
  double DecodeRateLocked(KvCodec codec) const REQUIRES(mu_);  // bytes/s; 0: not measured
  // Seconds to bring a T2/T3 chunk into T1: its stored bytes' read and its decode.
  double ChunkReadSecondsLocked(const PlanChunk& c) const REQUIRES(mu_);
  double CopyRateLocked() const REQUIRES(mu_);
  PrefillModel PrefillModelLocked() const REQUIRES(mu_);
  std::vector<Split> SplitsLocked(std::span<const PlanChunk> chunks) const REQUIRES(mu_);  // [0, n]
  // T(k) with the chunks [k, j) loaded and [j, n) recomputed with the new tokens (j <= n).
  double PredictLocked(const std::vector<Split>& splits, size_t k, size_t j, int64_t new_tokens,
                       const PrefillModel& m, double t2_backlog_s) const REQUIRES(mu_);

  const Options options_;
  mutable Mutex mu_;
  Rate t2_ GUARDED_BY(mu_);
  Rate t3_ GUARDED_BY(mu_);
  Rate copy_ GUARDED_BY(mu_);
  static constexpr size_t kCodecIds = 3;  // KvCodec ids 0..2
  Rate decode_[kCodecIds] GUARDED_BY(mu_);  // per KvCodec id (none's stays unused)
  // Decayed normal equations of seconds = a*x1 + b*x2 with x1 = n, x2 = n*(c + n/2).
  double s11_ GUARDED_BY(mu_) = 0;
  double s12_ GUARDED_BY(mu_) = 0;
  double s22_ GUARDED_BY(mu_) = 0;
  double s1y_ GUARDED_BY(mu_) = 0;
  double s2y_ GUARDED_BY(mu_) = 0;
  double sy_ GUARDED_BY(mu_) = 0;
  double sx1_ GUARDED_BY(mu_) = 0;
};

}  // namespace kvault::planner

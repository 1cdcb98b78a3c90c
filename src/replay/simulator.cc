#include "replay/simulator.h"

#include <algorithm>
#include <chrono>
#include <queue>
#include <unordered_map>

#include "replay/replay_tiers.h"

namespace kvault::replay {
namespace {

// What `opt` knows: every request's chunks, in trace order. Time = request index.
class TraceOracle final : public FutureOracle {
 public:
  explicit TraceOracle(const Trace& trace) {
    for (uint32_t i = 0; i < trace.requests.size(); ++i) {
      for (const TraceChunk& c : trace.requests[i].chunks) uses_[c.key].push_back(i);
      for (const ChunkKey& k : trace.requests[i].partials_extended) uses_[k].push_back(i);
    }
    for (auto& [k, v] : uses_) std::sort(v.begin(), v.end());
  }
  void Advance(uint64_t now) { now_ = now; }
  uint64_t Now() const override { return now_; }
  uint64_t NextUse(const ChunkKey& key) const override {
    auto it = uses_.find(key);
    if (it == uses_.end()) return UINT64_MAX;
    auto u = std::lower_bound(it->second.begin(), it->second.end(), now_);
    return u == it->second.end() ? UINT64_MAX : *u;
  }

 private:
  uint64_t now_ = 0;
  std::unordered_map<ChunkKey, std::vector<uint32_t>, DigestHash> uses_;
};

}  // namespace

double ReplayResult::token_hit_rate() const {
  return prompt_tokens == 0 ? 0.0 : double(hit_tokens_t1 + hit_tokens_t2) / double(prompt_tokens);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

double ReplayResult::Percentile(double p) const { return replay::Percentile(ttft_ms, p); }

Result<ReplayResult> RunReplay(const Trace& trace, const ReplayOptions& o) {
  KVAULT_RETURN_IF_ERROR(o.cost.Validate());
  if (!(o.speed > 0)) return Status::InvalidArgument("speed must be positive");
  if (trace.requests.empty()) return Status::InvalidArgument("the trace has no requests");
  if (o.engines == 0) return Status::InvalidArgument("at least one engine");
  const auto wall_start = std::chrono::steady_clock::now();
  auto last_progress = wall_start;

  const uint64_t kv_per_token = o.model.kv_bytes_per_token();
  TraceOracle oracle(trace);
  AccessWindow window;
  PolicyContext context{&window, &oracle};
  T2Encoding t2_encoding{o.t2_codec, o.model.Layout(trace.chunk_tokens)};
  const bool encoded = o.t2_codec != KvCodec::kNone;
  if (encoded && !(o.cost.codec_decode_gbps > 0 && o.cost.codec_encode_gbps > 0)) {
    return Status::InvalidArgument("a T2 codec needs positive decode and encode rates");
  }
  auto model_or = ReplayTiers::Create(o.t1_bytes, o.t2_bytes, o.page_bytes, kv_per_token, trace.chunk_tokens, o.policy,
                                      context, t2_encoding);
  if (!model_or.ok()) return model_or.status();
  ReplayTiers& tiers = *model_or.value();
  const uint64_t prefetch_budget = o.prefetch_budget_bytes > 0 ? o.prefetch_budget_bytes : tiers.t1_capacity() / 4;
  const double read_bps = o.cost.t2_read_gbps * 1e9, write_bps = o.cost.t2_write_gbps * 1e9;
  const double pcie_bps = o.cost.pcie_gbps * 1e9;
  const double layers = std::max<uint32_t>(o.model.layers, 1);
  const double decode_bps = o.cost.codec_decode_gbps * 1e9, encode_bps = o.cost.codec_encode_gbps * 1e9;
  // Seconds of the read timeline to bring a T2 record of e into T1: its stored bytes, then
  // (encoded) the decode of its raw bytes by the reading thread.
  auto t2_read_s = [&](const Entry* e) {
    if (!encoded) return double(e->bytes) / read_bps;
    return double(tiers.t2_stored_bytes(e->tokens)) / read_bps + double(e->bytes) / decode_bps;
  };
  // Seconds of the write timeline to write e behind: (encoded) its encoding, then its stored bytes.
  auto t2_write_s = [&](const Entry* e) {
    if (!encoded) return double(e->bytes) / write_bps;
    return double(e->bytes) / encode_bps + double(tiers.t2_stored_bytes(e->tokens)) / write_bps;
  };
  // Raw bytes per second of write-timeline (full chunks): how much T1 a write backlog holds.
  const double write_raw_bps =
      !encoded ? write_bps
               : double(tiers.chunk_bytes(trace.chunk_tokens)) /
                     (double(tiers.chunk_bytes(trace.chunk_tokens)) / encode_bps +
                      double(tiers.t2_stored_bytes(trace.chunk_tokens)) / write_bps);
  const uint64_t write_backlog_limit = tiers.t1_capacity() / 2;
  const planner::LoadPlanner load_planner(o.cost.PinnedPlannerOptions(o.model, o.planner));

  const auto& reqs = trace.requests;
  const uint32_t trace_chunk_tokens = trace.chunk_tokens;
  const size_t n = reqs.size();
  auto arrival_s = [&](size_t i) { return reqs[i].arrival_ms / 1000.0 / o.speed; };

  ReplayResult r;
  r.requests = n;
  r.ttft_ms.reserve(n);
  r.service_ms.reserve(n);
  // When each engine is next free (min-heap): requests start in arrival order on the engine
  // that frees first.
  std::priority_queue<double, std::vector<double>, std::greater<double>> engine_free;
  for (uint32_t k = 0; k < o.engines; ++k) engine_free.push(0.0);
  // The disk: reads (demand and prefetch) and write-behind each run in order at their own
  // bandwidth (an NVMe device reads and writes concurrently).
  double read_free = 0, write_free = 0, last_completion = 0;
  size_t arrived = 0;  // requests with arrival <= the current start
  // Prefetched T1 entries no request has used yet, with when their read completes. Their
  // bytes count against the prefetch budget until used or evicted.
  struct Prefetched {
    double ready_s;
    uint64_t bytes;
  };
  std::unordered_map<ChunkKey, Prefetched, DigestHash> prefetched;
  // Chunks put by requests still prefilling: committed (visible to lookups) when their
  // request's prefill ends, as the engine's saver commits after the last layer.
  std::unordered_map<ChunkKey, double, DigestHash> committed_at;
  uint64_t prefetched_bytes = 0;
  auto forget_prefetch = [&](const ChunkKey& k) {
    auto p = prefetched.find(k);
    if (p == prefetched.end()) return;
    prefetched_bytes -= p->second.bytes;
    prefetched.erase(p);
  };

  for (size_t i = 0; i < n; ++i) {
    const TraceRequest& q = reqs[i];
    const double arrival = arrival_s(i);
    const double start = std::max(arrival, engine_free.top());
    engine_free.pop();
    while (arrived < n && arrival_s(arrived) <= start) ++arrived;
    arrived = std::max(arrived, i + 1);
    r.queue.emplace_back(start, static_cast<uint32_t>(arrived - i - 1));
    oracle.Advance(i);

    // 1. Lookup; pin the hits. Chunks of requests still prefilling are not visible yet.
    std::erase_if(committed_at, [&](const auto& kv) { return kv.second <= start; });
    std::vector<Entry*> hits = tiers.LookupPrefix(q.chunks);
    for (size_t k = 0; k < hits.size(); ++k) {
      if (committed_at.count(hits[k]->key)) {
        hits.resize(k);
        break;
      }
    }
    for (Entry* e : hits) tiers.Pin(e);
    // The hits as the engine's lookup reports them to its planner: in DRAM (T1), or on the
    // disk (T2), which includes a prefetched chunk whose read has not completed yet.
    std::vector<planner::PlanChunk> plan_chunks;
    plan_chunks.reserve(hits.size());
    uint64_t hit_tokens = 0, t1_tokens = 0;
    std::vector<double> pending_until(hits.size(), -1);  // >= 0: arrives from the disk then
    for (size_t k = 0; k < hits.size(); ++k) {
      Entry* e = hits[k];
      hit_tokens += e->tokens;
      bool in_dram = e->in_t1;
      if (in_dram) {
        auto p = prefetched.find(e->key);
        if (p != prefetched.end() && p->second.ready_s > start) {
          in_dram = false;
          pending_until[k] = p->second.ready_s;
        }
      }
      if (in_dram) t1_tokens += e->tokens;
      planner::PlanChunk pc{in_dram ? Tier::kT1 : Tier::kT2, static_cast<int64_t>(e->tokens), e->bytes};
      if (!in_dram && encoded) {
        pc.codec = o.t2_codec;
        pc.stored_bytes = tiers.t2_stored_bytes(e->tokens);
      }
      plan_chunks.push_back(pc);
    }
    r.hit_tokens_t1 += t1_tokens;
    r.hit_tokens_t2 += hit_tokens - t1_tokens;

    // 2. The planner's choice: recompute the head [0, head_chunks), load [head_chunks,
    //    kept_chunks), recompute [kept_chunks, hits) with the new tokens.
    const uint64_t input = q.input_tokens;
    // The planner is told how long the disk's queued reads (prefetches, other engines'
    // loads) will keep a new read waiting.
    const auto new_tokens = static_cast<int64_t>(std::max<uint64_t>(1, input - hit_tokens));
    const planner::LoadPlan plan = load_planner.Plan(plan_chunks, new_tokens, std::max(0.0, read_free - start));
    const size_t kept_chunks = hits.size() - plan.tail_recompute_chunks;
    const size_t head_chunks = std::min(plan.recompute_chunks, kept_chunks);
    uint64_t head_tokens = 0, kept_tokens = 0, load_bytes = 0;
    double disk = read_free, disk_done = start;  // the loaded T2 chunks' reads, in order
    for (size_t k = 0; k < kept_chunks; ++k) {
      kept_tokens += hits[k]->tokens;
      if (k < head_chunks) {
        head_tokens += hits[k]->tokens;
        continue;
      }
      load_bytes += hits[k]->bytes;
      if (pending_until[k] >= 0) {
        disk_done = std::max(disk_done, pending_until[k]);
      } else if (!hits[k]->in_t1) {
        disk = std::max(disk, start) + t2_read_s(hits[k]);
        disk_done = std::max(disk_done, disk);
        r.bytes_t2_to_t1 += tiers.t2_stored_bytes(hits[k]->tokens);  // promoted by its read below (streamed through if no room)
      }
    }
    read_free = disk;
    // One forward pass when nothing is loaded; with a split, the head is a pass of its own.
    double service = 0;
    if (head_chunks == kept_chunks) {
      service = o.cost.PrefillSeconds(o.model, std::max<uint64_t>(1, input), 0);
    } else {
      const double head_s = head_chunks > 0 ? o.cost.PrefillSeconds(o.model, head_tokens, 0) : 0;
      const double fresh_s = o.cost.PrefillSeconds(o.model, std::max<uint64_t>(1, input - kept_tokens), kept_tokens);
      service = planner::PipelinedPrefillSeconds(head_s, disk_done - start, double(load_bytes) / pcie_bps, fresh_s,
                                                 static_cast<int>(layers));
    }
    if (!hits.empty()) {
      if (head_chunks == 0 && kept_chunks == hits.size()) {
        ++r.planner_loads;
      } else if (head_chunks == kept_chunks) {
        ++r.planner_recomputes;
      } else {
        ++r.planner_splits;
      }
    }
    for (Entry* e : hits) forget_prefetch(e->key);  // used (or skipped by the planner): done
    uint64_t reused_tokens = 0;
    for (size_t k = head_chunks; k < kept_chunks; ++k) {
      tiers.Read(hits[k]);  // as the engine's OpenChunk, in chunk order: T1 hits touched, T2 ones promoted
      r.bytes_t1_to_gpu += hits[k]->bytes;
      reused_tokens += hits[k]->tokens;
    }
    r.reused_tokens += reused_tokens;
    const double end = start + service;

    // 3. Hint this request and the queued ones (as the engine does); prefetch the queued
    //    ones' T2 chunks into T1. A prompt's window keys, like the store's: its cached
    //    prefix (a stored partial chunk included), then its uncached whole chunks.
    if (o.window > 0) {
      std::vector<std::vector<ChunkKey>> chains;
      std::vector<std::vector<Entry*>> cached;
      for (size_t j = i; j < arrived && j <= i + o.window; ++j) {
        cached.push_back(j == i ? hits : tiers.LookupPrefix(reqs[j].chunks));
        std::vector<ChunkKey> keys;
        size_t whole = 0;
        for (const Entry* e : cached.back()) {
          keys.push_back(e->key);
          whole += e->tokens == trace_chunk_tokens;
        }
        for (size_t k = whole; k < reqs[j].chunks.size(); ++k) {
          if (reqs[j].chunks[k].tokens == trace_chunk_tokens) keys.push_back(reqs[j].chunks[k].key);
        }
        chains.push_back(std::move(keys));
      }
      tiers.WindowChanged(window.Set(chains));
      // Prefetched entries evicted before use no longer count against the budget.
      std::erase_if(prefetched, [&](const auto& kv) {
        const Entry* e = tiers.Find(kv.first);
        if (e != nullptr && e->in_t1) return false;
        prefetched_bytes -= kv.second.bytes;
        return true;
      });
      // Victims of a prefetch keep a copy on T2 (so no entry is destroyed while `cached`
      // holds it) and are not in the window.
      auto may_evict = [&](const Entry* v) { return v->on_t2 && !window.Contains(v->key); };
      bool room = true;
      for (size_t j = 1; j < cached.size() && room; ++j) {
        for (Entry* e : cached[j]) {
          if (e->in_t1) continue;
          if (prefetched_bytes + e->bytes > prefetch_budget || !tiers.Promote(e, may_evict)) {
            room = false;
            break;
          }
          read_free = std::max(read_free, start) + t2_read_s(e);
          prefetched[e->key] = {read_free, e->bytes};
          prefetched_bytes += e->bytes;
          r.bytes_prefetched += e->bytes;
          r.bytes_t2_to_t1 += tiers.t2_stored_bytes(e->tokens);
        }
      }
    }

    // 4. Save the new chunks: T1 now (visible when the prefill ends), T2 behind on the disk's
    //    timeline. The cached prefix is no longer pinned (the engine has loaded it). A reused
    //    partial chunk's place gets the prompt's longer chunk, which supersedes it.
    size_t put_from = head_chunks == kept_chunks ? 0 : kept_chunks;  // after the last chunk loaded
    if (put_from > 0 && hits[put_from - 1]->key != q.chunks[put_from - 1].key) --put_from;
    for (Entry* e : hits) tiers.Unpin(e);  // may destroy entries: `hits` is not used below
    hits.clear();
    std::vector<Entry*> saved;
    for (size_t k = put_from; k < q.chunks.size(); ++k) {
      const TraceChunk& c = q.chunks[k];
      const ChunkKey parent = k == 0 ? ChunkKey{} : q.chunks[k - 1].key;
      bool created = false;
      Entry* e = tiers.Put(c, parent, &created);
      if (e == nullptr) continue;
      tiers.Pin(e);
      saved.push_back(e);
      if (!created) continue;
      if (end > start) committed_at[e->key] = end;
      r.bytes_gpu_to_t1 += e->bytes;
      if (tiers.t2_capacity() == 0) continue;
      const double t = std::max(write_free, end);
      if ((t - end) * write_raw_bps > double(write_backlog_limit)) {
        ++r.writes_dropped;
        continue;
      }
      if (tiers.WriteToT2(e)) {
        write_free = t + t2_write_s(e);
        r.bytes_t1_to_t2 += tiers.t2_stored_bytes(e->tokens);
      }
    }
    for (Entry* e : saved) tiers.Unpin(e);

    engine_free.push(end);
    r.prefill_busy_s += service;
    r.last_prefill_end_s = std::max(r.last_prefill_end_s, end);
    r.ttft_ms.push_back((end - arrival) * 1000.0);
    r.service_ms.push_back(service * 1000.0);
    r.prompt_tokens += input;
    r.output_tokens += q.output_tokens;
    last_completion = std::max(last_completion, end + q.output_tokens * o.cost.decode_ms_per_token / 1000.0);

    if (i % 1024 == 1023) {
      const auto now = std::chrono::steady_clock::now();
      if (o.progress && now - last_progress > std::chrono::milliseconds(500)) {
        last_progress = now;
        o.progress(i + 1, n);
      }
    }
  }
  r.makespan_s = last_completion - arrival_s(0);
  const TierCounters c = tiers.counters();
  r.t1_evictions = c.t1_evictions;
  r.t2_evictions = c.t2_evictions;
  r.t1_put_failures = c.t1_put_failures;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  if (o.progress) o.progress(n, n);
  return r;
}

}  // namespace kvault::replay

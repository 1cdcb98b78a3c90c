// KvConnectorScheduler: the connector's scheduler side (see kv_connector.h).
#include <algorithm>

#include "engine/kv_connector.h"

namespace kvault::engine {
namespace {

// The part of `keys` from whole chunk `first_chunk` on, up to token `end` (a continuation of
// the chain after the chunk before it): no hashing, the spans are reused with their begins
// made relative to the part.
KeyedTokens KeysFrom(const Namespace& ns, const KeyedTokens& keys, size_t first_chunk, size_t end) {
  KeyedTokens part;
  const size_t begin = first_chunk == 0 ? 0 : keys.full[first_chunk - 1].begin + keys.full[first_chunk - 1].tokens;
  part.tokens = keys.tokens.subspan(begin, end - begin);
  part.first_parent = first_chunk == 0 ? ns.id() : keys.full[first_chunk - 1].key;
  for (size_t i = first_chunk; i < keys.full.size() && keys.full[i].begin + keys.full[i].tokens <= end; ++i) {
    ChunkSpan span = keys.full[i];
    span.begin -= static_cast<uint32_t>(begin);
    part.full.push_back(span);
  }
  return part;
}

}  // namespace

KvConnectorScheduler::KvConnectorScheduler(const EngineOptions& options, planner::LoadPlanner& planner)
    : options_(options), store_(options.store), planner_(planner) {}

void KvConnectorScheduler::KeyPrompt(Sequence& s) const {
  if (store_ != nullptr) s.keys = KeyTokens(s.ns, s.orig);
}

size_t KvConnectorScheduler::hint_window() const {
  return store_ != nullptr && options_.load ? options_.hint_window : 0;
}

void KvConnectorScheduler::Hint(const Sequence& admitted, const std::vector<const KeyedTokens*>& queued) {
  std::vector<const KeyedTokens*> window{&admitted.keys};
  window.insert(window.end(), queued.begin(), queued.end());
  store_->HintKeyed(admitted.ns, window);
}

PrefillPlan KvConnectorScheduler::MatchAndPlan(const Sequence& s) {
  const int64_t c = options_.chunk_tokens;
  const int64_t m = s.prompt_len;
  // The longest cached prefix, in new positions: page j holds original chunk OrigChunk(j).
  std::vector<CachedChunk> page_chunks;
  if (store_ != nullptr && options_.load) page_chunks = MatchPages(s);
  // Chunks that start inside the kept prompt; a stored partial chunk ends the chain.
  std::vector<planner::PlanChunk> plan_chunks;
  int64_t found = 0;  // cached tokens found by the lookup
  for (size_t j = 0; j < page_chunks.size() && static_cast<int64_t>(j) * c < m; ++j) {
    const int64_t t = std::min<int64_t>(page_chunks[j].tokens, m - static_cast<int64_t>(j) * c);
    plan_chunks.push_back({page_chunks[j].tier, t, s.ns.layout().chunk_bytes(page_chunks[j].tokens)});
    found += t;
    if (page_chunks[j].tokens < c) break;
  }

  PrefillPlan out;
  out.plan = Plan(plan_chunks, found, m);
  // Loaded: [recompute_chunks, end); a slow tail the planner recomputes instead ends the
  // prefix at `end`, as a chunk that fails to open would (the rest computes with the new tokens).
  const size_t first_loaded = out.plan.recompute_chunks;
  const size_t end = plan_chunks.size() - std::min(out.plan.tail_recompute_chunks, plan_chunks.size());
  if (first_loaded >= end) return out;  // nothing to load
  out.head_tokens = static_cast<int64_t>(first_loaded) * c;
  const auto& pages = s.kv->lease()->pages();
  for (size_t j = first_loaded; j < end; ++j) {
    out.loads.push_back({page_chunks[j].key, plan_chunks[j].tokens, pages[j]});
  }
  return out;
}

planner::LoadPlan KvConnectorScheduler::Plan(std::span<const planner::PlanChunk> chunks, int64_t found,
                                             int64_t kept_tokens) const {
  planner::LoadPlan plan;
  switch (options_.plan) {
    case PlanMode::kAuto: return planner_.Plan(chunks, std::max<int64_t>(1, kept_tokens - found));
    case PlanMode::kLoad:
      plan.cached_chunks = chunks.size();
      plan.reason = "planner off: load";
      break;
    case PlanMode::kRecompute:
      plan.cached_chunks = chunks.size();
      plan.kind = chunks.empty() ? planner::PlanKind::kLoad : planner::PlanKind::kRecompute;
      plan.recompute_chunks = chunks.size();
      plan.recompute_tokens = found;
      plan.reason = "planner off: recompute";
      break;
  }
  return plan;
}

// After a context overflow the head and the kept tail are looked up separately, the tail by
// its chain from the last dropped chunk, so chunks in the dropped gap need not be cached.
// Both reuse the keys computed at Submit.
std::vector<CachedChunk> KvConnectorScheduler::MatchPages(const Sequence& s) {
  if (s.dropped_chunks == 0) return store_->LookupKeyed(s.ns, s.keys).chunks;
  const int64_t c = options_.chunk_tokens;
  const auto head_chunks = static_cast<size_t>(s.head_chunks);
  std::vector<CachedChunk> pages;
  if (head_chunks > 0) {
    pages = store_->LookupKeyed(s.ns, KeysFrom(s.ns, s.keys, 0, head_chunks * static_cast<size_t>(c))).chunks;
  }
  if (pages.size() != head_chunks) return pages;  // the head is not all cached
  const KeyedTokens tail = KeysFrom(s.ns, s.keys, head_chunks + static_cast<size_t>(s.dropped_chunks), s.keys.tokens.size());
  auto rest = store_->LookupKeyed(s.ns, tail).chunks;
  pages.insert(pages.end(), rest.begin(), rest.end());
  return pages;
}

bool KvConnectorScheduler::saves_prompt() const { return store_ != nullptr && options_.save_prompt; }
bool KvConnectorScheduler::saves_generated() const { return store_ != nullptr && options_.save_generated; }

std::vector<PendingSave> KvConnectorScheduler::BeginSaves(const Sequence& s, int64_t from, int64_t to) {
  const int64_t c = options_.chunk_tokens;
  if (to <= from) return {};
  const int64_t first = from / c;
  int64_t last = (to - 1) / c;
  // After a context overflow, KV after the gap was computed without the dropped tokens: under
  // the original keys (which name the whole prefix) a later request that fits would take it
  // as exact. Only the head, computed in its true context, is saved.
  if (s.dropped_chunks > 0) last = std::min(last, s.head_chunks - 1);
  if (last < first) return {};
  const std::vector<ChunkSpan>& keyed = s.keys.full;  // the prompt's whole chunks
  std::vector<PendingSave> out;
  // Saved pages hold consecutive original chunks (after an overflow only head pages are
  // saved), and the first starts inside the prompt's whole chunks or right after them: the
  // parent of a chunk past the keyed ones is the chunk keyed just before it in this loop.
  ChunkKey previous;
  for (int64_t j = first; j <= last; ++j) {
    const auto oc = static_cast<size_t>(s.OrigChunk(j));
    const auto t = static_cast<uint32_t>(std::min(c, to - j * c));
    const auto chunk_tokens = std::span<const uint32_t>(s.orig).subspan(oc * static_cast<size_t>(c), t);
    ChunkSpan chunk;
    if (t == c && oc < keyed.size()) {
      chunk = keyed[oc];
    } else {  // a partial chunk, or one of generated tokens: keyed here, once
      const ChunkKey parent = oc == 0 ? s.ns.id() : oc - 1 < keyed.size() ? keyed[oc - 1].key : previous;
      chunk = ChunkSpan{ChainKey(s.ns, parent, chunk_tokens), parent, static_cast<uint32_t>(oc * c), t};
    }
    previous = chunk.key;
    auto w = store_->BeginPutKeyed(s.ns, chunk, chunk_tokens);
    if (!w.ok()) break;  // T1 full of pinned chunks: later chunks would be unreachable anyway
    if (w->exists()) continue;
    out.push_back({std::move(w.value()), s.kv->lease()->pages()[j], t});
  }
  return out;
}

void KvConnectorScheduler::Learn(const PrefillMeasurements& measured) {
  for (const auto& r : measured.reads) planner_.ObserveRead(r.tier, r.bytes, r.seconds);
  if (measured.copies_landed) planner_.ObserveCopy(measured.copied_bytes, measured.copy_ms / 1e3);
  for (const auto& p : measured.passes) planner_.ObservePrefill(p.tokens, p.cached, p.seconds);
}

}  // namespace kvault::engine

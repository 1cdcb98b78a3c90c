// StoreImpl's lookups and hints: the cached prefix of a keyed stream (local tiers by the
// core's rules, then T3 in one batch, then the longest stored partial chunk) and the
// look-ahead window the policies and the prefetcher read.
#include "store/store_impl.h"

#include <algorithm>
#include <deque>
#include <optional>

#include "store/remote_record.h"

namespace kvault {

LookupResult StoreImpl::Lookup(const Namespace& ns, const KeyedTokens& keyed) {
  // A stream whose keys do not have KeyTokens' shape (a caller's slip) is keyed here instead.
  std::optional<KeyedTokens> rekeyed;
  if (!HasWholeChunkKeys(keyed, ns.layout().chunk_tokens)) rekeyed = KeyTokensFrom(ns, keyed.first_parent, keyed.tokens);
  const KeyedTokens& prompt = rekeyed ? *rekeyed : keyed;
  const ChunkKey& first_parent = prompt.first_parent;
  const std::span<const uint32_t> tokens = prompt.tokens;
  const std::vector<ChunkSpan>& full = prompt.full;  // keyed by the caller; partial candidates are hashed below
  LookupResult r;
  r.total_tokens = static_cast<uint32_t>(tokens.size());

  MutexLock lock(mu_);
  std::vector<CachedChunk> chunks;
  ExtendWholePrefixLocked(ns, full, nullptr, 0, &chunks);
  if (remote_ != nullptr && chunks.size() < full.size()) {
    // The first local miss: ask T3 about the remaining whole chunks, in one batch, without
    // mu_ (the tier bounds the call by its timeout). Then walk again: chunks that became
    // local meanwhile (a put, a fetch by another thread) count as local.
    const size_t from = chunks.size();
    std::vector<ChunkKey> keys;
    keys.reserve(full.size() - from);
    for (size_t j = from; j < full.size(); ++j) keys.push_back(ClusterKey(ns.id(), full[j].key));
    lock.Unlock();
    std::vector<bool> in_t3 = remote_->Contains(keys);
    in_t3.resize(keys.size(), false);  // a short answer: the rest are not held
    lock.Lock();
    ExtendWholePrefixLocked(ns, full, &in_t3, from, &chunks);
  }
  AppendPartialLocked(ns, first_parent, tokens, full, &chunks);  // partial chunks are local only
  r.chunks = std::move(chunks);
  for (const CachedChunk& ch : r.chunks) r.cached_tokens += ch.tokens;
  CountLookupLocked(r, ns.layout().chunk_tokens);
  return r;
}

Entry* StoreImpl::FindLocked(const ChunkKey& key) const { return core_->Find(key); }

Tier StoreImpl::TierOfLocked(const Entry* e, const Namespace& ns) const {
  return TierCore::TierOf(e, ns.id(), ns.layout());
}

void StoreImpl::ExtendWholePrefixLocked(const Namespace& ns, const std::vector<ChunkSpan>& full,
                                        const std::vector<bool>* in_t3, size_t t3_from,
                                        std::vector<CachedChunk>* chunks) const {
  const uint32_t c = ns.layout().chunk_tokens;
  for (size_t j = chunks->size(); j < full.size(); ++j) {
    Tier t = TierOfLocked(FindLocked(full[j].key), ns);
    if (t == Tier::kNone && in_t3 != nullptr && j >= t3_from && (*in_t3)[j - t3_from]) t = Tier::kT3;
    if (t == Tier::kNone) break;
    chunks->push_back({full[j].key, full[j].begin, c, t});
  }
}

void StoreImpl::AppendPartialLocked(const Namespace& ns, const ChunkKey& first_parent,
                                    std::span<const uint32_t> tokens, const std::vector<ChunkSpan>& full,
                                    std::vector<CachedChunk>* chunks) const {
  const uint32_t c = ns.layout().chunk_tokens;
  const size_t j = chunks->size();  // whole chunks so far
  const ChunkKey& parent = j == 0 ? first_parent : full[j - 1].key;
  const size_t remaining = tokens.size() - j * c;
  // A candidate's key is hashed over the stream's next tokens: equal keys, equal tokens.
  const Entry* best = core_->LongestPartial(
      parent, static_cast<uint32_t>(std::min<size_t>(remaining, UINT32_MAX)), ns.id(), ns.layout(),
      [&](const Entry* e) { return ChainKey(ns, parent, tokens.subspan(j * c, e->tokens)) == e->key; });
  if (best != nullptr) chunks->push_back({best->key, static_cast<uint32_t>(j * c), best->tokens, TierOfLocked(best, ns)});
}

std::vector<CachedChunk> StoreImpl::CachedPrefixLocked(const Namespace& ns, const ChunkKey& first_parent,
                                                       std::span<const uint32_t> tokens,
                                                       const std::vector<ChunkSpan>& full) const {
  std::vector<CachedChunk> chunks;
  ExtendWholePrefixLocked(ns, full, nullptr, 0, &chunks);
  AppendPartialLocked(ns, first_parent, tokens, full, &chunks);
  return chunks;
}

void StoreImpl::CountLookupLocked(const LookupResult& r, uint32_t chunk_tokens) {
  StoreStats& st = stats_;
  ++st.lookups;
  st.lookup_tokens += r.total_tokens;
  const uint64_t chunks = (uint64_t{r.total_tokens} + chunk_tokens - 1) / chunk_tokens;
  st.lookup_chunks += chunks;
  for (const CachedChunk& ch : r.chunks) {
    switch (ch.tier) {
      case Tier::kT1:
        ++st.hit_chunks_t1;
        st.hit_tokens_t1 += ch.tokens;
        break;
      case Tier::kT3:
        ++st.hit_chunks_t3;
        st.hit_tokens_t3 += ch.tokens;
        break;
      default:
        ++st.hit_chunks_t2;
        st.hit_tokens_t2 += ch.tokens;
        break;
    }
  }
  st.miss_chunks += chunks - r.chunks.size();
  st.miss_tokens += r.total_tokens - r.cached_tokens;
}

void StoreImpl::Hint(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) {
  std::vector<HintPrompt> window;
  window.reserve(prompts.size());
  std::deque<KeyedTokens> rekeyed;  // streams keyed here (see Lookup); stable addresses
  for (const KeyedTokens* p : prompts) {
    if (!HasWholeChunkKeys(*p, ns.layout().chunk_tokens)) p = &rekeyed.emplace_back(KeyTokensFrom(ns, p->first_parent, p->tokens));
    window.push_back({&ns, p->tokens, &p->full, &p->first_parent});
  }
  Hint(window);
}

void StoreImpl::Hint(std::span<const HintPrompt> prompts) {
  {
    MutexLock lock(mu_);
    ++stats_.hints;
    // Each prompt's cached prefix, the stored partial chunk it would reuse included, as
    // Lookup finds it; then its uncached whole chunks (about to be written).
    std::vector<std::vector<CachedChunk>> cached(prompts.size());
    std::vector<std::vector<ChunkKey>> chains(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Namespace& ns = *prompts[i].ns;
      const std::vector<ChunkSpan>& full = *prompts[i].full;
      const ChunkKey& first_parent = prompts[i].first_parent != nullptr ? *prompts[i].first_parent : ns.id();
      cached[i] = CachedPrefixLocked(ns, first_parent, prompts[i].tokens, full);
      size_t whole = 0;
      for (const CachedChunk& c : cached[i]) {
        chains[i].push_back(c.key);
        whole += c.tokens == ns.layout().chunk_tokens;
      }
      for (size_t j = whole; j < full.size(); ++j) {
        // Keys come from the caller (kvaultd takes a client's on trust within its namespace):
        // an entry of another namespace under such a key never enters this window.
        const Entry* e = FindLocked(full[j].key);
        if (e != nullptr && !e->InNamespace(ns.id(), ns.layout())) continue;
        chains[i].push_back(full[j].key);
      }
    }
    core_->WindowChanged(window_.Set(chains));
    // Prefetch, in window order, the chunks only on T2 of each prompt's cached prefix.
    prefetch_queue_.clear();
    if (log_) {
      for (const auto& prefix : cached) {
        for (const CachedChunk& c : prefix) {
          if (c.tier == Tier::kT2) prefetch_queue_.push_back(c.key);
        }
      }
    }
  }
  prefetch_cv_.notify_one();
}

}  // namespace kvault

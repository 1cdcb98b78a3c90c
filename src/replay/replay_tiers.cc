#include "replay/replay_tiers.h"

#include <cmath>

#include "store/record_format.h"

namespace kvault::replay {

Result<std::unique_ptr<ReplayTiers>> ReplayTiers::Create(uint64_t t1_bytes, uint64_t t2_bytes, uint32_t page_bytes,
                                                         uint64_t kv_bytes_per_token, uint32_t chunk_tokens,
                                                         const std::string& policy, PolicyContext context,
                                                         T2Encoding t2_encoding) {
  if (page_bytes == 0 || page_bytes % kBlockBytes != 0) {
    return Status::InvalidArgument("page_bytes must be a positive multiple of 4096");
  }
  if (kv_bytes_per_token == 0) return Status::InvalidArgument("KV bytes per token must be positive");
  if (chunk_tokens == 0) return Status::InvalidArgument("chunk_tokens must be positive");
  if (t2_encoding.codec != KvCodec::kNone) {
    KVAULT_RETURN_IF_ERROR(KvCodecSupports(t2_encoding.codec, t2_encoding.layout));
    if (t2_encoding.layout.token_bytes() == 0) return Status::InvalidArgument("the T2 codec's layout is empty");
  }
  std::unique_ptr<ReplayTiers> m(new ReplayTiers());
  TierCore::Options co;
  co.t1_pages = static_cast<uint32_t>(t1_bytes / page_bytes);  // whole pages, like the store's arena
  co.page_bytes = page_bytes;
  co.t2 = t2_bytes > 0;
  co.policy = policy;
  co.context = context;
  co.listener = m.get();
  auto core = TierCore::Create(co);
  if (!core.ok()) return core.status();
  m->core_ = std::move(core.value());
  m->t2_cap_ = t2_bytes;
  m->kv_bytes_per_token_ = kv_bytes_per_token;
  m->layout_.chunk_tokens = chunk_tokens;
  m->t2_encoding_ = t2_encoding;
  return m;
}

bool ReplayTiers::Extends(const Entry* partial, const TraceChunk& next) const {
  auto it = partial_sources_.find(partial->key);
  return it != partial_sources_.end() && it->second.stream == next.stream &&
         it->second.stream_begin == next.stream_begin;
}

std::vector<Entry*> ReplayTiers::LookupPrefix(const std::vector<TraceChunk>& chain) {
  std::vector<Entry*> hits;
  for (const TraceChunk& c : chain) {
    Entry* e = Find(c.key);
    if (e == nullptr) break;
    hits.push_back(e);
    if (e->tokens < c.tokens) break;  // defensive: a shorter chunk ends the prefix
  }
  if (hits.size() == chain.size()) return hits;
  const TraceChunk& next = chain[hits.size()];
  if (next.stream_begin < 0) return hits;  // straddles two blocks: no stream to continue
  const ChunkKey parent = hits.empty() ? ChunkKey{} : chain[hits.size() - 1].key;
  Entry* best = core_->LongestPartial(parent, next.tokens, Digest{}, layout_,
                                      [&](const Entry* p) { return Extends(p, next); });
  if (best != nullptr) hits.push_back(best);
  return hits;
}

bool ReplayTiers::Read(Entry* e) {
  if (e->in_t1) {
    core_->TouchRead(e);
    return true;
  }
  if (!core_->ReserveT1(e).ok()) return false;
  core_->Promoted(e, /*demand=*/true);
  return true;
}

void ReplayTiers::Touch(Entry* e) { core_->TouchRead(e); }

void ReplayTiers::Unpin(Entry* e) {
  --e->pins;
  core_->EraseIfUnused(e);
}

bool ReplayTiers::Promote(Entry* e, const std::function<bool(const Entry*)>& may_evict) {
  if (e->in_t1) return true;
  if (!core_->ReserveT1(e, may_evict).ok()) return false;
  core_->Promoted(e, /*demand=*/false);
  return true;
}

Entry* ReplayTiers::Find(const ChunkKey& key) {
  Entry* e = core_->Find(key);
  return e != nullptr && (e->in_t1 || e->on_t2) ? e : nullptr;
}

Entry* ReplayTiers::Put(const TraceChunk& c, const ChunkKey& parent, bool* created) {
  *created = false;
  // Invariant: every indexed entry is in a tier (one that leaves both is erased when unpinned,
  // and pinned entries are never victims).
  if (Entry* e = core_->Find(c.key)) return e;
  auto owned = std::make_unique<Entry>();
  owned->key = c.key;
  owned->parent = parent;
  owned->layout = layout_;
  owned->tokens = c.tokens;
  owned->bytes = chunk_bytes(c.tokens);
  if (!core_->ReserveT1(owned.get()).ok()) {
    ++t1_put_failures_;
    return nullptr;
  }
  Entry* e = core_->Add(std::move(owned));
  core_->EnterT1(e);
  std::vector<ChunkKey> superseded;
  if (c.stream_begin >= 0) {
    if (e->partial()) {
      partial_sources_[e->key] = {c.stream, c.stream_begin};
    } else {
      superseded = core_->PartialsExtendedBy(parent, [&](const Entry* p) { return Extends(p, c); });
    }
  }
  core_->Commit(e, superseded);
  *created = true;
  return e;
}

uint64_t ReplayTiers::t2_stored_bytes(uint32_t tokens) const {
  const KvCodec codec = t2_encoding_.codec;
  if (codec == KvCodec::kNone) return chunk_bytes(tokens);
  const KvLayout& l = t2_encoding_.layout;
  const uint64_t encoded = EncodedChunkBytes(codec, l, tokens);
  if (l.token_bytes() == kv_bytes_per_token_) return encoded;
  // An overridden KV size: the layout's compression ratio applied to it.
  return static_cast<uint64_t>(std::ceil(double(encoded) * double(kv_bytes_per_token_) / double(l.token_bytes())));
}

bool ReplayTiers::WriteToT2(Entry* e) {
  if (t2_cap_ == 0 || e->on_t2) return e->on_t2;
  if (t2_encoding_.codec != KvCodec::kNone) {
    // The record's location says its stored size (TierCore::RecordBytes); replay has no segment.
    e->location.codec = t2_encoding_.codec;
    e->location.payload_bytes = t2_stored_bytes(e->tokens);
  }
  if (!core_->MakeT2Room(TierCore::RecordBytes(*e), t2_cap_)) return false;
  core_->AddT2Copy(e);
  return true;
}

TierCounters ReplayTiers::counters() const {
  const TierCoreCounters& c = core_->counters();
  TierCounters out;
  out.t1_evictions = c.t1_evictions + c.t1_dropped_unpersisted;
  out.t2_evictions = c.t2_evictions;
  out.t1_put_failures = t1_put_failures_;
  return out;
}

}  // namespace kvault::replay

#include "replay/tier_model.h"

#include "store/record_format.h"

namespace kvault::replay {

Result<std::unique_ptr<TierModel>> TierModel::Create(uint64_t t1_bytes, uint64_t t2_bytes, uint32_t page_bytes,
                                                     uint64_t kv_bytes_per_token, const std::string& policy,
                                                     PolicyContext context) {
  if (page_bytes == 0 || page_bytes % kBlockBytes != 0) {
    return Status::InvalidArgument("page_bytes must be a positive multiple of 4096");
  }
  if (kv_bytes_per_token == 0) return Status::InvalidArgument("KV bytes per token must be positive");
  std::unique_ptr<TierModel> m(new TierModel());
  m->page_bytes_ = page_bytes;
  m->t1_cap_ = t1_bytes / page_bytes * page_bytes;  // whole pages, like the store's arena
  m->t2_cap_ = t2_bytes;
  m->kv_bytes_per_token_ = kv_bytes_per_token;
  auto p1 = MakePolicy(policy, context);
  if (!p1.ok()) return p1.status();
  auto p2 = MakePolicy(policy, context);
  if (!p2.ok()) return p2.status();
  m->t1_policy_ = std::move(p1.value());
  m->t2_policy_ = std::move(p2.value());
  return m;
}

uint64_t TierModel::T1Cost(const Entry& e) const {
  const uint64_t padded = RoundUpToBlock(e.bytes);
  return (padded + page_bytes_ - 1) / page_bytes_ * page_bytes_;
}

uint64_t TierModel::T2Cost(const Entry& e) const { return kBlockBytes + RoundUpToBlock(e.bytes); }

std::vector<Entry*> TierModel::LookupPrefix(const std::vector<TraceChunk>& chain) {
  std::vector<Entry*> hits;
  for (const TraceChunk& c : chain) {
    Entry* e = Find(c.key);
    if (e == nullptr) break;
    hits.push_back(e);
    if (e->tokens < c.tokens) break;  // defensive: a shorter chunk ends the prefix
  }
  if (hits.size() == chain.size()) return hits;
  // The longest stored partial chunk that the next chunk extends: same parent, same token
  // stream from the same position, no more tokens.
  const TraceChunk& next = chain[hits.size()];
  if (next.stream_begin < 0) return hits;
  const ChunkKey parent = hits.empty() ? ChunkKey{} : chain[hits.size() - 1].key;
  auto it = partials_.find(parent);
  if (it == partials_.end()) return hits;
  Entry* best = nullptr;
  for (Entry* p : it->second) {
    const PartialInfo& info = partial_info_.at(p);
    if (info.stream != next.stream || info.stream_begin != next.stream_begin || p->tokens > next.tokens) continue;
    if (!(p->in_t1 || p->on_t2) || (best != nullptr && p->tokens <= best->tokens)) continue;
    best = p;
  }
  if (best != nullptr) hits.push_back(best);
  return hits;
}

void TierModel::Touch(Entry* e) {
  if (e->in_t1) t1_policy_->Touch(e);
  if (e->on_t2) t2_policy_->Touch(e);
}

bool TierModel::MakeT1Room(uint64_t bytes, const std::function<bool(const Entry*)>& may_evict) {
  if (bytes > t1_cap_) return false;
  auto allowed = [&](const Entry* v) { return v->pins == 0 && may_evict(v); };
  while (t1_used_ + bytes > t1_cap_) {
    // As the store: an entry with a disk copy (or with no disk tier) first, if one is among
    // the next kPreferenceScan victims.
    Entry* victim =
        t1_policy_->PickVictim([&](const Entry* v) { return allowed(v) && (v->on_t2 || t2_cap_ == 0); }, kPreferenceScan);
    if (victim == nullptr) victim = t1_policy_->PickVictim(allowed);
    if (victim == nullptr) return false;
    ++counters_.t1_evictions;
    DropFromT1(victim);
  }
  return true;
}

bool TierModel::Promote(Entry* e, const std::function<bool(const Entry*)>& may_evict) {
  if (e->in_t1) return true;
  ++e->pins;  // not its own victim
  const bool room = MakeT1Room(T1Cost(*e), may_evict);
  --e->pins;
  if (!room) return false;
  EnterT1(e);
  if (e->on_t2) t2_policy_->Touch(e);
  return true;
}

Entry* TierModel::Find(const ChunkKey& key) {
  auto it = index_.find(key);
  if (it == index_.end() || !(it->second->in_t1 || it->second->on_t2)) return nullptr;
  return it->second.get();
}

Entry* TierModel::Put(const TraceChunk& c, const ChunkKey& parent, uint32_t full_tokens, bool* created) {
  const ChunkKey& key = c.key;
  const uint32_t tokens = c.tokens;
  *created = false;
  // Invariant: every indexed entry is in a tier (one that leaves both is erased when unpinned,
  // and pinned entries are never victims).
  if (auto it = index_.find(key); it != index_.end()) return it->second.get();
  auto owned = std::make_unique<Entry>();
  Entry* e = owned.get();
  e->key = key;
  e->parent = parent;
  e->tokens = tokens;
  e->bytes = chunk_bytes(tokens);
  e->committed = true;
  if (!MakeT1Room(T1Cost(*e), [](const Entry*) { return true; })) {
    ++counters_.t1_put_failures;
    return nullptr;
  }
  index_[key] = std::move(owned);
  EnterT1(e);
  *created = true;
  auto pit = partials_.find(parent);
  if (tokens < full_tokens && c.stream_begin >= 0) {
    partial_info_[e] = {parent, c.stream, c.stream_begin};
    partials_[parent].push_back(e);
  } else if (tokens == full_tokens && pit != partials_.end() && c.stream_begin >= 0) {
    // The partial chunks this one extends are superseded (its first tokens are theirs).
    std::vector<Entry*> superseded;
    for (Entry* p : pit->second) {
      const PartialInfo& info = partial_info_.at(p);
      if (info.stream == c.stream && info.stream_begin == c.stream_begin && p->pins == 0) superseded.push_back(p);
    }
    for (Entry* p : superseded) Erase(p);
  }
  return e;
}

bool TierModel::WriteToT2(Entry* e) {
  if (t2_cap_ == 0 || e->on_t2) return e->on_t2;
  const uint64_t cost = T2Cost(*e);
  if (cost > t2_cap_) return false;
  ++e->pins;
  bool ok = true;
  while (t2_used_ + cost > t2_cap_) {
    Entry* victim = t2_policy_->PickVictim([](const Entry* v) { return v->pins == 0; });
    if (victim == nullptr) {
      ok = false;
      break;
    }
    ++counters_.t2_evictions;
    DropFromT2(victim);
  }
  --e->pins;
  if (!ok) return false;
  e->on_t2 = true;
  t2_used_ += cost;
  t2_policy_->Insert(e);
  return true;
}

void TierModel::WindowChanged(const std::vector<ChunkKey>& keys) {
  for (const ChunkKey& k : keys) {
    auto it = index_.find(k);
    if (it == index_.end()) continue;
    Entry* e = it->second.get();
    if (e->in_t1) t1_policy_->WindowChanged(e);
    if (e->on_t2) t2_policy_->WindowChanged(e);
  }
}

void TierModel::EnterT1(Entry* e) {
  e->in_t1 = true;
  t1_used_ += T1Cost(*e);
  t1_policy_->Insert(e);
}

void TierModel::LeaveT1(Entry* e) {
  t1_policy_->Remove(e);
  t1_used_ -= T1Cost(*e);
  e->in_t1 = false;
}

void TierModel::LeaveT2(Entry* e) {
  t2_policy_->Remove(e);
  t2_used_ -= T2Cost(*e);
  e->on_t2 = false;
}

void TierModel::DropFromT1(Entry* e) {
  LeaveT1(e);
  EraseIfGone(e);
}

void TierModel::DropFromT2(Entry* e) {
  LeaveT2(e);
  EraseIfGone(e);
}

void TierModel::Unpin(Entry* e) {
  --e->pins;
  EraseIfGone(e);
}

void TierModel::EraseIfGone(Entry* e) {
  if (!e->in_t1 && !e->on_t2 && e->pins == 0) Erase(e);
}

void TierModel::Erase(Entry* e) {
  if (e->in_t1) LeaveT1(e);
  if (e->on_t2) LeaveT2(e);
  auto info = partial_info_.find(e);
  if (info != partial_info_.end()) {
    auto it = partials_.find(info->second.parent);
    if (it != partials_.end()) {
      std::erase(it->second, e);
      if (it->second.empty()) partials_.erase(it);
    }
    partial_info_.erase(info);
  }
  index_.erase(e->key);  // destroys *e
}

}  // namespace kvault::replay

#include "store/tier_core.h"

#include <algorithm>

#include "store/record_format.h"

namespace kvault {

Result<std::unique_ptr<TierCore>> TierCore::Create(const Options& o) {
  if (o.page_bytes == 0 || o.page_bytes % kBlockBytes != 0) {
    return Status::InvalidArgument("page_bytes must be a positive multiple of 4096");
  }
  std::unique_ptr<TierCore> c(new TierCore());
  auto p1 = MakePolicy(o.policy, o.context);
  if (!p1.ok()) return p1.status();
  auto p2 = MakePolicy(o.policy, o.context);
  if (!p2.ok()) return p2.status();
  c->t1_policy_ = std::move(p1.value());
  c->t2_policy_ = std::move(p2.value());
  c->t1_pages_ = o.t1_pages;
  c->page_bytes_ = o.page_bytes;
  c->t2_ = o.t2;
  c->listener_ = o.listener;
  return c;
}

TierCore::~TierCore() = default;

// --- index -------------------------------------------------------------------------------

Entry* TierCore::Find(const ChunkKey& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : it->second.get();
}

Entry* TierCore::Add(std::unique_ptr<Entry> entry) {
  Entry* e = entry.get();
  index_[e->key] = std::move(entry);
  return e;
}

// --- lookup ------------------------------------------------------------------------------

Tier TierCore::TierOf(const Entry* e, const Digest& ns_id, const KvLayout& layout) {
  if (e == nullptr || !e->committed || !e->InNamespace(ns_id, layout)) return Tier::kNone;
  if (e->in_t1) return Tier::kT1;
  if (e->on_t2 || e->promoting) return Tier::kT2;
  return Tier::kNone;
}

Entry* TierCore::LongestPartial(const ChunkKey& parent, uint32_t max_tokens, const Digest& ns_id,
                                const KvLayout& layout, const std::function<bool(const Entry*)>& extends) const {
  auto pit = partials_.find(parent);
  if (pit == partials_.end() || max_tokens == 0) return nullptr;
  Entry* best = nullptr;
  for (const ChunkKey& k : pit->second) {
    Entry* e = Find(k);
    if (e == nullptr || e->tokens > max_tokens || (best && e->tokens <= best->tokens)) continue;
    if (TierOf(e, ns_id, layout) == Tier::kNone) continue;
    if (extends(e)) best = e;
  }
  return best;
}

std::vector<ChunkKey> TierCore::PartialsExtendedBy(const ChunkKey& parent,
                                                   const std::function<bool(const Entry*)>& extends) const {
  std::vector<ChunkKey> out;
  auto pit = partials_.find(parent);
  if (pit == partials_.end()) return out;
  for (const ChunkKey& k : pit->second) {
    const Entry* e = Find(k);
    if (e != nullptr && extends(e)) out.push_back(k);
  }
  return out;
}

// --- lifecycle ---------------------------------------------------------------------------

size_t TierCore::Commit(Entry* e, const std::vector<ChunkKey>& superseded) {
  e->committed = true;
  if (e->in_t1) t1_policy_->Insert(e);
  if (e->partial()) partials_[e->parent].push_back(e->key);
  size_t erased = 0;
  for (const ChunkKey& k : superseded) {
    Entry* p = Find(k);
    if (p == nullptr || !p->partial() || p->pins > 0 || p->promoting || p->writing || p->moving) continue;
    p->dirty = false;  // superseded, not lost: the full chunk holds its tokens
    ++counters_.partials_superseded;
    Erase(p);
    ++erased;
  }
  return erased;
}

void TierCore::Erase(Entry* e) {
  if (e->on_t2) DropT2Copy(e);
  ReleaseT1(e);
  if (listener_) listener_->OnErase(e);
  if (e->partial()) {
    auto pit = partials_.find(e->parent);
    if (pit != partials_.end()) {
      std::erase(pit->second, e->key);
      if (pit->second.empty()) partials_.erase(pit);
    }
  }
  index_.erase(e->key);  // destroys *e
}

bool TierCore::EraseIfUnused(Entry* e) {
  if (e->pins > 0 || e->in_t1 || e->on_t2 || e->promoting) return false;
  Erase(e);
  return true;
}

// --- T1 ----------------------------------------------------------------------------------

uint32_t TierCore::PagesFor(uint64_t payload_bytes) const {
  return static_cast<uint32_t>((RoundUpToBlock(payload_bytes) + page_bytes_ - 1) / page_bytes_);
}

Entry* TierCore::PickT1Victim(const std::function<bool(const Entry*)>& may_evict) {
  auto allowed = [&](const Entry* e) { return e->evictable() && (!may_evict || may_evict(e)); };
  // Entries with a copy on T2 (or no T2) first: nothing is lost. Then entries without one
  // that are not waiting for the write-behind (their write failed, or their T2 copy was
  // evicted); dirty ones only as a last resort, so that a put never waits for the disk. The
  // preferences look at the next kPreferenceScan victims only, so that a tier full of entries
  // waiting for the disk costs no scan of all of them.
  Entry* v = t1_policy_->PickVictim([&](const Entry* e) { return allowed(e) && (e->on_t2 || !t2_); }, kPreferenceScan);
  if (v == nullptr) v = t1_policy_->PickVictim([&](const Entry* e) { return allowed(e) && !e->dirty; }, kPreferenceScan);
  if (v == nullptr) v = t1_policy_->PickVictim(allowed);
  return v;
}

Status TierCore::ReserveT1(Entry* e, const std::function<bool(const Entry*)>& may_evict) {
  const uint32_t n = PagesFor(e->bytes);
  if (n > t1_pages_) {
    return Status::NoSpace("chunk of " + std::to_string(RoundUpToBlock(e->bytes)) + " bytes exceeds the DRAM tier");
  }
  while (free_pages() < n) {
    Entry* victim = PickT1Victim(may_evict);
    if (victim == nullptr) return Status::ResourceExhausted("every DRAM page is pinned or in flight");
    EvictFromT1(victim);
  }
  t1_used_pages_ += n;
  e->t1_pages = n;
  if (listener_) listener_->OnT1Reserved(e, n);
  return Status::OK();
}

void TierCore::EnterT1(Entry* e) {
  e->in_t1 = true;
  if (e->committed) t1_policy_->Insert(e);
}

void TierCore::ReleaseT1(Entry* e) {
  t1_policy_->Remove(e);
  e->in_t1 = false;
  if (e->t1_pages == 0) return;
  t1_used_pages_ -= e->t1_pages;
  e->t1_pages = 0;
  if (listener_) listener_->OnT1Released(e);
}

void TierCore::EvictFromT1(Entry* e) {
  if (listener_) listener_->OnEvictedFromT1(e);
  if (e->dirty) {
    e->dirty = false;  // the write-behind skips it
    ++counters_.t1_dropped_unpersisted;
  } else {
    ++counters_.t1_evictions;
  }
  ReleaseT1(e);
  if (!e->on_t2) Erase(e);
}

// --- T2 ----------------------------------------------------------------------------------

uint64_t TierCore::RecordBytes(const Entry& e) {
  // Stored bytes: an encoded record is smaller than the chunk. An entry without a record's
  // location (kvault replay's) counts its raw payload.
  return e.location.payload_bytes > 0 ? e.location.record_bytes() : kBlockBytes + RoundUpToBlock(e.bytes);
}

void TierCore::AddT2Copy(Entry* e) {
  e->on_t2 = true;
  t2_live_bytes_ += RecordBytes(*e);
  t2_policy_->Insert(e);
}

void TierCore::DropT2Copy(Entry* e) {
  if (listener_) listener_->OnT2Dropped(e);
  t2_live_bytes_ -= std::min(t2_live_bytes_, RecordBytes(*e));
  e->on_t2 = false;
  t2_policy_->Remove(e);
}

Entry* TierCore::PickT2Victim(const std::function<bool(const Entry*)>& eligible) {
  return t2_policy_->PickVictim([&](const Entry* e) { return e->on_t2 && eligible(e); });
}

bool TierCore::MakeT2Room(uint64_t bytes, uint64_t t2_bytes) {
  if (bytes > t2_bytes) return false;
  while (t2_live_bytes_ + bytes > t2_bytes) {
    Entry* victim = PickT2Victim([](const Entry* v) { return v->pins == 0; });
    if (victim == nullptr) return false;
    ++counters_.t2_evictions;
    DropT2Copy(victim);
    EraseIfUnused(victim);
  }
  return true;
}

// --- use ---------------------------------------------------------------------------------

void TierCore::TouchRead(Entry* e) {
  if (e->on_t2) {
    e->hot = true;
    t2_policy_->Touch(e);
  }
  if (e->in_t1) t1_policy_->Touch(e);
}

void TierCore::Promoted(Entry* e, bool demand) {
  EnterT1(e);
  if (demand) {  // a read: the entry is in use (a prefetch is only a guess)
    e->hot = true;
    t2_policy_->Touch(e);
  }
}

void TierCore::WindowChanged(const std::vector<ChunkKey>& keys) {
  for (const ChunkKey& k : keys) {
    Entry* e = Find(k);
    if (e == nullptr || !e->committed) continue;
    if (e->in_t1) t1_policy_->WindowChanged(e);
    if (e->on_t2) t2_policy_->WindowChanged(e);
  }
}

}  // namespace kvault

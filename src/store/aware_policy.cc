#include "store/aware_policy.h"

#include <algorithm>

#include "store/entry.h"

namespace kvault {

void AwarePolicy::File(Entry* e, Slot& s) {
  const WindowRank* rank = window_ != nullptr ? window_->Find(e->key) : nullptr;
  if (rank != nullptr) {
    s.group = kWindow;
    s.rank = *rank;
    window_order_.emplace(s.rank.request, s.rank.chunk, e);
    return;
  }
  const bool reused = Reused(e->key, &s.next);
  if (reused && oracle_ != nullptr) due_.emplace(s.next, e);
  const bool inner = children_.count(e->key) > 0;
  s.group = reused ? (inner ? kReusedInner : kReusedLeaf) : (inner ? kOnceInner : kOnceLeaf);
  outside_.emplace(s.group, s.tick, e);
}

void AwarePolicy::Unfile(Entry* e, const Slot& s) {
  if (s.group == kWindow) {
    window_order_.erase({s.rank.request, s.rank.chunk, e});
  } else {
    outside_.erase({s.group, s.tick, e});
    if (oracle_ != nullptr && (s.group == kReusedLeaf || s.group == kReusedInner)) due_.erase({s.next, e});
  }
}

bool AwarePolicy::Reused(const ChunkKey& key, uint64_t* next) const {
  if (oracle_ == nullptr) return history_.at(key).uses >= 2;
  *next = oracle_->NextUse(key);
  return *next != UINT64_MAX;
}

void AwarePolicy::RefileConsumedUses() {
  while (!due_.empty() && due_.begin()->first < oracle_->Now()) {
    Entry* e = due_.begin()->second;
    Slot& s = slots_.at(e);
    Unfile(e, s);  // erases it from due_
    File(e, s);
  }
}

void AwarePolicy::Refile(const ChunkKey& key) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return;
  Slot& s = slots_.at(it->second);
  Unfile(it->second, s);
  File(it->second, s);
}

void AwarePolicy::CountUse(const ChunkKey& key) {
  History& h = history_[key];
  h.uses = std::min<uint32_t>(h.uses + 1, UINT32_MAX - 1);
  h.ghost_seq = 0;
}

void AwarePolicy::ForgetOldGhosts() {
  const size_t limit = std::max(kMinGhosts, kGhostsPerEntry * slots_.size());
  while (ghosts_.size() > limit) {
    const auto& [seq, key] = ghosts_.front();
    auto it = history_.find(key);
    if (it != history_.end() && it->second.ghost_seq == seq) history_.erase(it);
    ghosts_.pop_front();
  }
}

void AwarePolicy::Insert(Entry* e) {
  if (slots_.count(e)) return Touch(e);
  by_key_.emplace(e->key, e);
  CountUse(e->key);
  Slot& s = slots_[e];
  s.tick = ++tick_;
  File(e, s);
  // The parent (if held) stops being a leaf with its first held child.
  if (++children_[e->parent] == 1) Refile(e->parent);
}

void AwarePolicy::Touch(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  Unfile(e, it->second);
  CountUse(e->key);
  it->second.tick = ++tick_;
  File(e, it->second);
}

void AwarePolicy::Remove(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  Unfile(e, it->second);
  slots_.erase(it);
  auto k = by_key_.find(e->key);
  if (k != by_key_.end() && k->second == e) {
    by_key_.erase(k);
    history_.at(e->key).ghost_seq = ++ghost_seq_;
    ghosts_.emplace_back(ghost_seq_, e->key);
    ForgetOldGhosts();
  }
  // The parent (if held) becomes a leaf with its last held child gone, keeping its own tick.
  auto c = children_.find(e->parent);
  if (c != children_.end() && --c->second == 0) {
    children_.erase(c);
    Refile(e->parent);
  }
}

void AwarePolicy::WindowChanged(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  Unfile(e, it->second);
  File(e, it->second);
}

uint32_t AwarePolicy::UsesOf(const ChunkKey& key) const {
  auto it = history_.find(key);
  return it != history_.end() ? it->second.uses : 0;
}

Entry* AwarePolicy::PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) {
  if (oracle_ != nullptr) RefileConsumedUses();
  for (auto it = outside_.begin(); it != outside_.end() && max_scan > 0; ++it, --max_scan) {
    if (eligible(std::get<2>(*it))) return std::get<2>(*it);
  }
  for (auto it = window_order_.rbegin(); it != window_order_.rend() && max_scan > 0; ++it, --max_scan) {
    if (eligible(std::get<2>(*it))) return std::get<2>(*it);
  }
  return nullptr;
}

}  // namespace kvault

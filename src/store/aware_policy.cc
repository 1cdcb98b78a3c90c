#include "store/aware_policy.h"

#include <vector>

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
  bool dead = false;
  if (oracle_ != nullptr) {
    s.next = oracle_->NextUse(e->key);
    dead = s.next == UINT64_MAX;
    if (!dead) due_.emplace(s.next, e);
  }
  const bool inner = children_.count(e->key) > 0;
  s.group = dead ? (inner ? kDeadInner : kDeadLeaf) : (inner ? kInner : kLeaf);
  outside_.emplace(s.group, s.tick, e);
}

void AwarePolicy::Unfile(Entry* e, const Slot& s) {
  if (s.group == kWindow) {
    window_order_.erase({s.rank.request, s.rank.chunk, e});
    return;
  }
  outside_.erase({s.group, s.tick, e});
  if (oracle_ != nullptr && (s.group == kLeaf || s.group == kInner)) due_.erase({s.next, e});
}

void AwarePolicy::RefileConsumedUses() {
  // Collected first, so each is asked once even if an oracle answered below Now().
  const uint64_t now = oracle_->Now();
  std::vector<Entry*> stale;
  for (auto it = due_.begin(); it != due_.end() && it->first < now; ++it) stale.push_back(it->second);
  for (Entry* e : stale) {
    Slot& s = slots_.at(e);
    Unfile(e, s);
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

void AwarePolicy::Insert(Entry* e) {
  if (slots_.count(e)) return Touch(e);
  by_key_.emplace(e->key, e);
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
  it->second.tick = ++tick_;
  File(e, it->second);
}

void AwarePolicy::Remove(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  Unfile(e, it->second);
  slots_.erase(it);
  auto k = by_key_.find(e->key);
  if (k != by_key_.end() && k->second == e) by_key_.erase(k);
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

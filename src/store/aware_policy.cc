#include "store/aware_policy.h"

#include "store/entry.h"

namespace kvault {

void AwarePolicy::File(Entry* e, Slot& s) {
  const WindowRank* rank = window_ != nullptr ? window_->Find(e->key) : nullptr;
  if (rank != nullptr) {
    s.group = Group::kWindow;
    s.rank = *rank;
    window_order_.emplace(s.rank.request, s.rank.chunk, e);
  } else if (children_.count(e->key)) {
    s.group = Group::kInner;
    inner_.emplace(s.tick, e);
  } else {
    s.group = Group::kLeaf;
    leaves_.emplace(s.tick, e);
  }
}

void AwarePolicy::Unfile(Entry* e, const Slot& s) {
  switch (s.group) {
    case Group::kLeaf: leaves_.erase({s.tick, e}); break;
    case Group::kInner: inner_.erase({s.tick, e}); break;
    case Group::kWindow: window_order_.erase({s.rank.request, s.rank.chunk, e}); break;
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
  for (auto it = leaves_.begin(); it != leaves_.end() && max_scan > 0; ++it, --max_scan) {
    if (eligible(it->second)) return it->second;
  }
  for (auto it = inner_.begin(); it != inner_.end() && max_scan > 0; ++it, --max_scan) {
    if (eligible(it->second)) return it->second;
  }
  for (auto it = window_order_.rbegin(); it != window_order_.rend() && max_scan > 0; ++it, --max_scan) {
    if (eligible(std::get<2>(*it))) return std::get<2>(*it);
  }
  return nullptr;
}

}  // namespace kvault

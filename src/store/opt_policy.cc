#include "store/opt_policy.h"

#include <vector>

#include "store/entry.h"

namespace kvault {

void OptPolicy::Refresh(Entry* e, Slot& s) {
  order_.erase(KeyOf(e, s));
  s.next = oracle_->NextUse(e->key);
  order_.insert(KeyOf(e, s));
}

void OptPolicy::Insert(Entry* e) {
  if (slots_.count(e)) return Touch(e);
  Slot& s = slots_[e];
  s.next = oracle_->NextUse(e->key);
  s.order = UINT64_MAX - inserted_++;
  order_.insert(KeyOf(e, s));
}

void OptPolicy::Touch(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  Refresh(e, it->second);
}

void OptPolicy::Remove(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  order_.erase(KeyOf(e, it->second));
  slots_.erase(it);
}

Entry* OptPolicy::PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) {
  // Refresh the stale values (see the invariant in the header). Collected first, so each is
  // asked once even if an oracle answered below Now(). Amortized: each stale value costs one
  // refresh per use it consumed.
  const uint64_t now = oracle_->Now();
  std::vector<Entry*> stale;
  for (auto it = order_.begin(); it != order_.end() && std::get<0>(*it) < now; ++it) stale.push_back(std::get<2>(*it));
  for (Entry* e : stale) Refresh(e, slots_.at(e));

  for (auto it = order_.rbegin(); it != order_.rend() && max_scan > 0; ++it, --max_scan) {
    if (eligible(std::get<2>(*it))) return std::get<2>(*it);
  }
  return nullptr;
}

}  // namespace kvault

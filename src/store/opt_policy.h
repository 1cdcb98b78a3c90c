// OptPolicy ("opt"): Belady's MIN, the offline optimum for a cache of equal-sized entries.
// The victim is the eligible entry whose next use (FutureOracle::NextUse) is farthest away;
// entries never used again go first. Ties go to the entry inserted first. Replay only: the
// future is known there.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "store/eviction_policy.h"

namespace kvault {

class OptPolicy final : public EvictionPolicy {
 public:
  explicit OptPolicy(const FutureOracle* oracle) : oracle_(oracle) {}  // oracle: not null

  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  const char* name() const override { return "opt"; }

 private:
  struct Slot {
    uint64_t next = 0;  // NextUse(e->key) when last asked
    uint64_t order = 0;  // insertion order, larger = earlier (ties at the high end go first)
  };
  // Invariant: a stored `next` >= oracle_->Now() is exact. It was the first use at or after
  // the time it was asked (t0 <= Now()); no use falls in [t0, next), so with next >= Now() it
  // is still the first use at or after Now(). A stored `next` < Now() is stale (that use is
  // consumed) and only too small, since NextUse never decreases as Now() advances. Stale
  // values therefore all sit at the low end of order_, where PickVictim refreshes them.
  using Key = std::tuple<uint64_t, uint64_t, Entry*>;  // (next, order, entry)

  void Refresh(Entry* e, Slot& s);  // re-ask the oracle and re-file
  Key KeyOf(Entry* e, const Slot& s) const { return {s.next, s.order, e}; }

  const FutureOracle* oracle_;
  uint64_t inserted_ = 0;
  std::unordered_map<Entry*, Slot> slots_;
  std::set<Key> order_;  // high end = farthest next use = first victim
};

}  // namespace kvault

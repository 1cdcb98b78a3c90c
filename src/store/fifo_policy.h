// FifoPolicy ("fifo"): entries leave in the order they entered; use does not matter.
#pragma once

#include <functional>
#include <list>
#include <unordered_map>

#include "store/eviction_policy.h"

namespace kvault {

class FifoPolicy final : public EvictionPolicy {
 public:
  void Insert(Entry* e) override;  // a present entry keeps its place
  void Touch(Entry* e) override {}
  void Remove(Entry* e) override;
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  const char* name() const override { return "fifo"; }

 private:
  std::list<Entry*> order_;  // front = newest
  std::unordered_map<Entry*, std::list<Entry*>::iterator> where_;
};

}  // namespace kvault

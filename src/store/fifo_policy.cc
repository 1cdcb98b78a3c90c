#include "store/fifo_policy.h"

namespace kvault {

void FifoPolicy::Insert(Entry* e) {
  if (where_.count(e)) return;
  order_.push_front(e);
  where_[e] = order_.begin();
}

void FifoPolicy::Remove(Entry* e) {
  auto it = where_.find(e);
  if (it == where_.end()) return;
  order_.erase(it->second);
  where_.erase(it);
}

Entry* FifoPolicy::PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) {
  for (auto it = order_.rbegin(); it != order_.rend() && max_scan > 0; ++it, --max_scan) {
    if (eligible(*it)) return *it;
  }
  return nullptr;
}

}  // namespace kvault

#include "store/eviction_policy.h"

namespace kvault {

void LruPolicy::Insert(Entry* e) {
  if (where_.count(e)) return Touch(e);
  order_.push_front(e);
  where_[e] = order_.begin();
}

void LruPolicy::Touch(Entry* e) {
  auto it = where_.find(e);
  if (it == where_.end()) return;
  order_.splice(order_.begin(), order_, it->second);
}

void LruPolicy::Remove(Entry* e) {
  auto it = where_.find(e);
  if (it == where_.end()) return;
  order_.erase(it->second);
  where_.erase(it);
}

Entry* LruPolicy::PickVictim(const std::function<bool(const Entry*)>& eligible) {
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    if (eligible(*it)) return *it;
  }
  return nullptr;
}

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const std::string& name) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy());
  return Status::InvalidArgument("unknown eviction policy '" + name + "' (available: lru)");
}

}  // namespace kvault

// EvictionPolicy: chooses which T1-resident entry leaves host DRAM next.
//
// The store tells the policy about every entry that enters T1, is used, or leaves T1, and
// asks for a victim among those that `eligible` accepts. Thread-safety: none; the store
// calls it with its mutex held.
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>

#include "kvault/status.h"

namespace kvault {

struct Entry;

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void Insert(Entry* e) = 0;
  virtual void Touch(Entry* e) = 0;
  virtual void Remove(Entry* e) = 0;
  // The best victim among entries accepted by `eligible`, or nullptr.
  virtual Entry* PickVictim(const std::function<bool(const Entry*)>& eligible) = 0;
};

// "lru": least recently inserted or used first.
class LruPolicy final : public EvictionPolicy {
 public:
  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible) override;

 private:
  std::list<Entry*> order_;  // front = most recently used
  std::unordered_map<Entry*, std::list<Entry*>::iterator> where_;
};

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const std::string& name);

}  // namespace kvault

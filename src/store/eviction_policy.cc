#include "store/eviction_policy.h"

#include "store/aware_policy.h"
#include "store/fifo_policy.h"
#include "store/opt_policy.h"
#include "store/s3fifo_policy.h"

namespace kvault {

// ---------------------------------------------------------------------------------------
// AccessWindow

std::vector<ChunkKey> AccessWindow::Set(const std::vector<std::vector<ChunkKey>>& requests) {
  std::unordered_map<ChunkKey, WindowRank, DigestHash> next;
  for (uint32_t i = 0; i < requests.size(); ++i) {
    for (uint32_t j = 0; j < requests[i].size(); ++j) {
      next.emplace(requests[i][j], WindowRank{i, j});  // emplace keeps the first (lowest) rank
    }
  }
  // One pass over each window: O(keys in the old window + keys in the new one).
  std::vector<ChunkKey> changed;
  for (const auto& [key, rank] : next) {
    auto old = rank_.find(key);
    if (old == rank_.end() || old->second.request != rank.request || old->second.chunk != rank.chunk) {
      changed.push_back(key);
    }
  }
  for (const auto& [key, rank] : rank_) {
    if (!next.count(key)) changed.push_back(key);
  }
  rank_ = std::move(next);
  return changed;
}

const WindowRank* AccessWindow::Find(const ChunkKey& key) const {
  auto it = rank_.find(key);
  return it == rank_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------
// LruPolicy

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

Entry* LruPolicy::PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) {
  for (auto it = order_.rbegin(); it != order_.rend() && max_scan > 0; ++it, --max_scan) {
    if (eligible(*it)) return *it;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Factory

const std::vector<std::string>& PolicyNames() {
  static const std::vector<std::string> names = {"lru", "fifo", "s3fifo", "aware", "opt", "aware-oracle"};
  return names;
}

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const std::string& name, PolicyContext context) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy());
  if (name == "fifo") return std::unique_ptr<EvictionPolicy>(new FifoPolicy());
  if (name == "s3fifo") return std::unique_ptr<EvictionPolicy>(new S3FifoPolicy());
  if (name == "aware") return std::unique_ptr<EvictionPolicy>(new AwarePolicy(context.window));
  if (name == "opt" || name == "aware-oracle") {
    if (context.oracle == nullptr) {
      return Status::InvalidArgument("eviction policy '" + name + "' needs a future oracle (replay only)");
    }
    if (name == "opt") return std::unique_ptr<EvictionPolicy>(new OptPolicy(context.oracle));
    return std::unique_ptr<EvictionPolicy>(new AwarePolicy(context.window, context.oracle));
  }
  std::string available;
  for (const std::string& n : PolicyNames()) available += (available.empty() ? "" : ", ") + n;
  return Status::InvalidArgument("unknown eviction policy '" + name + "' (available: " + available + ")");
}

}  // namespace kvault

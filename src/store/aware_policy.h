// AwarePolicy ("aware"): scheduler-aware eviction after CachedAttention (Gao et al., ATC '24).
//
// The scheduler knows which chunks its queued requests will read (the AccessWindow); a chunk
// none of them needs is the cheapest to lose. Victims, in this order:
//   1. out-of-window leaves, least recently used first;
//   2. out-of-window inner entries, least recently used first (only when no leaf is eligible);
//   3. window entries, the one needed latest first: largest (request, chunk), so a request's
//      tail chunks go before its head chunks, and later requests before earlier ones.
// An entry is a leaf when no entry held by this policy names its key as parent: evicting a
// leaf never cuts a held chain in two, since a lookup needs every chunk before the one it reads.
// Keys are assumed unique among held entries (the store holds one entry per key).
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "store/eviction_policy.h"

namespace kvault {

class AwarePolicy final : public EvictionPolicy {
 public:
  // `window` may be null: an empty window (the policy is then LRU over leaves first).
  explicit AwarePolicy(const AccessWindow* window) : window_(window) {}

  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  void WindowChanged(Entry* e) override;
  const char* name() const override { return "aware"; }

 private:
  enum class Group : uint8_t { kLeaf, kInner, kWindow };
  struct Slot {
    uint64_t tick = 0;  // the last Insert or Touch; kept while the entry is in the window
    Group group = Group::kLeaf;
    WindowRank rank;  // in kWindow: the rank it is filed under in window_order_
  };

  // Files e into the group the window and the child counts give it now / takes it out of the
  // group its slot records. Every held entry is filed in exactly one of the three sets.
  void File(Entry* e, Slot& s);
  void Unfile(Entry* e, const Slot& s);
  void Refile(const ChunkKey& key);  // no-op unless an entry with this key is held

  const AccessWindow* window_;
  uint64_t tick_ = 0;
  std::unordered_map<Entry*, Slot> slots_;
  std::unordered_map<ChunkKey, Entry*, DigestHash> by_key_;  // held entries
  // key -> number of held entries whose parent it is (entries with no count are leaves).
  // Counted whether or not the parent itself is held, so a parent that arrives after its
  // children is filed as inner at once.
  std::unordered_map<ChunkKey, uint32_t, DigestHash> children_;
  std::set<std::pair<uint64_t, Entry*>> leaves_;  // out of window, no held child; by tick
  std::set<std::pair<uint64_t, Entry*>> inner_;   // out of window, some held child; by tick
  std::set<std::tuple<uint32_t, uint32_t, Entry*>> window_order_;  // by (request, chunk)
};

}  // namespace kvault

// AwarePolicy ("aware"): scheduler-aware eviction after CachedAttention (Gao et al., ATC '24),
// with a use-count history.
//
// The scheduler knows which chunks its queued requests will read (the AccessWindow); a chunk
// none of them needs is the cheapest to lose. Among those, a chunk used once so far is a
// worse bet than one already reused: on the Mooncake trace 42% of first-time chunks are read
// again against 73-84% of reused ones (docs/REPLAY.md). Victims, in this order:
//   1. out-of-window entries used once: leaves, then inner entries, least recently used first;
//   2. out-of-window entries used twice or more: leaves, then inner entries, LRU first;
//   3. window entries, the one needed latest first: largest (request, chunk), so a request's
//      tail chunks go before its head chunks, and later requests before earlier ones.
// An entry is a leaf when no entry held by this policy names its key as parent: evicting a
// leaf never cuts a held chain in two, since a lookup needs every chunk before the one it reads.
// Uses: every Insert and Touch counts one. Counts outlive removal as a ghost history of (at
// most) the last max(kMinGhosts, kGhostsPerEntry x held) removals, so a chunk that left the
// tier and is stored again (recomputed, or promoted back) keeps its record of reuse.
// Keys are assumed unique among held entries (the store holds one entry per key).
//
// "aware-oracle" (replay only) is the same policy with the use counts replaced by the truth:
// given a FutureOracle, an out-of-window entry counts as reused when it will be read again
// (NextUse), and as used once when it never will. It is a bound, not a policy one could
// ship: what aware would reach with a perfect prediction of reuse beyond the window, so any
// better guess (features, learned classes) can be judged against it (docs/REPLAY.md).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "store/eviction_policy.h"

namespace kvault {

class AwarePolicy final : public EvictionPolicy {
 public:
  static constexpr size_t kMinGhosts = 1024;
  static constexpr size_t kGhostsPerEntry = 4;

  // `window` may be null: an empty window (the policy is then use count, leaves, LRU).
  explicit AwarePolicy(const AccessWindow* window) : window_(window) {}
  // The "aware-oracle" bound: `oracle` (not null) decides reuse instead of the use counts.
  AwarePolicy(const AccessWindow* window, const FutureOracle* oracle) : window_(window), oracle_(oracle) {}

  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  void WindowChanged(Entry* e) override;
  const char* name() const override { return oracle_ != nullptr ? "aware-oracle" : "aware"; }

  // Uses recorded for `key` (held or a ghost); 0 when unknown. For tests.
  uint32_t UsesOf(const ChunkKey& key) const;

 private:
  // Out-of-window classes in victim order; kWindow entries are filed apart.
  enum Group : uint8_t { kOnceLeaf = 0, kOnceInner = 1, kReusedLeaf = 2, kReusedInner = 3, kWindow = 4 };
  struct Slot {
    uint64_t tick = 0;  // the last Insert or Touch; kept while the entry is in the window
    Group group = kOnceLeaf;
    WindowRank rank;  // in kWindow: the rank it is filed under in window_order_
    uint64_t next = 0;  // aware-oracle, in a reused group: the next use it was filed with
  };
  struct History {
    uint32_t uses = 0;
    uint64_t ghost_seq = 0;  // while a ghost: its place in ghosts_ (0 = held)
  };

  // Files e into the group the window, the use count and the child counts give it now / takes
  // it out of the group its slot records. Every held entry is filed in exactly one place.
  void File(Entry* e, Slot& s);
  void Unfile(Entry* e, const Slot& s);
  void Refile(const ChunkKey& key);  // no-op unless an entry with this key is held
  void CountUse(const ChunkKey& key);
  void ForgetOldGhosts();
  bool Reused(const ChunkKey& key, uint64_t* next) const;
  // aware-oracle: re-files the entries filed as reused whose next use is now past.
  void RefileConsumedUses();

  const AccessWindow* window_;
  const FutureOracle* oracle_ = nullptr;
  uint64_t tick_ = 0;
  std::unordered_map<Entry*, Slot> slots_;
  std::unordered_map<ChunkKey, Entry*, DigestHash> by_key_;  // held entries
  // key -> number of held entries whose parent it is (entries with no count are leaves).
  // Counted whether or not the parent itself is held, so a parent that arrives after its
  // children is filed as inner at once.
  std::unordered_map<ChunkKey, uint32_t, DigestHash> children_;
  std::set<std::tuple<uint8_t, uint64_t, Entry*>> outside_;  // out of window, by (group, tick)
  std::set<std::tuple<uint32_t, uint32_t, Entry*>> window_order_;  // by (request, chunk)
  // Use counts of held keys and ghosts. ghosts_ lists removals oldest first with the sequence
  // number each was made under; one whose key's History no longer carries that number is
  // stale (the key came back, or left again later) and forgets nothing when it is dropped.
  std::unordered_map<ChunkKey, History, DigestHash> history_;
  std::deque<std::pair<uint64_t, ChunkKey>> ghosts_;
  uint64_t ghost_seq_ = 0;
  // aware-oracle: the entries filed as reused, by the next use they were filed with. One whose
  // use is past (< Now()) may never be read again and is re-filed before a victim is picked.
  std::set<std::pair<uint64_t, Entry*>> due_;
};

}  // namespace kvault

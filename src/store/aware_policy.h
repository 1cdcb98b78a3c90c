// AwarePolicy ("aware"): scheduler-aware eviction after CachedAttention (Gao et al., ATC '24).
//
// The scheduler knows which chunks its queued requests will read (the AccessWindow); a chunk
// none of them needs is the cheapest to lose. Victims, in this order:
//   1. out-of-window leaves, least recently used first;
//   2. out-of-window inner entries, least recently used first;
//   3. window entries, the one needed latest first: largest (request, chunk), so a request's
//      tail chunks go before its head chunks, and later requests before earlier ones.
// An entry is a leaf when no entry held by this policy names its key as parent: evicting a
// leaf never cuts a held chain in two, since a lookup needs every chunk before the one it reads
// (a chain is trimmed from its tail, as a radix cache trims its leaves).
// Out of the window the order is recency, not frequency: counting uses (chunks used once
// before reused ones) helped on the Mooncake trace (document questions: a chunk used once is
// read again 42% of the time, a reused one 73-84%) and cost conversations 5-14 points of hit
// rate against lru (there the newest turn is used once and is exactly what the next turn
// reads); docs/REPLAY.md has the measurements.
// Keys are assumed unique among held entries (the store holds one entry per key).
//
// "aware-oracle" (replay only) is a bound, not a policy one could ship: the same order, with
// out-of-window entries that the FutureOracle says are never read again evicted before all
// others (leaves, then inner, LRU). It is what aware would reach with a perfect prediction of
// reuse beyond the window, against which any such prediction can be judged (docs/REPLAY.md).
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
  // `window` may be null: an empty window (the policy is then leaves first, LRU).
  explicit AwarePolicy(const AccessWindow* window) : window_(window) {}
  // The "aware-oracle" bound: `oracle` (not null) tells which entries are read again.
  AwarePolicy(const AccessWindow* window, const FutureOracle* oracle) : window_(window), oracle_(oracle) {}

  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  void WindowChanged(Entry* e) override;
  const char* name() const override { return oracle_ != nullptr ? "aware-oracle" : "aware"; }

 private:
  // Out-of-window groups in victim order (kDead*: aware-oracle only); kWindow is filed apart.
  enum Group : uint8_t { kDeadLeaf = 0, kDeadInner = 1, kLeaf = 2, kInner = 3, kWindow = 4 };
  struct Slot {
    uint64_t tick = 0;  // the last Insert or Touch; kept while the entry is in the window
    Group group = kLeaf;
    WindowRank rank;  // in kWindow: the rank it is filed under in window_order_
    uint64_t next = 0;  // aware-oracle, in kLeaf / kInner: the next use it was filed with
  };

  // Files e into the group the window, the child counts (and the oracle) give it now / takes
  // it out of the group its slot records. Every held entry is filed in exactly one place.
  void File(Entry* e, Slot& s);
  void Unfile(Entry* e, const Slot& s);
  void Refile(const ChunkKey& key);  // no-op unless an entry with this key is held
  // aware-oracle: re-files the entries whose next use (as filed) is now past.
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
  // aware-oracle: out-of-window entries that will be read again, by the next use they were
  // filed with. One whose use is past (< Now()) may never be read again: it is re-filed
  // before a victim is picked.
  std::set<std::pair<uint64_t, Entry*>> due_;
};

}  // namespace kvault

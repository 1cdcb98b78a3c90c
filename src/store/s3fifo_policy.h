// S3FifoPolicy ("s3fifo"): S3-FIFO (Yang et al., SOSP '23).
//
// Three FIFO queues:
//   S (small)  probation for new entries; holds about 10% of the weight the policy holds.
//   M (main)   entries used while in S, or re-inserted soon after leaving S.
//   G (ghost)  keys of entries that left S, newest first; no entries, at most as many keys
//              as entries held (at least one).
// Each held entry has a use counter (0..3) that Touch raises. An entry leaving S's tail goes
// to M if it was used there, else it is the victim; one leaving M's tail with a use left has
// the counter lowered and goes back to M's head, else it is the victim. Most one-hit entries
// thus leave from S without ever disturbing M.
//
// The weight of an entry is max(e->bytes, 1) at Insert (entries without a size count as 1).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <unordered_map>

#include "store/eviction_policy.h"

namespace kvault {

class S3FifoPolicy final : public EvictionPolicy {
 public:
  void Insert(Entry* e) override;  // a key in G goes to M, any other to S
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;  // an entry removed from S leaves its key in G
  using EvictionPolicy::PickVictim;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  const char* name() const override { return "s3fifo"; }

 private:
  static constexpr uint8_t kMaxFreq = 3;

  struct Slot {
    bool in_main = false;
    uint8_t freq = 0;
    uint64_t weight = 0;
    std::list<Entry*>::iterator pos;  // in small_ or main_
  };

  bool SmallOverShare() const { return small_weight_ * 10 > total_weight_; }
  // Scan S (resp. M) from its tail as described above, skipping (and leaving in place) entries
  // `eligible` rejects. Each returns an eligible entry if its queue holds one afterwards.
  // Search S (or M) from its tail; each entry visited spends one unit of `budget`.
  Entry* FromSmall(const std::function<bool(const Entry*)>& eligible, size_t& budget);
  Entry* FromMain(const std::function<bool(const Entry*)>& eligible, size_t& budget);
  // The walk both share: from `queue`'s tail, the first eligible entry with no uses left is
  // the victim; an eligible entry with uses left goes to `reuse` (which moves it to a queue's
  // head, so the cursor stays valid).
  Entry* Walk(std::list<Entry*>& queue, const std::function<bool(const Entry*)>& eligible, size_t& budget,
              const std::function<void(std::list<Entry*>::iterator, Slot&)>& reuse);
  void RememberGhost(const ChunkKey& key);

  std::list<Entry*> small_, main_;  // front = newest
  std::unordered_map<Entry*, Slot> slots_;
  uint64_t small_weight_ = 0;  // sum of weights in S
  uint64_t total_weight_ = 0;  // sum of weights in S and M
  std::list<ChunkKey> ghost_;  // front = newest
  std::unordered_map<ChunkKey, std::list<ChunkKey>::iterator, DigestHash> ghost_pos_;
};

}  // namespace kvault

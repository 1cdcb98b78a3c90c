// TierModel: the store's two tiers without payload bytes, for `kvault replay`.
//
// It keeps the store's index semantics and drives the store's own EvictionPolicy classes:
// T1 (host DRAM) in whole pages of `page_bytes`, T2 (disk) in records of a 4 KiB header plus
// the payload rounded to 4 KiB, exactly as the store sizes them; one policy per tier; a put
// lands in T1 and is written behind to T2 (T2 holds a copy of most of T1, as in the store);
// a T1 victim stays on T2; a T2 victim stays in T1 while it is there; reading a T2 entry
// promotes it to T1. Pinned entries (pins > 0) are never victims. Like the store, a prompt's
// trailing partial chunk is stored and reused by a later prompt that continues the same token
// stream from the same place (a chat's next turn), and a full chunk put in its place
// supersedes it. Time is not modelled here: the simulator charges it.
//
// Thread-safety: none (single-threaded simulation).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "kvault/key.h"
#include "kvault/store.h"
#include "replay/trace.h"
#include "store/entry.h"
#include "store/eviction_policy.h"

namespace kvault::replay {

struct TierCounters {
  uint64_t t1_evictions = 0, t2_evictions = 0;
  uint64_t t1_put_failures = 0;  // chunks that found no unpinned T1 room (not saved)
  uint64_t promotions = 0, prefetches = 0;
};

class TierModel {
 public:
  // `policy` names a MakePolicy policy used for both tiers; t2_bytes == 0 disables T2.
  static Result<std::unique_ptr<TierModel>> Create(uint64_t t1_bytes, uint64_t t2_bytes, uint32_t page_bytes,
                                                   uint64_t kv_bytes_per_token, const std::string& policy,
                                                   PolicyContext context);

  // The entries of the longest cached prefix of `chain`: its chunks until the first one in no
  // tier, then the longest stored partial chunk that the next chunk of `chain` extends.
  std::vector<Entry*> LookupPrefix(const std::vector<TraceChunk>& chain);
  // Marks a read of e (both tiers' policies see the use).
  void Touch(Entry* e);
  // Pins keep an entry from being a victim (the request using it is in flight).
  void Pin(Entry* e) { ++e->pins; }
  void Unpin(Entry* e);
  // Brings a T2-only entry into T1. `may_evict` limits the victims (and pinned entries never
  // are). False when no room could be made.
  bool Promote(Entry* e, const std::function<bool(const Entry*)>& may_evict);
  // Puts chunk `c` (following `parent`) into T1, evicting by policy, and sets *created. An
  // entry already stored is returned as it is (*created = false); nullptr when T1 has no
  // unpinned room. A full chunk (`full_tokens`) supersedes the stored partial chunks it extends.
  Entry* Put(const TraceChunk& c, const ChunkKey& parent, uint32_t full_tokens, bool* created);
  // The entry of `key` in either tier, or nullptr.
  Entry* Find(const ChunkKey& key);
  // Writes e to T2 (evicting by policy). False when T2 is off or has no unpinned room.
  bool WriteToT2(Entry* e);
  // The window changed for these keys: re-file the entries present.
  void WindowChanged(const std::vector<ChunkKey>& keys);

  uint64_t t1_used() const { return t1_used_; }
  uint64_t t2_used() const { return t2_used_; }
  uint64_t t1_capacity() const { return t1_cap_; }
  uint64_t t2_capacity() const { return t2_cap_; }
  uint64_t chunk_bytes(uint32_t tokens) const { return uint64_t{tokens} * kv_bytes_per_token_; }
  size_t entries() const { return index_.size(); }
  const TierCounters& counters() const { return counters_; }

 private:
  TierModel() = default;
  uint64_t T1Cost(const Entry& e) const;
  uint64_t T2Cost(const Entry& e) const;
  bool MakeT1Room(uint64_t bytes, const std::function<bool(const Entry*)>& may_evict);
  void EnterT1(Entry* e);  // into T1's policy and accounting (room already made)
  void LeaveT1(Entry* e);  // out of T1's policy and accounting
  void LeaveT2(Entry* e);
  void DropFromT1(Entry* e);  // LeaveT1, then erased if in no tier and unpinned
  void DropFromT2(Entry* e);
  void EraseIfGone(Entry* e);
  void Erase(Entry* e);  // REQUIRES: e->pins == 0

  // A stored partial chunk: where its tokens come from, to tell which later chunks extend it.
  struct PartialInfo {
    ChunkKey parent;
    uint64_t stream = 0;
    int64_t stream_begin = 0;
  };

  uint64_t t1_cap_ = 0, t2_cap_ = 0, t1_used_ = 0, t2_used_ = 0;
  uint32_t page_bytes_ = 0;
  uint64_t kv_bytes_per_token_ = 0;
  std::unique_ptr<EvictionPolicy> t1_policy_, t2_policy_;
  std::unordered_map<ChunkKey, std::unique_ptr<Entry>, DigestHash> index_;
  std::unordered_map<const Entry*, PartialInfo> partial_info_;
  std::unordered_map<ChunkKey, std::vector<Entry*>, DigestHash> partials_;  // parent -> partial chunks
  TierCounters counters_;
};

}  // namespace kvault::replay

// TierCore: the store's bookkeeping of where each chunk lives, without payloads or I/O.
//
// It holds the index (key -> Entry), the stored partial chunks under their parents, one
// EvictionPolicy per tier, T1's page accounting, T2's live record bytes, and the rules that
// decide a lookup's tiers and the victims of a tier that needs room. The embedded store
// (StoreImpl) runs it with payloads: it allocates T1 pages where the core reserves them
// (TierCoreListener) and does the disk and network I/O around it. `kvault replay` runs it
// without payloads, so the replay measures the store's own rules.
//
// Rules kept here (the store's, shared by both):
//  * a lookup's tiers: an entry counts when committed and of the namespace; T1 when in_t1,
//    T2 when on_t2 or being promoted;
//  * a stored partial chunk is found under its parent (the longest that the caller says the
//    stream extends); a full chunk supersedes the partial chunks it extends when committed;
//  * T1 is counted in whole pages (ceil(padded payload / page_bytes)); T1 victims are entries
//    that are committed, in T1, unpinned, not promoting and not being written, preferring
//    (among the next kPreferenceScan victims) one with a T2 copy or with no T2 at all, then one
//    not waiting for the write-behind, then any;
//  * an entry that leaves both tiers unpinned is erased; a T2 record is 4 KiB of header plus
//    the stored payload (raw, or encoded by the tier's codec: e->location says) rounded up to
//    4 KiB.
//
// Thread-safety: none; the owner serializes every call (the store holds its mutex). The
// listener is called from inside those calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvault/key.h"
#include "kvault/status.h"
#include "kvault/store.h"
#include "store/entry.h"
#include "store/eviction_policy.h"

namespace kvault {

// What the owner does when the core moves T1 space or forgets an entry. All optional.
class TierCoreListener {
 public:
  virtual ~TierCoreListener() = default;
  // `pages` T1 pages were reserved for e (the store hands it arena pages).
  virtual void OnT1Reserved(Entry* e, uint32_t pages) {}
  // e's T1 pages are given back (the store returns them to its arena).
  virtual void OnT1Released(Entry* e) {}
  // e left T1 as a victim; e->dirty tells whether it had not reached T2 yet (the core clears
  // it after the call). Called before e may be erased.
  virtual void OnEvictedFromT1(Entry* e) {}
  // e's T2 record stops being live (the store's per-segment accounting). e->on_t2 is still set.
  virtual void OnT2Dropped(Entry* e) {}
  // e is about to be destroyed (its T1 pages are already released, its T2 copy dropped).
  virtual void OnErase(Entry* e) {}
};

struct TierCoreCounters {
  uint64_t t1_evictions = 0;             // victims with their data kept on T2 (or no T2)
  uint64_t t1_dropped_unpersisted = 0;   // victims that had not reached T2 yet
  uint64_t t2_evictions = 0;             // T2 copies given up by MakeT2Room
  uint64_t partials_superseded = 0;
};

class TierCore {
 public:
  struct Options {
    uint32_t t1_pages = 0;      // T1's size in pages
    uint32_t page_bytes = 0;    // a positive multiple of 4096
    bool t2 = false;            // a T2 exists (changes the T1 victim preference)
    std::string policy = "lru";  // MakePolicy name, both tiers
    PolicyContext context;      // its window and oracle; the window must outlive the core
    TierCoreListener* listener = nullptr;  // not owned; may be null
  };
  static Result<std::unique_ptr<TierCore>> Create(const Options& options);
  ~TierCore();

  // --- index ---------------------------------------------------------------------------
  Entry* Find(const ChunkKey& key) const;
  // Indexes a new entry (uncommitted, or committed as read from T2). REQUIRES: key absent.
  Entry* Add(std::unique_ptr<Entry> entry);
  size_t size() const { return index_.size(); }
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [k, e] : index_) fn(e.get());
  }

  // --- lookup --------------------------------------------------------------------------
  // Where a lookup in namespace (ns_id, layout) finds e: kT1, kT2, or kNone.
  static Tier TierOf(const Entry* e, const Digest& ns_id, const KvLayout& layout);
  // The longest stored partial chunk under `parent` with at most `max_tokens` tokens that is
  // visible in the namespace and that `extends` accepts (the stream continues with its
  // tokens); null when none.
  Entry* LongestPartial(const ChunkKey& parent, uint32_t max_tokens, const Digest& ns_id, const KvLayout& layout,
                        const std::function<bool(const Entry*)>& extends) const;
  // The stored partial chunks under `parent` that `extends` accepts (candidates for being
  // superseded by a full chunk there).
  std::vector<ChunkKey> PartialsExtendedBy(const ChunkKey& parent,
                                           const std::function<bool(const Entry*)>& extends) const;

  // --- lifecycle -----------------------------------------------------------------------
  // Makes e visible: committed, in T1's policy when in T1, filed under its parent when
  // partial. Then erases the `superseded` partial chunks that are idle (unpinned, not
  // promoting, writing or moving); returns how many.
  size_t Commit(Entry* e, const std::vector<ChunkKey>& superseded);
  // Forgets e: releases its T1 pages, leaves both policies, unfiles it. REQUIRES: unpinned
  // (or an aborted writer's entry).
  void Erase(Entry* e);
  // Erases e when it holds no data and nothing holds it (no pins, not in T1, not on T2, not
  // promoting). Returns true when erased.
  bool EraseIfUnused(Entry* e);

  // --- T1 ------------------------------------------------------------------------------
  uint32_t PagesFor(uint64_t payload_bytes) const;
  uint32_t free_pages() const { return t1_pages_ - t1_used_pages_; }
  uint32_t total_pages() const { return t1_pages_; }
  uint64_t t1_used_bytes() const { return uint64_t{t1_used_pages_} * page_bytes_; }
  uint64_t t1_capacity_bytes() const { return uint64_t{t1_pages_} * page_bytes_; }
  // Reserves T1 pages for e's payload (not yet in T1's policy), evicting victims that
  // `may_evict` also accepts (null: any) until they fit. kNoSpace when the payload exceeds
  // T1, kResourceExhausted when every candidate is pinned or in flight.
  Status ReserveT1(Entry* e, const std::function<bool(const Entry*)>& may_evict = nullptr);
  // e's reserved pages now hold its payload: into T1 and its policy.
  void EnterT1(Entry* e);
  // Gives e's T1 pages back (a failed promotion, or leaving T1).
  void ReleaseT1(Entry* e);
  // Evicts victim e from T1 (counted, the listener told); erased when no T2 copy is left.
  void EvictFromT1(Entry* e);

  // --- T2 ------------------------------------------------------------------------------
  static uint64_t RecordBytes(const Entry& e);
  uint64_t t2_live_bytes() const { return t2_live_bytes_; }
  // e's record is now on T2 (live); into T2's policy.
  void AddT2Copy(Entry* e);
  // e's T2 record stops being live; out of T2's policy (the entry itself stays).
  void DropT2Copy(Entry* e);
  // The next T2 victim among on_t2 entries `eligible` accepts; null when none.
  Entry* PickT2Victim(const std::function<bool(const Entry*)>& eligible);
  // Record-granular T2 (kvault replay): frees T2 victims (unpinned) until `bytes` more fit
  // under `t2_bytes`, counting them; false when they cannot. The store's T2 frees whole
  // segments instead (its write-behind), with the same victim order.
  bool MakeT2Room(uint64_t bytes, uint64_t t2_bytes);

  // --- use -----------------------------------------------------------------------------
  // A read of e served from T1 (a hit, or a promotion's demand read): both policies see it.
  void TouchRead(Entry* e);
  // Promotion finished: e is in T1; `demand` (a read, not a prefetch) touches its T2 copy.
  void Promoted(Entry* e, bool demand);
  // The window changed for these keys: re-files the committed entries present.
  void WindowChanged(const std::vector<ChunkKey>& keys);

  const TierCoreCounters& counters() const { return counters_; }
  TierCoreCounters& counters() { return counters_; }
  EvictionPolicy& t1_policy() { return *t1_policy_; }
  EvictionPolicy& t2_policy() { return *t2_policy_; }

 private:
  TierCore() = default;
  Entry* PickT1Victim(const std::function<bool(const Entry*)>& may_evict);

  uint32_t t1_pages_ = 0, t1_used_pages_ = 0, page_bytes_ = 0;
  bool t2_ = false;
  uint64_t t2_live_bytes_ = 0;
  TierCoreListener* listener_ = nullptr;
  std::unique_ptr<EvictionPolicy> t1_policy_;  // committed entries in T1
  std::unique_ptr<EvictionPolicy> t2_policy_;  // entries with a live T2 record
  std::unordered_map<ChunkKey, std::unique_ptr<Entry>, DigestHash> index_;
  // Parent key -> keys of the stored partial chunks that follow it.
  std::unordered_map<ChunkKey, std::vector<ChunkKey>, DigestHash> partials_;
  TierCoreCounters counters_;
};

}  // namespace kvault

// EvictionPolicy: chooses which entry leaves a tier next.
//
// A store keeps one policy per tier (T1 host DRAM, T2 disk). It tells the policy about every
// entry that enters the tier, is used, or leaves it, and asks for a victim among those that
// `eligible` accepts, through TierCore (tier_core.h), which `kvault replay` also
// runs over payload-free entries, so the policies it measures are the ones the store ships.
//
// Policies (MakePolicy names):
//   lru    least recently inserted or used first
//   fifo   first inserted first; use does not matter
//   s3fifo S3-FIFO (small probationary FIFO, main FIFO with reinsertion, ghost history)
//   aware  scheduler-aware (CachedAttention): first what no queued request needs (leaf chunks
//          of a chain before their parents, then least recently used), then window entries
//          needed latest (tail chunks first)
//   opt    Belady's offline optimum: the entry whose next use is farthest in the future
//          (needs a FutureOracle: replay only)
//   aware-oracle  aware told by a FutureOracle which chunks will be read again: a bound on
//          what aware's guess of reuse could reach (replay only)
//
// Thread-safety: none; the owner serializes every call (the store holds its mutex). The
// AccessWindow and FutureOracle a policy reads must not change during a call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvault/key.h"
#include "kvault/status.h"

namespace kvault {

struct Entry;

// The look-ahead window a client hinted: for every chunk a queued request will read, where it
// is first needed. Lower (request, chunk) = needed sooner.
struct WindowRank {
  uint32_t request = 0;  // position of the first queued request that needs the chunk (0 = next)
  uint32_t chunk = 0;    // the chunk's index within that request's chain (0 = head)
};

class AccessWindow {
 public:
  // Replaces the window by `requests` (chunk keys of each queued request, head first, in queue
  // order) and returns the keys whose rank changed (entered, left, or moved).
  std::vector<ChunkKey> Set(const std::vector<std::vector<ChunkKey>>& requests);
  const WindowRank* Find(const ChunkKey& key) const;
  bool Contains(const ChunkKey& key) const { return Find(key) != nullptr; }
  size_t size() const { return rank_.size(); }

 private:
  std::unordered_map<ChunkKey, WindowRank, DigestHash> rank_;
};

// What `opt` knows: when each chunk is needed next. Time is a request sequence number.
class FutureOracle {
 public:
  virtual ~FutureOracle() = default;
  // The current request's sequence number; never decreases.
  virtual uint64_t Now() const = 0;
  // The first request at or after Now() that reads `key`; UINT64_MAX when none does.
  virtual uint64_t NextUse(const ChunkKey& key) const = 0;
};

// What a policy may consult besides the calls it receives. Pointers are not owned and must
// outlive the policy; null when absent.
struct PolicyContext {
  const AccessWindow* window = nullptr;  // aware
  const FutureOracle* oracle = nullptr;  // opt, aware-oracle (required)
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void Insert(Entry* e) = 0;   // e entered the tier (Insert of a present entry = Touch)
  virtual void Touch(Entry* e) = 0;    // e was read
  virtual void Remove(Entry* e) = 0;   // e left the tier (no-op when absent)
  // The best victim among entries accepted by `eligible`, or nullptr. Does not remove it.
  // `max_scan` bounds how many candidates, in victim order, are looked at (a preference the
  // caller can afford: "an entry with a disk copy, if one is among the next 64 victims").
  // s3fifo counts every entry its search visits, including those it promotes or reinserts.
  virtual Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) = 0;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible) { return PickVictim(eligible, SIZE_MAX); }
  // e's WindowRank changed (the owner calls it for each present entry that Set() returned).
  virtual void WindowChanged(Entry* e) {}
  virtual const char* name() const = 0;
};

// "lru": least recently inserted or used first.
class LruPolicy final : public EvictionPolicy {
 public:
  using EvictionPolicy::PickVictim;
  void Insert(Entry* e) override;
  void Touch(Entry* e) override;
  void Remove(Entry* e) override;
  Entry* PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) override;
  const char* name() const override { return "lru"; }

 private:
  std::list<Entry*> order_;  // front = most recently used
  std::unordered_map<Entry*, std::list<Entry*>::iterator> where_;
};

// How many of the next T1 victims the clean-first preferences of TierCore look at (the store
// and kvault replay alike run them).
inline constexpr size_t kPreferenceScan = 64;

// Names MakePolicy accepts, for --help and error messages.
const std::vector<std::string>& PolicyNames();
// kInvalidArgument for an unknown name, or "opt" / "aware-oracle" without an oracle.
Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const std::string& name, PolicyContext context = {});

}  // namespace kvault

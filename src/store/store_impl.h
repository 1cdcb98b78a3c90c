// StoreImpl: the index, T1 arena, T2 log and the write-behind mover behind kvault::Store.
//
// Locking: one mutex (mu_) guards the index, the policy, the arena's free list, the write
// queue and the counters. Payload bytes are copied outside mu_, into or out of pages of
// pinned entries only. Disk I/O never runs under mu_.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvault/store.h"
#include "store/entry.h"
#include "store/eviction_policy.h"
#include "store/host_arena.h"
#include "store/segment_log.h"

namespace kvault {

class StoreImpl {
 public:
  static Result<std::unique_ptr<StoreImpl>> Open(const StoreOptions& options);
  ~StoreImpl();

  // Longest cached continuation of the chain after `parent` (ns.id(): from the start).
  LookupResult Lookup(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key);
  Status Flush();
  StoreStats Stats() const;

  // For the handles. REQUIRES: the entry is pinned by the calling handle.
  // Copies into an uncommitted entry; hashes the bytes on the way when they extend the
  // hashed prefix.
  void CopyIn(Entry* e, size_t offset, std::span<const std::byte> data);
  void CopyOut(const Entry* e, size_t offset, std::span<std::byte> dst) const;
  void ForEachPiece(const Entry* e, size_t offset, size_t size,
                    const std::function<void(std::span<const std::byte>)>& fn) const;
  // Publishes the chunk; kInvalidArgument (and the chunk is dropped) unless every payload
  // byte was written.
  Status Commit(Entry* e, const std::vector<ChunkKey>& superseded);
  void Abort(Entry* e);
  void Unpin(Entry* e);

 private:
  explicit StoreImpl(const StoreOptions& options);
  void OnRecordFound(const RecordHeader& h, DiskLocation loc);  // while opening

  Status AllocatePagesLocked(uint64_t bytes, PageList* out);  // REQUIRES: mu_ held
  void EvictFromT1Locked(Entry* e);                          // REQUIRES: mu_ held
  void EraseLocked(Entry* e);                                // REQUIRES: mu_ held, e->pins == 0
  void EnqueueWriteLocked(Entry* e);                         // REQUIRES: mu_ held
  void CountErrorLocked(const Status& st);                   // REQUIRES: mu_ held
  static RecordHeader HeaderOf(const Entry& e);

  void WriterLoop();
  Status EnsureT2Space(std::span<const uint64_t> record_bytes);  // writer thread only
  void ReclaimSegment(uint32_t id);                              // writer thread only

  const StoreOptions options_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<SegmentLog> log_;  // null when T2 is off

  mutable std::mutex mu_;
  std::unordered_map<ChunkKey, std::unique_ptr<Entry>, DigestHash> index_;
  // Parent key -> keys of the stored partial chunks that follow it.
  std::unordered_map<ChunkKey, std::vector<ChunkKey>, DigestHash> partials_;
  // Segment id -> keys written there (some may have moved or gone since).
  std::unordered_map<uint32_t, std::vector<ChunkKey>> segment_keys_;
  std::unique_ptr<EvictionPolicy> policy_;

  // Write-behind queue of (seq, key). An item is stale when its entry is gone, no longer
  // dirty, or has a newer seq. processed_seq_ is the highest seq the writer has finished.
  std::deque<std::pair<uint64_t, ChunkKey>> write_queue_;
  uint64_t next_seq_ = 1;
  uint64_t last_queued_seq_ = 0;
  uint64_t processed_seq_ = 0;
  bool shutdown_ = false;
  std::chrono::steady_clock::time_point degraded_until_{};  // after a T2 failure: fail fast
  std::condition_variable writer_cv_;    // work for the writer, or shutdown
  std::condition_variable progress_cv_;  // writes finished, promotions finished
  uint64_t unpersisted_ = 0;             // puts that never reached T2
  uint64_t unpersisted_at_flush_ = 0;

  mutable StoreStats stats_;
  mutable std::atomic<uint64_t> bytes_loaded_{0};
  std::thread writer_;
};

}  // namespace kvault

// SharedDirTier: the cluster tier (T3) over a directory on a distributed file system (CephFS,
// 3FS, Lustre, NFS) that many nodes, each with many writer processes, mount at once.
//
// Layout (content-addressed: one file per chunk, named by its key):
//   <dir>/kvault-t3-v1/<first 2 hex of key>/<64 hex of key>.kvr          a published value
//   <dir>/kvault-t3-v1/<2 hex>/.<64 hex>.<host>.<pid>.<tid>.<n>.tmp      a write in progress
// A value is the whole remote record (remote_record.h); the file holds exactly its bytes.
//
// Invariants:
//   - A final name only ever holds a complete value: Put writes a temp file that no other
//     writer can name (host, pid, thread and a process-wide counter are in its name),
//     optionally fsyncs it, and publishes it with rename(2), which replaces atomically. The
//     same key always carries the same content, so when writers race the last rename wins
//     harmlessly.
//   - Deleting a file (GC, TTL) while another node reads it is harmless: the reader either
//     holds it open and reads the old bytes, or fails to open it (ENOENT: a miss). A file
//     that shrinks or vanishes mid-read is a miss, never partial data.
//   - Temp files are never read; a temp file older than stale_temp_seconds is what a crashed
//     writer left and GC deletes it.
//   - The budget is shared by every node writing the directory, so no node can know the
//     exact total. Each instance keeps an estimate (its last full scan of the directory, plus
//     the bytes it put since) and, when the estimate exceeds budget_bytes, a GC pass rescans
//     and deletes the oldest values (by mtime: atime is unreliable on these file systems)
//     until the directory is under kGcLowWaterFraction of the budget. GCs on several nodes
//     pick the same oldest files (mtime, then name), so running them at once over-deletes
//     little.
//   - Values older than ttl_seconds (by mtime) are misses; Get, Contains and GC delete them.
//   - Eviction is by write time (FIFO): a hit does not refresh a value's mtime (that would
//     be a metadata write per read on the shared file system).
//
// Time is wall-clock time compared with file mtimes, which the file system's server may set:
// nodes' clocks should agree to well within ttl_seconds and stale_temp_seconds.
//
// Every file operation goes through options.env (env.h), so its faults reach the tier.
//
// Thread-safety: every method may be called from any thread at once. Counters are atomics;
// the GC's estimate and schedule are guarded by mu_; one GC pass runs at a time (gc_mu_).
// Errors (EIO, ENOSPC, EACCES, ...) are counted in Stats().errors and returned, never thrown.
// A call may block as long as the file system does (a hung NFS server blocks it).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "kvault/env.h"
#include "store/mutex.h"
#include "store/remote_tier.h"

namespace kvault {

struct SharedDirTierOptions {
  std::string dir;               // the shared directory; created with its tree if missing
  uint64_t budget_bytes = 0;     // 0: unlimited
  uint64_t ttl_seconds = 0;      // 0: values never expire
  bool sync = true;              // fsync each file before publishing it
  // A temp file older than this is a crashed writer's leftover, deleted by GC. Must exceed
  // the longest time one Put may take.
  uint64_t stale_temp_seconds = 600;
  // The GC rescans the directory at least this often, to learn what other nodes wrote and
  // to delete expired values and stale temp files. 0: only when over budget.
  uint64_t scan_interval_ms = 60'000;
  // At most one GC pass per this interval (a directory kept over budget by other nodes
  // must not make this one rescan it without pause).
  uint64_t min_gc_interval_ms = 1'000;
  // true: GC passes run in a background thread. false: in the Put that finds the estimate
  // over budget (or the scan interval elapsed), when no pass runs already.
  bool background_gc = true;
  // Every file operation of the tier goes through it (tests inject faults). nullptr:
  // Env::Default().
  Env* env = nullptr;
};

// What the GC has done so far (RemoteTierStats has the rest).
struct SharedDirGcStats {
  uint64_t passes = 0;
  uint64_t files_seen = 0;          // published values found by the last pass
  uint64_t bytes_seen = 0;          // their bytes plus temp files', before deletions
  uint64_t expired = 0;             // values deleted for their age (TTL), by anyone here
  uint64_t stale_temps_removed = 0;
};

// The fraction of the budget a GC pass brings the directory down to.
inline constexpr double kGcLowWaterFraction = 0.9;

class SharedDirTier final : public RemoteTier {
 public:
  // Creates the directory tree (idempotent; safe when nodes race) and checks that it can be
  // written. Starts the GC thread when options.background_gc.
  static Result<std::unique_ptr<SharedDirTier>> Open(const SharedDirTierOptions& options);
  ~SharedDirTier() override;
  SharedDirTier(const SharedDirTier&) = delete;
  SharedDirTier& operator=(const SharedDirTier&) = delete;

  std::string name() const override { return "shared-dir"; }
  Status Put(const ChunkKey& key, std::span<const std::byte> record) override;
  Result<std::vector<std::byte>> Get(const ChunkKey& key) override;
  std::vector<bool> Contains(std::span<const ChunkKey> keys) override;
  RemoteTierStats Stats() const override;

  // Runs one GC pass now in the calling thread (waiting for a running one to finish first),
  // regardless of the rate limit: rescans, deletes expired values and stale temp files, and
  // the oldest values while over budget. Returns the first error met (the pass goes on).
  Status CollectGarbage();
  SharedDirGcStats GcStats() const;

  // The path of the value of `key` under `root` (<dir>/kvault-t3-v1).
  static std::string ValuePath(const std::string& root, const ChunkKey& key);
  // Whether a directory entry's name is a temp file (a write in progress or abandoned).
  static bool IsTempName(const std::string& name);

 private:
  explicit SharedDirTier(const SharedDirTierOptions& options);
  Status CreateTree();
  Status CheckWritable();
  std::string TempPath(const std::string& value_path, const ChunkKey& key) const;
  Status WriteTemp(const std::string& tmp, std::span<const std::byte> record);
  // Reads the value at `path` whole: kNotFound when it is gone, expired or shrank meanwhile.
  Result<std::vector<std::byte>> ReadValue(const std::string& path, const ChunkKey& key);
  Status Publish(const ChunkKey& key, std::span<const std::byte> record);
  bool Expired(int64_t mtime_ns) const;
  // Deletes `path` if it still is the file `ino` and still expired; counts it.
  void RemoveIfExpired(const std::string& path, uint64_t inode);
  // Whether an over-budget or periodic pass is due now.
  bool PassWantedLocked(std::chrono::steady_clock::time_point now) const REQUIRES(mu_);
  Status RunGcPassLocked() REQUIRES(gc_mu_);
  uint64_t EstimateLocked() const REQUIRES(mu_);
  void NoteBytesPut(uint64_t bytes);
  void MaybeCollectInline();
  void GcThreadMain();
  Status CountError(Status st);

  const SharedDirTierOptions options_;
  Env* const env_;               // options_.env, or Env::Default()
  const std::string root_;       // <dir>/kvault-t3-v1
  const std::string host_;       // this node's name, sanitized for temp file names

  // Lock order: gc_mu_, then mu_ (a pass takes mu_ to publish its results).
  mutable Mutex mu_;
  std::condition_variable cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  bool gc_wanted_ GUARDED_BY(mu_) = false;           // the estimate went over budget
  uint64_t scanned_bytes_ GUARDED_BY(mu_) = 0;       // directory total after the last pass
  uint64_t put_bytes_at_scan_ GUARDED_BY(mu_) = 0;   // put_bytes_ when that pass began
  std::chrono::steady_clock::time_point last_pass_ GUARDED_BY(mu_){};
  SharedDirGcStats gc_stats_ GUARDED_BY(mu_);
  Mutex gc_mu_;                              // held while a GC pass runs
  std::atomic<bool> stop_requested_{false};  // lets a long pass end early at shutdown
  std::thread gc_thread_;

  RemoteTierCounters counters_;  // bytes_put: of every successful Put, ever
  std::atomic<uint64_t> expired_{0};
};

// The tier as the store sees it.
Result<std::unique_ptr<RemoteTier>> OpenSharedDirTier(const SharedDirTierOptions& options);

}  // namespace kvault

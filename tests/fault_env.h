// FaultEnv: an Env that wraps another (Env::Default() by default) and injects faults.
//
//  - read errors:  every File::Read fails with the given errno (EIO) while set;
//  - write errors: every File::WriteBatch (and File::Sync) fails with the given errno (EIO,
//    ENOSPC) while set;
//  - sync errors:  every File::Sync and Env::SyncDir fails with the given errno (EIO) while
//    set, and makes nothing durable; writes still succeed (a device whose cache flush fails);
//  - a byte quota: the files opened through this env behave like a disk of `quota` bytes.
//    Their sizes are tracked (created, extended, removed); a write op that would take the
//    total past the quota fails with ENOSPC, and so does everything after it, until the
//    quota is raised or files are removed. Ops before it in the same batch are written, as
//    a real disk would;
//  - force_no_direct: files are opened without O_DIRECT, as on a file system that refuses it,
//    so the store runs its buffered + fdatasync fallback;
//  - a slow disk: every File::Read takes (bytes / read bandwidth) longer;
//  - rename errors: every RenameFile fails with the given errno while set (the source stays);
//  - a read hook: called before every File::Read with the path and offset, on the reading
//    thread and with no lock held, so a test can hold one read in flight (block in the hook)
//    while the store goes on;
//  - power loss: see below.
//
// Power loss (the model of a machine that loses power; the test's process lives on). The env
// keeps, for every file opened, created or renamed through it, what a power cut would take:
//  * the bytes written since the file's last successful File::Sync (any handle of that path).
//    A Sync makes durable what the writes that had completed when it began wrote: the file
//    up to the end of its furthest such write, and every overwrite of older bytes. Writes
//    still in flight when it began stay unsynced;
//  * the name of a file created, or renamed to, since the last successful SyncDir of its
//    directory.
// SimulatePowerLoss() turns the power off: every mutation through the env (WriteBatch, Sync,
// a writable or creating OpenFile, RemoveFile, RenameFile, SyncDir, CreateDirs) fails with EIO
// from then on and changes nothing, so a store closed afterwards writes nothing. Then it rolls
// every file back to what was durable: synced bytes that were overwritten get their old
// contents back, the file is truncated to its synced size, and a file whose name is not
// durable is removed (or, when it was renamed from a durable name, renamed back). Files the
// env first sees already on disk count as synced. Not modelled: a removed file whose removal
// was never made durable does not come back, nor does a file that a rename replaced, and
// directories are always durable. The rollback works on the real paths (POSIX calls), so the
// base env must keep its files in the local file system, as Env::Default() does.
// RestorePower() turns the power back on: open a store on the directory again to see what
// survived. Files already open through the env stay usable (their bytes were rolled back).
//
// Thread-safety: the store calls it from its writer thread and from readers at once;
// SimulatePowerLoss waits for the mutations in flight and may run concurrently with anything.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvault/env.h"
#include "store/mutex.h"

namespace kvtest {

class FaultEnv final : public kvault::Env {
 public:
  explicit FaultEnv(kvault::Env* base = kvault::Env::Default());
  ~FaultEnv() override;

  void SetReadError(int err) { read_errno_ = err; }    // 0: reads succeed
  void SetWriteError(int err) { write_errno_ = err; }  // 0: writes succeed
  void SetSyncError(int err) { sync_errno_ = err; }    // 0: syncs succeed
  void SetRenameError(int err) { rename_errno_ = err; }  // 0: renames succeed
  void SetQuota(uint64_t bytes);                       // kNoQuota: unlimited
  void SetForceNoDirect(bool on) { force_no_direct_ = on; }
  void SetReadBandwidth(double bytes_per_s) { read_bytes_per_s_ = bytes_per_s; }  // 0: full speed
  using ReadHook = std::function<void(const std::string& path, uint64_t offset)>;
  void SetReadHook(ReadHook hook);  // null: none
  static constexpr uint64_t kNoQuota = std::numeric_limits<uint64_t>::max();

  // Cuts the power and rolls every file back to its durable state (see above). An error
  // means the rollback itself failed (the test's file system, not an injected fault).
  kvault::Status SimulatePowerLoss();
  void RestorePower();
  bool powered() const { return powered_; }

  // Bytes of the files this env knows about (the quota's measure).
  uint64_t UsedBytes() const;
  uint64_t reads_failed() const { return reads_failed_; }
  uint64_t writes_failed() const { return writes_failed_; }
  uint64_t syncs_failed() const { return syncs_failed_; }
  uint64_t syncs() const { return syncs_; }  // successful File::Sync calls
  uint64_t renames_failed() const { return renames_failed_; }
  uint64_t files_opened_direct() const { return files_opened_direct_; }
  // What the power cuts so far took: bytes cut off or restored, files removed.
  uint64_t bytes_lost() const { return bytes_lost_; }
  uint64_t files_lost() const { return files_lost_; }

  kvault::Result<std::unique_ptr<kvault::File>> OpenFile(const std::string& path,
                                                         const kvault::FileOpenOptions& options) override;
  kvault::Status CreateDirs(const std::string& path) override;
  kvault::Result<std::vector<std::string>> ListDir(const std::string& path) override { return base_->ListDir(path); }
  kvault::Status RemoveFile(const std::string& path) override;
  kvault::Status RenameFile(const std::string& from, const std::string& to) override;
  kvault::Status SyncDir(const std::string& path) override;
  kvault::Result<kvault::FileInfo> GetFileInfo(const std::string& path) override { return base_->GetFileInfo(path); }

 private:
  friend class FaultFile;

  // Old contents of synced bytes, saved before a write overwrote them.
  struct Undo {
    uint64_t id = 0;
    uint64_t offset = 0;
    std::vector<char> bytes;
    uint64_t completed_at = 0;  // clock_ when the overwriting write completed; 0 while in flight
  };
  // What a power cut takes from one path.
  struct Durability {
    uint64_t written = 0;        // end of the furthest completed write (or the size found)
    uint64_t synced = 0;         // the file's size after a power cut
    bool name_durable = true;    // the directory entry survives a power cut
    std::string durable_name;    // renamed from this durable name since its directory's sync
    std::vector<Undo> undo;      // in write order
  };
  // What a Sync of a path covers when it succeeds: the state when it began.
  struct SyncPoint {
    uint64_t written = 0;
    uint64_t clock = 0;
  };

  // Reserves the growth of `path` to `new_size` against the quota; false if it does not fit.
  bool Grow(const std::string& path, uint64_t new_size) EXCLUDES(mu_);
  std::shared_ptr<const ReadHook> read_hook() const EXCLUDES(mu_);
  // What a mutation reports while the power is off (EIO).
  static kvault::Status PowerIsOff(const std::string& what);
  // Saves the synced bytes `ops` will overwrite; returns the ids of the undo records added,
  // which AfterWrite marks completed.
  std::vector<uint64_t> BeforeWrite(const std::string& path, std::span<const kvault::WriteOp> ops) EXCLUDES(mu_);
  void AfterWrite(const std::string& path, std::span<const kvault::WriteOp> ops, bool ok,
                  const std::vector<uint64_t>& undo_ids) EXCLUDES(mu_);
  SyncPoint BeginSync(const std::string& path) EXCLUDES(mu_);
  void EndSync(const std::string& path, const SyncPoint& point) EXCLUDES(mu_);
  // Gives the synced bytes that were overwritten their old contents back and truncates the
  // file to its synced size; adds what it took to the counters.
  kvault::Status RollBackContents(const std::string& path, Durability& d) REQUIRES(mu_);

  kvault::Env* const base_;
  std::atomic<int> read_errno_{0};
  std::atomic<int> write_errno_{0};
  std::atomic<int> sync_errno_{0};
  std::atomic<int> rename_errno_{0};
  std::atomic<bool> force_no_direct_{false};
  std::atomic<double> read_bytes_per_s_{0};
  std::atomic<uint64_t> reads_failed_{0}, writes_failed_{0}, files_opened_direct_{0}, renames_failed_{0};
  std::atomic<uint64_t> syncs_failed_{0}, syncs_{0};

  // Held shared by every mutation for its whole duration, exclusively by SimulatePowerLoss.
  mutable kvault::SharedMutex power_mu_;
  std::atomic<bool> powered_{true};  // written under power_mu_ held exclusively

  mutable kvault::Mutex mu_;
  std::shared_ptr<const ReadHook> read_hook_ GUARDED_BY(mu_);
  uint64_t quota_ GUARDED_BY(mu_) = kNoQuota;
  std::map<std::string, uint64_t> sizes_ GUARDED_BY(mu_);  // path -> bytes
  std::map<std::string, Durability> durability_ GUARDED_BY(mu_);
  uint64_t clock_ GUARDED_BY(mu_) = 0;  // orders write completions and sync starts
  std::atomic<uint64_t> bytes_lost_{0}, files_lost_{0};
};

}  // namespace kvtest

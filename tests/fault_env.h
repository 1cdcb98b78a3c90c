// FaultEnv: an Env that wraps another (Env::Default() by default) and injects faults.
//
//  - read errors:  every File::Read fails with the given errno (EIO) while set;
//  - write errors: every File::WriteBatch fails with the given errno (EIO, ENOSPC) while set;
//  - a byte quota: the files opened through this env behave like a disk of `quota` bytes.
//    Their sizes are tracked (created, extended, removed); a write op that would take the
//    total past the quota fails with ENOSPC, and so does everything after it, until the
//    quota is raised or files are removed. Ops before it in the same batch are written, as
//    a real disk would;
//  - force_no_direct: files are opened without O_DIRECT, as on a file system that refuses it,
//    so the store runs its buffered + fdatasync fallback;
//  - a slow disk: every File::Read takes (bytes / read bandwidth) longer;
//  - rename errors: every RenameFile fails with the given errno while set (the source stays).
//
// Thread-safe: the store calls it from its writer thread and from readers at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "kvault/env.h"

namespace kvtest {

class FaultEnv final : public kvault::Env {
 public:
  explicit FaultEnv(kvault::Env* base = kvault::Env::Default());
  ~FaultEnv() override;

  void SetReadError(int err) { read_errno_ = err; }    // 0: reads succeed
  void SetWriteError(int err) { write_errno_ = err; }  // 0: writes succeed
  void SetRenameError(int err) { rename_errno_ = err; }  // 0: renames succeed
  void SetQuota(uint64_t bytes);                       // kNoQuota: unlimited
  void SetForceNoDirect(bool on) { force_no_direct_ = on; }
  void SetReadBandwidth(double bytes_per_s) { read_bytes_per_s_ = bytes_per_s; }  // 0: full speed
  static constexpr uint64_t kNoQuota = std::numeric_limits<uint64_t>::max();

  // Bytes of the files this env knows about (the quota's measure).
  uint64_t UsedBytes() const;
  uint64_t reads_failed() const { return reads_failed_; }
  uint64_t writes_failed() const { return writes_failed_; }
  uint64_t renames_failed() const { return renames_failed_; }
  uint64_t files_opened_direct() const { return files_opened_direct_; }

  kvault::Result<std::unique_ptr<kvault::File>> OpenFile(const std::string& path,
                                                         const kvault::FileOpenOptions& options) override;
  kvault::Status CreateDirs(const std::string& path) override { return base_->CreateDirs(path); }
  kvault::Result<std::vector<std::string>> ListDir(const std::string& path) override { return base_->ListDir(path); }
  kvault::Status RemoveFile(const std::string& path) override;
  kvault::Status RenameFile(const std::string& from, const std::string& to) override;
  kvault::Status SyncDir(const std::string& path) override { return base_->SyncDir(path); }
  kvault::Result<kvault::FileInfo> GetFileInfo(const std::string& path) override { return base_->GetFileInfo(path); }

 private:
  friend class FaultFile;
  // Reserves the growth of `path` to `new_size` against the quota; false if it does not fit.
  bool Grow(const std::string& path, uint64_t new_size);

  kvault::Env* const base_;
  std::atomic<int> read_errno_{0};
  std::atomic<int> write_errno_{0};
  std::atomic<int> rename_errno_{0};
  std::atomic<bool> force_no_direct_{false};
  std::atomic<double> read_bytes_per_s_{0};
  std::atomic<uint64_t> reads_failed_{0}, writes_failed_{0}, files_opened_direct_{0}, renames_failed_{0};

  mutable std::mutex mu_;
  uint64_t quota_ = kNoQuota;             // GUARDED_BY(mu_)
  std::map<std::string, uint64_t> sizes_;  // GUARDED_BY(mu_): path -> bytes
};

}  // namespace kvtest

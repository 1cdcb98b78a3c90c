// Env: every file operation of the store goes through it, so tests can inject faults
// (EIO, ENOSPC, torn writes) without touching the store's code.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvault/status.h"

namespace kvault {

// One piece of a scattered buffer. For files opened with direct I/O, data and size must be
// multiples of kDirectIoAlignment, as must file offsets.
struct IoSlice {
  void* data = nullptr;
  size_t size = 0;
};

inline constexpr size_t kDirectIoAlignment = 4096;

// One positional write of a batch.
struct WriteOp {
  uint64_t offset = 0;
  std::vector<IoSlice> slices;
};

// A file of the disk tier. Thread-safe: concurrent calls on distinct ranges are allowed.
class File {
 public:
  virtual ~File() = default;
  // Writes every op completely or returns the first error. Ops may run concurrently
  // (io_uring); their order of landing on the device is not defined.
  virtual Status WriteBatch(std::span<const WriteOp> ops) = 0;
  // Reads exactly the total size of `slices` starting at `offset`; a short read is an error
  // (kCorruption: the file ended early).
  virtual Status Read(uint64_t offset, std::span<const IoSlice> slices) = 0;
  virtual Status Sync() = 0;
  virtual Result<uint64_t> Size() = 0;
  // True when the file bypasses the page cache (O_DIRECT).
  virtual bool direct() const = 0;
};

struct FileOpenOptions {
  bool create = false;      // create if missing (never truncates)
  bool writable = false;
  bool direct_io = true;    // try O_DIRECT; fall back to buffered I/O + fdatasync if refused
  bool use_io_uring = true; // batch with io_uring when the kernel allows it
};

// Held while a process owns a directory; released when destroyed (or the process dies).
class FileLock {
 public:
  virtual ~FileLock() = default;
};

class Env {
 public:
  virtual ~Env() = default;
  // The process-wide POSIX environment (io_uring + O_DIRECT where available).
  static Env* Default();

  virtual Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const FileOpenOptions& options) = 0;
  virtual Status CreateDirs(const std::string& path) = 0;
  virtual Result<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual Status SyncDir(const std::string& path) = 0;
  // Takes an exclusive advisory lock (flock) on `path`, creating it; kUnavailable if another
  // open file holds it. The default works for every POSIX file system.
  virtual Result<std::unique_ptr<FileLock>> LockFile(const std::string& path);
};

}  // namespace kvault

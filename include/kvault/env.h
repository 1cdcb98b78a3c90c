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

// What Env::GetFileInfo reports about a path (the entry itself: symbolic links are not
// followed), and File::Info about an open file.
struct FileInfo {
  uint64_t size = 0;
  int64_t mtime_ns = 0;   // last modification, wall clock (as the file system sets it)
  uint64_t inode = 0;     // tells a file from one renamed over the same name since
  bool regular = false;   // a regular file (not a directory, link, device, ...)
};

// A file opened through Env. Thread-safe: concurrent calls on distinct ranges are allowed.
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
  // Size, mtime and inode of the open file (fstat): the file this handle reads, even when
  // another process renamed a new file over its name or deleted it since.
  virtual Result<FileInfo> Info() = 0;
  // True when the file bypasses the page cache (O_DIRECT).
  virtual bool direct() const = 0;
  // Releases the file now and returns what the OS reports only at close (NFS reports
  // write-back errors there). After Close, only the destructor may be called. The default
  // returns OK and leaves the release to the destructor.
  virtual Status Close() { return Status::OK(); }
};

struct FileOpenOptions {
  bool create = false;      // create if missing (never truncates)
  bool exclusive = false;   // with create: fail if the file exists (O_EXCL)
  bool writable = false;
  bool direct_io = true;    // try O_DIRECT; fall back to buffered I/O + fdatasync if refused
  bool use_io_uring = true; // batch with io_uring when the kernel allows it
};


// Held while a process owns a directory; released when destroyed (or the process dies).
class FileLock {
 public:
  virtual ~FileLock() = default;
};

// Paths that name nothing (ENOENT, and ENOTDIR or ESTALE: a directory or an NFS handle on
// the way is gone) are reported as kNotFound by OpenFile, GetFileInfo, RemoveFile and
// RenameFile, so a caller can tell "not there" from a failing disk.
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
  // Size, mtime and inode of the entry at `path` (lstat). The default works for every POSIX
  // file system; a wrapping Env that injects faults overrides it.
  virtual Result<FileInfo> GetFileInfo(const std::string& path);
  // Takes an exclusive advisory lock (flock) on `path`, creating it; kUnavailable if another
  // open file holds it. The default works for every POSIX file system.
  virtual Result<std::unique_ptr<FileLock>> LockFile(const std::string& path);
};

}  // namespace kvault

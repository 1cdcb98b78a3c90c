// The POSIX Env: O_DIRECT files (buffered + fdatasync where O_DIRECT is refused), with
// io_uring batching where the kernel allows it and preadv/pwritev otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

#include "kvault/env.h"

namespace kvault {
namespace {

constexpr size_t kPieceBytes = 1u << 20;  // large I/O is split into pieces kept in flight
constexpr unsigned kRingDepth = 64;

FileInfo InfoOf(const struct stat& st) {
  FileInfo info;
  info.size = static_cast<uint64_t>(st.st_size);
  info.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  info.inode = static_cast<uint64_t>(st.st_ino);
  info.regular = S_ISREG(st.st_mode);
  return info;
}

// The Status of a failed call on a path: kNotFound when the path names nothing (env.h).
Status PathError(int err, const std::string& context) {
  if (err == ENOTDIR || err == ESTALE) return Status::NotFound(context + ": " + std::strerror(err));
  return Status::FromErrno(err, context);
}

// One positional I/O of at most kPieceBytes over at most IOV_MAX iovecs.
struct Piece {
  uint64_t offset;
  std::vector<iovec> iov;
  size_t bytes;
};

void SplitIntoPieces(uint64_t offset, std::span<const IoSlice> slices, std::vector<Piece>* out) {
  Piece cur{offset, {}, 0};
  for (const IoSlice& s : slices) {
    auto* p = static_cast<char*>(s.data);
    size_t left = s.size;
    while (left > 0) {
      size_t n = std::min(left, kPieceBytes - cur.bytes);
      cur.iov.push_back({p, n});
      cur.bytes += n;
      p += n;
      left -= n;
      if (cur.bytes == kPieceBytes || cur.iov.size() == IOV_MAX) {
        uint64_t next = cur.offset + cur.bytes;
        out->push_back(std::move(cur));
        cur = Piece{next, {}, 0};
      }
    }
  }
  if (cur.bytes > 0) out->push_back(std::move(cur));
}

// Advances `iov` past `done` bytes (after a short transfer).
void Consume(std::vector<iovec>* iov, size_t done) {
  size_t i = 0;
  while (i < iov->size() && done >= (*iov)[i].iov_len) done -= (*iov)[i++].iov_len;
  iov->erase(iov->begin(), iov->begin() + static_cast<long>(i));
  if (!iov->empty() && done > 0) {
    (*iov)[0].iov_base = static_cast<char*>((*iov)[0].iov_base) + done;
    (*iov)[0].iov_len -= done;
  }
}

// Finishes one piece synchronously. `is_write` selects pwritev or preadv.
Status FinishSync(int fd, bool is_write, Piece p) {
  while (p.bytes > 0) {
    ssize_t n = is_write ? pwritev(fd, p.iov.data(), static_cast<int>(p.iov.size()), static_cast<off_t>(p.offset))
                         : preadv(fd, p.iov.data(), static_cast<int>(p.iov.size()), static_cast<off_t>(p.offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, is_write ? "pwritev" : "preadv");
    }
    if (n == 0) return is_write ? Status::IOError("pwritev wrote nothing") : Status::Corruption("short read: file ends early");
    p.offset += static_cast<uint64_t>(n);
    p.bytes -= static_cast<size_t>(n);
    Consume(&p.iov, static_cast<size_t>(n));
  }
  return Status::OK();
}

// A per-thread io_uring. Rings are not shared between threads, so no locking is needed.
struct ThreadRing {
  io_uring ring{};
  bool ok = false;
  ThreadRing() { ok = io_uring_queue_init(kRingDepth, &ring, 0) == 0; }
  ~ThreadRing() {
    if (ok) io_uring_queue_exit(&ring);  // an abandoned ring (ok == false) is leaked on purpose
  }
};

ThreadRing* GetRing() {
  thread_local ThreadRing ring;
  return ring.ok ? &ring : nullptr;
}

// Runs every piece, keeping up to kRingDepth in flight. Short transfers finish synchronously.
Status RunPieces(int fd, bool is_write, std::vector<Piece>& pieces, bool use_uring) {
  ThreadRing* tr = use_uring ? GetRing() : nullptr;
  if (tr == nullptr) {
    for (Piece& p : pieces) KVAULT_RETURN_IF_ERROR(FinishSync(fd, is_write, std::move(p)));
    return Status::OK();
  }
  Status first_error;
  size_t next = 0, in_flight = 0;
  while (next < pieces.size() || in_flight > 0) {
    while (next < pieces.size() && in_flight < kRingDepth) {
      io_uring_sqe* sqe = io_uring_get_sqe(&tr->ring);
      if (sqe == nullptr) break;
      Piece& p = pieces[next];
      if (is_write) {
        io_uring_prep_writev(sqe, fd, p.iov.data(), static_cast<unsigned>(p.iov.size()), p.offset);
      } else {
        io_uring_prep_readv(sqe, fd, p.iov.data(), static_cast<unsigned>(p.iov.size()), p.offset);
      }
      io_uring_sqe_set_data64(sqe, next);
      ++next;
      ++in_flight;
    }
    int rc = io_uring_submit_and_wait(&tr->ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // The ring is unusable. Never return while the kernel may still touch these buffers:
      // reap what it has, abandon the ring (its unsubmitted entries are never submitted),
      // and let later calls on this thread run synchronously.
      const unsigned unsubmitted = io_uring_sq_ready(&tr->ring);
      for (size_t left = in_flight - unsubmitted; left > 0; --left) {
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(&tr->ring, &cqe) != 0) break;
        io_uring_cqe_seen(&tr->ring, cqe);
      }
      tr->ok = false;
      return Status::FromErrno(-rc, "io_uring_submit");
    }
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&tr->ring, &cqe) == 0) {
      Piece& p = pieces[io_uring_cqe_get_data64(cqe)];
      int res = cqe->res;
      io_uring_cqe_seen(&tr->ring, cqe);
      --in_flight;
      if (!first_error.ok()) continue;
      if (res < 0) {
        first_error = Status::FromErrno(-res, is_write ? "io_uring write" : "io_uring read");
      } else if (static_cast<size_t>(res) < p.bytes) {
        Piece rest = p;
        rest.offset += static_cast<uint64_t>(res);
        rest.bytes -= static_cast<size_t>(res);
        Consume(&rest.iov, static_cast<size_t>(res));
        first_error = FinishSync(fd, is_write, std::move(rest));
      }
    }
  }
  return first_error;
}

class PosixFile final : public File {
 public:
  PosixFile(int fd, bool direct, bool use_uring) : fd_(fd), direct_(direct), use_uring_(use_uring) {}
  ~PosixFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  Status WriteBatch(std::span<const WriteOp> ops) override {
    std::vector<Piece> pieces;
    for (const WriteOp& op : ops) SplitIntoPieces(op.offset, op.slices, &pieces);
    return RunPieces(fd_, true, pieces, use_uring_);
  }

  Status Read(uint64_t offset, std::span<const IoSlice> slices) override {
    std::vector<Piece> pieces;
    SplitIntoPieces(offset, slices, &pieces);
    return RunPieces(fd_, false, pieces, use_uring_);
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return Status::FromErrno(errno, "fdatasync");
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, "fstat");
    return static_cast<uint64_t>(st.st_size);
  }

  Result<FileInfo> Info() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return PathError(errno, "fstat");  // NFS: ESTALE, the file is gone
    return InfoOf(st);
  }

  bool direct() const override { return direct_; }

  Status Close() override {
    const int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) return Status::FromErrno(errno, "close");
    return Status::OK();
  }

 private:
  int fd_;  // -1 after Close
  const bool direct_;
  const bool use_uring_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<File>> OpenFile(const std::string& path, const FileOpenOptions& o) override {
    int flags = (o.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | (o.create ? O_CREAT : 0) |
                (o.create && o.exclusive ? O_EXCL : 0);
    int fd = -1;
    bool direct = false;
    if (o.direct_io) {
      fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
      direct = fd >= 0;
      if (fd < 0 && errno != EINVAL) return PathError(errno, "open " + path);
    }
    if (fd < 0) fd = ::open(path.c_str(), flags, 0644);  // O_DIRECT refused (EINVAL): buffered
    if (fd < 0) return PathError(errno, "open " + path);
    return std::unique_ptr<File>(new PosixFile(fd, direct, o.use_io_uring));
  }

  Status CreateDirs(const std::string& path) override {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return Status::IOError("create " + path + ": " + ec.message());
    return Status::OK();
  }

  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return Status::FromErrno(errno, "opendir " + path);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    return names;
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PathError(errno, "unlink " + path);
    return Status::OK();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return PathError(errno, "rename " + from + " to " + to);
    return Status::OK();
  }

  Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open dir " + path);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return Status::FromErrno(err, "fsync dir " + path);
    return Status::OK();
  }
};

class PosixFileLock final : public FileLock {
 public:
  explicit PosixFileLock(int fd) : fd_(fd) {}
  ~PosixFileLock() override { ::close(fd_); }  // closing releases the flock

 private:
  int fd_;
};

}  // namespace

Result<std::unique_ptr<FileLock>> Env::LockFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) return Status::Unavailable(path + " is locked: another store has this directory open");
    return Status::FromErrno(err, "flock " + path);
  }
  return std::unique_ptr<FileLock>(new PosixFileLock(fd));
}

Result<FileInfo> Env::GetFileInfo(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return PathError(errno, "stat " + path);
  return InfoOf(st);
}

Env* Env::Default() {
  static PosixEnv env;
  return &env;
}

}  // namespace kvault

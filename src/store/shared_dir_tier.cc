#include "store/shared_dir_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <vector>

namespace kvault {
namespace {

constexpr const char* kTreeName = "kvault-t3-v1";  // bump the version if the layout changes
constexpr const char* kValueSuffix = ".kvr";
constexpr const char* kTempSuffix = ".tmp";
constexpr size_t kKeyHexChars = 64;
constexpr int kShards = 256;  // subdirectories, by the key's first byte
// No chunk record comes near this; a bigger file is not a value (and is not allocated).
constexpr uint64_t kMaxValueBytes = 1ull << 30;
constexpr int64_t kNanosPerSecond = 1'000'000'000;

// Every temp file this process creates gets a distinct number (with the pid and the thread id
// also in its name, no two writers on one node can pick the same name; the host name
// separates nodes).
std::atomic<uint64_t> g_temp_counter{0};

int64_t WallNowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * kNanosPerSecond + ts.tv_nsec;
}

int64_t MtimeNs(const struct stat& st) { return int64_t{st.st_mtim.tv_sec} * kNanosPerSecond + st.st_mtim.tv_nsec; }

long ThreadId() {
  thread_local const long tid = ::syscall(SYS_gettid);
  return tid;
}

// The host name with anything but [A-Za-z0-9_-] replaced, so it is safe in a file name and
// cannot contain the '.' that separates the temp name's fields.
std::string SanitizedHostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "host";
  std::string out(buf, std::min<size_t>(std::strlen(buf), 64));
  for (char& c : out) {
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!safe) c = '_';
  }
  return out;
}

std::string ShardName(int shard) {
  char buf[4];
  std::snprintf(buf, sizeof buf, "%02x", shard);
  return buf;
}

bool EndsWith(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Parses "<64 lowercase hex>.kvr" into the key it names.
bool ParseValueName(const char* name, ChunkKey* key) {
  const size_t len = std::strlen(name);
  if (len != kKeyHexChars + std::strlen(kValueSuffix) || std::strcmp(name + kKeyHexChars, kValueSuffix) != 0) return false;
  for (size_t i = 0; i < 32; ++i) {
    const int hi = HexValue(name[2 * i]), lo = HexValue(name[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    key->bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

// A file a reader may find gone or replaced at any moment: these errnos mean "not there".
bool IsGoneErrno(int err) { return err == ENOENT || err == ENOTDIR || err == ESTALE; }

// mkdir that accepts an existing directory (nodes race to create the tree).
Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) == 0) return Status::OK();
  const int err = errno;
  struct stat st;
  if (err == EEXIST && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Status::OK();
  return Status::FromErrno(err, "mkdir " + path);
}

// An error of Open: never kNotFound (that code means a miss), always naming the directory.
Status OpenError(int err, const std::string& what) {
  Status st = Status::FromErrno(err, "shared-dir tier: " + what);
  return st.code() == Code::kNotFound ? Status::IOError(st.message()) : st;
}

Status WriteAll(int fd, std::span<const std::byte> data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path);
    }
    if (n == 0) return Status::IOError("write " + path + ": wrote nothing");
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

// Reads `out->size()` bytes from offset 0. kNotFound when the file ends early or vanishes
// (another node deleted or truncated it): a miss, never partial data.
Status ReadAll(int fd, std::vector<std::byte>* out, const std::string& path) {
  size_t done = 0;
  while (done < out->size()) {
    const ssize_t n = ::pread(fd, out->data() + done, out->size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (IsGoneErrno(errno)) return Status::NotFound("vanished while read: " + path);
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) return Status::NotFound("shrank while read: " + path);
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

// Closes `fd` on every path out of a scope.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// One published value a GC pass may delete.
struct GcCandidate {
  int64_t mtime_ns;
  uint64_t ino;
  uint64_t bytes;
  ChunkKey key;
};

}  // namespace

std::string SharedDirTier::ValuePath(const std::string& root, const ChunkKey& key) {
  const std::string hex = key.Hex();
  return root + "/" + hex.substr(0, 2) + "/" + hex + kValueSuffix;
}

bool SharedDirTier::IsTempName(const std::string& name) { return name.size() > 1 && name[0] == '.' && EndsWith(name, kTempSuffix); }

SharedDirTier::SharedDirTier(const SharedDirTierOptions& options)
    : options_(options), root_(options.dir + "/" + kTreeName), host_(SanitizedHostName()) {}

Result<std::unique_ptr<SharedDirTier>> SharedDirTier::Open(const SharedDirTierOptions& options) {
  if (options.dir.empty()) return Status::InvalidArgument("shared-dir tier: no directory given");
  std::unique_ptr<SharedDirTier> tier(new SharedDirTier(options));
  KVAULT_RETURN_IF_ERROR(tier->CreateTree());
  KVAULT_RETURN_IF_ERROR(tier->CheckWritable());
  if (options.background_gc) tier->gc_thread_ = std::thread([t = tier.get()] { t->GcThreadMain(); });
  return tier;
}

Result<std::unique_ptr<RemoteTier>> OpenSharedDirTier(const SharedDirTierOptions& options) {
  auto tier = SharedDirTier::Open(options);
  if (!tier.ok()) return tier.status();
  return std::unique_ptr<RemoteTier>(std::move(tier.value()));
}

SharedDirTier::~SharedDirTier() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    stop_requested_ = true;
  }
  cv_.notify_all();
  if (gc_thread_.joinable()) gc_thread_.join();
}

Status SharedDirTier::CreateTree() {
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  if (ec) return OpenError(ec.value(), "cannot create directory " + options_.dir);
  if (::mkdir(root_.c_str(), 0755) != 0 && errno != EEXIST) return OpenError(errno, "cannot create directory " + root_);
  for (int shard = 0; shard < kShards; ++shard) {
    const std::string path = root_ + "/" + ShardName(shard);
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return OpenError(errno, "cannot create directory " + path);
  }
  return Status::OK();
}

Status SharedDirTier::CheckWritable() {
  // Named like a temp file, so GC removes it should this process die right here.
  const std::string probe = root_ + "/00/.probe." + host_ + "." + std::to_string(::getpid()) + "." +
                            std::to_string(g_temp_counter.fetch_add(1)) + kTempSuffix;
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return OpenError(errno, "directory " + root_ + " is not writable");
  const char byte = 0;
  const bool wrote = ::write(fd, &byte, 1) == 1;
  const int write_errno = errno;
  ::close(fd);
  ::unlink(probe.c_str());
  if (!wrote) return OpenError(write_errno, "directory " + root_ + " is not writable");
  return Status::OK();
}

Status SharedDirTier::CountError(Status st) {
  counters_.errors.fetch_add(1, std::memory_order_relaxed);
  return st;
}

std::string SharedDirTier::TempPath(const std::string& value_path, const ChunkKey& key) const {
  const std::string dir = value_path.substr(0, value_path.rfind('/'));
  return dir + "/." + key.Hex() + "." + host_ + "." + std::to_string(::getpid()) + "." + std::to_string(ThreadId()) +
         "." + std::to_string(g_temp_counter.fetch_add(1, std::memory_order_relaxed)) + kTempSuffix;
}

// ---------------------------------------------------------------------------------------
// Put: temp file, fsync, rename.

Status SharedDirTier::WriteTemp(const std::string& tmp, std::span<const std::byte> record) {
  // O_EXCL: the name is unique by construction; an existing file means something is wrong.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  FdCloser closer{fd};
  KVAULT_RETURN_IF_ERROR(WriteAll(fd, record, tmp));
  if (options_.sync && ::fsync(fd) != 0) return Status::FromErrno(errno, "fsync " + tmp);
  closer.fd = -1;
  // On NFS, close reports write-back errors the writes did not.
  if (::close(fd) != 0) return Status::FromErrno(errno, "close " + tmp);
  return Status::OK();
}

Status SharedDirTier::Publish(const ChunkKey& key, std::span<const std::byte> record) {
  const std::string path = ValuePath(root_, key);
  std::string tmp = TempPath(path, key);
  Status st = WriteTemp(tmp, record);
  if (st.code() == Code::kNotFound) {
    // The shard directory is gone (someone removed the tree): make it again, once.
    ::unlink(tmp.c_str());
    (void)MakeDir(root_);
    (void)MakeDir(path.substr(0, path.rfind('/')));
    tmp = TempPath(path, key);
    st = WriteTemp(tmp, record);
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());  // whatever part of it landed
    return st.code() == Code::kNotFound ? Status::IOError(st.message()) : st;
  }
  // The atomic step: readers see the old file, no file, or this one whole.
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    Status rst = Status::FromErrno(err, "rename " + tmp + " to " + path);
    return rst.code() == Code::kNotFound ? Status::IOError(rst.message()) : rst;
  }
  return Status::OK();
}

Status SharedDirTier::Put(const ChunkKey& key, std::span<const std::byte> record) {
  if (record.empty()) return CountError(Status::InvalidArgument("shared-dir tier: empty value"));
  if (record.size() > kMaxValueBytes) return CountError(Status::InvalidArgument("shared-dir tier: value too large"));
  if (options_.budget_bytes != 0 && record.size() > options_.budget_bytes) {
    return CountError(Status::NoSpace("shared-dir tier: value larger than the whole budget"));
  }
  Status st = Publish(key, record);
  if (!st.ok()) return CountError(std::move(st));
  counters_.puts.fetch_add(1, std::memory_order_relaxed);
  NoteBytesPut(record.size());
  if (!options_.background_gc) MaybeCollectInline();
  return Status::OK();
}

// ---------------------------------------------------------------------------------------
// Get and Contains.

bool SharedDirTier::Expired(int64_t mtime_ns) const {
  if (options_.ttl_seconds == 0) return false;
  return WallNowNs() - mtime_ns > static_cast<int64_t>(options_.ttl_seconds) * kNanosPerSecond;
}

void SharedDirTier::RemoveIfExpired(const std::string& path, uint64_t ino) {
  // Re-checked right before unlinking, so a value another node just republished under this
  // name is (almost always) spared; when the race is lost, it costs one miss.
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || st.st_ino != ino || !Expired(MtimeNs(st))) return;
  if (::unlink(path.c_str()) == 0) expired_.fetch_add(1, std::memory_order_relaxed);
}

Result<std::vector<std::byte>> SharedDirTier::Get(const ChunkKey& key) {
  counters_.gets.fetch_add(1, std::memory_order_relaxed);
  const std::string path = ValuePath(root_, key);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (IsGoneErrno(errno)) return Status::NotFound("shared-dir tier: no value " + key.ShortHex());
    return CountError(Status::FromErrno(errno, "open " + path));
  }
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return CountError(Status::FromErrno(errno, "fstat " + path));
  if (!S_ISREG(st.st_mode)) return CountError(Status::Corruption("not a regular file: " + path));
  if (Expired(MtimeNs(st))) {
    RemoveIfExpired(path, st.st_ino);
    return Status::NotFound("shared-dir tier: value expired " + key.ShortHex());
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0 || size > kMaxValueBytes) return CountError(Status::Corruption("implausible value size: " + path));
  // The descriptor pins the inode: a rename over the name or an unlink by another node's GC
  // does not change what this reads (NFS may still say ESTALE: a miss).
  std::vector<std::byte> value(size);
  Status st_read = ReadAll(fd, &value, path);
  if (!st_read.ok()) return st_read.code() == Code::kNotFound ? st_read : CountError(std::move(st_read));
  counters_.get_hits.fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_got.fetch_add(size, std::memory_order_relaxed);
  return value;
}

std::vector<bool> SharedDirTier::Contains(std::span<const ChunkKey> keys) {
  counters_.contains_queries.fetch_add(keys.size(), std::memory_order_relaxed);
  std::vector<bool> found(keys.size(), false);
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string path = ValuePath(root_, keys[i]);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      if (!IsGoneErrno(errno)) counters_.errors.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    if (Expired(MtimeNs(st))) {
      RemoveIfExpired(path, st.st_ino);
      continue;
    }
    found[i] = true;
  }
  return found;
}

// ---------------------------------------------------------------------------------------
// Budget: the estimate and the garbage collector.

uint64_t SharedDirTier::EstimateLocked() const {
  return scanned_bytes_ + (counters_.bytes_put.load(std::memory_order_relaxed) - put_bytes_at_scan_);
}

void SharedDirTier::NoteBytesPut(uint64_t bytes) {
  counters_.bytes_put.fetch_add(bytes, std::memory_order_relaxed);
  if (options_.budget_bytes == 0) return;
  bool wake = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!gc_wanted_ && EstimateLocked() > options_.budget_bytes) gc_wanted_ = wake = true;
  }
  if (wake) cv_.notify_one();
}

bool SharedDirTier::PassWantedLocked(std::chrono::steady_clock::time_point now) const {
  using std::chrono::milliseconds;
  const bool first = gc_stats_.passes == 0 && options_.scan_interval_ms != 0;
  const bool periodic = options_.scan_interval_ms != 0 && now >= last_pass_ + milliseconds(options_.scan_interval_ms);
  return gc_wanted_ || first || periodic;
}

void SharedDirTier::MaybeCollectInline() {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!PassWantedLocked(now)) return;
    if (gc_stats_.passes > 0 && now < last_pass_ + std::chrono::milliseconds(options_.min_gc_interval_ms)) return;
  }
  std::unique_lock<std::mutex> gc(gc_mu_, std::try_to_lock);
  if (!gc.owns_lock()) return;  // another thread is running a pass already
  (void)RunGcPassLocked();
}

void SharedDirTier::GcThreadMain() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    const auto earliest = last_pass_ + std::chrono::milliseconds(options_.min_gc_interval_ms);
    const bool wanted = PassWantedLocked(now);
    if (wanted && (gc_stats_.passes == 0 || now >= earliest)) {
      l.unlock();
      {
        std::lock_guard<std::mutex> gc(gc_mu_);
        (void)RunGcPassLocked();
      }
      l.lock();
      continue;
    }
    if (wanted) {
      cv_.wait_until(l, earliest);
    } else if (options_.scan_interval_ms != 0) {
      cv_.wait_until(l, last_pass_ + std::chrono::milliseconds(options_.scan_interval_ms));
    } else {
      cv_.wait(l);  // until a Put finds the estimate over budget, or shutdown
    }
  }
}

Status SharedDirTier::CollectGarbage() {
  std::lock_guard<std::mutex> gc(gc_mu_);
  return RunGcPassLocked();
}

SharedDirGcStats SharedDirTier::GcStats() const {
  std::lock_guard<std::mutex> l(mu_);
  SharedDirGcStats s = gc_stats_;
  s.expired = expired_.load(std::memory_order_relaxed);
  return s;
}

Status SharedDirTier::RunGcPassLocked() {
  const uint64_t put_mark = counters_.bytes_put.load(std::memory_order_relaxed);
  const int64_t now_ns = WallNowNs();
  const int64_t stale_ns = static_cast<int64_t>(options_.stale_temp_seconds) * kNanosPerSecond;
  Status first_error;
  auto note_error = [&](int err, const std::string& what) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (first_error.ok()) first_error = Status::FromErrno(err, what);
  };

  // 1. Scan every shard: total the bytes, delete expired values and stale temp files, and
  //    (under a budget) remember each value as a candidate for eviction.
  uint64_t total = 0, files = 0, stale_removed = 0;
  std::vector<GcCandidate> candidates;
  for (int shard = 0; shard < kShards && !stop_requested_.load(); ++shard) {
    const std::string dir = root_ + "/" + ShardName(shard);
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      if (!IsGoneErrno(errno)) note_error(errno, "opendir " + dir);
      continue;
    }
    const int dfd = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      ChunkKey key;
      const bool temp = IsTempName(name);
      if (!temp && !ParseValueName(e->d_name, &key)) continue;  // ".", "..", foreign files
      struct stat st;
      if (::fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (!IsGoneErrno(errno)) note_error(errno, "stat " + dir + "/" + name);
        continue;  // renamed or deleted since readdir
      }
      if (!S_ISREG(st.st_mode)) continue;
      const uint64_t bytes = static_cast<uint64_t>(st.st_size);
      const bool too_old = temp ? now_ns - MtimeNs(st) > stale_ns : Expired(MtimeNs(st));
      if (too_old) {
        if (::unlinkat(dfd, e->d_name, 0) == 0) {
          if (temp) {
            ++stale_removed;
          } else {
            expired_.fetch_add(1, std::memory_order_relaxed);
          }
          continue;
        }
        if (IsGoneErrno(errno)) continue;
        note_error(errno, "unlink " + dir + "/" + name);
      }
      total += bytes;
      if (temp) continue;  // counted (it takes space) but never evicted while young
      ++files;
      if (options_.budget_bytes != 0) candidates.push_back({MtimeNs(st), static_cast<uint64_t>(st.st_ino), bytes, key});
    }
    ::closedir(d);
  }
  const uint64_t bytes_seen = total;

  // 2. Over budget: delete the oldest values until under the low-water mark. Every node
  //    orders them the same way (mtime, then key), so concurrent GCs agree on what goes.
  const uint64_t low_water = static_cast<uint64_t>(static_cast<double>(options_.budget_bytes) * kGcLowWaterFraction);
  if (options_.budget_bytes != 0 && total > options_.budget_bytes) {
    std::sort(candidates.begin(), candidates.end(), [](const GcCandidate& a, const GcCandidate& b) {
      if (a.mtime_ns != b.mtime_ns) return a.mtime_ns < b.mtime_ns;
      return a.key.bytes < b.key.bytes;
    });
    for (const GcCandidate& c : candidates) {
      if (total <= low_water || stop_requested_.load()) break;
      const std::string path = ValuePath(root_, c.key);
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0) {
        if (IsGoneErrno(errno)) total -= std::min(total, c.bytes);  // another node's GC was first
        else note_error(errno, "stat " + path);
        continue;
      }
      // Republished since the scan: it is new now, and the old bytes are gone.
      if (st.st_ino != c.ino || MtimeNs(st) != c.mtime_ns) continue;
      if (::unlink(path.c_str()) == 0) {
        counters_.evictions.fetch_add(1, std::memory_order_relaxed);
        total -= std::min(total, c.bytes);
      } else if (IsGoneErrno(errno)) {
        total -= std::min(total, c.bytes);
      } else {
        note_error(errno, "unlink " + path);
      }
    }
  }

  std::lock_guard<std::mutex> l(mu_);
  scanned_bytes_ = total;
  put_bytes_at_scan_ = put_mark;  // puts during the scan may be counted twice: an overestimate
  last_pass_ = std::chrono::steady_clock::now();
  gc_wanted_ = options_.budget_bytes != 0 && EstimateLocked() > options_.budget_bytes;
  ++gc_stats_.passes;
  gc_stats_.files_seen = files;
  gc_stats_.bytes_seen = bytes_seen;
  gc_stats_.stale_temps_removed += stale_removed;
  return first_error;
}

RemoteTierStats SharedDirTier::Stats() const {
  RemoteTierStats s = counters_.Snapshot();  // timeouts stay 0: file system calls take no deadline
  s.capacity_bytes = options_.budget_bytes;
  std::lock_guard<std::mutex> l(mu_);
  s.used_bytes = EstimateLocked();
  return s;
}

}  // namespace kvault

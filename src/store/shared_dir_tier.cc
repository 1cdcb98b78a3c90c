#include "store/shared_dir_tier.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
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

// The tier's files are small and read or written whole, on a network file system: buffered
// I/O, no io_uring.
FileOpenOptions TempFileOptions() {
  FileOpenOptions o;
  o.create = true;
  o.exclusive = true;  // the name is unique by construction; an existing file means a bug
  o.writable = true;
  o.direct_io = false;
  o.use_io_uring = false;
  return o;
}

FileOpenOptions ValueReadOptions() {
  FileOpenOptions o;
  o.direct_io = false;
  o.use_io_uring = false;
  return o;
}

// `st` with `what` in front of its message, and kNotFound (which means a miss) turned into
// kIOError: for errors of Open and Put.
Status NotAMiss(const Status& st, const std::string& what) {
  std::string message = what.empty() ? st.message() : what + ": " + st.message();
  return {st.code() == Code::kNotFound ? Code::kIOError : st.code(), std::move(message)};
}

// An error of Open: never kNotFound, always naming the directory.
Status OpenError(const Status& st, const std::string& what) { return NotAMiss(st, "shared-dir tier: " + what); }

// One published value a GC pass may delete.
struct GcCandidate {
  int64_t mtime_ns;
  uint64_t inode;
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
    : options_(options),
      env_(options.env != nullptr ? options.env : Env::Default()),
      root_(options.dir + "/" + kTreeName),
      host_(SanitizedHostName()) {}

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
    MutexLock l(mu_);
    stopping_ = true;
    stop_requested_ = true;
  }
  cv_.notify_all();
  if (gc_thread_.joinable()) gc_thread_.join();
}

Status SharedDirTier::CreateTree() {
  // CreateDirs accepts a directory that exists: nodes race to create the tree.
  Status st = env_->CreateDirs(options_.dir);
  if (!st.ok()) return OpenError(st, "cannot create directory " + options_.dir);
  st = env_->CreateDirs(root_);
  if (!st.ok()) return OpenError(st, "cannot create directory " + root_);
  for (int shard = 0; shard < kShards; ++shard) {
    const std::string path = root_ + "/" + ShardName(shard);
    st = env_->CreateDirs(path);
    if (!st.ok()) return OpenError(st, "cannot create directory " + path);
  }
  return Status::OK();
}

Status SharedDirTier::CheckWritable() {
  // Named like a temp file, so GC removes it should this process die right here.
  const std::string probe = root_ + "/00/.probe." + host_ + "." + std::to_string(::getpid()) + "." +
                            std::to_string(g_temp_counter.fetch_add(1)) + kTempSuffix;
  const std::string what = "directory " + root_ + " is not writable";
  auto file = env_->OpenFile(probe, TempFileOptions());
  if (!file.ok()) return OpenError(file.status(), what);
  std::byte byte{0};
  const IoSlice slice{&byte, 1};
  const WriteOp op{0, {slice}};
  Status st = (*file)->WriteBatch({&op, 1});
  const Status closed = (*file)->Close();
  if (st.ok()) st = closed;
  (void)env_->RemoveFile(probe);
  if (!st.ok()) return OpenError(st, what);
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
  auto file = env_->OpenFile(tmp, TempFileOptions());
  if (!file.ok()) return file.status();
  // File::WriteBatch takes mutable slices for reads' sake; writes never change the bytes.
  const IoSlice slice{const_cast<std::byte*>(record.data()), record.size()};
  const WriteOp op{0, {slice}};
  Status st = (*file)->WriteBatch({&op, 1});
  if (st.ok() && options_.sync) st = (*file)->Sync();
  // On NFS, close reports write-back errors the writes did not.
  const Status closed = (*file)->Close();
  return st.ok() ? closed : st;
}

Status SharedDirTier::Publish(const ChunkKey& key, std::span<const std::byte> record) {
  const std::string path = ValuePath(root_, key);
  std::string tmp = TempPath(path, key);
  Status st = WriteTemp(tmp, record);
  if (st.code() == Code::kNotFound) {
    // The shard directory is gone (someone removed the tree): make it again, once.
    (void)env_->RemoveFile(tmp);
    (void)env_->CreateDirs(path.substr(0, path.rfind('/')));
    tmp = TempPath(path, key);
    st = WriteTemp(tmp, record);
  }
  if (!st.ok()) {
    (void)env_->RemoveFile(tmp);  // whatever part of it landed
    return NotAMiss(st, "");
  }
  // The atomic step: readers see the old file, no file, or this one whole.
  st = env_->RenameFile(tmp, path);
  if (!st.ok()) {
    (void)env_->RemoveFile(tmp);
    return NotAMiss(st, "");
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

void SharedDirTier::RemoveIfExpired(const std::string& path, uint64_t inode) {
  // Re-checked right before unlinking, so a value another node just republished under this
  // name is (almost always) spared; when the race is lost, it costs one miss.
  auto info = env_->GetFileInfo(path);
  if (!info.ok() || info->inode != inode || !Expired(info->mtime_ns)) return;
  if (env_->RemoveFile(path).ok()) expired_.fetch_add(1, std::memory_order_relaxed);
}

Result<std::vector<std::byte>> SharedDirTier::ReadValue(const std::string& path, const ChunkKey& key) {
  auto file = env_->OpenFile(path, ValueReadOptions());
  if (!file.ok()) {
    if (file.status().code() == Code::kNotFound) return Status::NotFound("shared-dir tier: no value " + key.ShortHex());
    return CountError(file.status());
  }
  // The open file pins its inode: a rename over the name or an unlink by another node's GC
  // does not change what this reads (NFS may still say ESTALE: a miss).
  auto info = (*file)->Info();
  if (!info.ok()) {
    if (info.status().code() == Code::kNotFound) return Status::NotFound("shared-dir tier: value vanished " + key.ShortHex());
    return CountError(info.status());
  }
  if (!info->regular) return CountError(Status::Corruption("not a regular file: " + path));
  if (Expired(info->mtime_ns)) {
    RemoveIfExpired(path, info->inode);
    return Status::NotFound("shared-dir tier: value expired " + key.ShortHex());
  }
  if (info->size == 0 || info->size > kMaxValueBytes) {
    return CountError(Status::Corruption("implausible value size: " + path));
  }
  std::vector<std::byte> value(info->size);
  const IoSlice slice{value.data(), value.size()};
  Status st = (*file)->Read(0, {&slice, 1});
  // A short read (kCorruption from File::Read) means another node truncated or deleted the
  // file meanwhile (NFS: ENOENT, a kNotFound): a miss, never partial data.
  if (st.code() == Code::kCorruption || st.code() == Code::kNotFound) {
    return Status::NotFound("shared-dir tier: value vanished while read: " + path);
  }
  if (!st.ok()) return CountError(std::move(st));
  return value;
}

Result<std::vector<std::byte>> SharedDirTier::Get(const ChunkKey& key) {
  counters_.gets.fetch_add(1, std::memory_order_relaxed);
  auto value = ReadValue(ValuePath(root_, key), key);
  if (!value.ok()) return value.status();
  counters_.get_hits.fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_got.fetch_add(value->size(), std::memory_order_relaxed);
  return value;
}

std::vector<bool> SharedDirTier::Contains(std::span<const ChunkKey> keys) {
  counters_.contains_queries.fetch_add(keys.size(), std::memory_order_relaxed);
  std::vector<bool> found(keys.size(), false);
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string path = ValuePath(root_, keys[i]);
    auto info = env_->GetFileInfo(path);
    if (!info.ok()) {
      if (info.status().code() != Code::kNotFound) counters_.errors.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!info->regular) continue;
    if (Expired(info->mtime_ns)) {
      RemoveIfExpired(path, info->inode);
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
    MutexLock l(mu_);
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
    MutexLock l(mu_);
    if (!PassWantedLocked(now)) return;
    if (gc_stats_.passes > 0 && now < last_pass_ + std::chrono::milliseconds(options_.min_gc_interval_ms)) return;
  }
  if (!gc_mu_.try_lock()) return;  // another thread is running a pass already
  MutexLock gc(gc_mu_, std::adopt_lock);
  (void)RunGcPassLocked();
}

void SharedDirTier::GcThreadMain() {
  MutexLock l(mu_);
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    const auto earliest = last_pass_ + std::chrono::milliseconds(options_.min_gc_interval_ms);
    const bool wanted = PassWantedLocked(now);
    if (wanted && (gc_stats_.passes == 0 || now >= earliest)) {
      l.Unlock();
      {
        MutexLock gc(gc_mu_);
        (void)RunGcPassLocked();
      }
      l.Lock();
      continue;
    }
    if (wanted) {
      cv_.wait_until(l.native(), earliest);
    } else if (options_.scan_interval_ms != 0) {
      cv_.wait_until(l.native(), last_pass_ + std::chrono::milliseconds(options_.scan_interval_ms));
    } else {
      cv_.wait(l.native());  // until a Put finds the estimate over budget, or shutdown
    }
  }
}

Status SharedDirTier::CollectGarbage() {
  MutexLock gc(gc_mu_);
  return RunGcPassLocked();
}

SharedDirGcStats SharedDirTier::GcStats() const {
  MutexLock l(mu_);
  SharedDirGcStats s = gc_stats_;
  s.expired = expired_.load(std::memory_order_relaxed);
  return s;
}

Status SharedDirTier::RunGcPassLocked() {
  const uint64_t put_mark = counters_.bytes_put.load(std::memory_order_relaxed);
  const int64_t now_ns = WallNowNs();
  const int64_t stale_ns = static_cast<int64_t>(options_.stale_temp_seconds) * kNanosPerSecond;
  Status first_error;
  // Counts a failure other than "gone" (another node renamed or deleted the entry first).
  auto note_error = [&](const Status& st) {
    if (st.ok() || st.code() == Code::kNotFound) return;
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (first_error.ok()) first_error = st;
  };

  // 1. Scan every shard: total the bytes, delete expired values and stale temp files, and
  //    (under a budget) remember each value as a candidate for eviction.
  uint64_t total = 0, files = 0, stale_removed = 0;
  std::vector<GcCandidate> candidates;
  for (int shard = 0; shard < kShards && !stop_requested_.load(); ++shard) {
    const std::string dir = root_ + "/" + ShardName(shard);
    auto names = env_->ListDir(dir);
    if (!names.ok()) {
      note_error(names.status());
      continue;
    }
    for (const std::string& name : *names) {
      ChunkKey key;
      const bool temp = IsTempName(name);
      if (!temp && !ParseValueName(name.c_str(), &key)) continue;  // foreign files
      const std::string path = dir + "/" + name;
      auto info = env_->GetFileInfo(path);
      if (!info.ok()) {
        note_error(info.status());
        continue;  // renamed or deleted since the listing
      }
      if (!info->regular) continue;
      const bool too_old = temp ? now_ns - info->mtime_ns > stale_ns : Expired(info->mtime_ns);
      if (too_old) {
        const Status removed = env_->RemoveFile(path);
        if (removed.ok()) {
          if (temp) {
            ++stale_removed;
          } else {
            expired_.fetch_add(1, std::memory_order_relaxed);
          }
          continue;
        }
        if (removed.code() == Code::kNotFound) continue;
        note_error(removed);
      }
      total += info->size;
      if (temp) continue;  // counted (it takes space) but never evicted while young
      ++files;
      if (options_.budget_bytes != 0) candidates.push_back({info->mtime_ns, info->inode, info->size, key});
    }
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
      auto info = env_->GetFileInfo(path);
      if (!info.ok()) {
        if (info.status().code() == Code::kNotFound) total -= std::min(total, c.bytes);  // another node's GC was first
        else note_error(info.status());
        continue;
      }
      // Republished since the scan: it is new now, and the old bytes are gone.
      if (info->inode != c.inode || info->mtime_ns != c.mtime_ns) continue;
      const Status removed = env_->RemoveFile(path);
      if (removed.ok()) {
        counters_.evictions.fetch_add(1, std::memory_order_relaxed);
        total -= std::min(total, c.bytes);
      } else if (removed.code() == Code::kNotFound) {
        total -= std::min(total, c.bytes);
      } else {
        note_error(removed);
      }
    }
  }

  MutexLock l(mu_);
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
  MutexLock l(mu_);
  s.used_bytes = EstimateLocked();
  return s;
}

}  // namespace kvault

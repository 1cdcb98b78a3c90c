#include "fault_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

namespace kvtest {

using kvault::MutexLock;
using kvault::ReaderMutexLock;
using kvault::Status;

namespace {

uint64_t EndOf(const kvault::WriteOp& op) {
  uint64_t end = op.offset;
  for (const kvault::IoSlice& s : op.slices) end += s.size;
  return end;
}

// `dir` as SyncDir's callers and ParentOf spell it: normalised, no trailing separator.
std::string NormalDir(const std::string& dir) {
  std::string s = std::filesystem::path(dir).lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string ParentOf(const std::string& path) {
  return NormalDir(std::filesystem::path(path).lexically_normal().parent_path().string());
}

// Size of the file at `path`; nullopt-like false when it is not there.
bool SizeOf(const std::string& path, uint64_t* size) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  *size = static_cast<uint64_t>(st.st_size);
  return true;
}

// Reads [offset, offset + n) of `path` (buffered: any alignment); short at the end of file.
Status ReadBytes(const std::string& path, uint64_t offset, size_t n, std::vector<char>* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "power-loss model: open " + path);
  out->resize(n);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, out->data() + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  out->resize(got);
  return Status::OK();
}

Status WriteBytes(const std::string& path, uint64_t offset, const std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "power-loss model: open " + path);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "power-loss model: pwrite " + path);
    }
    done += static_cast<size_t>(w);
  }
  ::close(fd);
  return Status::OK();
}

}  // namespace

class FaultFile final : public kvault::File {
 public:
  FaultFile(FaultEnv* env, std::string path, std::unique_ptr<kvault::File> base)
      : env_(env), path_(std::move(path)), base_(std::move(base)) {}

  Status WriteBatch(std::span<const kvault::WriteOp> ops) override {
    ReaderMutexLock power(env_->power_mu_);
    if (!env_->powered_) return FaultEnv::PowerIsOff("write " + path_);
    if (int err = env_->write_errno_.load(); err != 0) {
      ++env_->writes_failed_;
      return Status::FromErrno(err, "injected write fault on " + path_);
    }
    // Write the ops that fit in the quota, in order; the first that does not fails.
    size_t fit = 0;
    for (; fit < ops.size(); ++fit) {
      if (!env_->Grow(path_, EndOf(ops[fit]))) break;
    }
    if (fit > 0) {
      const std::span<const kvault::WriteOp> landing = ops.first(fit);
      const std::vector<uint64_t> undo = env_->BeforeWrite(path_, landing);
      const Status st = base_->WriteBatch(landing);
      env_->AfterWrite(path_, landing, st.ok(), undo);
      KVAULT_RETURN_IF_ERROR(st);
    }
    if (fit < ops.size()) {
      ++env_->writes_failed_;
      return Status::FromErrno(ENOSPC, "injected quota on " + path_);
    }
    return Status::OK();
  }

  Status Read(uint64_t offset, std::span<const kvault::IoSlice> slices) override {
    if (const auto hook = env_->read_hook()) (*hook)(path_, offset);
    if (int err = env_->read_errno_.load(); err != 0) {
      ++env_->reads_failed_;
      return Status::FromErrno(err, "injected read fault on " + path_);
    }
    if (const double bps = env_->read_bytes_per_s_.load(); bps > 0) {  // a slow disk
      uint64_t bytes = 0;
      for (const kvault::IoSlice& sl : slices) bytes += sl.size;
      std::this_thread::sleep_for(std::chrono::duration<double>(static_cast<double>(bytes) / bps));
    }
    return base_->Read(offset, slices);
  }

  Status Sync() override {
    ReaderMutexLock power(env_->power_mu_);
    if (!env_->powered_) return FaultEnv::PowerIsOff("sync " + path_);
    if (int err = env_->sync_errno_.load(); err != 0) {
      ++env_->syncs_failed_;
      return Status::FromErrno(err, "injected sync fault on " + path_);
    }
    if (int err = env_->write_errno_.load(); err != 0) {
      ++env_->syncs_failed_;
      return Status::FromErrno(err, "injected sync fault on " + path_);
    }
    const FaultEnv::SyncPoint point = env_->BeginSync(path_);
    KVAULT_RETURN_IF_ERROR(base_->Sync());
    env_->EndSync(path_, point);
    ++env_->syncs_;
    return Status::OK();
  }
  kvault::Result<uint64_t> Size() override { return base_->Size(); }
  kvault::Result<kvault::FileInfo> Info() override { return base_->Info(); }
  bool direct() const override { return base_->direct(); }
  Status Close() override { return base_->Close(); }  // closing makes nothing durable

 private:
  FaultEnv* const env_;
  const std::string path_;
  std::unique_ptr<kvault::File> base_;
};

FaultEnv::FaultEnv(kvault::Env* base) : base_(base) {}
FaultEnv::~FaultEnv() = default;

Status FaultEnv::PowerIsOff(const std::string& what) {
  return Status::FromErrno(EIO, "simulated power loss: " + what);
}

void FaultEnv::SetReadHook(ReadHook hook) {
  MutexLock lock(mu_);
  read_hook_ = hook ? std::make_shared<const ReadHook>(std::move(hook)) : nullptr;
}

std::shared_ptr<const FaultEnv::ReadHook> FaultEnv::read_hook() const {
  MutexLock lock(mu_);
  return read_hook_;
}

void FaultEnv::SetQuota(uint64_t bytes) {
  MutexLock lock(mu_);
  quota_ = bytes;
}

uint64_t FaultEnv::UsedBytes() const {
  MutexLock lock(mu_);
  uint64_t total = 0;
  for (const auto& [p, n] : sizes_) total += n;
  return total;
}

bool FaultEnv::Grow(const std::string& path, uint64_t new_size) {
  MutexLock lock(mu_);
  uint64_t& cur = sizes_[path];
  if (new_size <= cur) return true;
  uint64_t total = 0;
  for (const auto& [p, n] : sizes_) total += n;
  if (quota_ != kNoQuota && total - cur + new_size > quota_) return false;
  cur = new_size;
  return true;
}

std::vector<uint64_t> FaultEnv::BeforeWrite(const std::string& path, std::span<const kvault::WriteOp> ops) {
  MutexLock lock(mu_);
  std::vector<uint64_t> ids;
  auto it = durability_.find(path);
  if (it == durability_.end()) return ids;  // removed while open: a power cut has nothing to restore
  Durability& d = it->second;
  for (const kvault::WriteOp& op : ops) {
    const uint64_t end = std::min(EndOf(op), d.synced);
    if (op.offset >= end) continue;  // nothing synced under it
    Undo u;
    u.id = ++clock_;
    u.offset = op.offset;
    if (!ReadBytes(path, op.offset, end - op.offset, &u.bytes).ok()) continue;  // the write will fail too
    ids.push_back(u.id);
    d.undo.push_back(std::move(u));
  }
  return ids;
}

void FaultEnv::AfterWrite(const std::string& path, std::span<const kvault::WriteOp> ops, bool ok,
                          const std::vector<uint64_t>& undo_ids) {
  MutexLock lock(mu_);
  auto it = durability_.find(path);
  if (it == durability_.end()) return;  // removed while open
  Durability& d = it->second;
  if (ok) {
    for (const kvault::WriteOp& op : ops) d.written = std::max(d.written, EndOf(op));
  }
  // A failed write may have landed in part: its undo records stay until a sync covers them.
  const uint64_t now = ++clock_;
  for (Undo& u : d.undo) {
    if (std::find(undo_ids.begin(), undo_ids.end(), u.id) != undo_ids.end()) u.completed_at = now;
  }
}

FaultEnv::SyncPoint FaultEnv::BeginSync(const std::string& path) {
  MutexLock lock(mu_);
  auto it = durability_.find(path);
  return SyncPoint{it == durability_.end() ? 0 : it->second.written, ++clock_};
}

void FaultEnv::EndSync(const std::string& path, const SyncPoint& point) {
  MutexLock lock(mu_);
  auto it = durability_.find(path);
  if (it == durability_.end()) return;  // removed meanwhile
  Durability& d = it->second;
  d.synced = std::max(d.synced, point.written);
  std::erase_if(d.undo, [&](const Undo& u) { return u.completed_at != 0 && u.completed_at < point.clock; });
}

kvault::Result<std::unique_ptr<kvault::File>> FaultEnv::OpenFile(const std::string& path,
                                                                 const kvault::FileOpenOptions& options) {
  ReaderMutexLock power(power_mu_);
  if ((options.create || options.writable) && !powered_) return PowerIsOff("open " + path);
  kvault::FileOpenOptions o = options;
  if (force_no_direct_) o.direct_io = false;
  const bool existed = base_->GetFileInfo(path).ok();
  auto f = base_->OpenFile(path, o);
  if (!f.ok()) return f.status();
  if ((*f)->direct()) ++files_opened_direct_;
  auto size = (*f)->Size();
  {
    MutexLock lock(mu_);
    uint64_t& cur = sizes_[path];
    if (size.ok() && *size > cur) cur = *size;
    auto it = durability_.find(path);
    if (!existed) {
      durability_[path] = Durability{.written = 0, .synced = 0, .name_durable = false, .durable_name = {}, .undo = {}};
    } else if (it == durability_.end()) {  // first seen: what is on disk is durable
      const uint64_t n = size.ok() ? *size : 0;
      durability_[path] = Durability{.written = n, .synced = n, .name_durable = true, .durable_name = {}, .undo = {}};
    }
  }
  return std::unique_ptr<kvault::File>(new FaultFile(this, path, std::move(f.value())));
}

Status FaultEnv::CreateDirs(const std::string& path) {
  ReaderMutexLock power(power_mu_);
  if (!powered_) return PowerIsOff("create " + path);
  return base_->CreateDirs(path);
}

Status FaultEnv::RemoveFile(const std::string& path) {
  ReaderMutexLock power(power_mu_);
  if (!powered_) return PowerIsOff("remove " + path);
  Status st = base_->RemoveFile(path);
  if (st.ok()) {
    MutexLock lock(mu_);
    sizes_.erase(path);
    durability_.erase(path);
  }
  return st;
}

Status FaultEnv::RenameFile(const std::string& from, const std::string& to) {
  ReaderMutexLock power(power_mu_);
  if (!powered_) return PowerIsOff("rename " + from);
  if (int err = rename_errno_.load(); err != 0) {
    ++renames_failed_;
    return Status::FromErrno(err, "injected rename fault on " + from);
  }
  Status st = base_->RenameFile(from, to);
  if (st.ok()) {
    MutexLock lock(mu_);
    auto it = sizes_.find(from);
    if (it != sizes_.end()) {
      sizes_[to] = it->second;
      sizes_.erase(from);
    }
    Durability d;
    auto dit = durability_.find(from);
    if (dit != durability_.end()) {
      d = std::move(dit->second);
      durability_.erase(dit);
    } else {  // a file the env never opened: its contents are durable
      uint64_t n = 0;
      SizeOf(to, &n);
      d.written = d.synced = n;
    }
    if (d.name_durable) d.durable_name = from;  // where a power cut before the next SyncDir leaves it
    d.name_durable = false;
    durability_[to] = std::move(d);
  }
  return st;
}

Status FaultEnv::SyncDir(const std::string& path) {
  ReaderMutexLock power(power_mu_);
  if (!powered_) return PowerIsOff("sync dir " + path);
  if (int err = sync_errno_.load(); err != 0) {
    ++syncs_failed_;
    return Status::FromErrno(err, "injected sync fault on dir " + path);
  }
  KVAULT_RETURN_IF_ERROR(base_->SyncDir(path));
  const std::string dir = NormalDir(path);
  MutexLock lock(mu_);
  for (auto& [p, d] : durability_) {
    if (ParentOf(p) != dir) continue;
    d.name_durable = true;
    d.durable_name.clear();
  }
  return Status::OK();
}

Status FaultEnv::RollBackContents(const std::string& path, Durability& d) {
  uint64_t size = 0;
  if (!SizeOf(path, &size)) return Status::OK();  // removed behind the env's back: nothing to roll back
  for (auto u = d.undo.rbegin(); u != d.undo.rend(); ++u) {  // newest first: the oldest contents win
    KVAULT_RETURN_IF_ERROR(WriteBytes(path, u->offset, u->bytes));
    bytes_lost_ += u->bytes.size();
  }
  d.undo.clear();
  if (size > d.synced) {
    if (::truncate(path.c_str(), static_cast<off_t>(d.synced)) != 0) {
      return Status::FromErrno(errno, "power-loss model: truncate " + path);
    }
    bytes_lost_ += size - d.synced;
  }
  d.written = d.synced;
  sizes_[path] = std::min(size, d.synced);
  return Status::OK();
}

Status FaultEnv::SimulatePowerLoss() {
  kvault::WriterMutexLock power(power_mu_);  // waits for the mutations in flight
  powered_ = false;
  MutexLock lock(mu_);
  Status first;
  std::map<std::string, Durability> after;
  for (auto& [path, d] : durability_) {
    Status st = RollBackContents(path, d);
    if (!st.ok() && first.ok()) first = st;
    if (d.name_durable) {
      after[path] = std::move(d);
      continue;
    }
    uint64_t size = 0;
    if (!SizeOf(path, &size)) continue;
    uint64_t ignored = 0;
    if (!d.durable_name.empty() && !SizeOf(d.durable_name, &ignored)) {
      // Renamed from a durable name that the directory still holds: back under it.
      if (::rename(path.c_str(), d.durable_name.c_str()) != 0 && first.ok()) {
        first = Status::FromErrno(errno, "power-loss model: rename " + path);
      }
      sizes_[d.durable_name] = sizes_[path];
      sizes_.erase(path);
      const std::string name = d.durable_name;
      d.name_durable = true;
      d.durable_name.clear();
      after[name] = std::move(d);
      continue;
    }
    if (::unlink(path.c_str()) != 0 && first.ok()) first = Status::FromErrno(errno, "power-loss model: unlink " + path);
    bytes_lost_ += std::min(size, d.synced);
    ++files_lost_;
    sizes_.erase(path);
  }
  durability_ = std::move(after);
  return first;
}

void FaultEnv::RestorePower() {
  kvault::WriterMutexLock power(power_mu_);
  powered_ = true;
}

}  // namespace kvtest

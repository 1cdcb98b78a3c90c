#include "fault_env.h"

#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

namespace kvtest {

using kvault::Status;

class FaultFile final : public kvault::File {
 public:
  FaultFile(FaultEnv* env, std::string path, std::unique_ptr<kvault::File> base)
      : env_(env), path_(std::move(path)), base_(std::move(base)) {}

  Status WriteBatch(std::span<const kvault::WriteOp> ops) override {
    if (int err = env_->write_errno_.load(); err != 0) {
      ++env_->writes_failed_;
      return Status::FromErrno(err, "injected write fault on " + path_);
    }
    // Write the ops that fit in the quota, in order; the first that does not fails.
    size_t fit = 0;
    for (; fit < ops.size(); ++fit) {
      uint64_t end = ops[fit].offset;
      for (const kvault::IoSlice& s : ops[fit].slices) end += s.size;
      if (!env_->Grow(path_, end)) break;
    }
    if (fit > 0) KVAULT_RETURN_IF_ERROR(base_->WriteBatch(ops.first(fit)));
    if (fit < ops.size()) {
      ++env_->writes_failed_;
      return Status::FromErrno(ENOSPC, "injected quota on " + path_);
    }
    return Status::OK();
  }

  Status Read(uint64_t offset, std::span<const kvault::IoSlice> slices) override {
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
    if (int err = env_->write_errno_.load(); err != 0) return Status::FromErrno(err, "injected sync fault on " + path_);
    return base_->Sync();
  }
  kvault::Result<uint64_t> Size() override { return base_->Size(); }
  kvault::Result<kvault::FileInfo> Info() override { return base_->Info(); }
  bool direct() const override { return base_->direct(); }
  Status Close() override { return base_->Close(); }

 private:
  FaultEnv* const env_;
  const std::string path_;
  std::unique_ptr<kvault::File> base_;
};

FaultEnv::FaultEnv(kvault::Env* base) : base_(base) {}
FaultEnv::~FaultEnv() = default;

void FaultEnv::SetQuota(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  quota_ = bytes;
}

uint64_t FaultEnv::UsedBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t total = 0;
  for (const auto& [p, n] : sizes_) total += n;
  return total;
}

bool FaultEnv::Grow(const std::string& path, uint64_t new_size) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t& cur = sizes_[path];
  if (new_size <= cur) return true;
  uint64_t total = 0;
  for (const auto& [p, n] : sizes_) total += n;
  if (quota_ != kNoQuota && total - cur + new_size > quota_) return false;
  cur = new_size;
  return true;
}

kvault::Result<std::unique_ptr<kvault::File>> FaultEnv::OpenFile(const std::string& path,
                                                                 const kvault::FileOpenOptions& options) {
  kvault::FileOpenOptions o = options;
  if (force_no_direct_) o.direct_io = false;
  auto f = base_->OpenFile(path, o);
  if (!f.ok()) return f.status();
  if ((*f)->direct()) ++files_opened_direct_;
  auto size = (*f)->Size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t& cur = sizes_[path];
    if (size.ok() && *size > cur) cur = *size;
  }
  return std::unique_ptr<kvault::File>(new FaultFile(this, path, std::move(f.value())));
}

Status FaultEnv::RemoveFile(const std::string& path) {
  Status st = base_->RemoveFile(path);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    sizes_.erase(path);
  }
  return st;
}

Status FaultEnv::RenameFile(const std::string& from, const std::string& to) {
  if (int err = rename_errno_.load(); err != 0) {
    ++renames_failed_;
    return Status::FromErrno(err, "injected rename fault on " + from);
  }
  Status st = base_->RenameFile(from, to);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(from);
    if (it != sizes_.end()) {
      sizes_[to] = it->second;
      sizes_.erase(from);
    }
  }
  return st;
}

}  // namespace kvtest

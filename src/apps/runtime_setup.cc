#include "apps/runtime_setup.h"

#include <dlfcn.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <thread>
#include <vector>

namespace kvault::apps {

namespace fs = std::filesystem;

int SetComputeThreads(int threads) {
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  const int n = threads > 0 ? threads : std::max(1, hw - 1);
  torch::set_num_threads(n);
  // LibTorch's CPU GEMMs go to the system BLAS; OpenBLAS keeps its own thread pool (every core
  // by default), which would take the core left to the loader, saver and write-behind.
  if (auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
  return torch::get_num_threads();
}

Status WipeStoreDir(const std::string& dir, const std::string& flag, bool can_keep) {
  std::error_code ec;
  fs::path path(dir);
  if (!fs::exists(path, ec)) return Status::OK();
  if (!fs::is_directory(path, ec)) return Status::InvalidArgument(flag + " " + dir + " exists and is not a directory");
  std::vector<fs::path> victims;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    std::string name = entry.path().filename().string();
    bool segment = name.size() > 8 && name.rfind("seg-", 0) == 0 && name.substr(name.size() - 4) == ".kvs";
    if ((segment || name == ".probe" || name == "LOCK") && entry.is_regular_file(ec)) {
      victims.push_back(entry.path());
    } else {
      return Status::InvalidArgument(flag + " " + dir + " holds '" + name +
                                     "', which is not a kvault segment file; refusing to wipe it (choose another directory" +
                                     (can_keep ? std::string(", or pass --keep-data)") : std::string(")")));
    }
  }
  if (ec) return Status::IOError("cannot list " + flag + " " + dir + ": " + ec.message());
  for (const auto& v : victims) {
    if (!fs::remove(v, ec) && ec) return Status::IOError("cannot remove " + v.string() + ": " + ec.message());
  }
  return Status::OK();
}

}  // namespace kvault::apps

// crash_writer DIR LOG SEED: the victim of tests/crash_test.cc.
//
// Opens (recovering) the store in DIR and writes chains of chunks until it is killed (or,
// as a safety net, for 20 s). Payloads come from PayloadFor(key), so the test can verify any
// chunk it finds knowing only its key. The log (appended, shared by every run) says:
//   P <chain>   before putting chain <chain> (no fsync: "attempted", may be lost)
//   F <chain>   ... one line per chain put since the previous successful Flush(), written
//   C <count>   after Flush() returned OK, then fsync'ed. A group counts only when its C line
//               is complete and <count> matches the F lines before it (a torn tail is ignored).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

void WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) {
      std::perror("crash_writer: write log");
      std::exit(3);
    }
    off += static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: crash_writer DIR LOG SEED\n");
    return 2;
  }
  const std::string dir = argv[1];
  const uint64_t seed = std::strtoull(argv[3], nullptr, 10);
  int log = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) {
    std::perror("crash_writer: open log");
    return 3;
  }
  auto store = kvault::Store::Open(kvtest::CrashOptions(dir));
  if (!store.ok()) {
    std::fprintf(stderr, "crash_writer: open store: %s\n", store.status().ToString().c_str());
    return 4;
  }
  const kvault::Namespace ns = kvtest::CrashNamespace();
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> pending;  // chains put since the last successful flush
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (uint64_t i = 0; std::chrono::steady_clock::now() < deadline; ++i) {
    const uint64_t chain = (seed << 24) | i;
    WriteAll(log, "P " + std::to_string(chain) + "\n");
    kvault::Status st = kvtest::PutChainMixed(**store, ns, kvtest::CrashChainTokens(chain), rng,
                                               /*layered_one_in=*/4, /*abandon_one_in=*/0);
    if (!st.ok()) {
      std::fprintf(stderr, "crash_writer: put: %s\n", st.ToString().c_str());
      return 5;
    }
    pending.push_back(chain);
    if (rng() % 3 == 0) {
      st = (*store)->Flush();
      if (!st.ok()) {
        std::fprintf(stderr, "crash_writer: flush: %s\n", st.ToString().c_str());
        return 6;
      }
      std::string group;
      for (uint64_t c : pending) group += "F " + std::to_string(c) + "\n";
      group += "C " + std::to_string(pending.size()) + "\n";
      WriteAll(log, group);
      if (::fsync(log) != 0) {
        std::perror("crash_writer: fsync log");
        return 3;
      }
      pending.clear();
    }
  }
  return 0;
}

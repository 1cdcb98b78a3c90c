#include "hardware_limits.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <new>
#include <thread>
#include <vector>

#include "kvault/env.h"

namespace kvault::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGB = 1e9;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

}  // namespace

HugeBuffer::HugeBuffer(size_t bytes, int fill) : bytes_(bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  madvise(p, bytes, MADV_HUGEPAGE);
  std::memset(p, fill, bytes);
  data_ = static_cast<uint8_t*>(p);
}

HugeBuffer::~HugeBuffer() { munmap(data_, bytes_); }

std::pair<double, double> MeasureMemcpy(size_t bytes, double seconds) {
  auto run = [&](int threads) {
    std::vector<std::thread> ts;
    std::vector<double> gbps(threads);
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        HugeBuffer a(bytes, 1), b(bytes, 2);
        uint64_t copied = 0;
        auto t0 = Clock::now();
        while (Seconds(t0) < seconds) {
          std::memcpy(b.data(), a.data(), bytes);
          copied += bytes;
        }
        gbps[t] = copied / Seconds(t0) / kGB;
      });
    }
    for (auto& th : ts) th.join();
    double sum = 0;
    for (double g : gbps) sum += g;
    return sum;
  };
  return {run(1), run(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())))};
}

double MeasureRawRead(const std::string& dir) {
  const uint64_t kOp = 32ull << 20, kRing = 256ull << 20;
  HugeBuffer buf(kRing, 0);
  uint64_t total = 0;
  auto t0 = Clock::now();
  for (const auto& de : std::filesystem::directory_iterator(dir)) {
    if (!de.is_regular_file()) continue;
    auto f = Env::Default()->OpenFile(de.path().string(),
                                      {.create = false, .writable = false, .direct_io = true, .use_io_uring = true});
    if (!f.ok()) return 0;
    auto size = (*f)->Size();
    if (!size.ok()) return 0;
    const uint64_t whole = *size / 4096 * 4096;
    for (uint64_t off = 0; off < whole; off += kOp) {
      // Rotate over kRing / kOp whole slots: a read never runs past the buffer.
      IoSlice s{buf.data() + (off / kOp) % (kRing / kOp) * kOp, std::min(kOp, whole - off)};
      if (!(*f)->Read(off, {&s, 1}).ok()) return 0;
      total += s.size;
    }
  }
  return total / Seconds(t0) / kGB;
}

}  // namespace kvault::bench

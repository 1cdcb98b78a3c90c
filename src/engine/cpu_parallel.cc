#include "engine/cpu_parallel.h"

#include <dlfcn.h>

namespace kvault::engine::cpu {

const OmpApi& Omp() {
  // Initialized once (thread-safe static); read-only afterwards.
  static const OmpApi api = [] {
    OmpApi a;
    a.parallel = reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    a.thread_num = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    if (a.parallel == nullptr || a.thread_num == nullptr) a = OmpApi{};
    return a;
  }();
  return api;
}

}  // namespace kvault::engine::cpu

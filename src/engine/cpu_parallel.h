// ParallelFor: the CPU kernels' parallel loop, on LibTorch's own OpenMP thread pool.
//
// at::parallel_for is a template that runs in parallel only where the caller is compiled with
// OpenMP (ATen/ParallelOpenMP.h); kvault is not. ParallelFor runs on the same OpenMP (libgomp)
// thread pool as LibTorch's own kernels, entered through libgomp's entry point for
// `#pragma omp parallel`, found at run time: no second pool competing for the cores. Where
// there is no libgomp in the process, with one thread, or inside a parallel region already,
// it runs inline on the calling thread.
//
// Determinism: the split of [begin, end) depends only on the range, the grain and the thread
// count (at::get_num_threads()); each index is given to exactly one thread, so a kernel that
// computes each output element from one index writes the same bits whatever the split.
// Thread-safety: any thread may call it; `fn` runs concurrently on disjoint subranges. The
// first exception thrown by `fn` is rethrown on the calling thread after all have finished.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

namespace kvault::engine::cpu {

// libgomp's entry points, looked up once (both null when the process has no libgomp).
struct OmpApi {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
};
const OmpApi& Omp();

namespace internal {

template <class Fn>
struct ParallelJob {
  const Fn* fn;
  int64_t begin, end, chunk;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;  // written once, by the thread that set `failed`
  // Runs on each thread of the team: thread i takes [begin + i * chunk, + chunk) ∩ [, end).
  static void Run(void* p) {
    auto* job = static_cast<ParallelJob*>(p);
    const int64_t b = job->begin + Omp().thread_num() * job->chunk;
    if (b >= job->end) return;
    try {
      (*job->fn)(b, std::min(job->end, b + job->chunk));
    } catch (...) {
      if (!job->failed.test_and_set()) job->error = std::current_exception();
    }
  }
};

}  // namespace internal

// Calls fn(b, e) on consecutive subranges covering [begin, end), at least `grain` indices
// each (except the last), one per thread.
template <class Fn>
void ParallelFor(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / std::max<int64_t>(1, grain));
  if (threads <= 1 || Omp().parallel == nullptr || at::in_parallel_region()) {
    fn(begin, end);
    return;
  }
  internal::ParallelJob<Fn> job;
  job.fn = &fn;
  job.begin = begin;
  job.end = end;
  job.chunk = (n + threads - 1) / threads;
  Omp().parallel(&internal::ParallelJob<Fn>::Run, &job, static_cast<unsigned>(threads), 0);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace kvault::engine::cpu

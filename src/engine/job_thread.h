// The engine's helper threads and their handshakes: a JobThread runs posted jobs in order (the
// loader, the saver); a LayerProgress says how many layers of a layer-wise transfer are done.
//
// Thread-safety: every method of both may be called from any thread.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace kvault::engine {

// A thread running posted jobs in order. The destructor runs the jobs already posted, then
// joins.
class JobThread {
 public:
  JobThread() : thread_([this] { Loop(); }) {}
  ~JobThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;

  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }
  // Returns when every job posted so far has run.
  void WaitIdle() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return jobs_.empty() && !busy_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
      lock.unlock();
      job();
      lock.lock();
      busy_ = false;
      idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mu_)
  bool busy_ = false, stop_ = false;        // GUARDED_BY(mu_)
  std::thread thread_;
};

// How many layers of a layer-wise transfer are done; waiters block until theirs is. What the
// setting thread wrote before Set/Fail is visible to a waiter that returned (the mutex).
class LayerProgress {
 public:
  void Set(int64_t layers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = std::max(done_, layers);
    }
    cv_.notify_all();
  }
  // Every layer is "done" and failed: no waiter blocks any more.
  void Fail(int64_t all_layers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = true;
    }
    Set(all_layers);
  }
  // Waits until layer `layer` is done; false if the transfer failed instead.
  bool WaitFor(int64_t layer) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ > layer; });
    return !failed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t done_ = 0;     // GUARDED_BY(mu_)
  bool failed_ = false;  // GUARDED_BY(mu_)
};

}  // namespace kvault::engine

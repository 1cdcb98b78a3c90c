// kvault::Mutex and kvault::MutexLock: std::mutex and its lock with Clang's thread-safety
// annotations, so a Clang build with -Wthread-safety checks every GUARDED_BY / REQUIRES at
// compile time (CI builds the LibTorch-free targets that way: scripts/test.sh). With GCC the
// annotations expand to nothing and these are plain std::mutex / std::unique_lock.
//
//   Mutex mu_;
//   int count_ GUARDED_BY(mu_) = 0;
//   void BumpLocked() REQUIRES(mu_);
//   { MutexLock lock(mu_); ++count_; cv_.wait(lock.native(), ...); }
//
// A helper that must release and retake its caller's lock (around I/O, say) takes the lock
// by reference, is annotated REQUIRES(mu_) and names the mutex when it lets go, so that the
// analysis follows the mutex itself:
//
//   Status ReadLocked(MutexLock& lock) REQUIRES(mu_) {
//     lock.Unlock(mu_);  ...no guarded field here...  lock.Lock(mu_);
//   }
//
// A condition variable's predicate is a lambda the analysis checks on its own: annotate it
// `[&]() REQUIRES(mu_) { ... }`. SharedMutex (std::shared_mutex) is held exclusively through
// WriterMutexLock and shared through ReaderMutexLock; REQUIRES_SHARED names a function that
// only reads what it guards.
//
// Thread-safety: as std::mutex. A condition variable waits on lock.native(); the analysis
// treats the capability as held across the wait, which is what the code after it relies on.
#pragma once

#include <cassert>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define KVAULT_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KVAULT_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) KVAULT_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY KVAULT_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) KVAULT_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) KVAULT_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) KVAULT_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) KVAULT_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) KVAULT_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) KVAULT_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) KVAULT_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) KVAULT_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) KVAULT_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) KVAULT_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define RETURN_CAPABILITY(x) KVAULT_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS KVAULT_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace kvault {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

// Holds `mu` from construction to destruction (or Unlock()).
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : lock_(mu.native()) {}
  // Takes over `mu`, which this thread holds already (after mu.try_lock()).
  MutexLock(Mutex& mu, std::adopt_lock_t) REQUIRES(mu) : lock_(mu.native(), std::adopt_lock) {}
  ~MutexLock() RELEASE() = default;
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() RELEASE() { lock_.unlock(); }
  void Lock() ACQUIRE() { lock_.lock(); }
  // The same for a function that got this lock by reference: `mu` is the mutex it holds,
  // named so that the analysis knows which capability goes and comes back. (The bodies are
  // not checked: the analysis cannot tie `mu` to the lock_ member.)
  void Unlock(Mutex& mu) RELEASE(mu) NO_THREAD_SAFETY_ANALYSIS {
    assert(lock_.mutex() == &mu.native());
    (void)mu;
    lock_.unlock();
  }
  void Lock(Mutex& mu) ACQUIRE(mu) NO_THREAD_SAFETY_ANALYSIS {
    assert(lock_.mutex() == &mu.native());
    (void)mu;
    lock_.lock();
  }
  // For std::condition_variable::wait.
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

class CAPABILITY("mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  void lock_shared() ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() RELEASE_SHARED() { mu_.unlock_shared(); }
  std::shared_mutex& native() { return mu_; }

 private:
  std::shared_mutex mu_;
};

// Holds `mu` exclusively from construction to destruction.
class SCOPED_CAPABILITY WriterMutexLock {
 public:
  explicit WriterMutexLock(SharedMutex& mu) ACQUIRE(mu) : lock_(mu.native()) {}
  ~WriterMutexLock() RELEASE() = default;
  WriterMutexLock(const WriterMutexLock&) = delete;
  WriterMutexLock& operator=(const WriterMutexLock&) = delete;

 private:
  std::unique_lock<std::shared_mutex> lock_;
};

// Holds `mu` shared from construction to destruction (or Unlock()).
class SCOPED_CAPABILITY ReaderMutexLock {
 public:
  explicit ReaderMutexLock(SharedMutex& mu) ACQUIRE_SHARED(mu) : lock_(mu.native()) {}
  ~ReaderMutexLock() RELEASE() = default;
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

  void Unlock() RELEASE() { lock_.unlock(); }
  void Lock() ACQUIRE_SHARED() { lock_.lock(); }

 private:
  std::shared_lock<std::shared_mutex> lock_;
};

}  // namespace kvault

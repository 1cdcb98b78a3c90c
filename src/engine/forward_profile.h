// ForwardProfile: where a thread's LlamaModel forward passes spend their time, by category,
// collected while a ProfileScope is active on the thread (`kvault bench model` reports it).
// ProfileSection and ProfiledCall are the timers the model's .cc files put around each part.
//
// Thread-safety: the active profile is per thread (thread_local); a ForwardProfile is written
// only by the thread whose ProfileScope points at it.
#pragma once

#include <chrono>
#include <cstdint>

namespace kvault::engine {

// Wall time of the host thread: exact on the CPU, where LibTorch's ops are synchronous; on a
// GPU only the launches are timed. Without an active ProfileScope each timer costs one branch.
struct ForwardProfile {
  double gemm_ms = 0;       // the weight GEMMs: q/k/v, o, gate/up, down (lm_head apart)
  double lm_head_ms = 0;    // the final norm's output times the LM head
  double attention_ms = 0;  // scores, mask, softmax, values (the score/value matmuls); on the
                            // CPU path's flash kernel also the rotation of the keys it reads
  double rope_ms = 0;       // rotary tables and the rotation of queries and keys
  double norm_ms = 0;       // RMSNorm
  double kv_ms = 0;         // KvAccess::Append, Gather, Blocks (copies into and out of the pool)
  double kv_wait_ms = 0;    // KvAccess::BeforeLayer/AfterLayer hooks (waits for loaded KV)
  double other_ms = 0;      // the rest: embedding, residual adds, SiLU and product, ...
  double total_ms = 0;      // whole Forward/DecodeBatch calls
  int64_t calls = 0;
  ForwardProfile& operator+=(const ForwardProfile& o);
};

// While alive, this thread's LlamaModel calls add their time to `*profile` (scopes nest: the
// previous one is restored at the end).
class ProfileScope {
 public:
  explicit ProfileScope(ForwardProfile* profile);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  ForwardProfile* previous_;
};

// This thread's active profile, or null.
ForwardProfile* ActiveProfile();

// Adds its lifetime to one field of this thread's active profile (nothing when none is).
class ProfileSection {
 public:
  explicit ProfileSection(double ForwardProfile::*field) : profile_(ActiveProfile()), field_(field) {
    if (profile_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~ProfileSection() {
    if (profile_ != nullptr) {
      profile_->*field_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
    }
  }
  ProfileSection(const ProfileSection&) = delete;
  ProfileSection& operator=(const ProfileSection&) = delete;

 private:
  ForwardProfile* profile_;
  double ForwardProfile::*field_;
  std::chrono::steady_clock::time_point start_;
};

// A whole Forward/DecodeBatch call: adds to total_ms and calls, and what no ProfileSection
// claimed during it to other_ms.
class ProfiledCall {
 public:
  ProfiledCall();
  ~ProfiledCall();
  ProfiledCall(const ProfiledCall&) = delete;
  ProfiledCall& operator=(const ProfiledCall&) = delete;

 private:
  ForwardProfile* profile_;
  std::chrono::steady_clock::time_point start_;
  double claimed_ = 0;
};

}  // namespace kvault::engine

#include "engine/forward_profile.h"

namespace kvault::engine {
namespace {

using Clock = std::chrono::steady_clock;

thread_local ForwardProfile* t_profile = nullptr;

// The time the categories hold (everything but other_ms and total_ms).
double Categorized(const ForwardProfile& p) {
  return p.gemm_ms + p.lm_head_ms + p.attention_ms + p.rope_ms + p.norm_ms + p.kv_ms + p.kv_wait_ms;
}

}  // namespace

ForwardProfile& ForwardProfile::operator+=(const ForwardProfile& o) {
  gemm_ms += o.gemm_ms;
  lm_head_ms += o.lm_head_ms;
  attention_ms += o.attention_ms;
  rope_ms += o.rope_ms;
  norm_ms += o.norm_ms;
  kv_ms += o.kv_ms;
  kv_wait_ms += o.kv_wait_ms;
  other_ms += o.other_ms;
  total_ms += o.total_ms;
  calls += o.calls;
  return *this;
}

ProfileScope::ProfileScope(ForwardProfile* profile) : previous_(t_profile) { t_profile = profile; }
ProfileScope::~ProfileScope() { t_profile = previous_; }

ForwardProfile* ActiveProfile() { return t_profile; }

ProfiledCall::ProfiledCall() : profile_(t_profile) {
  if (profile_ != nullptr) {
    start_ = Clock::now();
    claimed_ = Categorized(*profile_);
  }
}

ProfiledCall::~ProfiledCall() {
  if (profile_ == nullptr) return;
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
  profile_->total_ms += ms;
  profile_->other_ms += ms - (Categorized(*profile_) - claimed_);
  ++profile_->calls;
}

}  // namespace kvault::engine

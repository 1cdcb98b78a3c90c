// kvaultd's daemon-wide budget for message buffers: the bytes that connections hold in
// receive buffers (a request being read and handled) and inline reply buffers beyond each
// connection's own allowance (kConnectionBufferBytes per buffer, not counted here). With it the
// memory that all connections' messages can take at once is bounded by the budget, whatever
// the clients announce or send, instead of by max_message_bytes x max_connections.
//
// A BudgetShare is one buffer's claim on the budget: it grows as the buffer grows (and may be
// refused) and gives everything back when reset or destroyed.
//
// Thread-safety: MessageBudget is thread-safe (atomics; no lock is held while waiting, and
// nothing waits: a refused claim fails at once). A BudgetShare belongs to one thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kvault {

// Bytes of each buffer (a connection's receive buffer, its inline reply buffer) that do not
// come from the budget: small requests and replies never compete for it, so a budget in use
// by big frames never stops ordinary traffic.
inline constexpr size_t kConnectionBufferBytes = 256u << 10;

class MessageBudget {
 public:
  explicit MessageBudget(uint64_t bytes) : limit_(bytes) {}
  MessageBudget(const MessageBudget&) = delete;
  MessageBudget& operator=(const MessageBudget&) = delete;

  // Takes n bytes if they are free; false (nothing taken) otherwise.
  bool TryTake(uint64_t n) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    do {
      if (n > limit_ || used > limit_ - n) return false;
    } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
    uint64_t peak = peak_.load(std::memory_order_relaxed);
    while (used + n > peak && !peak_.compare_exchange_weak(peak, used + n, std::memory_order_relaxed)) {
    }
    return true;
  }
  void Give(uint64_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }

  uint64_t limit() const { return limit_; }
  uint64_t in_use() const { return used_.load(std::memory_order_relaxed); }
  uint64_t peak() const { return peak_.load(std::memory_order_relaxed); }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> peak_{0};
};

// One buffer's claim: covers the buffer's capacity beyond kConnectionBufferBytes.
class BudgetShare {
 public:
  explicit BudgetShare(MessageBudget* budget) : budget_(budget) {}
  ~BudgetShare() { Reset(); }
  BudgetShare(const BudgetShare&) = delete;
  BudgetShare& operator=(const BudgetShare&) = delete;

  // Makes the claim cover a buffer of `capacity` bytes; false (the claim unchanged) when the
  // budget cannot give the difference.
  bool CoverCapacity(size_t capacity) {
    const uint64_t need = capacity > kConnectionBufferBytes ? capacity - kConnectionBufferBytes : 0;
    if (need <= held_) return true;
    if (!budget_->TryTake(need - held_)) return false;
    held_ = need;
    return true;
  }
  // Gives everything back (call once the buffer is down to kConnectionBufferBytes or freed).
  void Reset() {
    if (held_ != 0) budget_->Give(held_);
    held_ = 0;
  }
  uint64_t held() const { return held_; }

 private:
  MessageBudget* budget_;
  uint64_t held_ = 0;
};

}  // namespace kvault

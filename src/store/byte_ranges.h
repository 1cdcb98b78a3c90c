// ByteRanges: the byte ranges of a buffer written so far, kept sorted and merged, so that a
// writer can prove it filled the whole buffer before publishing it (a store slot, a client's
// shared-memory slot). Thread-safety: none; owned by one writer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace kvault {

class ByteRanges {
 public:
  using Range = std::pair<uint64_t, uint64_t>;  // [first, second)

  // Records [lo, hi) and merges it with the ranges it touches or overlaps.
  void Add(uint64_t lo, uint64_t hi) {
    auto it = std::lower_bound(r_.begin(), r_.end(), Range{lo, 0});
    if (it != r_.begin() && std::prev(it)->second >= lo) --it;
    auto last = it;
    while (last != r_.end() && last->first <= hi) {
      lo = std::min(lo, last->first);
      hi = std::max(hi, last->second);
      ++last;
    }
    it = r_.erase(it, last);
    r_.insert(it, {lo, hi});
  }
  // True when exactly [0, bytes) was written.
  bool Covers(uint64_t bytes) const { return r_.size() == 1 && r_[0] == Range{0, bytes}; }
  const std::vector<Range>& ranges() const { return r_; }
  void Clear() { r_.clear(); }

 private:
  std::vector<Range> r_;  // sorted, disjoint, not adjacent
};

}  // namespace kvault

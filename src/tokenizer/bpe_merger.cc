#include "tokenizer/bpe_merger.h"

#include <queue>

namespace kvault::tokenizer {
namespace {

struct Candidate {
  double priority;
  uint32_t left;        // index of the left symbol
  uint32_t right;       // index of the right symbol
  uint32_t left_size;   // sizes when queued: a symbol only grows, so equal sizes mean unchanged
  uint32_t right_size;
  uint32_t merged_id;
};

struct WorseCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.priority != b.priority) return a.priority < b.priority;
    return a.left > b.left;  // the leftmost pair wins a tie
  }
};

}  // namespace

std::vector<BpeSymbol> MergeBpe(std::vector<BpeSymbol> symbols, const BpeMergeLookup& lookup) {
  const size_t n = symbols.size();
  if (n < 2) return symbols;
  // A doubly linked list over the indices; a merged-away symbol has alive[i] == false.
  constexpr uint32_t kNone = UINT32_MAX;
  std::vector<uint32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = i == 0 ? kNone : static_cast<uint32_t>(i - 1);
    next[i] = i + 1 == n ? kNone : static_cast<uint32_t>(i + 1);
  }
  std::priority_queue<Candidate, std::vector<Candidate>, WorseCandidate> queue;
  auto consider = [&](uint32_t left, uint32_t right) {
    if (left == kNone || right == kNone) return;
    Candidate c{};
    if (!lookup(symbols[left], symbols[right], &c.priority, &c.merged_id)) return;
    c.left = left;
    c.right = right;
    c.left_size = symbols[left].end - symbols[left].begin;
    c.right_size = symbols[right].end - symbols[right].begin;
    queue.push(c);
  };
  for (size_t i = 0; i + 1 < n; ++i) consider(static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1));

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    // Stale when either side was merged away or grew since the candidate was queued.
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        symbols[c.left].end - symbols[c.left].begin != c.left_size ||
        symbols[c.right].end - symbols[c.right].begin != c.right_size) {
      continue;
    }
    symbols[c.left].end = symbols[c.right].end;
    symbols[c.left].id = c.merged_id;
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.right] != kNone) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  std::vector<BpeSymbol> out;
  for (uint32_t i = 0; i != kNone; i = next[i]) out.push_back(symbols[i]);
  return out;
}

}  // namespace kvault::tokenizer

#include "store/s3fifo_policy.h"

#include <algorithm>
#include <iterator>

#include "store/entry.h"

namespace kvault {

void S3FifoPolicy::Insert(Entry* e) {
  if (slots_.count(e)) return Touch(e);
  Slot& s = slots_[e];
  s.weight = std::max<uint64_t>(e->bytes, 1);
  total_weight_ += s.weight;
  auto ghost = ghost_pos_.find(e->key);
  if (ghost != ghost_pos_.end()) {
    // Evicted from S recently and wanted again: it has proven itself, skip probation.
    ghost_.erase(ghost->second);
    ghost_pos_.erase(ghost);
    s.in_main = true;
    main_.push_front(e);
    s.pos = main_.begin();
  } else {
    small_weight_ += s.weight;
    small_.push_front(e);
    s.pos = small_.begin();
  }
}

void S3FifoPolicy::Touch(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  if (it->second.freq < kMaxFreq) ++it->second.freq;
}

void S3FifoPolicy::Remove(Entry* e) {
  auto it = slots_.find(e);
  if (it == slots_.end()) return;
  const Slot s = it->second;
  slots_.erase(it);
  total_weight_ -= s.weight;
  if (s.in_main) {
    main_.erase(s.pos);
  } else {
    small_weight_ -= s.weight;
    small_.erase(s.pos);
    RememberGhost(e->key);  // after slots_.erase: the bound counts only entries still held
  }
}

void S3FifoPolicy::RememberGhost(const ChunkKey& key) {
  auto it = ghost_pos_.find(key);
  if (it != ghost_pos_.end()) ghost_.erase(it->second);
  ghost_.push_front(key);
  ghost_pos_[key] = ghost_.begin();
  const size_t bound = std::max<size_t>(slots_.size(), 1);
  while (ghost_.size() > bound) {
    ghost_pos_.erase(ghost_.back());
    ghost_.pop_back();
  }
}

Entry* S3FifoPolicy::PickVictim(const std::function<bool(const Entry*)>& eligible, size_t max_scan) {
  size_t budget = max_scan;  // every entry visited (passed over, promoted or reinserted) costs one
  if (!small_.empty() && (main_.empty() || SmallOverShare())) {
    if (Entry* v = FromSmall(eligible, budget)) return v;
    return FromMain(eligible, budget);  // S's eligible entries, if any, were all promoted to M
  }
  if (Entry* v = FromMain(eligible, budget)) return v;
  // M holds nothing eligible; S's eligible entries are victims or get promoted to M.
  if (Entry* v = FromSmall(eligible, budget)) return v;
  return FromMain(eligible, budget);
}

// The cursor `it` walks from the tail towards the head. Everything at or behind it is
// ineligible, so each ineligible entry is passed once per call.
Entry* S3FifoPolicy::Walk(std::list<Entry*>& queue, const std::function<bool(const Entry*)>& eligible,
                          size_t& budget, const std::function<void(std::list<Entry*>::iterator, Slot&)>& reuse) {
  auto it = queue.end();
  while (it != queue.begin() && budget > 0) {
    --budget;
    auto cur = std::prev(it);
    Entry* e = *cur;
    if (!eligible(e)) {
      it = cur;
      continue;
    }
    Slot& s = slots_.at(e);
    if (s.freq == 0) return e;
    reuse(cur, s);
  }
  return nullptr;
}

Entry* S3FifoPolicy::FromSmall(const std::function<bool(const Entry*)>& eligible, size_t& budget) {
  return Walk(small_, eligible, budget, [&](std::list<Entry*>::iterator cur, Slot& s) {
    // Used while on probation: to M's head, with its count spent. splice keeps s.pos valid.
    main_.splice(main_.begin(), small_, cur);
    s.in_main = true;
    s.freq = 0;
    small_weight_ -= s.weight;
  });
}

// Eligible entries with uses left go back to the head, ahead of the cursor, with one use
// fewer: every such step spends a use some Touch added, so the loop ends, and it returns an
// entry whenever M holds an eligible one.
Entry* S3FifoPolicy::FromMain(const std::function<bool(const Entry*)>& eligible, size_t& budget) {
  return Walk(main_, eligible, budget, [&](std::list<Entry*>::iterator cur, Slot& s) {
    --s.freq;
    main_.splice(main_.begin(), main_, cur);
  });
}

}  // namespace kvault

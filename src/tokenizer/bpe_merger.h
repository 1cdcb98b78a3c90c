// The merge loop shared by both BPE flavours: adjacent symbols are merged, best pair first,
// until no adjacent pair has a merge.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace kvault::tokenizer {

struct BpeSymbol {
  uint32_t begin = 0;  // [begin, end): the bytes of the word this symbol covers
  uint32_t end = 0;
  uint32_t id = 0;     // the flavour's id for the symbol (may be a placeholder)
};

// Looks up the merge of two adjacent symbols. Returns false when they do not merge; else sets
// *priority (higher merges first; ties go to the leftmost pair) and *merged_id.
using BpeMergeLookup =
    std::function<bool(const BpeSymbol& left, const BpeSymbol& right, double* priority,
                       uint32_t* merged_id)>;

// A merge rule's key in a hash map of merges: the ids of its left and right symbols.
inline uint64_t BpePairKey(uint32_t left, uint32_t right) { return (static_cast<uint64_t>(left) << 32) | right; }

// Merges `symbols` (adjacent, in order: symbols[i].end == symbols[i+1].begin) in place and
// returns the survivors in order. O(n log n) in the number of symbols.
std::vector<BpeSymbol> MergeBpe(std::vector<BpeSymbol> symbols, const BpeMergeLookup& lookup);

}  // namespace kvault::tokenizer

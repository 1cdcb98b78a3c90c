// GoogleTest checks of StoreStats invariants, shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include "kvault/stats.h"

namespace kvtest {

// Lookup counters add up (stats.h): every looked-up token and chunk is a T1, T2 or T3 hit or
// a miss.
inline void ExpectLookupCountersAddUp(const kvault::StoreStats& s) {
  EXPECT_EQ(s.hit_tokens_t1 + s.hit_tokens_t2 + s.hit_tokens_t3 + s.miss_tokens, s.lookup_tokens) << s.ToJson();
  EXPECT_EQ(s.hit_chunks_t1 + s.hit_chunks_t2 + s.hit_chunks_t3 + s.miss_chunks, s.lookup_chunks) << s.ToJson();
}

// Occupancy never exceeds the caps (DESIGN.md §4.4).
inline void ExpectWithinCaps(const kvault::StoreStats& s) {
  EXPECT_LE(s.t1_used_bytes, s.t1_capacity_bytes) << s.ToJson();
  EXPECT_LE(s.t2_used_bytes, s.t2_capacity_bytes) << s.ToJson();
}

}  // namespace kvtest

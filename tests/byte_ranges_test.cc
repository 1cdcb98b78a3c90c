// ByteRanges (src/store/byte_ranges.h) on its own: what a writer proves it wrote before a
// commit publishes a chunk. Adjacent and overlapping ranges merge; a hole, even of one byte,
// never does, so Covers() refuses a payload with a one-byte gap (Commit would publish a byte
// nobody wrote). A reference model (one bool per byte) checks random sequences.
#include <algorithm>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "store/byte_ranges.h"

namespace kvault {
namespace {

using Ranges = std::vector<ByteRanges::Range>;

TEST(ByteRanges, AdjacentRangesMergeInEitherOrder) {
  ByteRanges r;
  r.Add(0, 10);
  r.Add(10, 20);
  EXPECT_EQ(r.ranges(), (Ranges{{0, 20}}));
  EXPECT_TRUE(r.Covers(20));

  ByteRanges back;
  back.Add(10, 20);
  back.Add(0, 10);
  EXPECT_EQ(back.ranges(), (Ranges{{0, 20}}));
  EXPECT_TRUE(back.Covers(20));
}

TEST(ByteRanges, AOneByteHoleIsNeverMerged) {
  ByteRanges r;
  r.Add(0, 10);
  r.Add(11, 20);  // byte 10 missing
  EXPECT_EQ(r.ranges(), (Ranges{{0, 10}, {11, 20}}));
  EXPECT_FALSE(r.Covers(20));

  ByteRanges back;  // the same, the later range first
  back.Add(11, 20);
  back.Add(0, 10);
  EXPECT_EQ(back.ranges(), (Ranges{{0, 10}, {11, 20}}));
  EXPECT_FALSE(back.Covers(20));

  r.Add(10, 11);  // the missing byte closes the hole
  EXPECT_EQ(r.ranges(), (Ranges{{0, 20}}));
  EXPECT_TRUE(r.Covers(20));
}

// A payload written in layers (as ChunkWriter does) with one byte left out anywhere - the
// first, the last, one at a layer boundary, one inside a layer - is not covered, whatever
// the order of the writes.
TEST(ByteRanges, ACommitWithAOneByteGapIsRefused) {
  constexpr uint64_t kBytes = 4096, kLayer = 1024;
  for (uint64_t gap : {uint64_t{0}, kLayer - 1, kLayer, kLayer + 1, 2 * kLayer + 517, kBytes - 1}) {
    for (bool reverse : {false, true}) {
      ByteRanges r;
      std::vector<ByteRanges::Range> writes;
      for (uint64_t lo = 0; lo < kBytes; lo += kLayer) {
        const uint64_t hi = lo + kLayer;
        if (gap >= lo && gap < hi) {  // this layer is written around the missing byte
          if (gap > lo) writes.push_back({lo, gap});
          if (gap + 1 < hi) writes.push_back({gap + 1, hi});
        } else {
          writes.push_back({lo, hi});
        }
      }
      if (reverse) std::reverse(writes.begin(), writes.end());
      for (const auto& [lo, hi] : writes) r.Add(lo, hi);
      EXPECT_FALSE(r.Covers(kBytes)) << "gap at " << gap << (reverse ? " (reverse)" : "");
      r.Add(gap, gap + 1);
      EXPECT_TRUE(r.Covers(kBytes)) << "gap at " << gap << (reverse ? " (reverse)" : "");
    }
  }
}

TEST(ByteRanges, OverlapsAndContainedRangesMerge) {
  ByteRanges r;
  r.Add(0, 10);
  r.Add(5, 15);  // overlaps the end
  EXPECT_EQ(r.ranges(), (Ranges{{0, 15}}));
  r.Add(2, 3);  // inside
  EXPECT_EQ(r.ranges(), (Ranges{{0, 15}}));
  r.Add(0, 15);  // the same again
  EXPECT_EQ(r.ranges(), (Ranges{{0, 15}}));

  ByteRanges many;
  many.Add(20, 22);
  many.Add(4, 6);
  many.Add(12, 14);
  many.Add(0, 2);
  EXPECT_EQ(many.ranges(), (Ranges{{0, 2}, {4, 6}, {12, 14}, {20, 22}}));
  many.Add(1, 13);  // overlaps the first and the third, swallows the second
  EXPECT_EQ(many.ranges(), (Ranges{{0, 14}, {20, 22}}));
  many.Add(14, 19);  // adjacent to the left one, one byte short of the right one
  EXPECT_EQ(many.ranges(), (Ranges{{0, 19}, {20, 22}}));
  EXPECT_FALSE(many.Covers(22));
  many.Add(0, 30);  // a superset of everything
  EXPECT_EQ(many.ranges(), (Ranges{{0, 30}}));
  EXPECT_TRUE(many.Covers(30));
}

TEST(ByteRanges, CoversMeansExactlyZeroToSize) {
  ByteRanges r;
  EXPECT_FALSE(r.Covers(1));  // nothing written
  r.Add(1, 20);
  EXPECT_FALSE(r.Covers(20));  // byte 0 missing
  r.Add(0, 1);
  EXPECT_TRUE(r.Covers(20));
  EXPECT_FALSE(r.Covers(19));  // more than the payload was recorded
  EXPECT_FALSE(r.Covers(21));  // the last byte missing
  r.Clear();
  EXPECT_TRUE(r.ranges().empty());
  EXPECT_FALSE(r.Covers(20));
}

// Empty writes (a zero-length WriteRange or MarkWritten, which the handle allows) neither
// fill a hole nor break a full cover.
TEST(ByteRanges, EmptyRangesChangeNoVerdict) {
  ByteRanges r;
  r.Add(0, 10);
  r.Add(10, 10);
  r.Add(11, 11);
  r.Add(11, 20);
  EXPECT_FALSE(r.Covers(20));
  r.Add(10, 11);
  r.Add(20, 20);
  r.Add(5, 5);
  EXPECT_TRUE(r.Covers(20));
}

// Random writes of a 300-byte payload against one bool per byte: after every Add the ranges
// are exactly the maximal runs of written bytes (sorted, disjoint, not adjacent), and Covers
// holds exactly when every byte was written.
TEST(ByteRanges, MatchesAByteMapOnRandomWrites) {
  constexpr uint64_t kBytes = 300;
  std::mt19937_64 rng(16);
  for (int round = 0; round < 300; ++round) {
    ByteRanges r;
    std::vector<bool> written(kBytes, false);
    const int writes = 1 + static_cast<int>(rng() % 40);
    for (int w = 0; w < writes; ++w) {
      const uint64_t lo = rng() % kBytes;
      const uint64_t len = 1 + rng() % (rng() % 2 == 0 ? 4 : 60);  // short ones make one-byte holes
      const uint64_t hi = std::min(kBytes, lo + len);
      r.Add(lo, hi);
      for (uint64_t i = lo; i < hi; ++i) written[i] = true;

      Ranges runs;
      for (uint64_t i = 0; i < kBytes;) {
        if (!written[i]) {
          ++i;
          continue;
        }
        uint64_t j = i;
        while (j < kBytes && written[j]) ++j;
        runs.push_back({i, j});
        i = j;
      }
      ASSERT_EQ(r.ranges(), runs) << "round " << round << " write " << w << " [" << lo << ", " << hi << ")";
      const bool all = std::find(written.begin(), written.end(), false) == written.end();
      ASSERT_EQ(r.Covers(kBytes), all) << "round " << round << " write " << w;
    }
  }
}

}  // namespace
}  // namespace kvault

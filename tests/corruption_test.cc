// Corruption on disk (DESIGN.md §4.1 "never serve wrong KV", §4.2 "degrade, don't fail"):
// bytes flipped in a record's payload or header, in a segment's index or trailer, a segment
// truncated inside a record, a record copied over another, junk segment files. After each,
// a store reopened on the directory must not crash, must turn the damaged entries into
// counted misses (never wrong bytes), and must still serve every intact entry identically.
// InspectDir must report the damage.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "stats_checks.h"
#include "store/inspect.h"
#include "store/little_endian.h"
#include "store/record_format.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChunkSpan;
using kvault::Code;
using kvault::kBlockBytes;

constexpr int kChains = 10;
constexpr size_t kChainTokens = 40;  // 2 full chunks (16 KiB) + a partial (8 KiB)

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

std::vector<std::string> SegmentFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    if (name.rfind("seg-", 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".kvs") {
      out.push_back(e.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteAt(const std::string& path, uint64_t offset, const void* data, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, data, n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::vector<uint8_t> bytes = ReadAll(path);
  ASSERT_LT(offset, bytes.size());
  uint8_t b = bytes[offset] ^ 0x40;
  WriteAt(path, offset, &b, 1);
}

void Truncate(const std::string& path, uint64_t size) { ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(size)), 0); }

// Where a record lives, found by scanning the file for its header block: the record magic
// "KVLTREC1" at a block boundary followed by the key at byte 16. Independent of the store's
// own index code.
struct RecordPos {
  std::string path;
  uint64_t offset = 0;  // of the header block; the payload starts one block later
  bool found = false;
};
RecordPos FindRecord(const std::string& dir, const kvault::ChunkKey& key) {
  for (const std::string& path : SegmentFiles(dir)) {
    std::vector<uint8_t> bytes = ReadAll(path);
    for (uint64_t off = 0; off + kBlockBytes <= bytes.size(); off += kBlockBytes) {
      if (std::memcmp(bytes.data() + off, "KVLTREC1", 8) == 0 &&
          std::memcmp(bytes.data() + off + 16, key.bytes.data(), 32) == 0) {
        return {path, off, true};
      }
    }
  }
  return {};
}

// The index offset of a sealed segment, from its trailer.
uint64_t IndexOffset(const std::string& path) {
  std::vector<uint8_t> bytes = ReadAll(path);
  kvault::SegmentTrailer t;
  EXPECT_TRUE(kvault::DecodeTrailer(bytes.data() + bytes.size() - kBlockBytes, &t).ok());
  return t.index_offset;
}

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = SmallOptions(dir_.path());
    options_.segment_bytes = 1ull << 20;  // everything in one sealed segment
    auto store = OpenStore(options_);
    ASSERT_TRUE(store);
    for (int i = 0; i < kChains; ++i) {
      std::vector<ChunkSpan> spans;
      ASSERT_TRUE(PutChain(*store, ns_, Tokens(i), &spans).ok());
      chains_.push_back(spans);
    }
    ASSERT_TRUE(store->Flush().ok());
    // Destroyed here: the segment is sealed with its index and trailer.
  }

  static std::vector<uint32_t> Tokens(int chain) { return MakeTokens(300 + chain, kChainTokens); }

  // Every chunk except those in `damaged` reads back identical; the damaged ones are misses.
  void ExpectOnlyDamagedMissing(Store& store, const std::vector<kvault::ChunkKey>& damaged) {
    for (const auto& chain : chains_) {
      for (const ChunkSpan& s : chain) {
        const bool bad = std::find(damaged.begin(), damaged.end(), s.key) != damaged.end();
        std::string why;
        kvault::Status st;
        Check c = CheckChunk(store, ns_, s.key, s.tokens, nullptr, &why, &st);
        EXPECT_EQ(c, bad ? Check::kMissing : Check::kMatch) << s.key.ShortHex() << ": " << why;
        if (bad) {
          EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
        }
      }
    }
  }

  size_t RecordCount() const { return chains_.size() * 3; }

  TempDir dir_;
  kvault::StoreOptions options_;
  const Namespace ns_ = MakeNamespace(MakeLayout());
  std::vector<std::vector<ChunkSpan>> chains_;
};

// Proves a flipped payload byte is caught by the payload checksum: the entry is a counted
// miss (err_corruption, err_load_miss), is dropped so Lookup stops offering it, can be put
// again, and every other entry is intact. InspectDir flags exactly that record.
TEST_F(CorruptionTest, PayloadByteFlipped) {
  const ChunkSpan victim = chains_[3][1];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + kBlockBytes + 1234);

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->corrupt, 1u);
  EXPECT_FALSE(report->clean());
  for (const auto& r : report->records) EXPECT_EQ(r.payload_ok, r.header.key != victim.key);

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().t2_entries, RecordCount());
  // Lookup never reads the disk, so it still offers the chunk until a load finds it bad.
  EXPECT_EQ(store->Lookup(ns_, Tokens(3)).cached_tokens, kChainTokens);
  ExpectOnlyDamagedMissing(*store, {victim.key});
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.err_corruption, 1u);
  EXPECT_GE(st.err_load_miss, 1u);
  EXPECT_EQ(st.err_torn, 0u);
  EXPECT_EQ(store->Lookup(ns_, Tokens(3)).cached_tokens, 16u);  // stops at the dropped chunk
  // The chunk can be put again and then reads back right.
  ASSERT_TRUE(PutChain(*store, ns_, Tokens(3)).ok());
  EXPECT_EQ(CheckChunk(*store, ns_, victim.key, victim.tokens), Check::kMatch);
  ExpectLookupCountersAddUp(store->Stats());
}

// Proves `kvault inspect` counts one flipped payload byte in a sealed segment once, as
// corrupt: its index names the record, so the record was written completely and is not torn
// (torn is an incomplete write, which a sealed segment's indexed records never are).
TEST_F(CorruptionTest, InspectCountsAFlippedPayloadInASealedSegmentAsCorruptOnly) {
  const ChunkSpan victim = chains_[7][0];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + kBlockBytes + 4321);

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->segments.size(), 1u);
  const kvault::InspectedSegment& seg = report->segments[0];
  EXPECT_TRUE(seg.indexed);
  EXPECT_EQ(seg.records, RecordCount());
  EXPECT_EQ(seg.corrupt, 1u);
  EXPECT_EQ(seg.torn, 0u);
  EXPECT_EQ(report->corrupt, 1u);
  EXPECT_EQ(report->torn, 0u);
  EXPECT_FALSE(report->clean());
}

// Proves the stretches of a sealed segment that its index does not cover are still scanned:
// with one entry taken out of the index (trailer and checksum rewritten to match), the record
// it named is no longer listed; intact, it is no damage; with a flipped payload byte it is a
// torn leftover (torn, not corrupt: nothing says it was ever complete).
TEST_F(CorruptionTest, InspectScansWhatASealedIndexDoesNotCover) {
  std::vector<std::string> segs = SegmentFiles(dir_.path());
  ASSERT_EQ(segs.size(), 1u);
  std::vector<uint8_t> bytes = ReadAll(segs[0]);
  uint8_t* trailer_block = bytes.data() + bytes.size() - kBlockBytes;
  kvault::SegmentTrailer t;
  ASSERT_TRUE(kvault::DecodeTrailer(trailer_block, &t).ok());
  ASSERT_EQ(t.entries, RecordCount());
  constexpr size_t kDropped = 10;
  uint8_t* index = bytes.data() + t.index_offset;
  const uint64_t dropped_offset = kvault::DecodeLE64(index + kDropped * kvault::kIndexEntryBytes);
  std::memmove(index + kDropped * kvault::kIndexEntryBytes, index + (kDropped + 1) * kvault::kIndexEntryBytes,
               (t.entries - kDropped - 1) * kvault::kIndexEntryBytes);
  --t.entries;
  t.index_bytes -= kvault::kIndexEntryBytes;  // the index area keeps its (block-rounded) size
  t.index_checksum = kvault::Checksum(std::as_bytes(std::span(index, t.index_bytes)));
  kvault::EncodeTrailer(t, trailer_block);
  WriteAt(segs[0], 0, bytes.data(), bytes.size());

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->segments.size(), 1u);
  EXPECT_TRUE(report->segments[0].indexed);
  EXPECT_EQ(report->records.size(), RecordCount() - 1);
  EXPECT_TRUE(report->clean()) << report->torn << " torn, " << report->corrupt << " corrupt";

  FlipByte(segs[0], dropped_offset + kBlockBytes + 99);
  report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->segments[0].indexed);
  EXPECT_EQ(report->records.size(), RecordCount() - 1);
  EXPECT_EQ(report->torn, 1u);
  EXPECT_EQ(report->corrupt, 0u);
}

// Proves the same while the store runs: a chunk evicted from T1 whose T2 copy goes bad
// underneath the store is a miss, not wrong data.
TEST_F(CorruptionTest, PayloadCorruptedUnderARunningStore) {
  kvault::StoreOptions o = options_;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const ChunkSpan victim = chains_[5][0];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + kBlockBytes + 7);
  ExpectOnlyDamagedMissing(*store, {victim.key});
  EXPECT_EQ(store->Stats().err_corruption, 1u);
}

// Proves a damaged record header in a sealed segment (its index intact) is caught when the
// record is read: counted, a miss, and InspectDir reports it.
TEST_F(CorruptionTest, HeaderByteFlippedInSealedSegment) {
  const ChunkSpan victim = chains_[4][0];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + 20);  // inside the key field

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->corrupt, 1u);  // a complete record of a sealed segment: corrupt, not torn
  EXPECT_EQ(report->torn, 0u);
  EXPECT_FALSE(report->clean());

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  ExpectOnlyDamagedMissing(*store, {victim.key});
  EXPECT_EQ(store->Stats().err_corruption, 1u);
  EXPECT_EQ(store->Lookup(ns_, Tokens(4)).cached_tokens, 0u);
}

// Proves a damaged record header in a segment without an index (as after a crash) is
// skipped by the block scan and counted as torn; the scan resynchronises and finds every
// record after it.
TEST_F(CorruptionTest, HeaderByteFlippedInUnsealedSegment) {
  std::vector<std::string> segs = SegmentFiles(dir_.path());
  ASSERT_EQ(segs.size(), 1u);
  Truncate(segs[0], IndexOffset(segs[0]));  // drop index and trailer
  const ChunkSpan victim = chains_[4][1];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + 100);  // inside the layout / counts

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_GE(report->torn, 1u);
  ASSERT_EQ(report->segments.size(), 1u);
  EXPECT_FALSE(report->segments[0].indexed);
  EXPECT_EQ(report->records.size(), RecordCount() - 1);

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  kvault::StoreStats st = store->Stats();
  EXPECT_GE(st.err_torn, 1u);
  EXPECT_EQ(st.t2_entries, RecordCount() - 1);
  ExpectOnlyDamagedMissing(*store, {victim.key});
  EXPECT_EQ(store->Lookup(ns_, Tokens(4)).cached_tokens, 16u);
}

// Proves the durability contract survives a torn record left by a crash: a segment without
// an index (the writer died before sealing it) holding a record whose header landed but
// whose payload did not. Reopening must not take that record as an intact entry (only
// intact entries, DESIGN.md §4.3); otherwise a later put of the same chunk is deduplicated
// against the torn copy and a Flush() that returned OK leaves the chunk unreadable.
TEST_F(CorruptionTest, TornPayloadInUnsealedSegmentIsNotTrusted) {
  std::vector<std::string> segs = SegmentFiles(dir_.path());
  ASSERT_EQ(segs.size(), 1u);
  Truncate(segs[0], IndexOffset(segs[0]));  // drop index and trailer: a crashed segment
  const ChunkSpan victim = chains_[2][1];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  std::vector<char> zeros(3 * kBlockBytes, 0);  // the tail of the payload never landed
  WriteAt(pos.path, pos.offset + kBlockBytes + kBlockBytes, zeros.data(), zeros.size());
  {
    auto store = OpenStore(options_);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->Stats().t2_entries, RecordCount() - 1);
    EXPECT_GE(store->Stats().err_torn, 1u);
    EXPECT_EQ(store->Lookup(ns_, Tokens(2)).cached_tokens, 16u);
    // The engine recomputes the chunk and puts it again: it must reach the disk.
    ASSERT_TRUE(PutChain(*store, ns_, Tokens(2)).ok());
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  ExpectOnlyDamagedMissing(*store, {});
}

// Proves the block scan of a segment without an index handles records larger than its read
// window (10 MiB chunks): intact ones are found, one damaged near its end is skipped and
// counted, and the records after it are found again.
TEST(CorruptionLarge, RecordsLargerThanTheScanWindow) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 48ull << 20;
  o.segment_bytes = 64ull << 20;
  const Namespace ns = MakeNamespace(MakeLayout(kvault::DType::kF32, 8, 8, 128, 160));
  ASSERT_EQ(ns.layout().chunk_bytes(160), 10u << 20);
  const std::vector<uint32_t> tokens = MakeTokens(77, 2 * 160 + 3);
  std::vector<ChunkSpan> spans;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    ASSERT_TRUE(PutChain(*store, ns, tokens, &spans).ok());
    ASSERT_TRUE(store->Flush().ok());
  }
  std::vector<std::string> segs = SegmentFiles(dir.path());
  ASSERT_EQ(segs.size(), 1u);
  Truncate(segs[0], IndexOffset(segs[0]));
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->Stats().t2_entries, 3u);
    EXPECT_EQ(store->Stats().err_torn, 0u);
    for (const auto& s : spans) EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens), Check::kMatch);
  }
  RecordPos pos = FindRecord(dir.path(), spans[0].key);
  ASSERT_TRUE(pos.found);
  FlipByte(pos.path, pos.offset + kBlockBytes + (10u << 20) - 3);
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().t2_entries, 2u);
  EXPECT_GE(store->Stats().err_torn, 1u);
  EXPECT_EQ(CheckChunk(*store, ns, spans[0].key, 160), Check::kMissing);
  EXPECT_EQ(CheckChunk(*store, ns, spans[1].key, 160), Check::kMatch);
  EXPECT_EQ(CheckChunk(*store, ns, spans[2].key, 3), Check::kMatch);
}

// Proves a damaged index or trailer costs nothing but a scan: every record is still found
// and intact, and InspectDir reports the segment as not indexed.
TEST_F(CorruptionTest, IndexOrTrailerByteFlipped) {
  std::vector<std::string> segs = SegmentFiles(dir_.path());
  ASSERT_EQ(segs.size(), 1u);
  const std::string seg = segs[0];
  const uint64_t index_offset = IndexOffset(seg);
  const uint64_t size = std::filesystem::file_size(seg);
  const std::vector<uint8_t> pristine = ReadAll(seg);
  for (uint64_t where : {index_offset + 8 + 40, index_offset + 176 * 7 + 100, size - kBlockBytes + 13}) {
    SCOPED_TRACE("flipped byte at " + std::to_string(where));
    WriteAt(seg, 0, pristine.data(), pristine.size());
    FlipByte(seg, where);
    auto report = kvault::InspectDir(dir_.path());
    ASSERT_TRUE(report.ok());
    ASSERT_EQ(report->segments.size(), 1u);
    EXPECT_FALSE(report->segments[0].indexed);
    EXPECT_EQ(report->records.size(), RecordCount());
    EXPECT_EQ(report->corrupt, 0u);

    auto store = OpenStore(options_);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->Stats().t2_entries, RecordCount());
    ExpectOnlyDamagedMissing(*store, {});
  }
}

// Proves a segment cut inside a record (a torn write) loses only the records at and after
// the cut: the torn one is counted, earlier ones are intact, later ones are plain misses.
TEST_F(CorruptionTest, SegmentTruncatedInsideARecord) {
  const ChunkSpan victim = chains_[6][1];
  RecordPos pos = FindRecord(dir_.path(), victim.key);
  ASSERT_TRUE(pos.found);
  Truncate(pos.path, pos.offset + kBlockBytes + 5000);  // not block aligned

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_GE(report->torn, 1u);
  EXPECT_FALSE(report->segments.at(0).indexed);

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  EXPECT_GE(store->Stats().err_torn, 1u);
  std::vector<kvault::ChunkKey> lost;
  for (int c = 0; c < kChains; ++c) {
    for (const ChunkSpan& s : chains_[c]) {
      RecordPos p = FindRecord(dir_.path(), s.key);
      if (!p.found || p.offset >= pos.offset) lost.push_back(s.key);
    }
  }
  EXPECT_GE(lost.size(), 1u);
  EXPECT_LT(lost.size(), RecordCount());
  EXPECT_EQ(store->Stats().t2_entries, RecordCount() - lost.size());
  ExpectOnlyDamagedMissing(*store, lost);
  // The store still takes new data after the damage.
  ASSERT_TRUE(PutChain(*store, ns_, Tokens(6)).ok());
  ASSERT_TRUE(store->Flush().ok());
  EXPECT_EQ(CheckChunk(*store, ns_, victim.key, victim.tokens), Check::kMatch);
}

// Proves a valid record in the wrong place is never served: record A copied over record B
// (same size, intact checksums) makes B a counted miss, not A's bytes under B's key.
TEST_F(CorruptionTest, RecordCopiedOverAnother) {
  const ChunkSpan a = chains_[1][0], b = chains_[2][0];
  RecordPos pa = FindRecord(dir_.path(), a.key), pb = FindRecord(dir_.path(), b.key);
  ASSERT_TRUE(pa.found && pb.found);
  std::vector<uint8_t> bytes = ReadAll(pa.path);
  const uint64_t record = kBlockBytes + ns_.layout().chunk_bytes(16);
  WriteAt(pb.path, pb.offset, bytes.data() + pa.offset, record);

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  ExpectOnlyDamagedMissing(*store, {b.key});
  EXPECT_EQ(store->Stats().err_corruption, 1u);
}

// Proves junk in the directory is survived: a segment of random bytes, an empty segment, a
// segment of zeros and unrelated files neither crash the store nor hide the good segment.
TEST_F(CorruptionTest, JunkSegmentFilesAreSkipped) {
  std::vector<std::byte> noise = PayloadFor(kvault::Sha256("noise"), 3 * kBlockBytes + 17);
  std::ofstream(dir_.Sub("seg-00000077.kvs"), std::ios::binary)
      .write(reinterpret_cast<const char*>(noise.data()), static_cast<std::streamsize>(noise.size()));
  std::ofstream(dir_.Sub("seg-00000078.kvs"), std::ios::binary);
  std::vector<char> zeros(8 * kBlockBytes, 0);
  std::ofstream(dir_.Sub("seg-00000079.kvs"), std::ios::binary).write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  std::ofstream(dir_.Sub("notes.txt")) << "not a segment";
  std::ofstream(dir_.Sub("seg-1.kvs")) << "bad name";

  auto report = kvault::InspectDir(dir_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->records.size(), RecordCount());

  auto store = OpenStore(options_);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().t2_entries, RecordCount());
  ExpectOnlyDamagedMissing(*store, {});
  // New segments go after the junk ones and do not overwrite them.
  ASSERT_TRUE(PutChain(*store, ns_, MakeTokens(999, 40)).ok());
  ASSERT_TRUE(store->Flush().ok());
  store.reset();
  EXPECT_EQ(std::filesystem::file_size(dir_.Sub("seg-00000077.kvs")), noise.size());
  store = OpenStore(options_);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Lookup(ns_, MakeTokens(999, 40)).cached_tokens, 40u);
}

}  // namespace
}  // namespace kvtest

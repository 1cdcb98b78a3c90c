// SegmentLog: the disk tier's append-only log of records in segment files (record_format.h).
//
// Thread-safety: Append, Seal and RemoveSegment are called by one thread at a time (the
// store's write-behind thread); ReadRecord, Sync, UsedBytes and Segments may be called from
// any thread concurrently with them. Internal state is guarded by mu_.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvault/env.h"
#include "store/aligned_buffer.h"
#include "store/mutex.h"
#include "store/record_format.h"

namespace kvault {

// Where a record is, and what it stores: an entry's location names its T2 record completely
// (the stored form may differ from the chunk's raw payload when the record is encoded), so
// reads are checked against it and the tier's space is counted in stored bytes.
struct DiskLocation {
  uint32_t segment = 0;
  uint64_t offset = 0;  // of the record's header block
  KvCodec codec = KvCodec::kNone;  // the record header's codec
  uint64_t payload_bytes = 0;      // stored payload bytes (0: not a record's location)
  uint64_t payload_checksum = 0;   // XXH3-64 of the stored payload bytes

  // Bytes of the whole record on disk (header block + padded stored payload).
  uint64_t record_bytes() const { return kBlockBytes + RoundUpToBlock(payload_bytes); }
};

// The location of record `h` at (segment, offset).
inline DiskLocation LocationOf(const RecordHeader& h, uint32_t segment, uint64_t offset) {
  return DiskLocation{segment, offset, h.codec, h.payload_bytes, h.payload_checksum};
}

struct AppendItem {
  RecordHeader header;
  // The stored payload (raw, or header.codec's encoding), zero-padded to
  // RoundUpToBlock(header.payload_bytes); aligned for direct I/O.
  std::vector<IoSlice> payload;
  // Filled by Append.
  DiskLocation location;
  Status status;
};

struct SegmentInfo {
  uint32_t id = 0;
  std::string path;
  uint64_t bytes = 0;
  bool sealed = false;  // has a valid trailer (or was sealed by this process)
  bool active = false;  // the segment new records go to
};

class SegmentLog {
 public:
  struct Options {
    std::string dir;
    uint64_t segment_bytes = 256ull << 20;
    bool direct_io = true;
    bool use_io_uring = true;
    Env* env = nullptr;
  };
  struct OpenStats {
    uint64_t segments = 0;
    uint64_t records = 0;
    uint64_t torn = 0;            // invalid or truncated records skipped
    uint64_t scanned_segments = 0;  // segments without a valid index, scanned block by block
  };
  // Called with each record found and its location (LocationOf the header).
  using RecordVisitor = std::function<void(const RecordHeader&, DiskLocation)>;

  // Opens every segment under options.dir, calling `visit` for each record found, oldest
  // segment first. New records always go to a new segment.
  static Result<std::unique_ptr<SegmentLog>> Open(const Options& options, const RecordVisitor& visit,
                                                   OpenStats* stats);
  ~SegmentLog();

  // Writes every item, filling item.location and item.status. Rolls to a new segment (and
  // seals the old one) when the active one is full.
  void Append(std::span<AppendItem> items);
  // Reads the record at `loc` into `payload` (its stored bytes, padded) and checks that it is
  // intact and is the record `expected` names (key, namespace, layout, tokens, codec, stored
  // size, checksum of the stored bytes). Decoding is the caller's.
  Status ReadRecord(DiskLocation loc, const RecordHeader& expected, std::span<const IoSlice> payload) const;
  // Makes everything appended so far durable.
  Status Sync();
  // Deletes a segment that is not the active one.
  Status RemoveSegment(uint32_t id);

  // Bytes on disk, footers included, plus what sealing the active segment will add.
  uint64_t UsedBytes() const;
  // Bytes that Append(items) of records of these sizes (RecordHeader::record_bytes(), in
  // order) adds to UsedBytes() at most: it follows Append's placement exactly, segment rolls
  // (sealed trailers and index areas) included. Called by the appending thread.
  uint64_t BytesNeeded(std::span<const uint64_t> record_bytes) const;
  std::optional<uint32_t> OldestInactive() const;
  std::vector<SegmentInfo> Segments() const;
  bool direct_io() const { return direct_io_; }

  // Reads the index of a sealed segment of `bytes` bytes; visits nothing unless it is intact.
  static Status ReadIndex(File& file, uint64_t bytes, uint32_t id, const RecordVisitor& visit, uint64_t* records);
  // Finds the records of a segment without an index, block by block, verifying each one's
  // payload checksum; counts torn ones (damaged headers, missing or damaged payloads).
  static void ScanSegment(File& file, uint64_t bytes, uint32_t id, const RecordVisitor& visit, OpenStats* stats) {
    ScanRange(file, 0, bytes, id, visit, stats);
  }
  // The same over bytes [begin, end) of the file only (begin block-aligned): the stretches of
  // an indexed segment that its index does not cover.
  static void ScanRange(File& file, uint64_t begin, uint64_t end, uint32_t id, const RecordVisitor& visit,
                        OpenStats* stats);

  static std::string SegmentName(uint32_t id);
  static bool ParseSegmentName(const std::string& name, uint32_t* id);

 private:
  struct Segment {
    std::shared_ptr<File> file;
    std::string path;
    uint64_t bytes = 0;
    bool sealed = false;
  };
  explicit SegmentLog(const Options& options);
  Status LoadSegment(uint32_t id, Segment* seg, const RecordVisitor& visit, OpenStats* stats);
  Status StartSegment();
  void SealActive();

  const Options options_;
  bool direct_io_ = false;

  mutable Mutex mu_;
  std::map<uint32_t, Segment> segments_ GUARDED_BY(mu_);
  // The active segment; written only by the appending thread (under mu_), read by it without
  // mu_ and by the others under mu_: no GUARDED_BY, which would forbid the appender's reads.
  std::optional<uint32_t> active_;
  uint64_t write_offset_ = 0;
  std::vector<uint8_t> active_index_;  // encoded index entries of the active segment
  uint32_t next_id_ = 1;
  // Segments sealed since the last Sync(); they are synced by the next one.
  std::vector<std::shared_ptr<File>> unsynced_ GUARDED_BY(mu_);
  bool dir_unsynced_ GUARDED_BY(mu_) = false;  // a segment was created since the last Sync()
  AlignedBuffer header_blocks_;  // used by Append only
  std::unique_ptr<FileLock> lock_;  // this process owns the directory
};

}  // namespace kvault

// On-disk format of the disk tier (T2). docs/FORMAT.md is the prose version; keep both true.
//
// A segment file `seg-NNNNNNNN.kvs` is a sequence of records, each 4096-aligned:
//   [header block: 4096 bytes, RecordHeader in the first kHeaderBytes, zeros after]
//   [payload, zero-padded to a multiple of 4096]
// A sealed segment ends with an index (one IndexEntry per record, padded to 4096) and a
// 4096-byte trailer block; a segment without a valid trailer is scanned block by block.
// Every integer is little-endian. Checksums are XXH3-64 (seed 0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvault/key.h"
#include "kvault/kv_codec.h"
#include "kvault/layout.h"
#include "kvault/status.h"

namespace kvault {

inline constexpr uint64_t kRecordMagic = 0x31434552544c564bull;   // "KVLTREC1"
inline constexpr uint64_t kTrailerMagic = 0x315844495444564bull;  // "KVDTIDX1"
// Record versions: 1 (payload always raw, codec none) and 2 (the codec id in header byte 126;
// the payload is that codec's encoding). Writers use version 1 for a raw record, so a store
// that encodes nothing stays readable by older builds, and version 2 for an encoded one.
inline constexpr uint32_t kRecordVersionRaw = 1;
inline constexpr uint32_t kRecordVersionCodec = 2;
inline constexpr uint32_t kTrailerVersion = 1;inline constexpr size_t kBlockBytes = 4096;
inline constexpr size_t kHeaderBytes = 168;      // encoded RecordHeader
// u64 record offset, then the record's encoded header. The offset comes first so that no
// index entry starts with the record magic at a block boundary (the block scan stays exact).
inline constexpr size_t kIndexEntryBytes = 8 + kHeaderBytes;

inline uint64_t RoundUpToBlock(uint64_t n) { return (n + kBlockBytes - 1) / kBlockBytes * kBlockBytes; }

// The metadata of one record: everything needed to check it and to index it.
struct RecordHeader {
  ChunkKey key;
  ChunkKey parent;
  Digest ns_id;
  KvLayout layout;
  uint32_t tokens = 0;
  // How the payload is stored (version 2; version 1 records are kNone). The codec and the
  // layout together decide how the payload decodes: nothing else may be assumed.
  KvCodec codec = KvCodec::kNone;
  // Stored payload bytes: EncodedChunkBytes(codec, layout, tokens) (= layout.chunk_bytes(tokens)
  // for kNone), and their XXH3-64.
  uint64_t payload_bytes = 0;
  uint64_t payload_checksum = 0;
  uint64_t seq = 0;  // write order; the highest wins when a key appears twice

  // Bytes of the whole record on disk: header block + padded payload.
  uint64_t record_bytes() const { return kBlockBytes + RoundUpToBlock(payload_bytes); }
  // Bytes of the decoded payload (what the chunk takes in T1).
  uint64_t raw_bytes() const { return layout.chunk_bytes(tokens); }
};

// Stored payload bytes of a `tokens`-token chunk of `layout` in `codec`.
inline uint64_t StoredPayloadBytes(KvCodec codec, const KvLayout& layout, uint32_t tokens) {
  return codec == KvCodec::kNone ? layout.chunk_bytes(tokens) : EncodedChunkBytes(codec, layout, tokens);
}

// Writes the kHeaderBytes encoding of `h` (header checksum included) to `out`: version 1 when
// h.codec is kNone, else version 2.
void EncodeHeader(const RecordHeader& h, uint8_t* out);
// Decodes and checks magic, version (1 or 2), header checksum and field sanity: a known codec
// id that can encode the layout, and payload_bytes equal to the codec's encoded size.
// kCorruption otherwise (an unknown codec id included: such a record is never served).
Status DecodeHeader(const uint8_t* in, RecordHeader* h);
// True when `in` starts with the record magic (used by the block scan to count torn records).
bool HasRecordMagic(const uint8_t* in);

// Streaming XXH3-64 over a payload split into pieces.
class PayloadChecksum {
 public:
  PayloadChecksum();
  ~PayloadChecksum();
  PayloadChecksum(const PayloadChecksum&) = delete;
  PayloadChecksum& operator=(const PayloadChecksum&) = delete;
  void Update(std::span<const std::byte> piece);
  uint64_t Digest() const;

 private:
  void* state_;
};

// Trailer of a sealed segment, in the last block of the file.
struct SegmentTrailer {
  uint32_t entries = 0;
  uint64_t index_offset = 0;
  uint64_t index_bytes = 0;  // entries * kIndexEntryBytes (unpadded)
  uint64_t index_checksum = 0;
};

void EncodeTrailer(const SegmentTrailer& t, uint8_t* out);  // writes kBlockBytes
Status DecodeTrailer(const uint8_t* in, SegmentTrailer* t);

uint64_t Checksum(std::span<const std::byte> data);

}  // namespace kvault

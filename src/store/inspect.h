// Inspect: reads a disk-tier directory without changing it, lists its segments and records
// and verifies every checksum. Used by `kvault inspect DIR`.
#pragma once

#include <string>
#include <vector>

#include "kvault/env.h"
#include "store/record_format.h"

namespace kvault {

struct InspectedRecord {
  uint32_t segment = 0;
  uint64_t offset = 0;
  RecordHeader header;      // header.codec: how the payload is stored (none for version 1)
  bool payload_ok = false;  // checksum of the stored (possibly encoded) payload verified
};

struct InspectedSegment {
  uint32_t id = 0;
  std::string name;
  uint64_t bytes = 0;
  bool indexed = false;  // has an intact index and trailer
  uint64_t records = 0;
  uint64_t torn = 0;     // invalid or truncated records skipped
  uint64_t corrupt = 0;  // records whose payload checksum fails
};

struct InspectReport {
  std::vector<InspectedSegment> segments;
  std::vector<InspectedRecord> records;
  // payload_bytes: stored (encoded where a record has a codec); raw_bytes: the same records
  // decoded. encoded_records: records with a codec other than none.
  uint64_t torn = 0, corrupt = 0, payload_bytes = 0, raw_bytes = 0, encoded_records = 0;
  bool clean() const { return torn == 0 && corrupt == 0; }
};

Result<InspectReport> InspectDir(const std::string& dir, Env* env = nullptr);

}  // namespace kvault

// Entry: the store's index record of one chunk, wherever it lives.
//
// Thread-safety: none of its own; the store serializes every access with its mutex (not
// annotated GUARDED_BY: an Entry cannot name the store's mutex), except that the T1 pages of
// an entry with pins > 0 may be read (or, before commit, written) without it: pinned pages
// never move.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kvault/key.h"
#include "kvault/layout.h"
#include "store/byte_ranges.h"
#include "store/host_arena.h"
#include "store/record_format.h"
#include "store/segment_log.h"

namespace kvault {

struct Entry {
  ChunkKey key;
  ChunkKey parent;
  Digest ns_id;
  KvLayout layout;
  uint32_t tokens = 0;
  uint64_t bytes = 0;  // payload bytes
  uint64_t payload_checksum = 0;  // valid when checksum_valid
  bool checksum_valid = false;
  // While uncommitted: XXH3 of payload bytes [0, hashed_upto), updated as the writer copies
  // them in order, so the checksum costs no second pass over memory.
  std::unique_ptr<PayloadChecksum> hasher;
  uint64_t hashed_upto = 0;
  // While uncommitted: the byte ranges written so far, merged and sorted. Commit requires
  // [0, bytes): a page's stale bytes (another chunk's, maybe another tenant's) never publish.
  ByteRanges written;

  bool committed = false;  // visible to lookups

  // T1 (host DRAM).
  bool in_t1 = false;      // pages hold the payload
  bool promoting = false;  // pages allocated, a T2 read is filling them
  PageList pages;          // the store's; empty in kvault replay
  uint32_t t1_pages = 0;   // T1 pages reserved for it by TierCore (in_t1, promoting, or a writer's)
  int pins = 0;            // readers, an uncommitted writer, or the write-behind in flight

  // Write-behind.
  bool dirty = false;    // queued for T2, not yet there
  bool writing = false;  // the write-behind thread has it in flight
  bool moving = false;   // compaction is copying its T2 record to a new place (T2 readers wait)
  bool hot = false;      // read since it was last written: rewritten when its segment goes
  bool prefetched = false;  // in T1 by a hint's prefetch, not read since: counts against the budget
  uint64_t seq = 0;      // put order
  bool from_t3 = false;  // fetched from the cluster tier: never published back to it

  // T2 (local SSD).
  bool on_t2 = false;
  DiskLocation location;

  // Keyed in namespace (ns_id, layout): a key alone names no chunk across namespaces.
  bool InNamespace(const Digest& id, const KvLayout& l) const { return ns_id == id && layout == l; }
  bool partial() const { return tokens < layout.chunk_tokens; }
  // A `moving` entry may leave T1: its T2 copy (being moved) keeps it.
  bool evictable() const { return committed && in_t1 && pins == 0 && !promoting && !writing; }
};

}  // namespace kvault

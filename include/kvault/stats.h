// Counters of a store. Lookup counters add up: for every lookup,
//   hit_tokens_t1 + hit_tokens_t2 + hit_tokens_t3 + miss_tokens == tokens looked up,
// and likewise for chunks.
#pragma once

#include <cstdint>
#include <string>

#include "kvault/status.h"

namespace kvault {

struct StoreStats {
  // Lookups, counted when lookup() answers.
  uint64_t lookups = 0;
  uint64_t lookup_tokens = 0, lookup_chunks = 0;
  uint64_t hit_tokens_t1 = 0, hit_chunks_t1 = 0;
  uint64_t hit_tokens_t2 = 0, hit_chunks_t2 = 0;
  uint64_t hit_tokens_t3 = 0, hit_chunks_t3 = 0;  // whole chunks only in the cluster tier
  uint64_t miss_tokens = 0, miss_chunks = 0;

  // Bytes moved per path. To and from T2 and T3 they are stored bytes (encoded when the
  // tier's codec is not none, docs/STORE.md "Compressed lower tiers"); T1 holds raw KV.
  uint64_t bytes_put = 0;        // caller -> T1
  uint64_t bytes_loaded = 0;     // T1 -> caller
  uint64_t bytes_t1_to_t2 = 0;   // write-behind
  uint64_t bytes_t2_to_t1 = 0;   // promotion on read
  uint64_t bytes_t1_to_t3 = 0;   // T3 write-behind (payload bytes published)
  uint64_t bytes_t3_to_t1 = 0;   // fetched from T3 on read

  // Codecs of the lower tiers (StoreOptions::t2_codec, t3_codec).
  uint64_t t2_chunks_encoded = 0;  // records written to T2 in a codec other than none
  uint64_t t2_chunks_decoded = 0;  // encoded T2 records decoded into T1 (promotions, prefetches)
  uint64_t t3_chunks_encoded = 0;  // chunks published to T3 in a codec other than none
  uint64_t t3_chunks_decoded = 0;  // encoded T3 values decoded into T1
  // Chunks a tier with a codec stored raw: a layout the codec cannot encode, values it refuses
  // (NaN, Inf, beyond its range), or a short partial chunk that would take as many 4 KiB blocks
  // encoded as raw.
  uint64_t codec_fallbacks = 0;

  // Entries.
  uint64_t puts = 0, puts_deduplicated = 0;
  uint64_t t1_evictions = 0;           // dropped from T1 with a copy on T2 (or T2 off)
  uint64_t t1_dropped_unpersisted = 0; // dropped from T1 before the write-behind reached them
  uint64_t t2_evictions = 0;           // T2 copies dropped (policy victims, reclaimed segments)
  uint64_t t2_compactions = 0;         // segments whose live records were copied forward
  uint64_t bytes_compacted = 0;
  uint64_t t2_rewrites = 0;            // hot entries written again when their segment went
  uint64_t promotions = 0;             // T2 -> T1 (on read and by prefetch)
  uint64_t hints = 0;                  // Store::Hint calls
  uint64_t prefetches = 0;             // chunks a hint read from T2 into T1
  uint64_t bytes_prefetched = 0;
  uint64_t partials_superseded = 0;
  uint64_t t3_puts = 0;        // chunks published to T3
  uint64_t t3_put_drops = 0;   // chunks not published: queue full, or left T1 before their turn
  uint64_t t3_fetches = 0;     // chunks read from T3 into T1

  // Occupancy.
  uint64_t t1_used_bytes = 0, t1_capacity_bytes = 0, t1_entries = 0;
  uint64_t t2_used_bytes = 0, t2_capacity_bytes = 0, t2_entries = 0, t2_segments = 0;
  uint64_t write_queue_entries = 0;
  uint64_t t3_queue_entries = 0, t3_queue_bytes = 0;  // waiting to be published (or in flight)

  // Errors by kind.
  uint64_t err_io = 0;          // EIO and other I/O failures
  uint64_t err_no_space = 0;    // ENOSPC
  uint64_t err_corruption = 0;  // checksum / magic / layout mismatches found on read
  uint64_t err_torn = 0;        // invalid records skipped when rebuilding the index
  uint64_t err_load_miss = 0;   // open_chunk of an entry that was gone or unreadable
  // T3 operations of this store that failed: a put or get error, or a value that failed its
  // checks (also in err_corruption). Failed Contains calls are in the tier's own stats.
  uint64_t err_t3 = 0;

  bool t2_direct_io = false;    // whether T2 runs with O_DIRECT

  std::string ToJson() const;
  // Reads what ToJson wrote (unknown keys are ignored, missing ones stay zero).
  static Status FromJson(const std::string& text, StoreStats* out);
};

}  // namespace kvault

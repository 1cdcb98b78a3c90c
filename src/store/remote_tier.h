// RemoteTier: the cluster tier (T3), shared beyond one node: a Redis Cluster / Valkey, or a
// directory on a distributed file system (CephFS, 3FS, Lustre, NFS).
//
// A value is one whole chunk record as remote_record.h encodes it (header, then payload), so
// every reader verifies key, namespace, layout and checksum before use: a remote tier may
// lose, truncate or mix up values, and that is a miss, never wrong KV.
//
// Failures are misses: a down node, a timeout or a full tier makes Get return kNotFound or
// kUnavailable and is counted in Stats(); no call blocks longer than the tier's timeout.
// Thread-safety: every method may be called from any thread at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvault/key.h"
#include "kvault/status.h"

namespace kvault {

struct RemoteTierStats {
  uint64_t puts = 0, bytes_put = 0;
  uint64_t gets = 0, get_hits = 0, bytes_got = 0;
  uint64_t contains_queries = 0;   // keys asked about by Contains
  uint64_t evictions = 0;          // values this client deleted to stay under its budget
  uint64_t errors = 0;             // failed operations of any kind (each also a miss)
  uint64_t timeouts = 0;           // of which: deadline exceeded
  uint64_t used_bytes = 0;         // bytes this client believes it holds (its budget's use)
  uint64_t capacity_bytes = 0;     // its budget; 0 = unlimited
};

// The counting half of RemoteTierStats as atomics, for a backend to bump from any thread.
struct RemoteTierCounters {
  std::atomic<uint64_t> puts{0}, bytes_put{0}, gets{0}, get_hits{0}, bytes_got{0};
  std::atomic<uint64_t> contains_queries{0}, evictions{0}, errors{0}, timeouts{0};

  // The counters now (used_bytes and capacity_bytes are the backend's to fill in).
  RemoteTierStats Snapshot() const {
    RemoteTierStats s;
    s.puts = puts.load(std::memory_order_relaxed);
    s.bytes_put = bytes_put.load(std::memory_order_relaxed);
    s.gets = gets.load(std::memory_order_relaxed);
    s.get_hits = get_hits.load(std::memory_order_relaxed);
    s.bytes_got = bytes_got.load(std::memory_order_relaxed);
    s.contains_queries = contains_queries.load(std::memory_order_relaxed);
    s.evictions = evictions.load(std::memory_order_relaxed);
    s.errors = errors.load(std::memory_order_relaxed);
    s.timeouts = timeouts.load(std::memory_order_relaxed);
    return s;
  }
};

class RemoteTier {
 public:
  virtual ~RemoteTier() = default;
  virtual std::string name() const = 0;  // "redis" or "shared-dir"

  // Stores `record` under `key`, replacing any value there. Best effort: the Status says
  // whether it landed; callers count a failure and go on.
  virtual Status Put(const ChunkKey& key, std::span<const std::byte> record) = 0;
  // The value under `key`: kNotFound on a miss; another code when the tier failed (also a miss
  // to the caller). The bytes are unverified: decode them with DecodeRemoteRecord.
  virtual Result<std::vector<std::byte>> Get(const ChunkKey& key) = 0;
  // For each key, whether the tier holds it right now (batched: one round trip per node where
  // the backend allows). A failure answers false for the keys it covers.
  virtual std::vector<bool> Contains(std::span<const ChunkKey> keys) = 0;
  virtual RemoteTierStats Stats() const = 0;
};

}  // namespace kvault

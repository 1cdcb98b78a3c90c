// The cluster tier (T3) on a Redis Cluster (or Valkey): OpenRedisTier.
//
// Keys. A value lives under `<prefix>{<64 hex of the chunk key>}`. The hash tag puts every key
// of one value in one slot, so a split value's parts sit on the same node as its head and move
// with it. A value of at most part_bytes is stored whole under that key. A larger one is cut
// into parts `<prefix>{hex}:1..n` (part_bytes each, the last one shorter) and the head key holds
// a small manifest (RedisManifest); head and parts are written in one MULTI/EXEC, so a reader
// sees all of a value or none of it, and read in one MULTI/EXEC (one snapshot). A manifest or
// part that is missing or has the wrong size is a miss, never a short value. With ttl_seconds,
// every key of a value gets the same expiry (SET ... EX).
//
// Budget. The tier counts the bytes of the values this instance put (value sizes, not Redis
// overhead) and keeps them in LRU order (a Put or a hit makes a value the newest). Before a Put
// would take it over budget_bytes it deletes its least recently used values (head and parts
// in one DEL) and counts them as evictions. Values other clients put are not counted.
//
// Failures: every call returns within about timeout_ms of no progress from a node (see
// redis_cluster.h); a failure is counted in Stats().errors (and .timeouts) and is a miss.
// Thread-safety: every method may be called from any thread at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "store/remote_tier.h"

namespace kvault {

struct RedisTierOptions {
  std::vector<std::string> seeds;  // "host:port" of any cluster nodes
  std::string password;            // AUTH when not empty
  int timeout_ms = 200;            // connect, and no progress on a command
  uint64_t ttl_seconds = 0;        // 0: values do not expire
  uint64_t budget_bytes = 0;       // 0: unlimited
  uint64_t part_bytes = 8 << 20;   // values above are split into parts of this size
  std::string key_prefix = "kvault:";
  int connections_per_node = 4;
};

Result<std::unique_ptr<RemoteTier>> OpenRedisTier(const RedisTierOptions& options);

// The key names (exposed for tests and tools).
std::string RedisHeadKey(const std::string& prefix, const ChunkKey& key);
std::string RedisPartKey(const std::string& prefix, const ChunkKey& key, uint32_t part);  // part: 1..n

// The head of a split value: fixed size, little-endian.
//   [u64 magic "KVSPLIT1"][u64 total bytes][u64 part bytes][u32 parts][u32 zero]
struct RedisManifest {
  static constexpr size_t kBytes = 32;
  uint64_t total_bytes = 0;
  uint64_t part_bytes = 0;
  uint32_t parts = 0;

  std::vector<std::byte> Encode() const;
  // The manifest in `value`, or nullopt when it is not one (a whole value) or is inconsistent.
  static std::optional<RedisManifest> Decode(std::span<const std::byte> value);
  // True when `value` could be taken for a manifest: such values are always stored split.
  static bool LooksLikeManifest(std::span<const std::byte> value);
  uint64_t PartSize(uint32_t part) const;  // part: 1..parts
};

}  // namespace kvault

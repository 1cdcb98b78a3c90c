// Store configuration. Defaults work with no config: data under ./kvault-data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvault/kv_codec.h"

namespace kvault {

class Env;
class RemoteTier;

// The cluster tier (T3), shared by every node: a Redis Cluster / Valkey, or a directory on a
// distributed file system. Best effort: its failures are misses and counters, never errors
// (docs/STORE.md, "T3").
struct T3Options {
  // "" (off, the default), "redis" or "shared-dir".
  std::string kind;
  // kind "redis": seed nodes as host:port; an element may also be a comma-separated list
  // ("10.0.0.1:7000,10.0.0.2:7000").
  std::vector<std::string> redis_seeds;
  std::string redis_password;    // AUTH, when set
  std::string redis_key_prefix;  // prepended to every key; "": the backend's ("kvault:")
  uint64_t redis_part_bytes = 0; // values larger than this are split; 0: the backend's default
  // kind "shared-dir": the directory every node mounts.
  std::string shared_dir;
  bool shared_dir_sync = true;  // fsync each value before publishing it
  // Most time one call to the tier may take (Redis; a file system takes what it takes).
  int timeout_ms = 200;
  uint64_t ttl_seconds = 0;   // values expire after this long; 0: never
  uint64_t budget_bytes = 0;  // what this client may hold in the tier; 0: unlimited
  // Cap of the T3 write-behind queue, in record bytes (chunks waiting to be published). A
  // chunk committed while the queue is full is not published (t3_put_drops): T3 never
  // slows a put.
  uint64_t queue_bytes = 64ull << 20;
};

struct StoreOptions {
  // Directory of the disk tier (T2). Created if missing.
  std::string dir = "./kvault-data";
  // Hard cap of the host DRAM tier (T1), rounded down to whole pages.
  uint64_t t1_bytes = 1ull << 30;
  // Hard cap of the disk tier (T2) on disk, footers included. 0 disables T2.
  uint64_t t2_bytes = 16ull << 30;
  // T1 allocation unit. A chunk occupies ceil(bytes / page_bytes) pages, not necessarily
  // adjacent, so the arena never fragments. Multiple of 4096.
  uint32_t page_bytes = 256u << 10;
  // Target size of one T2 segment file; space is reclaimed a whole segment at a time.
  uint64_t segment_bytes = 256ull << 20;
  // Most bytes the write-behind thread submits to the disk in one batch.
  uint64_t write_batch_bytes = 128ull << 20;
  // Eviction policy of T1: "lru" (default), "fifo", "s3fifo" or "aware" (scheduler-aware:
  // uses the look-ahead window given by Store::Hint). "opt" needs the future: replay only.
  std::string policy = "lru";
  // Most bytes of T1 that hints may hold prefetched from T2 and not yet read: the prefetcher
  // stops there until requests use them (or they are evicted). 0: a quarter of t1_bytes.
  uint64_t prefetch_bytes = 0;
  bool direct_io = true;     // O_DIRECT for T2 where the file system allows it
  bool use_io_uring = true;  // io_uring for T2 where the kernel allows it
  bool huge_pages = true;    // back T1 with huge pages where available
  // Touch every T1 page when the store opens, so that puts never pay first-touch page
  // faults (slow in virtual machines: ~0.4 GB/s measured here). Costs that time at Open and
  // commits t1_bytes of memory up front; recommended for long-running servers.
  bool prefault_t1 = false;
  // Put T1 in a memfd mapped shared, so that other processes can map it (kvaultd does this
  // and hands the memfd to its local clients: loads copy straight out of it).
  bool shared_t1 = false;
  // How the lower tiers store KV (docs/STORE.md, "Compressed lower tiers"; docs/CODECS.md).
  // T1 always holds KV exactly as put (there is no t1_codec). A chunk is encoded when it is
  // written to T2 (the write-behind) or published to T3, and decoded when it comes back into
  // T1; each record names its codec, so records of any codec (and of older versions) read
  // back whatever these say now. A chunk whose layout the codec cannot encode (int4 with a
  // head_dim that is not a power of two, an f8 dtype) or whose values it refuses (NaN, Inf)
  // is stored raw (kNone).
  KvCodec t2_codec = KvCodec::kNone;
  KvCodec t3_codec = KvCodec::kNone;
  // Threads that decode one encoded chunk coming back into T1 (its layers split among them;
  // the reading thread is one of them). 1: the reading thread alone.
  int decode_threads = 1;
  // File operations; nullptr means Env::Default(). Not owned; must outlive the store.
  Env* env = nullptr;
  // The cluster tier (T3), opened by the store from `t3.kind`.
  T3Options t3;
  // A cluster tier to use instead of opening one (tests inject a fake; several stores in one
  // process may share one). Overrides t3.kind (the other t3 fields still apply).
  // Not owned; must outlive the store.
  RemoteTier* t3_tier = nullptr;
};

}  // namespace kvault

// kvault::Store: the embedded KV-cache store over host DRAM (T1) and local SSD (T2).
//
// Thread-safety: every public method of Store may be called from any thread at once.
// ChunkWriter and ChunkReader are handles owned by one thread at a time.
// Durability: put() is durable in T1 on return; Flush() returns when everything put before
// it is on T2; after a crash, reopening finds every flushed entry and only intact entries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kvault/key.h"
#include "kvault/layout.h"
#include "kvault/options.h"
#include "kvault/stats.h"
#include "kvault/status.h"

namespace kvault {

enum class Tier : uint8_t { kNone = 0, kHost = 1, kDisk = 2 };  // -, T1, T2
const char* TierName(Tier tier);

struct CachedChunk {
  ChunkKey key;
  uint32_t begin = 0;   // first token of the chunk in the looked-up stream
  uint32_t tokens = 0;  // < chunk_tokens for a stored trailing partial chunk
  Tier tier = Tier::kNone;
};

struct LookupResult {
  std::vector<CachedChunk> chunks;  // the longest cached prefix, in order
  uint32_t cached_tokens = 0;
  uint32_t total_tokens = 0;
};

class StoreImpl;
struct Entry;

// Writes one chunk into T1, layer by layer, straight into its slot. The chunk becomes visible
// to lookups at Commit(); dropping the writer without Commit() discards it.
class ChunkWriter {
 public:
  ChunkWriter() = default;
  ChunkWriter(ChunkWriter&&) noexcept;
  ChunkWriter& operator=(ChunkWriter&&) noexcept;
  ~ChunkWriter();

  const ChunkKey& key() const;
  uint32_t tokens() const;
  // True when the store already held this chunk: writes are skipped and Commit() is a no-op.
  bool exists() const { return exists_; }
  // `kv` holds K then V of `layer`: exactly layout.layer_range(layer, tokens).size bytes.
  Status WriteLayer(uint32_t layer, std::span<const std::byte> kv);
  // Copies `data` to byte `offset` of the payload.
  Status WriteRange(size_t offset, std::span<const std::byte> data);
  // Publishes the chunk. kInvalidArgument, and the chunk is dropped, unless every payload byte
  // was written.
  Status Commit();

 private:
  friend class StoreImpl;
  ChunkWriter(StoreImpl* impl, Entry* entry, ChunkKey key, uint32_t tokens, bool exists,
              std::vector<ChunkKey> superseded);
  StoreImpl* impl_ = nullptr;
  Entry* entry_ = nullptr;  // the uncommitted entry; null when exists() or after Commit()
  ChunkKey key_;
  uint32_t tokens_ = 0;
  bool exists_ = false;
  std::vector<ChunkKey> superseded_;  // partial chunks this full chunk replaces at Commit()
};

// A chunk pinned in T1 for reading: it cannot be evicted while the reader lives.
class ChunkReader {
 public:
  ChunkReader() = default;
  ChunkReader(ChunkReader&&) noexcept;
  ChunkReader& operator=(ChunkReader&&) noexcept;
  ~ChunkReader();

  const ChunkKey& key() const;
  uint32_t tokens() const;
  size_t size() const;  // payload bytes
  Tier served_from() const { return served_from_; }
  // Copies layer `layer` (K then V) into `dst`, which must hold layer_range(...).size bytes.
  Status ReadLayer(uint32_t layer, std::span<std::byte> dst) const;
  // Copies payload bytes [offset, offset + dst.size()) into dst.
  Status ReadRange(size_t offset, std::span<std::byte> dst) const;
  // Calls fn with the T1 memory holding payload bytes [offset, offset + size), as few
  // contiguous pieces as possible (for DMA engines that copy from host memory themselves).
  Status ForEachPiece(size_t offset, size_t size,
                      const std::function<void(std::span<const std::byte>)>& fn) const;

 private:
  friend class StoreImpl;
  ChunkReader(StoreImpl* impl, Entry* entry, Tier from);
  StoreImpl* impl_ = nullptr;
  Entry* entry_ = nullptr;
  Tier served_from_ = Tier::kNone;
};

class Store {
 public:
  // Opens (or creates) a store; rebuilds the T2 index from the segments under options.dir.
  static Result<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();  // waits for the write-behind queue (like Flush) and closes

  // Longest cached prefix of `tokens`: whole chunks until the first miss, then the longest
  // stored partial chunk that matches. Never touches the disk.
  LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> tokens);
  // The same for tokens that continue the chain after chunk `parent` (chunk begins are
  // relative to `tokens`). Lets an engine that dropped the middle of a long conversation
  // find the cached chunks after the gap by their original keys.
  LookupResult LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);

  // Starts a put of the chunk with `tokens` that follows `parent` (ns.id() for the first).
  // Allocates the T1 slot, evicting by policy; never waits for the disk. If the chunk is
  // already stored, the writer's exists() is true and its writes are skipped; if another
  // writer holds the same chunk uncommitted, kResourceExhausted (try again).
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent,
                               std::span<const uint32_t> tokens);
  // BeginPut + one WriteRange of the whole payload + Commit.
  Status Put(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
             std::span<const std::byte> payload);

  // Pins chunk `key` in T1 for reading; promotes it from T2 if needed (reads the disk and
  // verifies its checksum). kNotFound on a miss, corrupt or unreadable data included;
  // kResourceExhausted or kNoSpace when T1 cannot make room to promote it (every page pinned,
  // or a chunk larger than T1). Readers must not outlive the store.
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key);

  // Scheduler hint: the prompts of the next queued requests, in the order they will run (the
  // look-ahead window; it replaces the previous hint). The "aware" policy keeps their chunks
  // in DRAM ahead of everything else, and a background prefetcher reads the ones only on T2
  // into T1 (while prefetched-but-unread bytes stay under options.prefetch_bytes), never
  // evicting a window entry or one not yet on disk. Returns at once: never waits for I/O.
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts);

  // Returns when everything put before the call is on T2 (or failed: the Status says so).
  Status Flush();
  // Returns when the prefetches of the hints given so far are done (tests, benchmarks).
  void WaitForPrefetch();

  StoreStats Stats() const;

 private:
  explicit Store(std::unique_ptr<StoreImpl> impl);
  std::unique_ptr<StoreImpl> impl_;
};

}  // namespace kvault

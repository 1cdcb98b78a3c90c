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

enum class Tier : uint8_t { kNone = 0, kT1 = 1, kT2 = 2, kT3 = 3 };  // -, T1, T2, T3
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

// What a ChunkWriter writes through: a T1 slot of the embedded store, or of kvaultd's shared
// memory. Implemented by the store and by kvault::Client; users of the store never need it.
// The handle checks every range against the chunk's size before calling in.
class ChunkWriterBackend {
 public:
  virtual ~ChunkWriterBackend() = default;  // drops the chunk unless Commit() succeeded
  virtual void Write(size_t offset, std::span<const std::byte> data) = 0;
  // The chunk's memory for [offset, offset + size), as few contiguous pieces as possible.
  virtual void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn) = 0;
  virtual void MarkWritten(size_t offset, size_t size) = 0;
  virtual Status Commit() = 0;
};

// What a ChunkReader reads from: a pinned T1 chunk (the store's, or kvaultd's shared memory
// mapped by a Client), or a private copy. Ranges are checked by the handle.
class ChunkReaderBackend {
 public:
  virtual ~ChunkReaderBackend() = default;  // unpins
  virtual void Read(size_t offset, std::span<std::byte> dst) const = 0;
  virtual void ForEachPiece(size_t offset, size_t size,
                            const std::function<void(std::span<const std::byte>)>& fn) const = 0;
};

// Writes one chunk into T1, layer by layer, straight into its slot. The chunk becomes visible
// to lookups at Commit(); dropping the writer without Commit() discards it.
class ChunkWriter {
 public:
  ChunkWriter() = default;
  // A writer of the chunk `key` of `tokens` tokens; `backend` is null when exists.
  ChunkWriter(ChunkKey key, uint32_t tokens, const KvLayout& layout, bool exists,
              std::unique_ptr<ChunkWriterBackend> backend);
  ChunkWriter(ChunkWriter&&) noexcept = default;
  ChunkWriter& operator=(ChunkWriter&&) noexcept = default;
  ~ChunkWriter() = default;

  const ChunkKey& key() const { return key_; }
  uint32_t tokens() const { return tokens_; }
  size_t size() const { return bytes_; }  // payload bytes
  // True when the store already held this chunk: writes are skipped and Commit() is a no-op.
  bool exists() const { return exists_; }
  // `kv` holds K then V of `layer`: exactly layout.layer_range(layer, tokens).size bytes.
  Status WriteLayer(uint32_t layer, std::span<const std::byte> kv);
  // Copies `data` to byte `offset` of the payload.
  Status WriteRange(size_t offset, std::span<const std::byte> data);
  // For DMA engines that fill host memory themselves (a GPU's device-to-host copy): calls fn
  // with the slot's memory for payload bytes [offset, offset + size); the caller fills it and
  // then calls MarkWritten for the bytes it wrote. Nothing is called when exists().
  Status ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn);
  Status MarkWritten(size_t offset, size_t size);
  // Publishes the chunk. kInvalidArgument, and the chunk is dropped, unless every payload byte
  // was written.
  Status Commit();

 private:
  Status CheckRange(size_t offset, size_t size) const;
  ChunkKey key_;
  uint32_t tokens_ = 0;
  KvLayout layout_;
  size_t bytes_ = 0;
  bool exists_ = false;
  std::unique_ptr<ChunkWriterBackend> backend_;  // null when exists() or after Commit()
};

// A chunk pinned for reading: it cannot be evicted while the reader lives.
class ChunkReader {
 public:
  ChunkReader() = default;
  ChunkReader(ChunkKey key, uint32_t tokens, const KvLayout& layout, Tier served_from,
              std::unique_ptr<ChunkReaderBackend> backend);
  ChunkReader(ChunkReader&&) noexcept = default;
  ChunkReader& operator=(ChunkReader&&) noexcept = default;
  ~ChunkReader() = default;

  const ChunkKey& key() const { return key_; }
  uint32_t tokens() const { return tokens_; }
  size_t size() const { return bytes_; }  // payload bytes
  Tier served_from() const { return served_from_; }
  // Copies layer `layer` (K then V) into `dst`, which must hold layer_range(...).size bytes.
  Status ReadLayer(uint32_t layer, std::span<std::byte> dst) const;
  // Copies payload bytes [offset, offset + dst.size()) into dst.
  Status ReadRange(size_t offset, std::span<std::byte> dst) const;
  // Calls fn with the memory holding payload bytes [offset, offset + size), as few
  // contiguous pieces as possible (for DMA engines that copy from host memory themselves).
  Status ForEachPiece(size_t offset, size_t size,
                      const std::function<void(std::span<const std::byte>)>& fn) const;

 private:
  ChunkKey key_;
  uint32_t tokens_ = 0;
  KvLayout layout_;
  size_t bytes_ = 0;
  Tier served_from_ = Tier::kNone;
  std::unique_ptr<ChunkReaderBackend> backend_;
};

// The store's API. Store::Open gives the embedded store (this process's own T1 and T2);
// kvault::Client (client.h) gives the same API served by kvaultd, the node's shared store.
class Store {
 public:
  // Opens (or creates) an embedded store; rebuilds the T2 index from the segments under
  // options.dir.
  static Result<std::unique_ptr<Store>> Open(const StoreOptions& options);
  virtual ~Store() = default;  // the embedded store waits for the write-behind (like Flush)

  // Longest cached prefix of `tokens`: whole chunks until the first miss, then the longest
  // stored partial chunk that matches. Never touches the disk. With a cluster tier (T3), the
  // whole chunks after the first local miss are asked about in one batched call (bounded by
  // the tier's timeout) and the ones it holds reported as Tier::kT3; partial chunks are
  // only ever local. A failing T3 only shortens the prefix.
  virtual LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> tokens) = 0;
  // The same for tokens that continue the chain after chunk `parent` (chunk begins are
  // relative to `tokens`). Lets an engine that dropped the middle of a long conversation
  // find the cached chunks after the gap by their original keys.
  virtual LookupResult LookupFrom(const Namespace& ns, const ChunkKey& parent,
                                  std::span<const uint32_t> tokens) = 0;
  // The same for a stream already keyed (KeyTokens / KeyTokensFrom in `ns`): the store hashes
  // none of prompt.full again (only a stored partial chunk's candidate tokens). Same result as
  // LookupFrom(ns, prompt.first_parent, prompt.tokens). The default calls the token method;
  // the embedded store implements it natively and its token methods key once and call it.
  virtual LookupResult LookupKeyed(const Namespace& ns, const KeyedTokens& prompt);

  // Starts a put of the chunk with `tokens` that follows `parent` (ns.id() for the first).
  // Allocates the T1 slot, evicting by policy; never waits for the disk. If the chunk is
  // already stored, the writer's exists() is true and its writes are skipped; if another
  // writer holds the same chunk uncommitted, kResourceExhausted (try again).
  virtual Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent,
                                       std::span<const uint32_t> tokens) = 0;
  // The same for a chunk already keyed: `chunk` is a span of a keyed stream (its key, parent
  // and tokens; begin is ignored) and `chunk_tokens` its chunk.tokens tokens. The store trusts
  // chunk.key == ChainKey(ns, chunk.parent, chunk_tokens) (only a partial chunk's prefix
  // relatives are hashed, to find the partial chunks a full one supersedes); kInvalidArgument
  // when chunk.tokens != chunk_tokens.size(). The default calls BeginPut.
  virtual Result<ChunkWriter> BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk,
                                            std::span<const uint32_t> chunk_tokens);
  // BeginPut + one WriteRange of the whole payload + Commit.
  Status Put(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
             std::span<const std::byte> payload);

  // Pins chunk `key` in T1 for reading; promotes it from T2 if needed (reads the disk and
  // verifies its checksum), or fetches it from T3 when it is not held locally (verifies key,
  // namespace, layout and checksum; served_from() is then kT3). kNotFound on a miss,
  // corrupt or unreadable data and T3 failures included;
  // kResourceExhausted or kNoSpace when T1 cannot make room to promote it (every page pinned,
  // or a chunk larger than T1). Readers must not outlive the store.
  virtual Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key) = 0;

  // Scheduler hint: the prompts of the next queued requests, in the order they will run (the
  // look-ahead window; it replaces the previous hint). The "aware" policy keeps their chunks
  // in DRAM ahead of everything else, and a background prefetcher reads the ones only on T2
  // into T1 (while prefetched-but-unread bytes stay under options.prefetch_bytes), never
  // evicting a window entry or one not yet on disk. Returns at once: never waits for I/O.
  virtual void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) = 0;
  // The same for prompts already keyed in `ns` (KeyTokens): nothing is hashed again. The
  // pointers need only outlive the call. The default calls Hint with the prompts' tokens, so
  // it assumes first_parent == ns.id(); the embedded store also honours a KeyTokensFrom
  // prompt's first_parent.
  virtual void HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts);

  // Returns when everything put before the call is on T2 (or failed: the Status says so).
  virtual Status Flush() = 0;
  // Returns when the prefetches of the hints given so far are done (tests, benchmarks).
  virtual void WaitForPrefetch() = 0;

  virtual StoreStats Stats() const = 0;

  // The host memory T1 chunks live in, for page-locking by a GPU engine (so its DMA reads and
  // writes chunks in place at PCIe speed). Valid while the store lives; empty when the memory
  // can change under the caller (a kvaultd client remaps it on reconnect).
  virtual std::vector<std::span<std::byte>> HostMemory() const { return {}; }
};

}  // namespace kvault

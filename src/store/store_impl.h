// StoreImpl: the embedded kvault::Store: the tier core (index, partial chunks, policies, T1
// page accounting and victim rules; store/tier_core.h) with payloads in the T1 arena, the T2
// segment log and the cluster tier (T3), and the movers around it. One file per job:
// store_impl.cc (open, close, the core's bookkeeping hooks, flush, stats), store_lookup.cc
// (lookup, hints), store_put.cc (put, commit), store_read.cc (reads, promotion, prefetch),
// store_write_behind.cc (write-behind, compaction), store_cluster.cc (T3 fetch, publish).
//
// Locking: one mutex (mu_) guards the index, both tiers' policies, the access window, the
// arena's free list, the per-segment maps, the write, T3 and prefetch queues and the
// counters. Payload bytes are copied outside mu_, into or out of pages of pinned entries
// only. Disk I/O and every call into the cluster tier run without mu_. Lock order: mu_, then
// the segment log's own mutex; the cluster tier is never called with mu_ held. The fields
// mu_ guards carry GUARDED_BY, the helpers that need it REQUIRES(mu_) (store/mutex.h: a Clang
// build checks them). The objects the store serializes with mu_ but that cannot name it
// (each Entry, the TierCore behind core_, the arena's free list) say so in their headers:
// thread-safety none, the owner serializes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kvault/kv_codec.h"
#include "kvault/store.h"
#include "store/aligned_buffer.h"
#include "store/entry.h"
#include "store/eviction_policy.h"
#include "store/host_arena.h"
#include "store/mutex.h"
#include "store/remote_tier.h"
#include "store/segment_log.h"
#include "store/tier_core.h"

namespace kvault {

// One prompt of a look-ahead window: its namespace, tokens and whole chunks
// (ChunkKeys(*ns, tokens, false)). The pointers must outlive the Hint call.
struct HintPrompt {
  const Namespace* ns;
  std::span<const uint32_t> tokens;
  const std::vector<ChunkSpan>* full;
  const ChunkKey* first_parent = nullptr;  // the chunk `tokens` continues after; null: ns->id()
};

class StoreImpl final : private TierCoreListener {
 public:
  static Result<std::unique_ptr<StoreImpl>> Open(const StoreOptions& options);
  ~StoreImpl();

  // Longest cached continuation of prompt.tokens after prompt.first_parent (Store::LookupKeyed).
  LookupResult Lookup(const Namespace& ns, const KeyedTokens& prompt);
  // Store::BeginPutKeyed: `chunk` is trusted to be keyed in `ns`.
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkSpan& chunk, std::span<const uint32_t> tokens);
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key);
  Status Flush();
  // Store::HintKeyed: prompts keyed from the start of the chain.
  void Hint(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts);
  // The same for a window whose prompts may be of different namespaces (kvaultd merges its
  // clients' windows), with each prompt's whole chunks already hashed.
  void Hint(std::span<const HintPrompt> prompts);
  void WaitForPrefetch();
  StoreStats Stats() const;
  // The cluster tier's own counters; nullopt when T3 is off.
  std::optional<RemoteTierStats> ClusterStats() const;
  // Returns when the T3 write-behind has nothing queued or in flight (tests, benchmarks).
  void WaitForClusterWrites();

  // For the handles. REQUIRES: the entry is pinned by the calling handle.
  // Copies into an uncommitted entry; hashes the bytes on the way when they extend the
  // hashed prefix.
  void CopyIn(Entry* e, size_t offset, std::span<const std::byte> data);
  // The caller filled [offset, offset + size) of e's pages itself (ForEachWritablePiece).
  void MarkWritten(Entry* e, size_t offset, size_t size);
  void ForEachWritablePiece(Entry* e, size_t offset, size_t size,
                            const std::function<void(std::span<std::byte>)>& fn);
  void CopyOut(const Entry* e, size_t offset, std::span<std::byte> dst) const;
  void ForEachPiece(const Entry* e, size_t offset, size_t size,
                    const std::function<void(std::span<const std::byte>)>& fn) const;
  // Publishes the chunk; kInvalidArgument (and the chunk is dropped) unless every payload
  // byte was written.
  Status Commit(Entry* e, const std::vector<ChunkKey>& superseded);
  void Abort(Entry* e);
  void Unpin(Entry* e);

  // T1's memory (kvaultd maps it into its clients when options.shared_t1).
  const HostArena& arena() const { return *arena_; }

 private:
  explicit StoreImpl(const StoreOptions& options);
  void OnRecordFound(const RecordHeader& h, DiskLocation loc);  // while opening
  ChunkReader MakeReader(Entry* e, Tier from);  // REQUIRES: e pinned for the reader

  Entry* FindLocked(const ChunkKey& key) const REQUIRES(mu_);
  Tier TierOfLocked(const Entry* e, const Namespace& ns) const REQUIRES(mu_);
  // The cached prefix of `tokens` after `first_parent`, from the local tiers only: the chunks
  // of `full` (its whole chunks' spans) until the first miss, then the longest stored partial
  // chunk that follows.
  std::vector<CachedChunk> CachedPrefixLocked(const Namespace& ns, const ChunkKey& first_parent,
                                              std::span<const uint32_t> tokens,
                                              const std::vector<ChunkSpan>& full) const REQUIRES(mu_);
  // Appends to `chunks` (the cached whole chunks of `full` so far) the next whole chunks that
  // are cached locally, or in T3 where `in_t3` says so (`in_t3[i]` answers for
  // full[t3_from + i]; null: no T3), until the first miss.
  void ExtendWholePrefixLocked(const Namespace& ns, const std::vector<ChunkSpan>& full,
                               const std::vector<bool>* in_t3, size_t t3_from,
                               std::vector<CachedChunk>* chunks) const REQUIRES(mu_);
  // Appends the longest local partial chunk that continues `chunks` (whole chunks of `full`).
  void AppendPartialLocked(const Namespace& ns, const ChunkKey& first_parent, std::span<const uint32_t> tokens,
                           const std::vector<ChunkSpan>& full,
                           std::vector<CachedChunk>* chunks) const REQUIRES(mu_);
  void CountLookupLocked(const LookupResult& r, uint32_t chunk_tokens) REQUIRES(mu_);
  // Reserves T1 pages for e (into e->pages), evicting T1 victims that `may_evict` accepts
  // (default: any) by the core's rules.
  Status ReserveT1Locked(Entry* e, const std::function<bool(const Entry*)>& may_evict = nullptr) REQUIRES(mu_);
  // TierCoreListener: the core moved T1 space, evicted, dropped a T2 copy or erased (mu_ held:
  // the store calls the core only with it).
  void OnT1Reserved(Entry* e, uint32_t pages) override REQUIRES(mu_);
  void OnT1Released(Entry* e) override REQUIRES(mu_);
  void OnEvictedFromT1(Entry* e) override REQUIRES(mu_);
  void OnT2Dropped(Entry* e) override REQUIRES(mu_);
  void OnErase(Entry* e) override REQUIRES(mu_);
  // Reads T2-only entry e into fresh T1 pages; releases `lock` during the read. On success e is
  // in T1 with one more pin (the caller's); `demand` (a read, not a prefetch) marks it used.
  // On failure e is unpinned again, its unreadable T2 copy dropped (and e erased when nothing
  // else holds it); the Status says why.
  Status PromoteLocked(MutexLock& lock, Entry* e, bool demand,
                       const std::function<bool(const Entry*)>& may_evict = nullptr) REQUIRES(mu_);
  void UnpinLocked(Entry* e) REQUIRES(mu_);                  // e pinned
  void EraseLocked(Entry* e) REQUIRES(mu_);                  // e->pins == 0
  void EnqueueWriteLocked(Entry* e) REQUIRES(mu_);
  // BeginPut of a chunk the index holds: "exists" (re-queued for T2, waking the writer,
  // when only in T1), or kResourceExhausted while another writer holds it uncommitted.
  Result<ChunkWriter> PutOfStoredChunkLocked(Entry* stored) REQUIRES(mu_);
  // The stored partial chunks that full chunk `chunk` (of `tokens`) extends; none for a
  // partial chunk.
  std::vector<ChunkKey> PartialsSupersededByLocked(const Namespace& ns, const ChunkSpan& chunk,
                                                   std::span<const uint32_t> tokens) const REQUIRES(mu_);
  // A writer's uncommitted entry for `chunk`: T1 pages reserved, pinned, indexed (invisible
  // to lookups until Commit).
  Result<Entry*> NewWriterEntryLocked(const Namespace& ns, const ChunkSpan& chunk) REQUIRES(mu_);
  void ClearPrefetchedLocked(Entry* e) REQUIRES(mu_);
  // e's record on T2 stops being live (the entry itself stays while in T1 or pinned).
  void DropT2CopyLocked(Entry* e) REQUIRES(mu_);             // e->on_t2
  void AddT2CopyLocked(Entry* e, DiskLocation loc) REQUIRES(mu_);
  // Records where e's live T2 record is (location and per-segment accounting).
  void PlaceT2RecordLocked(Entry* e, DiskLocation loc) REQUIRES(mu_);
  void CountErrorLocked(const Status& st) REQUIRES(mu_);
  // The header of e's raw payload (codec none, e->bytes, e->payload_checksum as it stands):
  // what the write-behind and the T3 publisher start from.
  static RecordHeader RawHeaderOf(const Entry& e);
  // The header of e's T2 record (its location's codec, stored size and checksum): what a
  // read of that record must find.
  static RecordHeader T2HeaderOf(const Entry& e);
  // A committed-to-be entry for the chunk a record describes (RawHeaderOf's inverse): its
  // raw size, and its raw checksum when the record is raw (unknown for an encoded one).
  static std::unique_ptr<Entry> EntryOf(const RecordHeader& h);

  // Codecs (docs/STORE.md, "Compressed lower tiers"). T1 pages always hold raw KV.
  // `tier_codec` when it can encode chunks of `layout` and its encoding of `tokens` tokens is
  // smaller than the raw chunk, else kNone (stored raw).
  static KvCodec CodecFor(KvCodec tier_codec, const KvLayout& layout, uint32_t tokens);
  // Encodes pinned entry e's payload (its T1 pages) with `codec` into `out`: the encoding,
  // then zeros up to the block boundary. kInvalidArgument when the codec refuses the values
  // (NaN or Inf): the caller stores the chunk raw. mu_ not needed; any thread.
  Status EncodeFromPages(const Entry* e, KvCodec codec, AlignedBuffer* out) const;
  // Decodes `encoded` (a record's stored payload in `codec`, already checksummed) into
  // pinned entry e's T1 pages (pages in one run: the whole chunk on options_.decode_threads
  // threads; else layer by layer), and zeros the padding. kCorruption when it
  // does not decode. mu_ not needed; any thread.
  Status DecodeIntoPages(const Entry* e, KvCodec codec, std::span<const std::byte> encoded);

  // T3 read path. Fetches chunk `key` of `ns` from the cluster tier into T1 as a committed
  // entry pinned for the returned reader; releases `lock` during the fetch and the copy.
  // nullopt when the chunk turned up in the local index meanwhile (look again). Every T3
  // failure or bad value is kNotFound (counted); kResourceExhausted / kNoSpace when T1 has
  // no room. REQUIRES: mu_ held via `lock`, key absent from the index and t3_fetching_.
  std::optional<Result<ChunkReader>> FetchFromClusterLocked(MutexLock& lock, const Namespace& ns,
                                                            const ChunkKey& key) REQUIRES(mu_);
  // Checks a fetched value: the record of `key` (DecodeRemoteRecord) in namespace `ns`.
  static Status CheckClusterValue(std::span<const std::byte> value, const Namespace& ns, const ChunkKey& key,
                                  RecordHeader* h, std::span<const std::byte>* payload);
  // T3 write path: queues committed whole chunk e for publishing, or drops it (counted)
  // when the queue is at its cap.
  void EnqueueClusterWriteLocked(Entry* e) REQUIRES(mu_);
  // e's record (remote_record.h) copied out of its pages, encoded with options_.t3_codec when
  // it applies (h's codec, size and checksum say so); else raw, and then h->payload_checksum
  // is filled in when `hash`. REQUIRES: e pinned by the caller; mu_ not held.
  std::vector<std::byte> CopyRecordOut(const Entry* e, RecordHeader* h, bool hash) const;
  // XXH3 of a pinned entry's payload, in one pass over its pages (mu_ not needed).
  uint64_t PayloadChecksumOf(const Entry* e) const;
  // Zeros a pinned entry's pages past its payload up to the block boundary, so that no stale
  // bytes reach the disk or T3 (mu_ not needed).
  void ZeroPadding(const Entry* e);
  // Publishes committed entry e (in T1) to T3: pins it, copies its record out and unpins it
  // with mu_ released, then puts the record with mu_ released; counts the outcome. The T3
  // writer thread only. REQUIRES: mu_ held via `lock`.
  Status PublishLocked(MutexLock& lock, Entry* e) REQUIRES(mu_);

  void WriterLoop();
  void ClusterWriterLoop();
  void PrefetchLoop();
  Status EnsureT2Space(std::span<const uint64_t> record_bytes);  // writer thread only
  void ReclaimSegment(uint32_t id);                              // writer thread only
  void CompactSegment(uint32_t id);                              // writer thread only

  // Set by Open, fixed from then on. The arena's Allocate/Free run under mu_ (core callbacks);
  // the pages of pinned entries are read and written without it.
  const StoreOptions options_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<SegmentLog> log_;  // null when T2 is off
  std::unique_ptr<RemoteTier> owned_remote_;  // the tier opened from options_.t3
  RemoteTier* remote_ = nullptr;               // T3: owned_remote_ or options_.t3_tier; null when off

  mutable Mutex mu_;
  AccessWindow window_ GUARDED_BY(mu_);  // the last Store::Hint; both policies read it (declared before core_)
  // The index, partial chunks, both tiers' policies, T1 page accounting and victim rules.
  std::unique_ptr<TierCore> core_ PT_GUARDED_BY(mu_);
  // Segment id -> keys written there (some may have moved or gone since).
  std::unordered_map<uint32_t, std::vector<ChunkKey>> segment_keys_ GUARDED_BY(mu_);
  // Segment id -> bytes of its records that are still the live copy of an entry. A segment
  // with none is deleted; one at least half dead is compacted (see EnsureT2Space).
  std::unordered_map<uint32_t, uint64_t> segment_live_ GUARDED_BY(mu_);
  // Segment id -> bytes of every record appended there, live or dead (no index or trailer):
  // dead bytes = total - live, what compacting the segment frees beyond its overhead.
  std::unordered_map<uint32_t, uint64_t> segment_total_ GUARDED_BY(mu_);

  // Prefetch: keys of T2-only window entries, in window order; the prefetch thread reads them.
  std::deque<ChunkKey> prefetch_queue_ GUARDED_BY(mu_);
  uint64_t prefetched_bytes_ GUARDED_BY(mu_) = 0;  // bytes of T1 entries with `prefetched` set
  uint64_t prefetch_budget_ GUARDED_BY(mu_) = 0;   // the most prefetched_bytes_ may reach
  bool prefetching_ GUARDED_BY(mu_) = false;       // the prefetch thread has a read in flight
  std::condition_variable prefetch_cv_;  // prefetch work, or shutdown

  // Write-behind queue of (seq, key). An item is stale when its entry is gone, no longer
  // dirty, or has a newer seq. processed_seq_ is the highest seq the writer has finished.
  std::deque<std::pair<uint64_t, ChunkKey>> write_queue_ GUARDED_BY(mu_);
  uint64_t next_seq_ GUARDED_BY(mu_) = 1;
  uint64_t last_queued_seq_ GUARDED_BY(mu_) = 0;
  uint64_t processed_seq_ GUARDED_BY(mu_) = 0;
  bool shutdown_ GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point degraded_until_ GUARDED_BY(mu_){};  // after a T2 failure: fail fast
  std::condition_variable writer_cv_;    // work for the writer, or shutdown
  std::condition_variable progress_cv_;  // writes finished, promotions finished
  uint64_t unpersisted_ GUARDED_BY(mu_) = 0;  // puts that never reached T2
  uint64_t unpersisted_at_flush_ GUARDED_BY(mu_) = 0;

  // T3 write-behind: keys of committed whole chunks to publish, with their record bytes.
  // t3_queued_bytes_ counts the queue and the record in flight, and stays under
  // options_.t3.queue_bytes. The T3 writer pins an entry only while copying its record.
  struct ClusterWrite {
    ChunkKey key;
    uint64_t bytes = 0;
  };
  std::deque<ClusterWrite> t3_queue_ GUARDED_BY(mu_);
  uint64_t t3_queued_bytes_ GUARDED_BY(mu_) = 0;
  bool t3_busy_ GUARDED_BY(mu_) = false;  // the T3 writer holds a record (copying or putting)
  std::condition_variable t3_cv_;       // T3 work, or shutdown
  // Keys being fetched from T3 by OpenChunk (at most one fetch per key; others wait on
  // progress_cv_). A key leaves the set when its entry is committed or the fetch failed.
  std::unordered_set<ChunkKey, DigestHash> t3_fetching_ GUARDED_BY(mu_);

  // The write-behind's buffers for encoded payloads, one per chunk of a batch (writer thread
  // only; kept between batches so that they are not reallocated each time).
  std::vector<AlignedBuffer> encode_buffers_;

  mutable StoreStats stats_ GUARDED_BY(mu_);
  mutable std::atomic<uint64_t> bytes_loaded_{0};
  std::thread writer_;
  std::thread t3_writer_;  // runs when remote_
  std::thread prefetcher_;
};

}  // namespace kvault

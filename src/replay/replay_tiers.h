// ReplayTiers: the store's tier core (store/tier_core.h) driven chunk by chunk, without
// payloads, for `kvault replay` and the differential test against the embedded store.
//
// Every rule is the core's, so the store's: T1 in whole pages, T1 victims by the store's
// preferences, partial chunks under their parents and superseded by the full chunk that
// extends them, a read of a T2 chunk promotes it (a demand read touches its T2 copy, a
// prefetch does not), an entry that leaves both tiers unpinned is erased. What replay does
// its own way: a put is written to T2 at once when the caller says so (WriteToT2; the store's
// write-behind does it later), and T2 is counted in records (4 KiB header + stored payload
// rounded to 4 KiB: raw, or encoded by the T2 codec as the store's records are) against a
// byte cap, where the store frees whole segments of its log. Trace keys
// are synthetic: a partial chunk is recognised by its token stream and position
// (TraceChunk::stream, stream_begin) instead of by hashing tokens. Time is not modelled
// here: the simulator charges it.
//
// Thread-safety: none (single-threaded simulation).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvault/key.h"
#include "kvault/kv_codec.h"
#include "kvault/layout.h"
#include "kvault/store.h"
#include "replay/trace.h"
#include "store/entry.h"
#include "store/eviction_policy.h"
#include "store/tier_core.h"

namespace kvault::replay {

struct TierCounters {
  uint64_t t1_evictions = 0, t2_evictions = 0;
  uint64_t t1_put_failures = 0;  // chunks that found no unpinned T1 room (not saved)
};

// How T2 stores its records (StoreOptions::t2_codec): `codec` for chunks of `layout` (the
// model's KV layout; its chunk_tokens is not used). kNone: raw records.
struct T2Encoding {
  KvCodec codec = KvCodec::kNone;
  KvLayout layout;
};

class ReplayTiers final : private TierCoreListener {
 public:
  // `policy` names a MakePolicy policy used for both tiers; t2_bytes == 0 disables T2;
  // `chunk_tokens` is the trace's (a chunk with fewer tokens is a partial one). With a T2
  // codec, a record's stored payload is EncodedChunkBytes(codec, layout, tokens), scaled by
  // kv_bytes_per_token / layout.token_bytes() when the two differ (an overridden size).
  static Result<std::unique_ptr<ReplayTiers>> Create(uint64_t t1_bytes, uint64_t t2_bytes, uint32_t page_bytes,
                                                     uint64_t kv_bytes_per_token, uint32_t chunk_tokens,
                                                     const std::string& policy, PolicyContext context,
                                                     T2Encoding t2_encoding = {});

  // The entries of the longest cached prefix of `chain`, as Store::Lookup finds it: its
  // chunks until the first one in no tier, then the longest stored partial chunk that the
  // next chunk of `chain` extends.
  std::vector<Entry*> LookupPrefix(const std::vector<TraceChunk>& chain);
  // A read of e, as Store::OpenChunk: a T1 entry is touched (both tiers' policies see the
  // use); a T2-only one is promoted (evicting any unpinned victim) with its T2 copy touched.
  // False when it could not be brought into T1 (the read streams it through).
  bool Read(Entry* e);
  // Marks a read of an entry in T1 (both tiers' policies see the use).
  void Touch(Entry* e);
  // Pins keep an entry from being a victim (the request using it is in flight).
  void Pin(Entry* e) { ++e->pins; }
  void Unpin(Entry* e);
  // A prefetch: brings a T2-only entry into T1 without counting it as a use. `may_evict`
  // limits the victims (pinned entries never are). False when no room could be made.
  bool Promote(Entry* e, const std::function<bool(const Entry*)>& may_evict);
  // Puts chunk `c` (following `parent`) into T1, evicting by policy, and sets *created. An
  // entry already stored is returned as it is (*created = false); nullptr when T1 has no
  // unpinned room. A full chunk supersedes the stored partial chunks it extends.
  Entry* Put(const TraceChunk& c, const ChunkKey& parent, bool* created);
  // The entry of `key` in either tier, or nullptr.
  Entry* Find(const ChunkKey& key);
  // Writes e to T2 (evicting by policy) as a record of t2_stored_bytes(e->tokens) payload
  // bytes (e->location.payload_bytes, with the codec, when encoded). False when T2 is off or
  // has no unpinned room.
  bool WriteToT2(Entry* e);
  // The window changed for these keys: re-file the entries present.
  void WindowChanged(const std::vector<ChunkKey>& keys) { core_->WindowChanged(keys); }

  uint64_t t1_used() const { return core_->t1_used_bytes(); }
  uint64_t t2_used() const { return core_->t2_live_bytes(); }
  uint64_t t1_capacity() const { return core_->t1_capacity_bytes(); }
  uint64_t t2_capacity() const { return t2_cap_; }
  uint64_t chunk_bytes(uint32_t tokens) const { return uint64_t{tokens} * kv_bytes_per_token_; }
  // The stored payload bytes of a `tokens`-token chunk on T2 (chunk_bytes with codec none).
  uint64_t t2_stored_bytes(uint32_t tokens) const;
  KvCodec t2_codec() const { return t2_encoding_.codec; }
  size_t entries() const { return core_->size(); }
  TierCounters counters() const;
  const TierCore& core() const { return *core_; }

 private:
  ReplayTiers() = default;
  // Where a stored partial chunk's tokens come from: a chunk of the same stream at the same
  // position with at least as many tokens extends it.
  struct PartialSource {
    uint64_t stream = 0;
    int64_t stream_begin = 0;
  };
  bool Extends(const Entry* partial, const TraceChunk& next) const;
  void OnErase(Entry* e) override { partial_sources_.erase(e->key); }

  std::unique_ptr<TierCore> core_;
  uint64_t t2_cap_ = 0;
  uint64_t kv_bytes_per_token_ = 0;
  KvLayout layout_;  // only chunk_tokens is set: replay entries are of one namespace
  T2Encoding t2_encoding_;
  std::unordered_map<ChunkKey, PartialSource, DigestHash> partial_sources_;
  uint64_t t1_put_failures_ = 0;
};

}  // namespace kvault::replay

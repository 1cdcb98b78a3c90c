#include "store/store_impl.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "store/aligned_buffer.h"
#include "store/remote_record.h"
#include "store/remote_tier_factory.h"

namespace kvault {
namespace {

bool SameNamespace(const Entry& e, const Namespace& ns) { return e.ns_id == ns.id() && e.layout == ns.layout(); }

uint64_t RecordBytes(const Entry& e) { return kBlockBytes + RoundUpToBlock(e.bytes); }

// A committed-to-be entry for the chunk a record describes (HeaderOf's inverse for the fields
// a record carries: key, chain, namespace, layout, size and a verified checksum).
std::unique_ptr<Entry> EntryOf(const RecordHeader& h) {
  auto e = std::make_unique<Entry>();
  e->key = h.key;
  e->parent = h.parent;
  e->ns_id = h.ns_id;
  e->layout = h.layout;
  e->tokens = h.tokens;
  e->bytes = h.payload_bytes;
  e->payload_checksum = h.payload_checksum;
  e->checksum_valid = true;
  return e;
}


// A ChunkWriter's way into an uncommitted entry's T1 pages (pinned by the writer).
class StoreWriterBackend final : public ChunkWriterBackend {
 public:
  StoreWriterBackend(StoreImpl* impl, Entry* e, std::vector<ChunkKey> superseded)
      : impl_(impl), e_(e), superseded_(std::move(superseded)) {}
  ~StoreWriterBackend() override {
    if (e_ != nullptr) impl_->Abort(e_);
  }
  void Write(size_t offset, std::span<const std::byte> data) override { impl_->CopyIn(e_, offset, data); }
  void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn) override {
    impl_->ForEachWritablePiece(e_, offset, size, fn);
  }
  void MarkWritten(size_t offset, size_t size) override { impl_->MarkWritten(e_, offset, size); }
  Status Commit() override { return impl_->Commit(std::exchange(e_, nullptr), superseded_); }

 private:
  StoreImpl* impl_;
  Entry* e_;  // null after Commit (which consumes the pin either way)
  std::vector<ChunkKey> superseded_;  // partial chunks this full chunk replaces at Commit()
};

// A ChunkReader's view of a committed entry pinned in T1.
class StoreReaderBackend final : public ChunkReaderBackend {
 public:
  StoreReaderBackend(StoreImpl* impl, Entry* e) : impl_(impl), e_(e) {}
  ~StoreReaderBackend() override { impl_->Unpin(e_); }
  void Read(size_t offset, std::span<std::byte> dst) const override { impl_->CopyOut(e_, offset, dst); }
  void ForEachPiece(size_t offset, size_t size,
                    const std::function<void(std::span<const std::byte>)>& fn) const override {
    impl_->ForEachPiece(e_, offset, size, fn);
  }

 private:
  StoreImpl* impl_;
  Entry* e_;
};

}  // namespace

ChunkReader StoreImpl::MakeReader(Entry* e, Tier from) {
  return ChunkReader(e->key, e->tokens, e->layout, from, std::make_unique<StoreReaderBackend>(this, e));
}

StoreImpl::StoreImpl(const StoreOptions& options) : options_(options) {}

Result<std::unique_ptr<StoreImpl>> StoreImpl::Open(const StoreOptions& options_in) {
  StoreOptions options = options_in;
  if (options.env == nullptr) options.env = Env::Default();
  if (options.page_bytes == 0 || options.page_bytes % kBlockBytes != 0) {
    return Status::InvalidArgument("page_bytes must be a positive multiple of 4096");
  }
  if (options.ssd_bytes > 0 && options.segment_bytes < 16 * kBlockBytes) {
    return Status::InvalidArgument("segment_bytes must be at least 64 KiB");
  }
  std::unique_ptr<StoreImpl> s(new StoreImpl(options));
  auto policy = MakePolicy(options.policy, PolicyContext{&s->window_, nullptr});
  if (!policy.ok()) return policy.status();
  s->policy_ = std::move(policy.value());
  auto t2_policy = MakePolicy(options.policy, PolicyContext{&s->window_, nullptr});
  if (!t2_policy.ok()) return t2_policy.status();
  s->t2_policy_ = std::move(t2_policy.value());
  auto arena = HostArena::Create(options.dram_bytes, options.page_bytes, options.huge_pages, options.prefault_dram,
                                 options.shared_dram);
  if (!arena.ok()) return arena.status();
  s->arena_ = std::move(arena.value());
  s->stats_.t1_capacity_bytes = s->arena_->capacity_bytes();
  s->stats_.t2_capacity_bytes = options.ssd_bytes;

  if (options.ssd_bytes > 0) {
    SegmentLog::Options lo{options.dir, options.segment_bytes, options.direct_io, options.use_io_uring, options.env};
    SegmentLog::OpenStats os;
    auto log = SegmentLog::Open(lo, [&](const RecordHeader& h, DiskLocation loc) { s->OnRecordFound(h, loc); }, &os);
    if (!log.ok()) return log.status();
    s->log_ = std::move(log.value());
    s->stats_.err_torn = os.torn;
    s->stats_.t2_direct_io = s->log_->direct_io();
    // A cap lowered since the last run: give back the oldest segments now.
    while (s->log_->UsedBytes() > options.ssd_bytes) {
      auto oldest = s->log_->OldestInactive();
      if (!oldest) break;
      s->ReclaimSegment(*oldest);
    }
    // The T2 policy starts from the records' write order.
    std::vector<Entry*> on_disk;
    for (auto& [k, e] : s->index_) {
      if (e->on_t2) on_disk.push_back(e.get());
    }
    std::sort(on_disk.begin(), on_disk.end(), [](const Entry* a, const Entry* b) { return a->seq < b->seq; });
    for (Entry* e : on_disk) s->t2_policy_->Insert(e);
  }
  s->prefetch_budget_ = options.prefetch_bytes > 0 ? options.prefetch_bytes : s->arena_->capacity_bytes() / 4;
  if (options.cluster_tier != nullptr) {
    s->remote_ = options.cluster_tier;
  } else if (!options.cluster.kind.empty()) {
    auto tier = OpenRemoteTier(options.cluster);
    if (tier.ok()) {
      s->owned_remote_ = std::move(tier.value());
      s->remote_ = s->owned_remote_.get();
    } else if (tier.status().code() == Code::kInvalidArgument) {
      return tier.status();  // a configuration error
    } else {
      ++s->stats_.err_t3;  // unreachable now: this store runs without T3 (degrade, don't fail)
    }
  }
  s->writer_ = std::thread([p = s.get()] { p->WriterLoop(); });
  if (s->remote_ != nullptr) s->t3_writer_ = std::thread([p = s.get()] { p->ClusterWriterLoop(); });
  if (s->log_) s->prefetcher_ = std::thread([p = s.get()] { p->PrefetchLoop(); });
  return s;
}

StoreImpl::~StoreImpl() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
  }
  writer_cv_.notify_all();
  prefetch_cv_.notify_all();
  t3_cv_.notify_all();
  if (prefetcher_.joinable()) prefetcher_.join();
  if (writer_.joinable()) writer_.join();
  if (t3_writer_.joinable()) t3_writer_.join();
  log_.reset();  // seals the active segment
}

void StoreImpl::OnRecordFound(const RecordHeader& h, DiskLocation loc) {
  std::lock_guard<std::mutex> lock(mu_);
  next_seq_ = std::max(next_seq_, h.seq + 1);
  segment_keys_[loc.segment].push_back(h.key);
  segment_total_[loc.segment] += h.record_bytes();
  auto it = index_.find(h.key);
  if (it != index_.end()) {
    Entry& e = *it->second;
    if (e.seq < h.seq) {  // the newest copy wins
      auto live = segment_live_.find(e.location.segment);
      if (live != segment_live_.end()) live->second -= std::min(live->second, RecordBytes(e));
      segment_live_[loc.segment] += h.record_bytes();
      e.seq = h.seq;
      e.location = loc;
      e.payload_checksum = h.payload_checksum;
      e.checksum_valid = true;
    }
    return;
  }
  std::unique_ptr<Entry> e = EntryOf(h);
  e->committed = true;
  e->on_t2 = true;
  e->location = loc;
  e->seq = h.seq;
  segment_live_[loc.segment] += h.record_bytes();
  if (e->partial()) partials_[e->parent].push_back(e->key);
  index_[h.key] = std::move(e);
}

// ---------------------------------------------------------------------------------------
// Lookup

Entry* StoreImpl::FindLocked(const ChunkKey& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : it->second.get();
}

Tier StoreImpl::TierOfLocked(const Entry* e, const Namespace& ns) const {
  if (e == nullptr || !e->committed || !SameNamespace(*e, ns)) return Tier::kNone;
  if (e->in_t1) return Tier::kHost;
  if (e->on_t2 || e->promoting) return Tier::kDisk;
  return Tier::kNone;
}

void StoreImpl::ExtendWholePrefixLocked(const Namespace& ns, const std::vector<ChunkSpan>& full,
                                        const std::vector<bool>* in_t3, size_t t3_from,
                                        std::vector<CachedChunk>* chunks) const {
  const uint32_t c = ns.layout().chunk_tokens;
  for (size_t j = chunks->size(); j < full.size(); ++j) {
    Tier t = TierOfLocked(FindLocked(full[j].key), ns);
    if (t == Tier::kNone && in_t3 != nullptr && j >= t3_from && (*in_t3)[j - t3_from]) t = Tier::kCluster;
    if (t == Tier::kNone) break;
    chunks->push_back({full[j].key, full[j].begin, c, t});
  }
}

void StoreImpl::AppendPartialLocked(const Namespace& ns, const ChunkKey& first_parent,
                                    std::span<const uint32_t> tokens, const std::vector<ChunkSpan>& full,
                                    std::vector<CachedChunk>* chunks) const {
  const uint32_t c = ns.layout().chunk_tokens;
  const size_t j = chunks->size();  // whole chunks so far
  const ChunkKey& parent = j == 0 ? first_parent : full[j - 1].key;
  const size_t remaining = tokens.size() - j * c;
  auto pit = partials_.find(parent);
  if (pit == partials_.end() || remaining == 0) return;
  const Entry* best = nullptr;
  for (const ChunkKey& k : pit->second) {
    const Entry* e = FindLocked(k);
    if (e == nullptr || e->tokens > remaining || (best && e->tokens <= best->tokens)) continue;
    if (TierOfLocked(e, ns) == Tier::kNone) continue;
    if (ChainKey(ns, parent, tokens.subspan(j * c, e->tokens)) == k) best = e;
  }
  if (best != nullptr) chunks->push_back({best->key, static_cast<uint32_t>(j * c), best->tokens, TierOfLocked(best, ns)});
}

std::vector<CachedChunk> StoreImpl::CachedPrefixLocked(const Namespace& ns, const ChunkKey& first_parent,
                                                       std::span<const uint32_t> tokens,
                                                       const std::vector<ChunkSpan>& full) const {
  std::vector<CachedChunk> chunks;
  ExtendWholePrefixLocked(ns, full, nullptr, 0, &chunks);
  AppendPartialLocked(ns, first_parent, tokens, full, &chunks);
  return chunks;
}

LookupResult StoreImpl::Lookup(const Namespace& ns, const ChunkKey& first_parent, std::span<const uint32_t> tokens) {
  LookupResult r;
  r.total_tokens = static_cast<uint32_t>(tokens.size());
  // Hash outside the lock. Only whole chunks; partial candidates are hashed under it.
  std::vector<ChunkSpan> full = ChunkKeysFrom(ns, first_parent, tokens, /*include_partial=*/false);

  std::unique_lock<std::mutex> lock(mu_);
  std::vector<CachedChunk> chunks;
  ExtendWholePrefixLocked(ns, full, nullptr, 0, &chunks);
  if (remote_ != nullptr && chunks.size() < full.size()) {
    // The first local miss: ask T3 about the remaining whole chunks, in one batch, without
    // mu_ (the tier bounds the call by its timeout). Then walk again: chunks that became
    // local meanwhile (a put, a fetch by another thread) count as local.
    const size_t from = chunks.size();
    std::vector<ChunkKey> keys;
    keys.reserve(full.size() - from);
    for (size_t j = from; j < full.size(); ++j) keys.push_back(ClusterKey(ns.id(), full[j].key));
    lock.unlock();
    std::vector<bool> in_t3 = remote_->Contains(keys);
    in_t3.resize(keys.size(), false);  // a short answer: the rest are not held
    lock.lock();
    ExtendWholePrefixLocked(ns, full, &in_t3, from, &chunks);
  }
  AppendPartialLocked(ns, first_parent, tokens, full, &chunks);  // partial chunks are local only
  r.chunks = std::move(chunks);
  for (const CachedChunk& ch : r.chunks) r.cached_tokens += ch.tokens;
  CountLookupLocked(r, ns.layout().chunk_tokens);
  return r;
}

void StoreImpl::CountLookupLocked(const LookupResult& r, uint32_t chunk_tokens) {
  StoreStats& st = stats_;
  ++st.lookups;
  st.lookup_tokens += r.total_tokens;
  const uint64_t chunks = (uint64_t{r.total_tokens} + chunk_tokens - 1) / chunk_tokens;
  st.lookup_chunks += chunks;
  for (const CachedChunk& ch : r.chunks) {
    switch (ch.tier) {
      case Tier::kHost:
        ++st.hit_chunks_t1;
        st.hit_tokens_t1 += ch.tokens;
        break;
      case Tier::kCluster:
        ++st.hit_chunks_t3;
        st.hit_tokens_t3 += ch.tokens;
        break;
      default:
        ++st.hit_chunks_t2;
        st.hit_tokens_t2 += ch.tokens;
        break;
    }
  }
  st.miss_chunks += chunks - r.chunks.size();
  st.miss_tokens += r.total_tokens - r.cached_tokens;
}

// ---------------------------------------------------------------------------------------
// Put

Result<ChunkWriter> StoreImpl::BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  const KvLayout& layout = ns.layout();
  KVAULT_RETURN_IF_ERROR(layout.Validate());
  if (tokens.empty() || tokens.size() > layout.chunk_tokens) {
    return Status::InvalidArgument("a chunk holds 1.." + std::to_string(layout.chunk_tokens) + " tokens, got " +
                                   std::to_string(tokens.size()));
  }
  const ChunkKey key = ChainKey(ns, parent, tokens);
  const auto n = static_cast<uint32_t>(tokens.size());
  const uint64_t bytes = layout.chunk_bytes(n);

  std::vector<ChunkKey> superseded;
  Entry* e = nullptr;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      Entry* d = it->second.get();
      if (!d->committed) {
        // Another writer holds this chunk uncommitted and may still drop it: reporting
        // "exists" would let this put return OK with nothing stored.
        return Status::ResourceExhausted("chunk " + key.ShortHex() + " is being written by another writer");
      }
      ++stats_.puts_deduplicated;
      if (log_ && d->committed && d->in_t1 && !d->on_t2 && !d->dirty && !d->writing) {
        // Held in T1 only, its write to T2 failed (or it was dropped from T2): queue it
        // again, so that a Flush() after this put covers it like any other put.
        EnqueueWriteLocked(d);
        lock.unlock();
        writer_cv_.notify_one();
      }
      return ChunkWriter(key, n, layout, /*exists=*/true, nullptr);
    }
    if (n == layout.chunk_tokens) {
      // Partial chunks under the same parent whose tokens are a prefix of this chunk.
      auto pit = partials_.find(parent);
      if (pit != partials_.end()) {
        for (const ChunkKey& k : pit->second) {
          auto eit = index_.find(k);
          if (eit == index_.end()) continue;
          if (ChainKey(ns, parent, tokens.first(eit->second->tokens)) == k) superseded.push_back(k);
        }
      }
    }
    PageList pages;
    KVAULT_RETURN_IF_ERROR(AllocatePagesLocked(RoundUpToBlock(bytes), &pages));
    auto owned = std::make_unique<Entry>();
    e = owned.get();
    e->key = key;
    e->parent = parent;
    e->ns_id = ns.id();
    e->layout = layout;
    e->tokens = n;
    e->bytes = bytes;
    e->pages = std::move(pages);
    e->in_t1 = true;
    e->pins = 1;  // the writer's; uncommitted entries are invisible and never evicted
    e->hasher = std::make_unique<PayloadChecksum>();
    index_[key] = std::move(owned);
  }
  // Zero the padding so that no stale bytes reach the disk.
  const uint64_t padded = RoundUpToBlock(bytes);
  if (padded > bytes) {
    arena_->ForEachPiece(e->pages, bytes, padded - bytes, [](std::byte* p, size_t len) { std::memset(p, 0, len); });
  }
  return ChunkWriter(key, n, layout, /*exists=*/false,
                     std::make_unique<StoreWriterBackend>(this, e, std::move(superseded)));
}

void StoreImpl::CopyIn(Entry* e, size_t offset, std::span<const std::byte> data) {
  const std::byte* src = data.data();
  const bool hash = offset == e->hashed_upto;
  if (offset < e->hashed_upto) e->hashed_upto = UINT64_MAX;  // rewrote hashed bytes: rehash later
  // Copy and hash in slices small enough to still be in cache when hashed.
  constexpr size_t kSlice = 256u << 10;
  arena_->ForEachPiece(e->pages, offset, data.size(), [&](std::byte* p, size_t n) {
    for (size_t done = 0; done < n; done += kSlice) {
      const size_t len = std::min(kSlice, n - done);
      std::memcpy(p + done, src, len);
      if (hash) e->hasher->Update({p + done, len});
      src += len;
    }
  });
  if (hash) e->hashed_upto += data.size();
  e->written.Add(offset, offset + data.size());
}

void StoreImpl::MarkWritten(Entry* e, size_t offset, size_t size) {
  if (offset == e->hashed_upto) {  // extends the hashed prefix: hash the bytes where they lie
    arena_->ForEachPiece(e->pages, offset, size, [&](std::byte* p, size_t n) { e->hasher->Update({p, n}); });
    e->hashed_upto += size;
  } else if (offset < e->hashed_upto) {
    e->hashed_upto = UINT64_MAX;  // rewrote hashed bytes: rehash at write-behind
  }
  e->written.Add(offset, offset + size);
}

void StoreImpl::ForEachWritablePiece(Entry* e, size_t offset, size_t size,
                                     const std::function<void(std::span<std::byte>)>& fn) {
  arena_->ForEachPiece(e->pages, offset, size, [&](std::byte* p, size_t n) { fn({p, n}); });
}

Status StoreImpl::Commit(Entry* e, const std::vector<ChunkKey>& superseded) {
  if (!e->written.Covers(e->bytes)) {
    Abort(e);
    return Status::InvalidArgument("commit of a chunk whose payload was not completely written");
  }
  e->written.Clear();
  if (e->hashed_upto == e->bytes) {  // written in order: the checksum is already known
    e->payload_checksum = e->hasher->Digest();
    e->checksum_valid = true;
  }
  e->hasher.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    e->committed = true;
    --e->pins;
    policy_->Insert(e);
    if (e->partial()) partials_[e->parent].push_back(e->key);
    ++stats_.puts;
    stats_.bytes_put += e->bytes;
    if (log_) EnqueueWriteLocked(e);
    if (remote_ != nullptr) EnqueueClusterWriteLocked(e);
    for (const ChunkKey& k : superseded) {
      auto it = index_.find(k);
      if (it == index_.end()) continue;
      Entry* p = it->second.get();
      if (!p->partial() || p->pins > 0 || p->promoting || p->writing || p->moving) continue;
      if (p->dirty) p->dirty = false;  // superseded, not lost: the full chunk holds its tokens
      ++stats_.partials_superseded;
      EraseLocked(p);
    }
  }
  writer_cv_.notify_one();
  t3_cv_.notify_one();
  return Status::OK();
}

void StoreImpl::Abort(Entry* e) {
  std::lock_guard<std::mutex> lock(mu_);
  --e->pins;
  EraseLocked(e);
}

void StoreImpl::EnqueueWriteLocked(Entry* e) {
  e->dirty = true;
  e->seq = next_seq_++;
  last_queued_seq_ = e->seq;
  write_queue_.emplace_back(e->seq, e->key);
}

// ---------------------------------------------------------------------------------------
// T1 space

Status StoreImpl::AllocatePagesLocked(uint64_t bytes, PageList* out, const std::function<bool(const Entry*)>& may_evict) {
  const uint32_t n = arena_->PagesFor(bytes);
  if (n > arena_->total_pages()) return Status::NoSpace("chunk of " + std::to_string(bytes) + " bytes exceeds the DRAM tier");
  auto allowed = [&](const Entry* e) { return e->evictable() && (!may_evict || may_evict(e)); };
  while (arena_->free_pages() < n) {
    // Entries with a copy on T2 (or no T2) first: nothing is lost. Then entries without one
    // that are not waiting for the write-behind (their write failed, or their T2 copy was
    // evicted); dirty ones only as a last resort, so that a put never waits for the disk.
    // The preferences look at the next kPreferenceScan victims only, so that a tier full of
    // entries waiting for the disk costs no scan of all of them.
    Entry* victim = policy_->PickVictim([&](const Entry* e) { return allowed(e) && (e->on_t2 || !log_); }, kPreferenceScan);
    if (victim == nullptr) victim = policy_->PickVictim([&](const Entry* e) { return allowed(e) && !e->dirty; }, kPreferenceScan);
    if (victim == nullptr) victim = policy_->PickVictim(allowed);
    if (victim == nullptr) return Status::ResourceExhausted("every DRAM page is pinned or in flight");
    EvictFromT1Locked(victim);
  }
  *out = arena_->Allocate(n);
  return Status::OK();
}

void StoreImpl::ClearPrefetchedLocked(Entry* e) {
  if (!e->prefetched) return;
  e->prefetched = false;
  prefetched_bytes_ -= e->bytes;
}

void StoreImpl::DropT2CopyLocked(Entry* e) {
  auto live = segment_live_.find(e->location.segment);
  if (live != segment_live_.end()) live->second -= std::min(live->second, RecordBytes(*e));
  e->on_t2 = false;
  t2_policy_->Remove(e);
}

void StoreImpl::PlaceT2RecordLocked(Entry* e, DiskLocation loc) {
  e->location = loc;
  segment_live_[loc.segment] += RecordBytes(*e);
  segment_total_[loc.segment] += RecordBytes(*e);
  segment_keys_[loc.segment].push_back(e->key);
}

void StoreImpl::AddT2CopyLocked(Entry* e, DiskLocation loc) {
  e->on_t2 = true;
  PlaceT2RecordLocked(e, loc);
  t2_policy_->Insert(e);
}

void StoreImpl::EvictFromT1Locked(Entry* e) {
  ClearPrefetchedLocked(e);
  policy_->Remove(e);
  arena_->Free(e->pages);
  e->pages.clear();
  e->in_t1 = false;
  if (e->dirty) {
    e->dirty = false;  // the writer skips it
    if (!e->from_t3) ++unpersisted_;  // a fetched copy is no put: Flush does not report it
    ++stats_.t1_dropped_unpersisted;
  } else {
    ++stats_.t1_evictions;
  }
  if (!e->on_t2) EraseLocked(e);
}

void StoreImpl::EraseLocked(Entry* e) {
  ClearPrefetchedLocked(e);
  if (e->on_t2) DropT2CopyLocked(e);
  if (e->in_t1 || e->promoting) {
    policy_->Remove(e);
    arena_->Free(e->pages);
  }
  if (e->partial()) {
    auto pit = partials_.find(e->parent);
    if (pit != partials_.end()) {
      std::erase(pit->second, e->key);
      if (pit->second.empty()) partials_.erase(pit);
    }
  }
  index_.erase(e->key);  // destroys *e
}

void StoreImpl::CountErrorLocked(const Status& st) {
  switch (st.code()) {
    case Code::kNoSpace: ++stats_.err_no_space; break;
    case Code::kCorruption: ++stats_.err_corruption; break;
    default: ++stats_.err_io; break;
  }
}

// ---------------------------------------------------------------------------------------
// Load

RecordHeader StoreImpl::HeaderOf(const Entry& e) {
  RecordHeader h;
  h.key = e.key;
  h.parent = e.parent;
  h.ns_id = e.ns_id;
  h.layout = e.layout;
  h.tokens = e.tokens;
  h.payload_bytes = e.bytes;
  h.payload_checksum = e.payload_checksum;
  h.seq = e.seq;
  return h;
}

Result<ChunkReader> StoreImpl::OpenChunk(const Namespace& ns, const ChunkKey& key) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (t3_fetching_.contains(key)) {  // another OpenChunk is fetching it from T3
      progress_cv_.wait(lock);
      continue;
    }
    Entry* e = FindLocked(key);
    if (e == nullptr && remote_ != nullptr) {
      std::optional<Result<ChunkReader>> r = FetchFromClusterLocked(lock, ns, key);
      if (r) return std::move(*r);
      continue;  // it turned up locally during the fetch
    }
    if (e == nullptr || !e->committed || !SameNamespace(*e, ns)) {
      ++stats_.err_load_miss;
      return Status::NotFound("chunk " + key.ShortHex() + " is not cached");
    }
    if (e->promoting || (e->moving && !e->in_t1)) {  // being read from T2, or moved on T2
      progress_cv_.wait(lock);
      continue;
    }
    if (e->in_t1) {
      ++e->pins;
      ClearPrefetchedLocked(e);
      if (e->on_t2) {
        e->hot = true;
        t2_policy_->Touch(e);
      }
      policy_->Touch(e);
      return MakeReader(e, Tier::kHost);
    }
    if (!e->on_t2 || !log_) {
      ++stats_.err_load_miss;
      return Status::NotFound("chunk " + key.ShortHex() + " is not cached");
    }
    Status st = PromoteLocked(lock, e, /*demand=*/true);
    if (st.ok()) return MakeReader(e, Tier::kDisk);
    if (st.code() == Code::kResourceExhausted || st.code() == Code::kNoSpace) return st;
    // The T2 copy was unreadable and is forgotten: T3 may still hold the chunk.
    if (remote_ != nullptr && FindLocked(key) == nullptr) continue;
    return Status::NotFound("chunk " + key.ShortHex() + " could not be read from disk: " + st.ToString());
  }
}

Status StoreImpl::PromoteLocked(std::unique_lock<std::mutex>& lock, Entry* e, bool demand,
                                const std::function<bool(const Entry*)>& may_evict) {
  // Read T2 straight into freshly allocated T1 pages.
  PageList pages;
  KVAULT_RETURN_IF_ERROR(AllocatePagesLocked(RoundUpToBlock(e->bytes), &pages, may_evict));
  e->pages = std::move(pages);
  e->promoting = true;
  ++e->pins;
  const RecordHeader expected = HeaderOf(*e);
  const DiskLocation loc = e->location;
  std::vector<IoSlice> slices;
  arena_->ForEachPiece(e->pages, 0, RoundUpToBlock(e->bytes), [&](std::byte* p, size_t n) { slices.push_back({p, n}); });
  lock.unlock();
  Status st = log_->ReadRecord(loc, expected, slices);
  lock.lock();
  e->promoting = false;
  progress_cv_.notify_all();
  if (st.ok()) {
    e->in_t1 = true;
    policy_->Insert(e);
    if (demand) {  // a read: the entry is in use (a prefetch is only a guess)
      e->hot = true;
      t2_policy_->Touch(e);
    }
    ++stats_.promotions;
    stats_.bytes_t2_to_t1 += e->bytes;
    return Status::OK();
  }
  // Unreadable or corrupt: never served. Drop the T2 copy; the chunk is a miss from now on.
  // kNotFound means the segment was reclaimed during the read: a plain miss, not an error.
  if (st.code() != Code::kNotFound) CountErrorLocked(st);
  ++stats_.err_load_miss;
  --e->pins;
  arena_->Free(e->pages);
  e->pages.clear();
  if (e->on_t2 && e->location.segment == loc.segment && e->location.offset == loc.offset) DropT2CopyLocked(e);
  if (e->pins == 0 && !e->on_t2) EraseLocked(e);
  return st.code() == Code::kNotFound ? st : Status::NotFound(st.ToString());
}

void StoreImpl::CopyOut(const Entry* e, size_t offset, std::span<std::byte> dst) const {
  std::byte* out = dst.data();
  arena_->ForEachPiece(e->pages, offset, dst.size(), [&](std::byte* p, size_t n) {
    std::memcpy(out, p, n);
    out += n;
  });
  bytes_loaded_.fetch_add(dst.size(), std::memory_order_relaxed);
}

void StoreImpl::ForEachPiece(const Entry* e, size_t offset, size_t size,
                             const std::function<void(std::span<const std::byte>)>& fn) const {
  arena_->ForEachPiece(e->pages, offset, size, [&](std::byte* p, size_t n) { fn({p, n}); });
  bytes_loaded_.fetch_add(size, std::memory_order_relaxed);
}

void StoreImpl::Unpin(Entry* e) {
  std::lock_guard<std::mutex> lock(mu_);
  UnpinLocked(e);
}

void StoreImpl::UnpinLocked(Entry* e) {
  --e->pins;
  if (e->pins == 0 && !e->in_t1 && !e->on_t2 && !e->promoting) EraseLocked(e);
}

// ---------------------------------------------------------------------------------------
// The cluster tier (T3)

Status StoreImpl::CheckClusterValue(std::span<const std::byte> value, const Namespace& ns, const ChunkKey& key,
                                    RecordHeader* h, std::span<const std::byte>* payload) {
  KVAULT_RETURN_IF_ERROR(DecodeRemoteRecord(value, key, h, payload));
  const KvLayout& layout = ns.layout();
  if (h->ns_id != ns.id()) return Status::Corruption("T3 value of " + key.ShortHex() + " is of another namespace");
  if (h->layout != layout) return Status::Corruption("T3 value of " + key.ShortHex() + " has another layout");
  if (h->tokens == 0 || h->tokens > layout.chunk_tokens || h->payload_bytes != layout.chunk_bytes(h->tokens)) {
    return Status::Corruption("T3 value of " + key.ShortHex() + " has a wrong token count or size");
  }
  return Status::OK();
}

std::optional<Result<ChunkReader>> StoreImpl::FetchFromClusterLocked(std::unique_lock<std::mutex>& lock,
                                                                     const Namespace& ns, const ChunkKey& key) {
  // Claim the key: concurrent opens of it wait for this fetch instead of fetching again.
  t3_fetching_.insert(key);
  auto release = [&] {  // REQUIRES: mu_ held
    t3_fetching_.erase(key);
    progress_cv_.notify_all();
  };
  lock.unlock();
  Result<std::vector<std::byte>> value = remote_->Get(ClusterKey(ns.id(), key));
  RecordHeader h;
  std::span<const std::byte> payload;
  Status st = value.ok() ? CheckClusterValue(value.value(), ns, key, &h, &payload) : value.status();
  lock.lock();
  if (!st.ok()) {
    release();
    if (st.code() != Code::kNotFound) ++stats_.err_t3;  // down, timed out, or a bad value
    if (st.code() == Code::kCorruption) ++stats_.err_corruption;
    ++stats_.err_load_miss;
    return Status::NotFound("chunk " + key.ShortHex() + " is not cached (T3: " + st.ToString() + ")");
  }
  if (FindLocked(key) != nullptr) {  // put or promoted here meanwhile: that copy wins
    release();
    return std::nullopt;
  }
  PageList pages;
  Status room = AllocatePagesLocked(RoundUpToBlock(h.payload_bytes), &pages);
  if (!room.ok()) {
    release();
    return room;
  }
  // Invisible (uncommitted) and pinned while its pages are filled without mu_.
  std::unique_ptr<Entry> owned = EntryOf(h);  // h.key == key: CheckClusterValue verified it
  Entry* e = owned.get();
  e->pages = std::move(pages);
  e->in_t1 = true;
  e->pins = 1;  // the reader's
  e->from_t3 = true;
  index_[key] = std::move(owned);
  lock.unlock();
  const std::byte* src = payload.data();
  arena_->ForEachPiece(e->pages, 0, e->bytes, [&](std::byte* p, size_t n) {
    std::memcpy(p, src, n);
    src += n;
  });
  const uint64_t padded = RoundUpToBlock(e->bytes);  // zeros, so that no stale bytes reach the disk
  if (padded > e->bytes) {
    arena_->ForEachPiece(e->pages, e->bytes, padded - e->bytes, [](std::byte* p, size_t n) { std::memset(p, 0, n); });
  }
  lock.lock();
  e->committed = true;
  policy_->Insert(e);
  if (e->partial()) partials_[e->parent].push_back(e->key);
  ++stats_.t3_fetches;
  stats_.bytes_t3_to_t1 += e->bytes;
  if (log_) {
    EnqueueWriteLocked(e);  // keep a copy on this node's disk too
    writer_cv_.notify_one();
  }
  release();
  return MakeReader(e, Tier::kCluster);
}

void StoreImpl::EnqueueClusterWriteLocked(Entry* e) {
  if (e->from_t3 || e->partial()) return;  // T3 has it already; partial chunks stay local
  const uint64_t bytes = kHeaderBytes + e->bytes;
  if (t3_queued_bytes_ + bytes > options_.cluster.queue_bytes) {
    ++stats_.t3_put_drops;  // best effort: never wait for the network
    return;
  }
  t3_queue_.push_back({e->key, bytes});
  t3_queued_bytes_ += bytes;
}

std::vector<std::byte> StoreImpl::CopyRecordOut(const Entry* e, RecordHeader* h, bool hash) const {
  std::vector<std::span<const std::byte>> pieces;
  arena_->ForEachPiece(e->pages, 0, e->bytes, [&](std::byte* p, size_t n) { pieces.push_back({p, n}); });
  if (hash) {  // written out of order and not yet hashed by the T2 write-behind
    PayloadChecksum sum;
    for (std::span<const std::byte> piece : pieces) sum.Update(piece);
    h->payload_checksum = sum.Digest();
  }
  return EncodeRemoteRecord(*h, pieces);
}

void StoreImpl::ClusterWriterLoop() {
  bool drop_rest = false;  // shutting down and the tier failed: do not drain into it
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    t3_cv_.wait(lock, [&] { return shutdown_ || !t3_queue_.empty(); });
    if (t3_queue_.empty()) break;  // shutdown with nothing left to publish
    const ClusterWrite w = t3_queue_.front();
    t3_queue_.pop_front();
    Entry* e = FindLocked(w.key);
    if (e != nullptr && e->from_t3) {
      // Gone and fetched back from T3 since: T3 has it.
    } else if (drop_rest || e == nullptr || !e->committed || !e->in_t1) {
      ++stats_.t3_put_drops;  // left T1 before its turn
    } else {
      t3_busy_ = true;
      const Status st = PublishLocked(lock, e);  // releases mu_ while copying and putting
      t3_busy_ = false;
      if (!st.ok() && shutdown_) drop_rest = true;
    }
    t3_queued_bytes_ -= w.bytes;
    progress_cv_.notify_all();
  }
}

Status StoreImpl::PublishLocked(std::unique_lock<std::mutex>& lock, Entry* e) {
  // Pinned only while its record is copied out: never across the network call.
  ++e->pins;
  const ChunkKey key = ClusterKey(e->ns_id, e->key);
  RecordHeader h = HeaderOf(*e);
  const bool hash = !e->checksum_valid;
  const uint64_t payload_bytes = e->bytes;
  lock.unlock();
  std::vector<std::byte> record = CopyRecordOut(e, &h, hash);
  lock.lock();
  if (hash && !e->checksum_valid) {
    e->payload_checksum = h.payload_checksum;
    e->checksum_valid = true;
  }
  UnpinLocked(e);  // e may be gone from here on
  lock.unlock();
  Status st = remote_->Put(key, record);
  record = {};
  lock.lock();
  if (st.ok()) {
    ++stats_.t3_puts;
    stats_.bytes_t1_to_t3 += payload_bytes;
  } else {
    ++stats_.err_t3;
  }
  return st;
}

void StoreImpl::WaitForClusterWrites() {
  std::unique_lock<std::mutex> lock(mu_);
  progress_cv_.wait(lock, [&] { return t3_queue_.empty() && !t3_busy_; });
}

std::optional<RemoteTierStats> StoreImpl::ClusterStats() const {
  if (remote_ == nullptr) return std::nullopt;
  return remote_->Stats();  // the tier's own locking; never under mu_
}

// ---------------------------------------------------------------------------------------
// Hints and prefetch

void StoreImpl::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) {
  std::vector<std::vector<ChunkSpan>> full;  // whole chunks, hashed outside the lock
  full.reserve(prompts.size());
  for (std::span<const uint32_t> p : prompts) full.push_back(ChunkKeys(ns, p, /*include_partial=*/false));
  std::vector<HintPrompt> window;
  window.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) window.push_back({&ns, prompts[i], &full[i]});
  Hint(window);
}

void StoreImpl::Hint(std::span<const HintPrompt> prompts) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.hints;
    // Each prompt's cached prefix, the stored partial chunk it would reuse included, as
    // Lookup finds it; then its uncached whole chunks (about to be written).
    std::vector<std::vector<CachedChunk>> cached(prompts.size());
    std::vector<std::vector<ChunkKey>> chains(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Namespace& ns = *prompts[i].ns;
      const std::vector<ChunkSpan>& full = *prompts[i].full;
      cached[i] = CachedPrefixLocked(ns, ns.id(), prompts[i].tokens, full);
      size_t whole = 0;
      for (const CachedChunk& c : cached[i]) {
        chains[i].push_back(c.key);
        whole += c.tokens == ns.layout().chunk_tokens;
      }
      for (size_t j = whole; j < full.size(); ++j) chains[i].push_back(full[j].key);
    }
    for (const ChunkKey& k : window_.Set(chains)) {
      auto it = index_.find(k);
      if (it == index_.end() || !it->second->committed) continue;
      if (it->second->in_t1) policy_->WindowChanged(it->second.get());
      if (it->second->on_t2) t2_policy_->WindowChanged(it->second.get());
    }
    // Prefetch, in window order, the chunks only on T2 of each prompt's cached prefix.
    prefetch_queue_.clear();
    if (log_) {
      for (const auto& prefix : cached) {
        for (const CachedChunk& c : prefix) {
          if (c.tier == Tier::kDisk) prefetch_queue_.push_back(c.key);
        }
      }
    }
  }
  prefetch_cv_.notify_one();
}

void StoreImpl::WaitForPrefetch() {
  std::unique_lock<std::mutex> lock(mu_);
  progress_cv_.wait(lock, [&] { return prefetch_queue_.empty() && !prefetching_; });
}

void StoreImpl::PrefetchLoop() {
  // Victims for a prefetch: nothing the window needs, nothing without a copy on disk.
  auto may_evict = [this](const Entry* v) { return v->on_t2 && !window_.Contains(v->key); };
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    prefetch_cv_.wait(lock, [&] { return shutdown_ || !prefetch_queue_.empty(); });
    if (shutdown_) break;
    const ChunkKey key = prefetch_queue_.front();
    prefetch_queue_.pop_front();
    auto it = index_.find(key);
    Entry* e = it == index_.end() ? nullptr : it->second.get();
    if (e == nullptr || !e->committed || e->in_t1 || e->promoting || e->moving || !e->on_t2) {
      progress_cv_.notify_all();
      continue;
    }
    if (prefetched_bytes_ + e->bytes > prefetch_budget_ || std::chrono::steady_clock::now() < degraded_until_) {
      prefetch_queue_.clear();  // enough prefetched and not yet used (or the disk is failing)
      progress_cv_.notify_all();
      continue;
    }
    prefetching_ = true;
    const uint64_t bytes = e->bytes;
    Status st = PromoteLocked(lock, e, /*demand=*/false, may_evict);  // releases the lock while reading
    prefetching_ = false;
    if (st.ok()) {
      --e->pins;  // in T1 now, owned by the policy like any other entry
      e->prefetched = true;
      prefetched_bytes_ += bytes;
      ++stats_.prefetches;
      stats_.bytes_prefetched += bytes;
    } else if (st.code() == Code::kResourceExhausted || st.code() == Code::kNoSpace) {
      prefetch_queue_.clear();  // no room without evicting what the window needs
    }
    progress_cv_.notify_all();
  }
  prefetching_ = false;
  progress_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------
// Write-behind

void StoreImpl::WriterLoop() {
  constexpr auto kBackoff = std::chrono::milliseconds(200);
  constexpr size_t kMaxBatch = 64;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    writer_cv_.wait(lock, [&] { return shutdown_ || !write_queue_.empty(); });
    if (write_queue_.empty()) break;  // shutdown with nothing left to write

    std::vector<Entry*> batch;
    std::vector<uint64_t> record_sizes;  // on disk, in append order: what EnsureT2Space checks
    uint64_t record_bytes = 0, upto = 0;
    while (!write_queue_.empty() && batch.size() < kMaxBatch &&
           (batch.empty() || record_bytes < options_.write_batch_bytes)) {
      auto [seq, key] = write_queue_.front();
      write_queue_.pop_front();
      upto = seq;
      auto it = index_.find(key);
      if (it == index_.end()) continue;
      Entry* e = it->second.get();
      if (!e->dirty || e->seq != seq || !e->in_t1) continue;  // stale item
      e->writing = true;
      ++e->pins;
      batch.push_back(e);
      record_sizes.push_back(kBlockBytes + RoundUpToBlock(e->bytes));
      record_bytes += record_sizes.back();
    }
    if (batch.empty()) {
      processed_seq_ = upto;
      progress_cv_.notify_all();
      continue;
    }
    std::vector<AppendItem> items(batch.size());
    std::vector<bool> needs_checksum(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      items[i].header = HeaderOf(*batch[i]);
      needs_checksum[i] = !batch[i]->checksum_valid;
    }
    const bool degraded = std::chrono::steady_clock::now() < degraded_until_;
    lock.unlock();

    // The entries are pinned: their pages can be read without the lock.
    for (size_t i = 0; i < batch.size(); ++i) {
      if (needs_checksum[i]) {  // written out of order: hash it now
        PayloadChecksum sum;
        arena_->ForEachPiece(batch[i]->pages, 0, batch[i]->bytes, [&](std::byte* p, size_t n) { sum.Update({p, n}); });
        items[i].header.payload_checksum = sum.Digest();
      }
      arena_->ForEachPiece(batch[i]->pages, 0, RoundUpToBlock(batch[i]->bytes),
                           [&](std::byte* p, size_t n) { items[i].payload.push_back({p, n}); });
    }
    Status space = degraded ? Status::Unavailable("disk tier recovering from an error")
                            : EnsureT2Space(record_sizes);
    if (space.ok()) {
      log_->Append(items);
    } else {
      for (AppendItem& item : items) item.status = space;
    }

    lock.lock();
    bool failed = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry* e = batch[i];
      const AppendItem& item = items[i];
      e->writing = false;
      --e->pins;
      if (item.status.ok()) {
        if (e->on_t2) DropT2CopyLocked(e);  // an older copy (rewritten after a failed load)
        AddT2CopyLocked(e, item.location);
        e->payload_checksum = item.header.payload_checksum;
        e->checksum_valid = true;
        e->hot = false;
        stats_.bytes_t1_to_t2 += e->bytes;
      } else {
        failed = true;
        if (!e->from_t3) ++unpersisted_;
        if (item.status.code() != Code::kUnavailable) CountErrorLocked(item.status);
      }
      if (e->dirty && e->seq == item.header.seq) e->dirty = false;
      if (e->pins == 0 && !e->in_t1 && !e->on_t2) EraseLocked(e);
    }
    if (failed && !degraded) degraded_until_ = std::chrono::steady_clock::now() + kBackoff;
    processed_seq_ = upto;
    progress_cv_.notify_all();
  }
}

Status StoreImpl::EnsureT2Space(std::span<const uint64_t> record_bytes) {
  for (;;) {
    const uint64_t needed = log_->BytesNeeded(record_bytes);  // compaction moves the active segment's end
    if (needed > options_.ssd_bytes) return Status::NoSpace("records larger than the disk tier's cap");
    const uint64_t used = log_->UsedBytes();
    if (used + needed <= options_.ssd_bytes) return Status::OK();
    const uint64_t shortfall = used + needed - options_.ssd_bytes;
    // In order: delete a sealed segment with nothing live; compact the sparsest sealed segment
    // when it is at least half dead or when the dead bytes of all sealed segments cover the
    // shortfall (copying its live records costs what it keeps, and frees the rest); else let
    // the T2 policy's victims die until they cover the shortfall, and look again.
    std::optional<uint32_t> empty, sparse;
    bool evicted = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::optional<uint32_t> active;
      uint64_t dead_total = 0, sparse_live = 0, sparse_total = 0;
      for (const SegmentInfo& seg : log_->Segments()) {
        if (seg.active) {
          active = seg.id;
          continue;
        }
        auto lit = segment_live_.find(seg.id);
        auto tit = segment_total_.find(seg.id);
        const uint64_t total = tit == segment_total_.end() ? 0 : tit->second;
        const uint64_t live = lit == segment_live_.end() ? 0 : std::min(lit->second, total);
        if (live == 0) {
          empty = seg.id;
          break;
        }
        dead_total += total - live;
        // Sparsest = the lowest live fraction (cross-multiplied); only segments with dead records.
        if (live < total && (!sparse || live * sparse_total < sparse_live * total)) {
          sparse = seg.id;
          sparse_live = live;
          sparse_total = total;
        }
      }
      if (!empty && sparse && !(2 * sparse_live <= sparse_total || dead_total >= shortfall)) sparse.reset();
      if (!empty && !sparse) {
        // Records in sealed segments only: a dead record in the active one frees nothing yet.
        auto eligible = [&](const Entry* e) {
          return e->on_t2 && e->pins == 0 && !e->promoting && !e->writing && !e->moving && e->location.segment != active;
        };
        for (uint64_t dead = dead_total; dead < shortfall;) {
          Entry* victim = t2_policy_->PickVictim(eligible);
          if (victim == nullptr) break;
          dead += RecordBytes(*victim);
          ++stats_.t2_evictions;
          DropT2CopyLocked(victim);
          if (!victim->in_t1 && victim->pins == 0) EraseLocked(victim);
          evicted = true;
        }
      }
    }
    if (empty) {
      ReclaimSegment(*empty);
    } else if (sparse) {
      CompactSegment(*sparse);
    } else if (!evicted) {
      // Every sealed record is pinned or in flight: give back the oldest segment whole.
      auto oldest = log_->OldestInactive();
      if (!oldest) return Status::NoSpace("disk tier cap reached with nothing to reclaim");
      ReclaimSegment(*oldest);
    }
  }
}

void StoreImpl::CompactSegment(uint32_t id) {
  // 1. Claim the live, idle records of the segment: marked `moving` (readers of the T2 copy
  //    wait; no T2 eviction, reclaim or prefetch touches it; the entry is not erased, as its
  //    T2 copy stays). Nothing is pinned: compaction never holds DRAM that puts need.
  struct Move {
    Entry* e;
    AppendItem item;      // the copy: header with a new seq, payload
    DiskLocation from;    // the record now
    RecordHeader header;  // as it is now (what the read checks)
    AlignedBuffer copy;   // the payload, read from the segment
    bool ok = true;
  };
  std::vector<Move> moves;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto keys = segment_keys_.find(id);
    if (keys != segment_keys_.end()) {
      for (const ChunkKey& k : keys->second) {
        auto it = index_.find(k);
        if (it == index_.end()) continue;
        Entry* e = it->second.get();
        if (!e->on_t2 || e->location.segment != id || e->pins > 0 || e->promoting || e->writing || e->moving) continue;
        e->moving = true;
        Move m{e, {}, e->location, HeaderOf(*e), {}};
        m.item.header = m.header;
        m.item.header.seq = next_seq_++;  // the copy wins over the old one after a restart
        moves.push_back(std::move(m));
      }
    }
  }
  // 2. Payloads: read from the segment (also for chunks in T1, whose pages stay unpinned).
  for (Move& m : moves) {
    const uint64_t padded = RoundUpToBlock(m.header.payload_bytes);
    m.copy.Resize(padded);
    const IoSlice slice{reinterpret_cast<std::byte*>(m.copy.data()), padded};
    Status st = log_->ReadRecord(m.from, m.header, {&slice, 1});
    if (!st.ok()) {
      m.ok = false;
      std::lock_guard<std::mutex> lock(mu_);
      CountErrorLocked(st);
      continue;
    }
    m.item.payload.push_back(slice);
  }
  // 3. The segment goes (every record in it but the claimed ones dies), then the copies are
  //    appended: freeing first means compaction never needs spare space. A crash in between
  //    loses the copies: misses, never wrong data.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Move& m : moves) {
      if (!m.ok) m.e->moving = false;  // unreadable: ReclaimSegment drops (and maybe erases) it
    }
  }
  ReclaimSegment(id);
  // The copies cost what they kept in the old segment, plus a trailer and an index area for
  // every roll of the active segment they cause: the copies that would take the tier past
  // its cap are dropped instead, the last ones first (the cap holds at every moment).
  std::vector<uint64_t> sizes;
  for (Move& m : moves) {
    if (m.ok) sizes.push_back(kBlockBytes + RoundUpToBlock(m.header.payload_bytes));
  }
  while (!sizes.empty() && log_->UsedBytes() + log_->BytesNeeded(sizes) > options_.ssd_bytes) sizes.pop_back();
  std::vector<AppendItem> items;
  for (Move& m : moves) {
    if (!m.ok) continue;
    if (items.size() == sizes.size()) {
      m.item.status = Status::Unavailable("no room to keep it while compacting");
      m.ok = false;
      continue;
    }
    items.push_back(std::move(m.item));
  }
  if (!items.empty()) log_->Append(items);
  std::lock_guard<std::mutex> lock(mu_);
  size_t j = 0;
  for (Move& m : moves) {
    if (!m.ok && !m.item.status.ok()) {  // dropped for room: as if its copy failed
      m.e->moving = false;
      ++stats_.t2_evictions;
      DropT2CopyLocked(m.e);
      if (m.e->pins == 0 && !m.e->in_t1) EraseLocked(m.e);
      continue;
    }
    if (!m.ok) continue;
    const AppendItem& item = items[j++];
    Entry* e = m.e;
    e->moving = false;
    if (item.status.ok()) {
      PlaceT2RecordLocked(e, item.location);  // still on T2: the policy keeps its place
      e->seq = item.header.seq;
      stats_.bytes_compacted += e->bytes;
    } else {
      if (item.status.code() != Code::kUnavailable) CountErrorLocked(item.status);
      ++stats_.t2_evictions;
      DropT2CopyLocked(e);
      if (e->pins == 0 && !e->in_t1) EraseLocked(e);
    }
  }
  ++stats_.t2_compactions;
  progress_cv_.notify_all();  // readers waiting for the moved entries
}

void StoreImpl::ReclaimSegment(uint32_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ChunkKey> keys = std::move(segment_keys_[id]);
    segment_keys_.erase(id);
    segment_live_.erase(id);
    segment_total_.erase(id);
    for (const ChunkKey& k : keys) {
      auto it = index_.find(k);
      if (it == index_.end()) continue;
      Entry* e = it->second.get();
      if (!e->on_t2 || e->location.segment != id || e->moving) continue;  // moving: compaction rewrites it
      DropT2CopyLocked(e);
      ++stats_.t2_evictions;
      if (e->in_t1) {
        // Compaction for free: a chunk read since it was written is still in DRAM, so it is
        // written again from there; cold ones just lose their T2 copy.
        if (e->hot && !e->dirty && !e->writing) {
          EnqueueWriteLocked(e);
          ++stats_.t2_rewrites;
        }
      } else if (e->pins == 0 && !e->promoting) {
        EraseLocked(e);
      }
    }
  }
  Status st = log_->RemoveSegment(id);
  if (!st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    CountErrorLocked(st);
  }
}

Status StoreImpl::Flush() {
  if (!log_) return Status::OK();
  uint64_t lost;
  {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = last_queued_seq_;
    progress_cv_.wait(lock, [&] { return processed_seq_ >= target; });
    lost = unpersisted_ - unpersisted_at_flush_;
    unpersisted_at_flush_ = unpersisted_;
  }
  Status st = log_->Sync();
  if (!st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    CountErrorLocked(st);
    return st;
  }
  if (lost > 0) return Status::IOError(std::to_string(lost) + " chunks put since the last flush did not reach the disk tier");
  return Status::OK();
}

StoreStats StoreImpl::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  StoreStats s = stats_;
  s.bytes_loaded = bytes_loaded_.load(std::memory_order_relaxed);
  s.t1_used_bytes = arena_->used_bytes();
  s.t1_entries = 0;
  s.t2_entries = 0;
  for (const auto& [k, e] : index_) {
    s.t1_entries += e->in_t1 && e->committed;
    s.t2_entries += e->on_t2;
  }
  if (log_) {
    s.t2_used_bytes = log_->UsedBytes();
    s.t2_segments = log_->Segments().size();
  }
  s.write_queue_entries = write_queue_.size();
  s.t3_queue_entries = t3_queue_.size() + (t3_busy_ ? 1 : 0);
  s.t3_queue_bytes = t3_queued_bytes_;
  return s;
}

}  // namespace kvault

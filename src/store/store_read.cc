// StoreImpl's read path: OpenChunk pins a T1 chunk, promotes a T2 one (reading its record
// into fresh T1 pages) or fetches it from T3; the prefetcher promotes a hint's T2-only chunks
// in the background within its budget.
#include "store/store_impl.h"

#include <cstring>

#include "store/aligned_buffer.h"

namespace kvault {

namespace {

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

Result<ChunkReader> StoreImpl::OpenChunk(const Namespace& ns, const ChunkKey& key) {
  MutexLock lock(mu_);
  for (;;) {
    if (t3_fetching_.contains(key)) {  // another OpenChunk is fetching it from T3
      progress_cv_.wait(lock.native());
      continue;
    }
    Entry* e = FindLocked(key);
    if (e == nullptr && remote_ != nullptr) {
      std::optional<Result<ChunkReader>> r = FetchFromClusterLocked(lock, ns, key);
      if (r) return std::move(*r);
      continue;  // it turned up locally during the fetch
    }
    if (e == nullptr || !e->committed || !e->InNamespace(ns.id(), ns.layout())) {
      ++stats_.err_load_miss;
      return Status::NotFound("chunk " + key.ShortHex() + " is not cached");
    }
    if (e->promoting || (e->moving && !e->in_t1)) {  // being read from T2, or moved on T2
      progress_cv_.wait(lock.native());
      continue;
    }
    if (e->in_t1) {
      ++e->pins;
      ClearPrefetchedLocked(e);
      core_->TouchRead(e);
      return MakeReader(e, Tier::kT1);
    }
    if (!e->on_t2 || !log_) {
      ++stats_.err_load_miss;
      return Status::NotFound("chunk " + key.ShortHex() + " is not cached");
    }
    Status st = PromoteLocked(lock, e, /*demand=*/true);
    if (st.ok()) return MakeReader(e, Tier::kT2);
    if (st.code() == Code::kResourceExhausted || st.code() == Code::kNoSpace) return st;
    // The T2 copy was unreadable and is forgotten: T3 may still hold the chunk.
    if (remote_ != nullptr && FindLocked(key) == nullptr) continue;
    return Status::NotFound("chunk " + key.ShortHex() + " could not be read from disk: " + st.ToString());
  }
}

Status StoreImpl::PromoteLocked(MutexLock& lock, Entry* e, bool demand,
                                const std::function<bool(const Entry*)>& may_evict) {
  // A raw record is read straight into freshly allocated T1 pages; an encoded one into a
  // buffer of this thread, checked, then decoded into the pages. The record's own header
  // (which ReadRecord requires to match the index: codec, layout, size, checksum) decides
  // the decoding.
  KVAULT_RETURN_IF_ERROR(ReserveT1Locked(e, may_evict));
  e->promoting = true;
  ++e->pins;
  const RecordHeader expected = T2HeaderOf(*e);
  const DiskLocation loc = e->location;
  thread_local AlignedBuffer encoded;  // reused by this thread's promotions
  std::vector<IoSlice> slices;
  if (loc.codec == KvCodec::kNone) {
    arena_->ForEachPiece(e->pages, 0, RoundUpToBlock(e->bytes), [&](std::byte* p, size_t n) { slices.push_back({p, n}); });
  }
  lock.Unlock(mu_);
  if (loc.codec != KvCodec::kNone) {
    encoded.Reserve(RoundUpToBlock(loc.payload_bytes));  // the read fills it, padding included
    slices.push_back({encoded.data(), RoundUpToBlock(loc.payload_bytes)});
  }
  Status st = log_->ReadRecord(loc, expected, slices);
  if (st.ok() && loc.codec != KvCodec::kNone) {
    st = DecodeIntoPages(e, loc.codec, std::as_bytes(std::span(encoded.data(), loc.payload_bytes)));
  }
  lock.Lock(mu_);
  e->promoting = false;
  progress_cv_.notify_all();
  if (st.ok()) {
    core_->Promoted(e, demand);  // in T1; a demand read is a use of its T2 copy too
    ++stats_.promotions;
    stats_.bytes_t2_to_t1 += loc.payload_bytes;
    if (loc.codec == KvCodec::kNone) {
      e->payload_checksum = loc.payload_checksum;  // the pages hold the record's bytes
      e->checksum_valid = true;
    } else {
      e->checksum_valid = false;  // decoded bytes: hashed again if ever needed
      ++stats_.t2_chunks_decoded;
    }
    return Status::OK();
  }
  // Unreadable or corrupt: never served. Drop the T2 copy; the chunk is a miss from now on.
  // kNotFound means the segment was reclaimed during the read: a plain miss, not an error.
  // A record being moved by compaction (claimed during the read) keeps the copy being made.
  if (st.code() != Code::kNotFound) CountErrorLocked(st);
  ++stats_.err_load_miss;
  --e->pins;
  core_->ReleaseT1(e);
  if (e->on_t2 && !e->moving && e->location.segment == loc.segment && e->location.offset == loc.offset) {
    DropT2CopyLocked(e);
  }
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
  MutexLock lock(mu_);
  UnpinLocked(e);
}

void StoreImpl::WaitForPrefetch() {
  MutexLock lock(mu_);
  progress_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return prefetch_queue_.empty() && !prefetching_; });
}

void StoreImpl::PrefetchLoop() {
  // Victims for a prefetch: nothing the window needs, nothing without a copy on disk.
  auto may_evict = [this](const Entry* v) REQUIRES(mu_) { return v->on_t2 && !window_.Contains(v->key); };
  MutexLock lock(mu_);
  for (;;) {
    prefetch_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return shutdown_ || !prefetch_queue_.empty(); });
    if (shutdown_) break;
    const ChunkKey key = prefetch_queue_.front();
    prefetch_queue_.pop_front();
    Entry* e = core_->Find(key);
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

}  // namespace kvault

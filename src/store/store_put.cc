// StoreImpl's put path: BeginPut reserves the T1 slot (evicting by the core's rules), the
// writer fills it (hashing the payload on the way when written in order), Commit makes it
// visible, queues it for T2 and T3 and lets it supersede the partial chunks it extends.
#include "store/store_impl.h"

#include <cstring>

namespace kvault {

namespace {

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

}  // namespace

Result<ChunkWriter> StoreImpl::BeginPut(const Namespace& ns, const ChunkSpan& chunk, std::span<const uint32_t> tokens) {
  const KvLayout& layout = ns.layout();
  KVAULT_RETURN_IF_ERROR(layout.Validate());
  if (tokens.empty() || tokens.size() > layout.chunk_tokens) {
    return Status::InvalidArgument("a chunk holds 1.." + std::to_string(layout.chunk_tokens) + " tokens, got " +
                                   std::to_string(tokens.size()));
  }
  if (chunk.tokens != tokens.size()) return Status::InvalidArgument("chunk span and tokens differ in length");

  MutexLock lock(mu_);
  if (Entry* stored = core_->Find(chunk.key)) {
    // The key came from the caller: one naming another namespace's (or layout's) entry is a
    // caller error, never "exists" (that would report someone else's chunk as stored).
    if (!stored->InNamespace(ns.id(), layout)) {
      return Status::InvalidArgument("chunk key " + chunk.key.ShortHex() + " is not keyed in this namespace");
    }
    return PutOfStoredChunkLocked(stored);
  }
  std::vector<ChunkKey> superseded = PartialsSupersededByLocked(ns, chunk, tokens);
  Result<Entry*> e = NewWriterEntryLocked(ns, chunk);  // reserves its T1 pages, pinned
  if (!e.ok()) return e.status();
  lock.Unlock();

  Entry* entry = e.value();
  ZeroPadding(entry);
  return ChunkWriter(chunk.key, chunk.tokens, layout, /*exists=*/false,
                     std::make_unique<StoreWriterBackend>(this, entry, std::move(superseded)));
}

Result<ChunkWriter> StoreImpl::PutOfStoredChunkLocked(Entry* d) {
  if (!d->committed) {
    // Another writer holds this chunk uncommitted and may still drop it: reporting "exists"
    // would let this put return OK with nothing stored.
    return Status::ResourceExhausted("chunk " + d->key.ShortHex() + " is being written by another writer");
  }
  ++stats_.puts_deduplicated;
  ChunkWriter exists(d->key, d->tokens, d->layout, /*exists=*/true, nullptr);
  if (log_ && d->in_t1 && !d->on_t2 && !d->dirty && !d->writing) {
    // Held in T1 only, its write to T2 failed (or it was dropped from T2): queue it again, so
    // that a Flush() after this put covers it like any other put.
    EnqueueWriteLocked(d);
    writer_cv_.notify_one();
  }
  return exists;
}

std::vector<ChunkKey> StoreImpl::PartialsSupersededByLocked(const Namespace& ns, const ChunkSpan& chunk,
                                                            std::span<const uint32_t> tokens) const {
  if (chunk.tokens != ns.layout().chunk_tokens) return {};  // only a full chunk supersedes
  // The partial chunks under the same parent whose tokens are a prefix of this chunk's.
  return core_->PartialsExtendedBy(chunk.parent, [&](const Entry* p) {
    return ChainKey(ns, chunk.parent, tokens.first(p->tokens)) == p->key;
  });
}

Result<Entry*> StoreImpl::NewWriterEntryLocked(const Namespace& ns, const ChunkSpan& chunk) {
  auto owned = std::make_unique<Entry>();
  Entry* e = owned.get();
  e->key = chunk.key;
  e->parent = chunk.parent;
  e->ns_id = ns.id();
  e->layout = ns.layout();
  e->tokens = chunk.tokens;
  e->bytes = ns.layout().chunk_bytes(chunk.tokens);
  KVAULT_RETURN_IF_ERROR(ReserveT1Locked(e));  // its pages, evicting by the core's rules
  e->in_t1 = true;
  e->pins = 1;  // the writer's; uncommitted entries are invisible and never evicted
  e->hasher = std::make_unique<PayloadChecksum>();
  return core_->Add(std::move(owned));
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
    MutexLock lock(mu_);
    --e->pins;
    ++stats_.puts;
    stats_.bytes_put += e->bytes;
    if (log_) EnqueueWriteLocked(e);
    if (remote_ != nullptr) EnqueueClusterWriteLocked(e);
    core_->Commit(e, superseded);  // visible; the idle partial chunks it extends are erased
  }
  writer_cv_.notify_one();
  t3_cv_.notify_one();
  return Status::OK();
}

void StoreImpl::Abort(Entry* e) {
  MutexLock lock(mu_);
  --e->pins;
  EraseLocked(e);
}

void StoreImpl::EnqueueWriteLocked(Entry* e) {
  e->dirty = true;
  e->seq = next_seq_++;
  last_queued_seq_ = e->seq;
  write_queue_.emplace_back(e->seq, e->key);
}

void StoreImpl::ZeroPadding(const Entry* e) {
  const uint64_t padded = RoundUpToBlock(e->bytes);
  if (padded > e->bytes) {
    arena_->ForEachPiece(e->pages, e->bytes, padded - e->bytes, [](std::byte* p, size_t n) { std::memset(p, 0, n); });
  }
}

uint64_t StoreImpl::PayloadChecksumOf(const Entry* e) const {
  PayloadChecksum sum;
  arena_->ForEachPiece(e->pages, 0, e->bytes, [&](std::byte* p, size_t n) { sum.Update({p, n}); });
  return sum.Digest();
}

}  // namespace kvault

// StoreImpl and the cluster tier (T3): fetching a chunk no local tier holds (checked, then
// committed into T1 and kept on T2) and publishing committed whole chunks behind the put.
#include "store/store_impl.h"

#include <cstring>

#include "store/aligned_buffer.h"
#include "store/remote_record.h"

namespace kvault {

Status StoreImpl::CheckClusterValue(std::span<const std::byte> value, const Namespace& ns, const ChunkKey& key,
                                    RecordHeader* h, std::span<const std::byte>* payload) {
  KVAULT_RETURN_IF_ERROR(DecodeRemoteRecord(value, key, h, payload));
  const KvLayout& layout = ns.layout();
  if (h->ns_id != ns.id()) return Status::Corruption("T3 value of " + key.ShortHex() + " is of another namespace");
  if (h->layout != layout) return Status::Corruption("T3 value of " + key.ShortHex() + " has another layout");
  // DecodeHeader checked the codec id and that payload_bytes is that codec's size for the
  // header's layout; the layout is the request's (above), so the decoding is the right one.
  if (h->tokens == 0 || h->tokens > layout.chunk_tokens ||
      h->payload_bytes != StoredPayloadBytes(h->codec, layout, h->tokens)) {
    return Status::Corruption("T3 value of " + key.ShortHex() + " has a wrong token count or size");
  }
  return Status::OK();
}

std::optional<Result<ChunkReader>> StoreImpl::FetchFromClusterLocked(MutexLock& lock,
                                                                     const Namespace& ns, const ChunkKey& key) {
  // Claim the key: concurrent opens of it wait for this fetch instead of fetching again.
  t3_fetching_.insert(key);
  auto release = [&]() REQUIRES(mu_) {
    t3_fetching_.erase(key);
    progress_cv_.notify_all();
  };
  lock.Unlock(mu_);
  Result<std::vector<std::byte>> value = remote_->Get(ClusterKey(ns.id(), key));
  RecordHeader h;
  std::span<const std::byte> payload;
  Status st = value.ok() ? CheckClusterValue(value.value(), ns, key, &h, &payload) : value.status();
  lock.Lock(mu_);
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
  // Invisible (uncommitted) and pinned while its pages are filled without mu_.
  std::unique_ptr<Entry> owned = EntryOf(h);  // h.key == key: CheckClusterValue verified it
  Entry* e = owned.get();
  Status room = ReserveT1Locked(e);
  if (!room.ok()) {
    release();
    return room;
  }
  e->in_t1 = true;
  e->pins = 1;  // the reader's
  e->from_t3 = true;
  core_->Add(std::move(owned));
  lock.Unlock(mu_);
  Status filled;
  if (h.codec == KvCodec::kNone) {
    const std::byte* src = payload.data();
    arena_->ForEachPiece(e->pages, 0, e->bytes, [&](std::byte* p, size_t n) {
      std::memcpy(p, src, n);
      src += n;
    });
    ZeroPadding(e);
  } else {
    filled = DecodeIntoPages(e, h.codec, payload);  // by the value's own codec and layout
  }
  lock.Lock(mu_);
  if (!filled.ok()) {  // a value that does not decode is a bad value: a miss, never data
    --e->pins;
    EraseLocked(e);  // uncommitted, nothing else holds it
    release();
    ++stats_.err_t3;
    ++stats_.err_corruption;
    ++stats_.err_load_miss;
    return Status::NotFound("chunk " + key.ShortHex() + " is not cached (T3: " + filled.ToString() + ")");
  }
  core_->Commit(e, {});
  ++stats_.t3_fetches;
  stats_.bytes_t3_to_t1 += h.payload_bytes;
  if (h.codec != KvCodec::kNone) ++stats_.t3_chunks_decoded;
  if (log_) {
    EnqueueWriteLocked(e);  // keep a copy on this node's disk too
    writer_cv_.notify_one();
  }
  release();
  return MakeReader(e, Tier::kT3);
}

void StoreImpl::EnqueueClusterWriteLocked(Entry* e) {
  if (e->from_t3 || e->partial()) return;  // T3 has it already; partial chunks stay local
  const uint64_t bytes =
      kHeaderBytes + StoredPayloadBytes(CodecFor(options_.t3_codec, e->layout, e->tokens), e->layout, e->tokens);
  if (t3_queued_bytes_ + bytes > options_.t3.queue_bytes) {
    ++stats_.t3_put_drops;  // best effort: never wait for the network
    return;
  }
  t3_queue_.push_back({e->key, bytes});
  t3_queued_bytes_ += bytes;
}

std::vector<std::byte> StoreImpl::CopyRecordOut(const Entry* e, RecordHeader* h, bool hash) const {
  const KvCodec codec = CodecFor(options_.t3_codec, e->layout, e->tokens);
  if (codec != KvCodec::kNone) {
    AlignedBuffer encoded;
    if (EncodeFromPages(e, codec, &encoded).ok()) {
      h->codec = codec;
      h->payload_bytes = EncodedChunkBytes(codec, e->layout, e->tokens);
      const std::span<const std::byte> piece = std::as_bytes(std::span(encoded.data(), h->payload_bytes));
      h->payload_checksum = Checksum(piece);
      return EncodeRemoteRecord(*h, {&piece, 1});
    }
    // NaN or Inf in the chunk: published raw, like a layout the codec cannot encode.
  }
  std::vector<std::span<const std::byte>> pieces;
  arena_->ForEachPiece(e->pages, 0, e->bytes, [&](std::byte* p, size_t n) { pieces.push_back({p, n}); });
  if (hash) h->payload_checksum = PayloadChecksumOf(e);  // written out of order, not yet hashed by the T2 write-behind
  return EncodeRemoteRecord(*h, pieces);
}

void StoreImpl::ClusterWriterLoop() {
  bool drop_rest = false;  // shutting down and the tier failed: do not drain into it
  MutexLock lock(mu_);
  for (;;) {
    t3_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return shutdown_ || !t3_queue_.empty(); });
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

Status StoreImpl::PublishLocked(MutexLock& lock, Entry* e) {
  // Pinned only while its record is copied out: never across the network call.
  ++e->pins;
  const ChunkKey key = ClusterKey(e->ns_id, e->key);
  RecordHeader h = RawHeaderOf(*e);
  const bool hash = !e->checksum_valid;
  lock.Unlock(mu_);
  std::vector<std::byte> record = CopyRecordOut(e, &h, hash);
  const uint64_t payload_bytes = h.payload_bytes;  // stored: encoded when T3 has a codec
  lock.Lock(mu_);
  if (h.codec != KvCodec::kNone) {
    ++stats_.t3_chunks_encoded;
  } else if (options_.t3_codec != KvCodec::kNone) {
    ++stats_.codec_fallbacks;  // a layout or values the codec cannot take: published raw
  }
  if (hash && h.codec == KvCodec::kNone && !e->checksum_valid) {
    e->payload_checksum = h.payload_checksum;
    e->checksum_valid = true;
  }
  UnpinLocked(e);  // e may be gone from here on
  lock.Unlock(mu_);
  Status st = remote_->Put(key, record);
  record = {};
  lock.Lock(mu_);
  if (st.ok()) {
    ++stats_.t3_puts;
    stats_.bytes_t1_to_t3 += payload_bytes;
  } else {
    ++stats_.err_t3;
  }
  return st;
}

void StoreImpl::WaitForClusterWrites() {
  MutexLock lock(mu_);
  progress_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return t3_queue_.empty() && !t3_busy_; });
}

std::optional<RemoteTierStats> StoreImpl::ClusterStats() const {
  if (remote_ == nullptr) return std::nullopt;
  return remote_->Stats();  // the tier's own locking; never under mu_
}

}  // namespace kvault

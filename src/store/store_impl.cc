// StoreImpl: opening and closing (rebuilding the index from T2), the bookkeeping the tier
// core delegates to the store (arena pages, per-segment live bytes, prefetch budget), and
// Flush and Stats. The store's jobs live in their own files: store_lookup.cc (lookup and
// hints), store_put.cc (put and commit), store_read.cc (reads, promotion and prefetch),
// store_write_behind.cc (write-behind to T2 and compaction), store_cluster.cc (T3 fetch and
// publish).
#include "store/store_impl.h"

#include <algorithm>
#include <cstring>

#include "store/remote_tier_factory.h"

namespace kvault {

StoreImpl::StoreImpl(const StoreOptions& options) : options_(options) {}

Result<std::unique_ptr<StoreImpl>> StoreImpl::Open(const StoreOptions& options_in) {
  StoreOptions options = options_in;
  if (options.env == nullptr) options.env = Env::Default();
  if (options.page_bytes == 0 || options.page_bytes % kBlockBytes != 0) {
    return Status::InvalidArgument("page_bytes must be a positive multiple of 4096");
  }
  if (options.t2_bytes > 0 && options.segment_bytes < 16 * kBlockBytes) {
    return Status::InvalidArgument("segment_bytes must be at least 64 KiB");
  }
  std::unique_ptr<StoreImpl> s(new StoreImpl(options));
  auto arena = HostArena::Create(options.t1_bytes, options.page_bytes, options.huge_pages, options.prefault_t1,
                                 options.shared_t1);
  if (!arena.ok()) return arena.status();
  s->arena_ = std::move(arena.value());
  TierCore::Options co;
  co.t1_pages = s->arena_->total_pages();
  co.page_bytes = options.page_bytes;
  co.t2 = options.t2_bytes > 0;
  co.policy = options.policy;
  co.context = PolicyContext{&s->window_, nullptr};
  co.listener = s.get();
  auto core = TierCore::Create(co);
  if (!core.ok()) return core.status();
  s->core_ = std::move(core.value());

  SegmentLog::OpenStats os;
  if (options.t2_bytes > 0) {
    SegmentLog::Options lo{options.dir, options.segment_bytes, options.direct_io, options.use_io_uring, options.env};
    auto log = SegmentLog::Open(lo, [&](const RecordHeader& h, DiskLocation loc) { s->OnRecordFound(h, loc); }, &os);
    if (!log.ok()) return log.status();
    s->log_ = std::move(log.value());
    // A cap lowered since the last run: give back the oldest segments now.
    while (s->log_->UsedBytes() > options.t2_bytes) {
      auto oldest = s->log_->OldestInactive();
      if (!oldest) break;
      s->ReclaimSegment(*oldest);
    }
  }
  bool t3_unreachable = false;
  if (options.t3_tier != nullptr) {
    s->remote_ = options.t3_tier;
  } else if (!options.t3.kind.empty()) {
    auto tier = OpenRemoteTier(options.t3, options.env);
    if (tier.ok()) {
      s->owned_remote_ = std::move(tier.value());
      s->remote_ = s->owned_remote_.get();
    } else if (tier.status().code() == Code::kInvalidArgument) {
      return tier.status();  // a configuration error
    } else {
      t3_unreachable = true;  // unreachable now: this store runs without T3 (degrade, don't fail)
    }
  }
  {
    MutexLock lock(s->mu_);  // uncontended (no other thread has the store yet), as the fields demand
    s->stats_.t1_capacity_bytes = s->arena_->capacity_bytes();
    s->stats_.t2_capacity_bytes = options.t2_bytes;
    s->stats_.err_torn = os.torn;
    if (t3_unreachable) ++s->stats_.err_t3;
    if (s->log_) {
      s->stats_.t2_direct_io = s->log_->direct_io();
      // The T2 policy starts from the records' write order.
      std::vector<Entry*> on_disk;
      s->core_->ForEach([&](Entry* e) {
        if (e->on_t2) on_disk.push_back(e);
      });
      std::sort(on_disk.begin(), on_disk.end(), [](const Entry* a, const Entry* b) { return a->seq < b->seq; });
      for (Entry* e : on_disk) s->core_->AddT2Copy(e);
    }
    s->prefetch_budget_ = options.prefetch_bytes > 0 ? options.prefetch_bytes : s->arena_->capacity_bytes() / 4;
  }
  s->writer_ = std::thread([p = s.get()] { p->WriterLoop(); });
  if (s->remote_ != nullptr) s->t3_writer_ = std::thread([p = s.get()] { p->ClusterWriterLoop(); });
  if (s->log_) s->prefetcher_ = std::thread([p = s.get()] { p->PrefetchLoop(); });
  return s;
}

StoreImpl::~StoreImpl() {
  {
    MutexLock lock(mu_);
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
  MutexLock lock(mu_);
  next_seq_ = std::max(next_seq_, h.seq + 1);
  segment_keys_[loc.segment].push_back(h.key);
  segment_total_[loc.segment] += h.record_bytes();
  if (Entry* found = core_->Find(h.key)) {
    Entry& e = *found;
    if (e.seq < h.seq) {  // the newest copy wins
      auto live = segment_live_.find(e.location.segment);
      if (live != segment_live_.end()) live->second -= std::min(live->second, TierCore::RecordBytes(e));
      segment_live_[loc.segment] += h.record_bytes();
      e.seq = h.seq;
      e.location = loc;
      // The raw payload's checksum is known from a raw record only.
      e.payload_checksum = h.codec == KvCodec::kNone ? h.payload_checksum : 0;
      e.checksum_valid = h.codec == KvCodec::kNone;
    }
    return;
  }
  std::unique_ptr<Entry> e = EntryOf(h);
  e->committed = true;
  e->on_t2 = true;  // into T2's policy once every record is read (Open), in write order
  e->location = loc;
  e->seq = h.seq;
  segment_live_[loc.segment] += h.record_bytes();
  core_->Commit(core_->Add(std::move(e)), {});
}

// A committed-to-be entry for the chunk a record describes (RawHeaderOf's inverse for the
// fields a record carries: key, chain, namespace, layout, raw size, and the verified checksum
// when the payload is stored raw; an encoded record's decoded bytes are hashed when needed).
std::unique_ptr<Entry> StoreImpl::EntryOf(const RecordHeader& h) {
  auto e = std::make_unique<Entry>();
  e->key = h.key;
  e->parent = h.parent;
  e->ns_id = h.ns_id;
  e->layout = h.layout;
  e->tokens = h.tokens;
  e->bytes = h.raw_bytes();
  e->checksum_valid = h.codec == KvCodec::kNone;
  e->payload_checksum = e->checksum_valid ? h.payload_checksum : 0;
  return e;
}

RecordHeader StoreImpl::RawHeaderOf(const Entry& e) {
  RecordHeader h;
  h.key = e.key;
  h.parent = e.parent;
  h.ns_id = e.ns_id;
  h.layout = e.layout;
  h.tokens = e.tokens;
  h.codec = KvCodec::kNone;
  h.payload_bytes = e.bytes;
  h.payload_checksum = e.payload_checksum;
  h.seq = e.seq;
  return h;
}

RecordHeader StoreImpl::T2HeaderOf(const Entry& e) {
  RecordHeader h = RawHeaderOf(e);
  h.codec = e.location.codec;
  h.payload_bytes = e.location.payload_bytes;
  h.payload_checksum = e.location.payload_checksum;
  return h;
}

KvCodec StoreImpl::CodecFor(KvCodec tier_codec, const KvLayout& layout, uint32_t tokens) {
  if (tier_codec == KvCodec::kNone || !KvCodecSupports(tier_codec, layout).ok()) return KvCodec::kNone;
  // A short partial chunk can encode no smaller on disk than it is (int4's per-channel K scales
  // are a fixed cost; records take whole blocks): it stays raw.
  if (RoundUpToBlock(EncodedChunkBytes(tier_codec, layout, tokens)) >= RoundUpToBlock(layout.chunk_bytes(tokens))) {
    return KvCodec::kNone;
  }
  return tier_codec;
}

namespace {

// Bytes [r.offset, r.offset + r.size) of a chunk in `pages`: a view of the pages when they lie
// in one piece (*contiguous), else *scratch resized to hold them (the caller copies them in
// or out); an empty span when `scratch` is null.
std::span<std::byte> LayerBytes(const HostArena& arena, const PageList& pages, ByteRange r,
                                std::vector<std::byte>* scratch, bool* contiguous) {
  std::span<std::byte> first;
  int pieces = 0;
  arena.ForEachPiece(pages, r.offset, r.size, [&](std::byte* p, size_t n) {
    if (pieces++ == 0) first = {p, n};
  });
  *contiguous = pieces == 1;
  if (*contiguous) return first;
  if (scratch == nullptr) return {};
  scratch->resize(r.size);
  return *scratch;
}

}  // namespace

Status StoreImpl::EncodeFromPages(const Entry* e, KvCodec codec, AlignedBuffer* out) const {
  const KvLayout& l = e->layout;
  const size_t layer_out = EncodedLayerBytes(codec, l, e->tokens);
  const size_t total = EncodedChunkBytes(codec, l, e->tokens);
  if (total != layer_out * l.num_layers) return Status::InvalidArgument("encoded chunk is not its layers back to back");
  out->Resize(RoundUpToBlock(total));  // zero-filled: the padding is zeros
  std::vector<std::byte> scratch;
  for (uint32_t layer = 0; layer < l.num_layers; ++layer) {
    const ByteRange r = l.layer_range(layer, e->tokens);
    bool contiguous = false;
    std::span<std::byte> raw = LayerBytes(*arena_, e->pages, r, &scratch, &contiguous);
    if (!contiguous) {
      std::byte* at = raw.data();
      arena_->ForEachPiece(e->pages, r.offset, r.size, [&](std::byte* p, size_t n) {
        std::memcpy(at, p, n);
        at += n;
      });
    }
    auto* dst = reinterpret_cast<std::byte*>(out->data()) + layer * layer_out;
    KVAULT_RETURN_IF_ERROR(EncodeKvLayer(codec, l, e->tokens, raw, {dst, layer_out}));
  }
  return Status::OK();
}

Status StoreImpl::DecodeIntoPages(const Entry* e, KvCodec codec, std::span<const std::byte> encoded) {
  const KvLayout& l = e->layout;
  const size_t layer_in = EncodedLayerBytes(codec, l, e->tokens);
  if (encoded.size() != EncodedChunkBytes(codec, l, e->tokens) || encoded.size() != layer_in * l.num_layers) {
    return Status::Corruption("encoded payload size does not match its codec and layout");
  }
  // The usual case, pages in one run: the whole chunk at once, on options_.decode_threads.
  bool one_piece = false;
  std::span<std::byte> whole = LayerBytes(*arena_, e->pages, ByteRange{0, e->bytes}, nullptr, &one_piece);
  if (one_piece) {
    Status st = DecodeKvChunk(codec, l, e->tokens, encoded, whole, std::max(1, options_.decode_threads));
    if (!st.ok()) return Status::Corruption("record does not decode: " + st.ToString());
    ZeroPadding(e);
    return Status::OK();
  }
  std::vector<std::byte> scratch;
  for (uint32_t layer = 0; layer < l.num_layers; ++layer) {
    const ByteRange r = l.layer_range(layer, e->tokens);
    bool contiguous = false;
    std::span<std::byte> raw = LayerBytes(*arena_, e->pages, r, &scratch, &contiguous);
    Status st = DecodeKvLayer(codec, l, e->tokens, encoded.subspan(layer * layer_in, layer_in), raw);
    if (!st.ok()) return Status::Corruption("record does not decode: " + st.ToString());
    if (!contiguous) {
      const std::byte* from = raw.data();
      arena_->ForEachPiece(e->pages, r.offset, r.size, [&](std::byte* p, size_t n) {
        std::memcpy(p, from, n);
        from += n;
      });
    }
  }
  ZeroPadding(e);
  return Status::OK();
}

Status StoreImpl::ReserveT1Locked(Entry* e, const std::function<bool(const Entry*)>& may_evict) {
  return core_->ReserveT1(e, may_evict);  // OnT1Reserved hands e its arena pages
}

void StoreImpl::OnT1Reserved(Entry* e, uint32_t pages) { e->pages = arena_->Allocate(pages); }

void StoreImpl::OnT1Released(Entry* e) {
  arena_->Free(e->pages);
  e->pages.clear();
}

void StoreImpl::OnEvictedFromT1(Entry* e) {
  ClearPrefetchedLocked(e);
  if (e->dirty && !e->from_t3) ++unpersisted_;  // a fetched copy is no put: Flush does not report it
}

void StoreImpl::OnT2Dropped(Entry* e) {
  auto live = segment_live_.find(e->location.segment);
  if (live != segment_live_.end()) live->second -= std::min(live->second, TierCore::RecordBytes(*e));
}

void StoreImpl::OnErase(Entry* e) { ClearPrefetchedLocked(e); }

void StoreImpl::ClearPrefetchedLocked(Entry* e) {
  if (!e->prefetched) return;
  e->prefetched = false;
  prefetched_bytes_ -= e->bytes;
}

void StoreImpl::DropT2CopyLocked(Entry* e) { core_->DropT2Copy(e); }

void StoreImpl::PlaceT2RecordLocked(Entry* e, DiskLocation loc) {
  e->location = loc;
  segment_live_[loc.segment] += TierCore::RecordBytes(*e);
  segment_total_[loc.segment] += TierCore::RecordBytes(*e);
  segment_keys_[loc.segment].push_back(e->key);
}

void StoreImpl::AddT2CopyLocked(Entry* e, DiskLocation loc) {
  PlaceT2RecordLocked(e, loc);
  core_->AddT2Copy(e);
}

void StoreImpl::EraseLocked(Entry* e) { core_->Erase(e); }

void StoreImpl::CountErrorLocked(const Status& st) {
  switch (st.code()) {
    case Code::kNoSpace: ++stats_.err_no_space; break;
    case Code::kCorruption: ++stats_.err_corruption; break;
    default: ++stats_.err_io; break;
  }
}

void StoreImpl::UnpinLocked(Entry* e) {
  --e->pins;
  if (e->pins == 0 && !e->in_t1 && !e->on_t2 && !e->promoting) EraseLocked(e);
}

Status StoreImpl::Flush() {
  if (!log_) return Status::OK();
  uint64_t lost;
  {
    MutexLock lock(mu_);
    const uint64_t target = last_queued_seq_;
    progress_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return processed_seq_ >= target; });
    lost = unpersisted_ - unpersisted_at_flush_;
    unpersisted_at_flush_ = unpersisted_;
  }
  Status st = log_->Sync();
  if (!st.ok()) {
    MutexLock lock(mu_);
    CountErrorLocked(st);
    return st;
  }
  if (lost > 0) return Status::IOError(std::to_string(lost) + " chunks put since the last flush did not reach the disk tier");
  return Status::OK();
}

StoreStats StoreImpl::Stats() const {
  MutexLock lock(mu_);
  StoreStats s = stats_;
  s.bytes_loaded = bytes_loaded_.load(std::memory_order_relaxed);
  s.t1_used_bytes = arena_->used_bytes();
  s.t1_entries = 0;
  s.t2_entries = 0;
  core_->ForEach([&](const Entry* e) {
    s.t1_entries += e->in_t1 && e->committed;
    s.t2_entries += e->on_t2;
  });
  const TierCoreCounters& c = core_->counters();
  s.t1_evictions = c.t1_evictions;
  s.t1_dropped_unpersisted = c.t1_dropped_unpersisted;
  s.partials_superseded = c.partials_superseded;
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

// StoreImpl's write-behind thread: batches of committed chunks appended to the T2 segment
// log, and the room they need: dead segments reclaimed, sparse ones compacted, T2 victims
// (the core's T2 policy) given up.
#include "store/store_impl.h"

#include <algorithm>

#include "store/aligned_buffer.h"
#include "store/record_format.h"

namespace kvault {

void StoreImpl::WriterLoop() {
  constexpr auto kBackoff = std::chrono::milliseconds(200);
  constexpr size_t kMaxBatch = 64;
  MutexLock lock(mu_);
  for (;;) {
    writer_cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return shutdown_ || !write_queue_.empty(); });
    if (write_queue_.empty()) break;  // shutdown with nothing left to write

    std::vector<Entry*> batch;
    std::vector<KvCodec> codecs;  // how each chunk is to be stored
    uint64_t record_bytes = 0, upto = 0;
    while (!write_queue_.empty() && batch.size() < kMaxBatch &&
           (batch.empty() || record_bytes < options_.write_batch_bytes)) {
      auto [seq, key] = write_queue_.front();
      write_queue_.pop_front();
      upto = seq;
      Entry* e = core_->Find(key);
      if (e == nullptr) continue;
      if (!e->dirty || e->seq != seq || !e->in_t1) continue;  // stale item
      e->writing = true;
      ++e->pins;
      batch.push_back(e);
      codecs.push_back(CodecFor(options_.t2_codec, e->layout, e->tokens));
      record_bytes += kBlockBytes + RoundUpToBlock(StoredPayloadBytes(codecs.back(), e->layout, e->tokens));
    }
    if (batch.empty()) {
      processed_seq_ = upto;
      progress_cv_.notify_all();
      continue;
    }
    std::vector<AppendItem> items(batch.size());
    std::vector<bool> needs_checksum(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      items[i].header = RawHeaderOf(*batch[i]);
      needs_checksum[i] = !batch[i]->checksum_valid;
    }
    const bool degraded = std::chrono::steady_clock::now() < degraded_until_;
    lock.Unlock();

    // The entries are pinned: their pages can be read without the lock. A chunk the codec
    // takes is encoded here, off the put's path, into a buffer of its own; the others (codec
    // none, or values the codec refuses) are written straight from their pages.
    if (encode_buffers_.size() < batch.size()) encode_buffers_.resize(batch.size());
    uint64_t fallbacks = 0;
    std::vector<uint64_t> record_sizes;  // on disk, in append order: what EnsureT2Space checks
    for (size_t i = 0; i < batch.size(); ++i) {
      RecordHeader& h = items[i].header;
      if (codecs[i] != KvCodec::kNone) {
        AlignedBuffer& buf = encode_buffers_[i];
        if (EncodeFromPages(batch[i], codecs[i], &buf).ok()) {
          h.codec = codecs[i];
          h.payload_bytes = EncodedChunkBytes(codecs[i], batch[i]->layout, batch[i]->tokens);
          h.payload_checksum = Checksum(std::as_bytes(std::span(buf.data(), h.payload_bytes)));
          items[i].payload.push_back({buf.data(), RoundUpToBlock(h.payload_bytes)});
          record_sizes.push_back(h.record_bytes());
          continue;
        }
      }
      if (options_.t2_codec != KvCodec::kNone) ++fallbacks;  // a layout or values the codec cannot take: raw
      if (needs_checksum[i]) h.payload_checksum = PayloadChecksumOf(batch[i]);  // written out of order
      arena_->ForEachPiece(batch[i]->pages, 0, RoundUpToBlock(batch[i]->bytes),
                           [&](std::byte* p, size_t n) { items[i].payload.push_back({p, n}); });
      record_sizes.push_back(h.record_bytes());
    }
    Status space = degraded ? Status::Unavailable("disk tier recovering from an error")
                            : EnsureT2Space(record_sizes);
    if (space.ok()) {
      log_->Append(items);
    } else {
      for (AppendItem& item : items) item.status = space;
    }

    lock.Lock();
    stats_.codec_fallbacks += fallbacks;
    bool failed = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry* e = batch[i];
      const AppendItem& item = items[i];
      e->writing = false;
      --e->pins;
      if (item.status.ok()) {
        if (e->on_t2) DropT2CopyLocked(e);  // an older copy (rewritten after a failed load)
        AddT2CopyLocked(e, item.location);  // the location carries the record's codec and size
        if (item.header.codec == KvCodec::kNone) {
          e->payload_checksum = item.header.payload_checksum;  // of the raw payload
          e->checksum_valid = true;
        } else {
          ++stats_.t2_chunks_encoded;
        }
        e->hot = false;
        stats_.bytes_t1_to_t2 += item.header.payload_bytes;
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
    if (needed > options_.t2_bytes) return Status::NoSpace("records larger than the disk tier's cap");
    const uint64_t used = log_->UsedBytes();
    if (used + needed <= options_.t2_bytes) return Status::OK();
    const uint64_t shortfall = used + needed - options_.t2_bytes;
    // In order: delete a sealed segment with nothing live; compact the sparsest sealed segment
    // when it is at least half dead or when the dead bytes of all sealed segments cover the
    // shortfall (copying its live records costs what it keeps, and frees the rest); else let
    // the T2 policy's victims die until they cover the shortfall, and look again.
    std::optional<uint32_t> empty, sparse;
    bool evicted = false;
    {
      MutexLock lock(mu_);
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
          Entry* victim = core_->PickT2Victim(eligible);
          if (victim == nullptr) break;
          dead += TierCore::RecordBytes(*victim);
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
  // 1. Claim every live record of the segment: marked `moving` (readers of the T2 copy wait;
  //    no T2 eviction, reclaim or prefetch touches it; the entry is not erased, as its T2 copy
  //    stays). A record left unclaimed loses its only disk copy when the segment goes, so the
  //    only ones left are those being written again (their new copy is in flight). A chunk a
  //    reader holds (pinned in T1) is moved like any other, and so is one being promoted: the
  //    promotion reads the old record through its open file, or misses if it starts after the
  //    segment went (PromoteLocked keeps the moved copy). Nothing is pinned for the move:
  //    compaction never holds DRAM that puts need.
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
    MutexLock lock(mu_);
    auto keys = segment_keys_.find(id);
    if (keys != segment_keys_.end()) {
      for (const ChunkKey& k : keys->second) {
        Entry* e = core_->Find(k);
        if (e == nullptr) continue;
        if (!e->on_t2 || e->location.segment != id || e->writing || e->moving) continue;
        e->moving = true;
        Move m{e, {}, e->location, T2HeaderOf(*e), {}};  // moved as stored: no decode, no re-encode
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
      MutexLock lock(mu_);
      CountErrorLocked(st);
      continue;
    }
    m.item.payload.push_back(slice);
  }
  // 3. The segment goes (every record in it but the claimed ones dies), then the copies are
  //    appended: freeing first means compaction never needs spare space. A crash in between
  //    loses the copies: misses, never wrong data.
  {
    MutexLock lock(mu_);
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
    if (m.ok) sizes.push_back(m.header.record_bytes());
  }
  while (!sizes.empty() && log_->UsedBytes() + log_->BytesNeeded(sizes) > options_.t2_bytes) sizes.pop_back();
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
  MutexLock lock(mu_);
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
      stats_.bytes_compacted += item.header.payload_bytes;
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
    MutexLock lock(mu_);
    std::vector<ChunkKey> keys = std::move(segment_keys_[id]);
    segment_keys_.erase(id);
    segment_live_.erase(id);
    segment_total_.erase(id);
    for (const ChunkKey& k : keys) {
      Entry* e = core_->Find(k);
      if (e == nullptr) continue;
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
    MutexLock lock(mu_);
    CountErrorLocked(st);
  }
}

}  // namespace kvault

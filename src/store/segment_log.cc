#include "store/segment_log.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "store/little_endian.h"

namespace kvault {
namespace {

constexpr size_t kScanWindowBytes = 8u << 20;

uint64_t IndexAreaBytes(size_t entries) { return RoundUpToBlock(entries * kIndexEntryBytes); }

// Scratch block for reading one record header; one per thread.
uint8_t* ThreadHeaderBlock() {
  thread_local AlignedBuffer block(kBlockBytes);
  return block.data();
}

}  // namespace

std::string SegmentLog::SegmentName(uint32_t id) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "seg-%08" PRIu32 ".kvs", id);
  return buf;
}

bool SegmentLog::ParseSegmentName(const std::string& name, uint32_t* id) {
  unsigned v = 0;
  char tail[8] = {0};
  if (name.size() != 16 || std::sscanf(name.c_str(), "seg-%8u.%3s", &v, tail) != 2) return false;
  if (std::strcmp(tail, "kvs") != 0 || v == 0) return false;
  *id = v;
  return true;
}

SegmentLog::SegmentLog(const Options& options) : options_(options) {}

SegmentLog::~SegmentLog() {
  if (active_) SealActive();
  (void)Sync();  // a clean close leaves every segment durable
}

Result<std::unique_ptr<SegmentLog>> SegmentLog::Open(const Options& options, const RecordVisitor& visit,
                                                      OpenStats* stats) {
  std::unique_ptr<SegmentLog> log(new SegmentLog(options));
  Env* env = options.env;
  KVAULT_RETURN_IF_ERROR(env->CreateDirs(options.dir));
  // One store per directory: a second one would pick the same segment ids and reclaim the
  // first one's segments.
  auto lock = env->LockFile(options.dir + "/LOCK");
  if (!lock.ok()) return lock.status();
  log->lock_ = std::move(lock.value());
  auto names = env->ListDir(options.dir);
  if (!names.ok()) return names.status();
  std::vector<uint32_t> ids;
  for (const std::string& n : *names) {
    uint32_t id;
    if (ParseSegmentName(n, &id)) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (uint32_t id : ids) {
    Segment seg;
    seg.path = options.dir + "/" + SegmentName(id);
    Status st = log->LoadSegment(id, &seg, visit, stats);
    if (!st.ok()) {
      // An unreadable segment is skipped (its records are misses), never fatal.
      ++stats->torn;
      continue;
    }
    {
      MutexLock lock(log->mu_);  // uncontended: nobody else has the log yet
      log->segments_[id] = std::move(seg);
    }
    log->next_id_ = id + 1;
    ++stats->segments;
  }
  if (!ids.empty()) log->next_id_ = std::max(log->next_id_, ids.back() + 1);
  // Probe direct I/O support with the next segment file (created lazily on first append).
  FileOpenOptions fo{.create = true, .writable = true, .direct_io = options.direct_io, .use_io_uring = options.use_io_uring};
  std::string probe = options.dir + "/.probe";
  auto f = env->OpenFile(probe, fo);
  if (!f.ok()) return f.status();
  log->direct_io_ = (*f)->direct();
  f = Status::OK();  // close before unlinking
  (void)env->RemoveFile(probe);
  return log;
}

Status SegmentLog::LoadSegment(uint32_t id, Segment* seg, const RecordVisitor& visit, OpenStats* stats) {
  FileOpenOptions fo{.create = false, .writable = false, .direct_io = options_.direct_io, .use_io_uring = options_.use_io_uring};
  auto file = options_.env->OpenFile(seg->path, fo);
  if (!file.ok()) return file.status();
  seg->file = std::move(file.value());
  auto size = seg->file->Size();
  if (!size.ok()) return size.status();
  seg->bytes = *size;
  uint64_t records = 0;
  if (ReadIndex(*seg->file, seg->bytes, id, visit, &records).ok()) {
    seg->sealed = true;
    stats->records += records;
    return Status::OK();
  }
  ++stats->scanned_segments;
  ScanSegment(*seg->file, seg->bytes, id, visit, stats);
  return Status::OK();
}

Status SegmentLog::ReadIndex(File& file, uint64_t bytes, uint32_t id, const RecordVisitor& visit, uint64_t* records) {
  if (bytes < kBlockBytes || bytes % kBlockBytes != 0) return Status::Corruption("no trailer");
  AlignedBuffer block(kBlockBytes);
  IoSlice s{block.data(), kBlockBytes};
  KVAULT_RETURN_IF_ERROR(file.Read(bytes - kBlockBytes, {&s, 1}));
  SegmentTrailer t;
  KVAULT_RETURN_IF_ERROR(DecodeTrailer(block.data(), &t));
  uint64_t area = IndexAreaBytes(t.entries);
  if (t.index_offset + area + kBlockBytes != bytes) return Status::Corruption("index does not end at trailer");
  AlignedBuffer index(std::max<uint64_t>(area, kBlockBytes));
  if (area > 0) {
    IoSlice is{index.data(), area};
    KVAULT_RETURN_IF_ERROR(file.Read(t.index_offset, {&is, 1}));
  }
  if (Checksum(std::as_bytes(std::span(index.data(), t.index_bytes))) != t.index_checksum) {
    return Status::Corruption("bad index checksum");
  }
  std::vector<std::pair<RecordHeader, DiskLocation>> found;
  for (uint32_t i = 0; i < t.entries; ++i) {
    const uint8_t* e = index.data() + uint64_t{i} * kIndexEntryBytes;
    RecordHeader h;
    const uint64_t off = DecodeLE64(e);
    KVAULT_RETURN_IF_ERROR(DecodeHeader(e + 8, &h));
    if (off % kBlockBytes != 0 || off + h.record_bytes() > t.index_offset) return Status::Corruption("bad index entry");
    found.push_back({h, LocationOf(h, id, off)});
  }
  for (auto& [h, loc] : found) visit(h, loc);
  *records = found.size();
  return Status::OK();
}

void SegmentLog::ScanRange(File& file, uint64_t begin, uint64_t end, uint32_t id, const RecordVisitor& visit,
                           OpenStats* stats) {
  const uint64_t whole = end / kBlockBytes * kBlockBytes;
  if (whole != end) ++stats->torn;  // a partial trailing block: a torn write
  AlignedBuffer window(kScanWindowBytes);
  uint64_t win_start = 0, win_len = 0;
  // Loads the window from block-aligned `pos` on.
  auto load = [&](uint64_t pos) {
    win_start = pos;
    win_len = std::min<uint64_t>(kScanWindowBytes, whole - pos);
    IoSlice s{window.data(), win_len};
    return file.Read(win_start, {&s, 1}).ok();
  };
  // A segment without an index is what a crash leaves: a record's header may have landed
  // without all of its payload (the file can still be long enough when a later record of
  // the same batch landed). Such a record must not be indexed: a later put of its chunk
  // would be deduplicated against it and a successful Flush() would leave the chunk
  // unreadable. So the payload checksum is verified here, while the bytes pass by anyway.
  auto payload_intact = [&](uint64_t off, const RecordHeader& h, bool* io_error) {
    PayloadChecksum sum;
    uint64_t pos = off + kBlockBytes, left = h.payload_bytes;
    while (left > 0) {
      if (pos < win_start || pos >= win_start + win_len) {
        if (!load(pos)) {
          *io_error = true;
          return false;
        }
      }
      const uint64_t n = std::min(left, win_start + win_len - pos);
      sum.Update(std::as_bytes(std::span(window.data() + (pos - win_start), n)));
      pos += n;
      left -= n;
    }
    return sum.Digest() == h.payload_checksum;
  };
  uint64_t off = begin;
  while (off + kBlockBytes <= whole) {
    if (off < win_start || off + kBlockBytes > win_start + win_len) {
      if (!load(off)) {
        ++stats->torn;
        return;
      }
    }
    const uint8_t* block = window.data() + (off - win_start);
    RecordHeader h;
    if (DecodeHeader(block, &h).ok()) {
      if (off + h.record_bytes() <= whole) {
        bool io_error = false;
        if (payload_intact(off, h, &io_error)) {
          visit(h, LocationOf(h, id, off));
          ++stats->records;
          off += h.record_bytes();
          continue;
        }
        ++stats->torn;  // header landed, payload did not (or not all of it)
        if (io_error) return;
        off += kBlockBytes;  // resynchronise on the next block
        continue;
      }
      ++stats->torn;  // header landed, payload runs past the end of the file
    } else if (HasRecordMagic(block)) {
      ++stats->torn;  // a damaged header
    }
    off += kBlockBytes;  // resynchronise on the next block
  }
}

Status SegmentLog::StartSegment() {
  uint32_t id = next_id_++;
  Segment seg;
  seg.path = options_.dir + "/" + SegmentName(id);
  FileOpenOptions fo{.create = true, .writable = true, .direct_io = options_.direct_io, .use_io_uring = options_.use_io_uring};
  auto file = options_.env->OpenFile(seg.path, fo);
  if (!file.ok()) return file.status();
  seg.file = std::move(file.value());
  MutexLock lock(mu_);
  dir_unsynced_ = true;  // the next Sync() makes the new name durable
  segments_[id] = std::move(seg);
  active_ = id;
  write_offset_ = 0;
  active_index_.clear();
  return Status::OK();
}

void SegmentLog::SealActive() {
  std::shared_ptr<File> file;
  {
    MutexLock lock(mu_);
    file = segments_.at(*active_).file;
  }
  const size_t entries = active_index_.size() / kIndexEntryBytes;
  const uint64_t area = IndexAreaBytes(entries);
  AlignedBuffer buf(area + kBlockBytes);
  std::memcpy(buf.data(), active_index_.data(), active_index_.size());
  SegmentTrailer t{static_cast<uint32_t>(entries), write_offset_, active_index_.size(),
                   Checksum(std::as_bytes(std::span(active_index_)))};
  EncodeTrailer(t, buf.data() + area);
  WriteOp op{write_offset_, {IoSlice{buf.data(), area + kBlockBytes}}};
  // Not synced here: the next Sync() (Flush) syncs every segment sealed since the last one,
  // so a stream of puts pays one fdatasync per flush, not one per segment.
  bool ok = file->WriteBatch({&op, 1}).ok();
  // A segment whose trailer did not land is scanned on the next open; it still takes no
  // more appends either way.
  MutexLock lock(mu_);
  unsynced_.push_back(file);
  Segment& seg = segments_.at(*active_);
  seg.bytes = std::max(seg.bytes, write_offset_ + (ok ? area + kBlockBytes : 0));
  seg.sealed = ok;
  active_.reset();
  active_index_.clear();
  write_offset_ = 0;
}

void SegmentLog::Append(std::span<AppendItem> items) {
  header_blocks_.Resize(items.size() * kBlockBytes);
  size_t i = 0;
  while (i < items.size()) {
    // Choose the segment for items[i..j): as many as fit in the active segment.
    const uint64_t first = items[i].header.record_bytes();
    size_t count = active_index_.size() / kIndexEntryBytes;
    if (active_ && write_offset_ > 0 &&
        write_offset_ + first + IndexAreaBytes(count + 1) + kBlockBytes > options_.segment_bytes) {
      SealActive();
    }
    if (!active_) {
      Status st = StartSegment();
      if (!st.ok()) {
        for (; i < items.size(); ++i) items[i].status = st;
        return;
      }
      count = 0;
    }
    std::vector<WriteOp> ops;
    size_t j = i;
    uint64_t offset = write_offset_;
    while (j < items.size()) {
      uint64_t rb = items[j].header.record_bytes();
      if (j > i && offset + rb + IndexAreaBytes(count + (j - i) + 1) + kBlockBytes > options_.segment_bytes) break;
      uint8_t* hdr = header_blocks_.data() + j * kBlockBytes;
      std::memset(hdr, 0, kBlockBytes);
      EncodeHeader(items[j].header, hdr);
      WriteOp op{offset, {IoSlice{hdr, kBlockBytes}}};
      op.slices.insert(op.slices.end(), items[j].payload.begin(), items[j].payload.end());
      ops.push_back(std::move(op));
      items[j].location = LocationOf(items[j].header, *active_, offset);
      offset += rb;
      ++j;
    }
    std::shared_ptr<File> file;
    {
      MutexLock lock(mu_);
      file = segments_.at(*active_).file;
    }
    Status st = file->WriteBatch(ops);
    {
      MutexLock lock(mu_);
      for (size_t k = i; k < j; ++k) {
        items[k].status = st;
        if (!st.ok()) continue;
        uint8_t entry[kIndexEntryBytes];
        EncodeLE64(entry, items[k].location.offset);
        std::memcpy(entry + 8, header_blocks_.data() + k * kBlockBytes, kHeaderBytes);
        active_index_.insert(active_index_.end(), entry, entry + kIndexEntryBytes);
      }
      // After a failed write the next records overwrite the same range. Whatever the
      // failed write left there is not indexed; a record of it that did land intact is
      // still a correct record of its key, and anything torn fails its checksums.
      if (st.ok()) write_offset_ = offset;
      // A failed write may still have extended the file: count the high-water mark.
      uint64_t& bytes = segments_.at(*active_).bytes;
      bytes = std::max(bytes, offset);
    }
    i = j;
  }
}

Status SegmentLog::ReadRecord(DiskLocation loc, const RecordHeader& expected, std::span<const IoSlice> payload) const {
  std::shared_ptr<File> file;
  {
    MutexLock lock(mu_);
    auto it = segments_.find(loc.segment);
    if (it == segments_.end()) return Status::NotFound("segment reclaimed");
    file = it->second.file;
  }
  uint8_t* hdr = ThreadHeaderBlock();
  std::vector<IoSlice> slices;
  slices.reserve(payload.size() + 1);
  slices.push_back({hdr, kBlockBytes});
  slices.insert(slices.end(), payload.begin(), payload.end());
  KVAULT_RETURN_IF_ERROR(file->Read(loc.offset, slices));
  RecordHeader h;
  KVAULT_RETURN_IF_ERROR(DecodeHeader(hdr, &h));
  // The codec too: a payload is decoded by what its own header says, and that must be what
  // the index promised (never another codec's or layout's bytes).
  if (h.key != expected.key || h.ns_id != expected.ns_id || !(h.layout == expected.layout) ||
      h.tokens != expected.tokens || h.codec != expected.codec || h.payload_bytes != expected.payload_bytes ||
      h.payload_checksum != expected.payload_checksum) {
    return Status::Corruption("record does not match its index entry");
  }
  PayloadChecksum sum;
  uint64_t left = h.payload_bytes;
  for (const IoSlice& s : payload) {
    size_t n = std::min<uint64_t>(left, s.size);
    sum.Update(std::as_bytes(std::span(static_cast<const char*>(s.data), n)));
    left -= n;
  }
  if (left != 0 || sum.Digest() != h.payload_checksum) return Status::Corruption("bad payload checksum");
  return Status::OK();
}

Status SegmentLog::Sync() {
  std::vector<std::shared_ptr<File>> files;
  bool sync_dir;
  {
    MutexLock lock(mu_);
    files.swap(unsynced_);
    if (active_) files.push_back(segments_.at(*active_).file);
    sync_dir = std::exchange(dir_unsynced_, false);
  }
  Status first;
  if (sync_dir) {
    first = options_.env->SyncDir(options_.dir);
    if (!first.ok()) {
      MutexLock lock(mu_);
      dir_unsynced_ = true;  // try again at the next flush
    }
  }
  std::vector<std::shared_ptr<File>> failed;
  for (const auto& f : files) {
    Status st = f->Sync();
    if (st.ok()) continue;
    if (first.ok()) first = st;
    failed.push_back(f);
  }
  if (!failed.empty()) {
    // A failed sync made nothing durable: the next Sync() tries these files again, or a later
    // Flush would report as durable the segments sealed before this one failed. The active
    // segment needs no entry: every Sync() syncs it.
    MutexLock lock(mu_);
    const File* active = active_ ? segments_.at(*active_).file.get() : nullptr;
    for (auto& f : failed) {
      if (f.get() != active && std::find(unsynced_.begin(), unsynced_.end(), f) == unsynced_.end()) {
        unsynced_.push_back(std::move(f));
      }
    }
  }
  return first;
}

Status SegmentLog::RemoveSegment(uint32_t id) {
  std::string path;
  {
    MutexLock lock(mu_);
    auto it = segments_.find(id);
    if (it == segments_.end()) return Status::NotFound("no such segment");
    if (active_ && *active_ == id) return Status::InvalidArgument("cannot remove the active segment");
    path = it->second.path;
    segments_.erase(it);  // readers holding the File keep reading the unlinked file
  }
  return options_.env->RemoveFile(path);
}

uint64_t SegmentLog::UsedBytes() const {
  MutexLock lock(mu_);
  uint64_t total = 0;
  for (const auto& [id, seg] : segments_) total += seg.bytes;
  if (active_) total += IndexAreaBytes(active_index_.size() / kIndexEntryBytes) + kBlockBytes;
  return total;
}

uint64_t SegmentLog::BytesNeeded(std::span<const uint64_t> record_bytes) const {
  MutexLock lock(mu_);
  // Replays Append's placement decisions. A segment counts offset + index area + trailer,
  // whether active (UsedBytes) or sealed (SealActive), so the growth is `after - before`.
  // Every roll costs a trailer block and a rounded index area: a batch spanning several
  // segments needs more than one roll's worth.
  bool active = active_.has_value();
  uint64_t offset = active ? write_offset_ : 0;
  size_t count = active ? active_index_.size() / kIndexEntryBytes : 0;
  const uint64_t before = active ? offset + IndexAreaBytes(count) + kBlockBytes : 0;
  uint64_t sealed = 0;
  for (uint64_t rb : record_bytes) {
    if (active && offset > 0 && offset + rb + IndexAreaBytes(count + 1) + kBlockBytes > options_.segment_bytes) {
      sealed += offset + IndexAreaBytes(count) + kBlockBytes;
      active = false;
    }
    if (!active) {
      active = true;
      offset = 0;
      count = 0;
    }
    offset += rb;
    ++count;
  }
  const uint64_t after = sealed + (active ? offset + IndexAreaBytes(count) + kBlockBytes : 0);
  return after - before;
}

std::optional<uint32_t> SegmentLog::OldestInactive() const {
  MutexLock lock(mu_);
  for (const auto& [id, seg] : segments_) {
    if (!active_ || *active_ != id) return id;
  }
  return std::nullopt;
}

std::vector<SegmentInfo> SegmentLog::Segments() const {
  MutexLock lock(mu_);
  std::vector<SegmentInfo> out;
  for (const auto& [id, seg] : segments_) {
    out.push_back({id, seg.path, seg.bytes, seg.sealed, active_ && *active_ == id});
  }
  return out;
}

}  // namespace kvault

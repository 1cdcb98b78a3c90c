#include "store/inspect.h"

#include <algorithm>

#include "store/aligned_buffer.h"
#include "store/segment_log.h"

namespace kvault {
namespace {

// Where the index of a sealed segment of `bytes` bytes starts (from its trailer).
Result<uint64_t> IndexOffsetOf(File& f, uint64_t bytes) {
  AlignedBuffer block(kBlockBytes);
  IoSlice s{block.data(), kBlockBytes};
  KVAULT_RETURN_IF_ERROR(f.Read(bytes - kBlockBytes, {&s, 1}));
  SegmentTrailer t;
  KVAULT_RETURN_IF_ERROR(DecodeTrailer(block.data(), &t));
  return t.index_offset;
}

// The block-aligned stretches of [0, end) that no record of `records` covers.
std::vector<std::pair<uint64_t, uint64_t>> Gaps(const std::vector<std::pair<RecordHeader, DiskLocation>>& records,
                                                uint64_t end) {
  std::vector<std::pair<uint64_t, uint64_t>> covered;
  for (const auto& [h, loc] : records) covered.emplace_back(loc.offset, loc.offset + h.record_bytes());
  std::sort(covered.begin(), covered.end());
  std::vector<std::pair<uint64_t, uint64_t>> gaps;
  uint64_t pos = 0;
  for (const auto& [lo, hi] : covered) {
    if (lo > pos) gaps.emplace_back(pos, lo);
    pos = std::max(pos, hi);
  }
  if (end > pos) gaps.emplace_back(pos, end);
  return gaps;
}

}  // namespace

Result<InspectReport> InspectDir(const std::string& dir, Env* env) {
  if (env == nullptr) env = Env::Default();
  auto names = env->ListDir(dir);
  if (!names.ok()) return names.status();
  std::vector<std::pair<uint32_t, std::string>> segs;
  for (const std::string& n : *names) {
    uint32_t id;
    if (SegmentLog::ParseSegmentName(n, &id)) segs.emplace_back(id, n);
  }
  std::sort(segs.begin(), segs.end());
  InspectReport report;
  AlignedBuffer buf;
  for (const auto& [id, name] : segs) {
    InspectedSegment is;
    is.id = id;
    is.name = name;
    FileOpenOptions fo{.create = false, .writable = false, .direct_io = true, .use_io_uring = true};
    auto file = env->OpenFile(dir + "/" + name, fo);
    if (!file.ok()) return file.status();
    File& f = **file;
    auto size = f.Size();
    if (!size.ok()) return size.status();
    is.bytes = *size;
    std::vector<std::pair<RecordHeader, DiskLocation>> found;
    auto collect = [&](const RecordHeader& h, DiskLocation loc) { found.emplace_back(h, loc); };
    uint64_t n = 0;
    is.indexed = SegmentLog::ReadIndex(f, is.bytes, id, collect, &n).ok();
    SegmentLog::OpenStats os;
    if (is.indexed) {
      // A sealed segment's indexed records are complete writes: a bad checksum in one is
      // corruption, counted below. Only the stretches the index does not cover are scanned,
      // for torn leftovers of failed writes it would not mention.
      auto trailer_index = IndexOffsetOf(f, is.bytes);
      if (!trailer_index.ok()) return trailer_index.status();
      for (const auto& [lo, hi] : Gaps(found, *trailer_index)) {
        SegmentLog::ScanRange(f, lo, hi, id, [](const RecordHeader&, DiskLocation) {}, &os);
      }
    } else {
      SegmentLog::ScanSegment(f, is.bytes, id, collect, &os);  // torn records are skipped and counted
    }
    is.torn = os.torn;
    for (const auto& [h, loc] : found) {
      InspectedRecord r{id, loc.offset, h, false};
      buf.Resize(h.record_bytes());
      IoSlice s{buf.data(), h.record_bytes()};
      if (f.Read(loc.offset, {&s, 1}).ok()) {
        uint64_t sum = Checksum(std::as_bytes(std::span(buf.data() + kBlockBytes, h.payload_bytes)));
        RecordHeader on_disk;
        r.payload_ok = DecodeHeader(buf.data(), &on_disk).ok() && on_disk.key == h.key && on_disk.codec == h.codec &&
                       sum == h.payload_checksum;
      }
      if (!r.payload_ok) ++is.corrupt;
      report.payload_bytes += h.payload_bytes;
      report.raw_bytes += h.raw_bytes();
      report.encoded_records += h.codec != KvCodec::kNone;
      report.records.push_back(r);
    }
    is.records = found.size();
    report.torn += is.torn;
    report.corrupt += is.corrupt;
    report.segments.push_back(is);
  }
  return report;
}

}  // namespace kvault

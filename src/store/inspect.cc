#include "store/inspect.h"

#include <algorithm>

#include "store/aligned_buffer.h"
#include "store/segment_log.h"

namespace kvault {

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
    // Always scan too: it finds torn records that an index would not mention.
    std::vector<std::pair<RecordHeader, DiskLocation>> scanned;
    SegmentLog::OpenStats os;
    SegmentLog::ScanSegment(f, is.indexed ? is.bytes - kBlockBytes : is.bytes, id,
                            [&](const RecordHeader& h, DiskLocation loc) { scanned.emplace_back(h, loc); }, &os);
    if (!is.indexed) found = std::move(scanned);
    is.torn = os.torn;
    for (const auto& [h, loc] : found) {
      InspectedRecord r{id, loc.offset, h, false};
      buf.Resize(h.record_bytes());
      IoSlice s{buf.data(), h.record_bytes()};
      if (f.Read(loc.offset, {&s, 1}).ok()) {
        uint64_t sum = Checksum(std::as_bytes(std::span(buf.data() + kBlockBytes, h.payload_bytes)));
        RecordHeader on_disk;
        r.payload_ok = DecodeHeader(buf.data(), &on_disk).ok() && on_disk.key == h.key && sum == h.payload_checksum;
      }
      if (!r.payload_ok) ++is.corrupt;
      report.payload_bytes += h.payload_bytes;
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

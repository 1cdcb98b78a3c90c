// safetensors reader (mmap) and writer. Format: u64 LE header length N, N bytes of JSON,
// then the data section; every entry's data_offsets are relative to the data section.
//
// Invariants established by Open() before any tensor is handed out:
//   8 + N <= file size; every entry has a known dtype, non-negative dims, begin <= end <= data
//   size, product(shape) * dtype size == end - begin; entries sorted by begin do not overlap.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

namespace kvault::engine {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian");

using json = nlohmann::json;

// The safetensors spec caps the header at 100 MB; a larger length is a corrupt file.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2}, {"I8", torch::kInt8, 1}, {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(torch::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// A non-negative integer that fits in int64 (sizes, dims and offsets in the header).
bool ReadCount(const json& v, uint64_t& out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
  }
  return out <= static_cast<uint64_t>(INT64_MAX);
}

// Parses and checks one header entry against the data section's size.
Status ParseEntry(const std::string& name, const json& e, uint64_t data_size, SafetensorInfo& info) {
  auto bad = [&](const std::string& why) { return Status::Corruption("safetensors: tensor \"" + name + "\": " + why); };
  if (!e.is_object()) return bad("entry is not an object");
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) return bad("missing or non-string \"dtype\"");
  info.dtype = dt->get<std::string>();
  const DtypeInfo* d = FindDtype(info.dtype);
  if (d == nullptr) return bad("unknown dtype \"" + info.dtype + "\"");

  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) return bad("missing or non-array \"shape\"");
  // Element count with overflow checks: any product beyond the data size is already wrong.
  uint64_t elements = 1;
  for (const json& dim : *sh) {
    uint64_t n = 0;
    if (!ReadCount(dim, n)) return bad("shape has a non-integer or negative dimension");
    info.shape.push_back(static_cast<int64_t>(n));
    if (n != 0 && elements > data_size / n) elements = data_size + 1;  // saturate: too large
    else elements *= n;
  }

  auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !ReadCount((*off)[0], info.begin) ||
      !ReadCount((*off)[1], info.end)) {
    return bad("\"data_offsets\" must be [begin, end] of non-negative integers");
  }
  if (info.begin > info.end) return bad("data_offsets begin > end");
  if (info.end > data_size) {
    return bad("data ends at " + std::to_string(info.end) + ", past the data section (" + std::to_string(data_size) + " bytes)");
  }
  if (elements > data_size || elements * d->size != info.end - info.begin) {
    return bad("shape " + ShapeString(info.shape) + " of " + info.dtype + " does not match its " +
               std::to_string(info.end - info.begin) + " bytes");
  }
  return Status::OK();
}

// Sorted by begin, no entry may start before the previous one ends (empty tensors may share
// an offset).
Status CheckNoOverlap(const std::map<std::string, SafetensorInfo>& tensors) {
  std::vector<std::pair<const std::string*, const SafetensorInfo*>> order;
  for (const auto& [name, info] : tensors) order.emplace_back(&name, &info);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin : a.second->end < b.second->end;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i].second->begin < order[i - 1].second->end) {
      return Status::Corruption("safetensors: tensors \"" + *order[i - 1].first + "\" and \"" + *order[i].first +
                                "\" overlap");
    }
  }
  return Status::OK();
}

Status ParseHeader(const char* text, size_t length, uint64_t data_size, std::map<std::string, SafetensorInfo>& out) {
  json header = json::parse(text, text + length, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Status::Corruption("safetensors: header is not valid JSON");
  if (!header.is_object()) return Status::Corruption("safetensors: header is not a JSON object");
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;  // free-form string map; not needed here
    SafetensorInfo info;
    KVAULT_RETURN_IF_ERROR(ParseEntry(name, entry, data_size, info));
    out.emplace(name, std::move(info));
  }
  return CheckNoOverlap(out);
}

Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return Status::FromErrno(errno, "safetensors: write " + path);
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::OK();
}

}  // namespace

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto mapped = MappedFile::Open(path, "safetensors");
  if (!mapped.ok()) return mapped.status();
  const uint64_t size = (*mapped)->size();
  if (size < 8) {
    return Status::Corruption("safetensors: " + path + " is too short (" + std::to_string(size) + " bytes)");
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = std::move(mapped.value());
  const uint8_t* bytes = f->map_->data();
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);  // little-endian (static_assert above)
  if (header_len > size - 8 || header_len > kMaxHeaderBytes) {
    return Status::Corruption("safetensors: " + path + ": header length " + std::to_string(header_len) +
                              " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  f->data_ = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  Status s;
  try {
    s = ParseHeader(reinterpret_cast<const char*>(bytes + 8), header_len, data_size, f->tensors_);
  } catch (const std::exception& e) {  // defensive: ParseHeader checks types before reading
    s = Status::Corruption(std::string("safetensors: bad header: ") + e.what());
  }
  if (!s.ok()) return Status(s.code(), s.message() + " (" + path + ")");
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

Result<torch::Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return Status::NotFound("safetensors: no tensor \"" + name + "\" in " + path_);
  const SafetensorInfo& info = it->second;
  const DtypeInfo* d = FindDtype(info.dtype);  // known: checked by Open()
  auto options = torch::TensorOptions().dtype(d->type);
  const uint8_t* p = data_ + info.begin;
  if (reinterpret_cast<uintptr_t>(p) % d->size != 0) {
    // The header length (or an offset) leaves the data misaligned for this dtype: copy into
    // an aligned tensor rather than view it.
    torch::Tensor t = torch::empty(info.shape, options);
    std::memcpy(t.data_ptr(), p, info.end - info.begin);
    return t;
  }
  // The mapping is PROT_READ: callers must not write through this view.
  return torch::from_blob(const_cast<uint8_t*>(p), info.shape, options);
}

Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  // Lay the tensors out back to back in the given order.
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};  // transformers expects it
  std::vector<torch::Tensor> data;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__" || !names.insert(name).second) {
      return Status::InvalidArgument("safetensors: duplicate or reserved tensor name \"" + name + "\"");
    }
    if (!tensor.defined()) return Status::InvalidArgument("safetensors: tensor \"" + name + "\" is undefined");
    const DtypeInfo* d = FindDtype(tensor.scalar_type());
    if (d == nullptr) return Status::InvalidArgument("safetensors: tensor \"" + name + "\" has an unsupported dtype");
    torch::Tensor t = tensor.to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * d->size;
    header[name] = {{"dtype", d->name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_len = text.size();

  // Write a temporary file and rename it, so a reader never sees a half-written file.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "safetensors: create " + tmp);
  Status s = WriteAll(fd, &header_len, 8, tmp);
  if (s.ok()) s = WriteAll(fd, text.data(), text.size(), tmp);
  for (size_t i = 0; s.ok() && i < data.size(); ++i) {
    s = WriteAll(fd, data[i].data_ptr(), data[i].numel() * data[i].element_size(), tmp);
  }
  if (::close(fd) != 0 && s.ok()) s = Status::FromErrno(errno, "safetensors: close " + tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = Status::FromErrno(errno, "safetensors: rename " + tmp);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace kvault::engine

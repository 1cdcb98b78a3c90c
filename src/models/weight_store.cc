// A model's weights image as entries of the store's weights namespace (weight_store.h): the
// manifest, writing the stream chunk by chunk, reading it with several chunks in flight
// straight into one arena, the source index and source identities.
#include "models/weight_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "store/little_endian.h"
#include "store/mutex.h"

namespace kvault::models {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kUnitBytes = 4096;           // one "token" of the weights layout
constexpr uint32_t kUnitsPerChunk = 4096;       // 16 MiB chunks
constexpr char kManifestMagic[8] = {'K', 'V', 'W', 'I', 'M', 'G', '0', '1'};
constexpr uint32_t kManifestVersion = 1;
constexpr uint64_t kHeaderBytes = 80;           // the fixed part of the manifest (below)
constexpr char kSourceMagic[8] = {'K', 'V', 'W', 'S', 'R', 'C', '0', '1'};
constexpr uint32_t kSourceUnits = 8;            // the source index chunk: 8 "tokens"
constexpr const char* kLoaderVersion = "kvault-weights-source-v1";

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// The store's little-endian helpers (store/little_endian.h) over the manifest's std::byte buffers.
uint8_t* U8(std::byte* p) { return reinterpret_cast<uint8_t*>(p); }
const uint8_t* U8(const std::byte* p) { return reinterpret_cast<const uint8_t*>(p); }
void PutU32(std::byte* p, uint32_t v) { EncodeLE32(U8(p), v); }
void PutU64(std::byte* p, uint64_t v) { EncodeLE64(U8(p), v); }
uint32_t GetU32(const std::byte* p) { return DecodeLE32(U8(p)); }
uint64_t GetU64(const std::byte* p) { return DecodeLE64(U8(p)); }

// The manifest's fixed header (little-endian):
//   [0, 8) magic "KVWIMG01"   [8, 12) version   [12, 16) header bytes (80)
//   [16, 24) manifest bytes (header + JSON, padded to 4096)   [24, 32) image bytes
//   [32, 64) fingerprint      [64, 72) JSON bytes             [72, 80) extras bytes
// then the JSON {config, dtype, tensors}, then the caller's extras (a JSON object) as they were
// given: a reader hands them on without parsing them.
struct ManifestHeader {
  uint64_t manifest_bytes = 0;
  uint64_t image_bytes = 0;
  Digest fingerprint;
  uint64_t json_bytes = 0;
  uint64_t extras_bytes = 0;
};

Result<ManifestHeader> ParseHeader(std::span<const std::byte> h) {
  if (h.size() < kHeaderBytes || std::memcmp(h.data(), kManifestMagic, 8) != 0) {
    return Status::InvalidArgument("weights manifest: bad magic");
  }
  if (GetU32(h.data() + 8) != kManifestVersion || GetU32(h.data() + 12) != kHeaderBytes) {
    return Status::InvalidArgument("weights manifest: unknown version " + std::to_string(GetU32(h.data() + 8)));
  }
  ManifestHeader m;
  m.manifest_bytes = GetU64(h.data() + 16);
  m.image_bytes = GetU64(h.data() + 24);
  std::memcpy(m.fingerprint.bytes.data(), h.data() + 32, 32);
  m.json_bytes = GetU64(h.data() + 64);
  m.extras_bytes = GetU64(h.data() + 72);
  if (m.manifest_bytes % kUnitBytes != 0 || m.image_bytes % kUnitBytes != 0 || m.json_bytes > (1ull << 32) ||
      m.extras_bytes > (1ull << 32) || kHeaderBytes + m.json_bytes + m.extras_bytes > m.manifest_bytes || m.manifest_bytes > (1ull << 32) ||
      m.image_bytes > (1ull << 44)) {
    return Status::InvalidArgument("weights manifest: inconsistent sizes");
  }
  return m;
}

const char* DtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: return "";
  }
}

Result<torch::ScalarType> DtypeOf(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "float16") return torch::kFloat16;
  if (name == "bfloat16") return torch::kBFloat16;
  return Status::InvalidArgument("weights manifest: unknown dtype " + name);
}

// The manifest's bytes: the header, the JSON {config, dtype, tensors}, the extras; zero-padded.
Result<std::vector<std::byte>> BuildManifest(const engine::ModelConfig& config, const engine::WeightImagePlan& plan,
                                             const Digest& fingerprint, const std::string& extras_json) {
  const std::string extras = extras_json.empty() ? std::string("{}") : extras_json;
  if (!json::accept(extras) || extras.front() != '{') {
    return Status::InvalidArgument("weights manifest: extras is not a JSON object");
  }
  json tensors = json::array();
  for (const engine::ImageTensor& t : plan.tensors) tensors.push_back({t.name, t.shape, t.offset, t.bytes});
  json j = {{"config", json::parse(config.ToJson())},
            {"dtype", DtypeName(plan.dtype)},
            {"tensors", std::move(tensors)}};
  const std::string text = j.dump();
  std::vector<std::byte> out(AlignUp(kHeaderBytes + text.size() + extras.size(), kUnitBytes));
  std::memcpy(out.data(), kManifestMagic, 8);
  PutU32(out.data() + 8, kManifestVersion);
  PutU32(out.data() + 12, kHeaderBytes);
  PutU64(out.data() + 16, out.size());
  PutU64(out.data() + 24, plan.bytes);
  std::memcpy(out.data() + 32, fingerprint.bytes.data(), 32);
  PutU64(out.data() + 64, text.size());
  PutU64(out.data() + 72, extras.size());
  std::memcpy(out.data() + kHeaderBytes, text.data(), text.size());
  std::memcpy(out.data() + kHeaderBytes + text.size(), extras.data(), extras.size());
  return out;
}

struct ParsedManifest {
  engine::ModelConfig config;
  engine::WeightImagePlan plan;
  std::string extras_json;
};

Result<ParsedManifest> ParseManifestJson(std::string_view text, uint64_t image_bytes) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("config") || !j.contains("tensors") || !j.contains("dtype")) {
    return Status::InvalidArgument("weights manifest: the JSON does not parse");
  }
  ParsedManifest m;
  try {
    auto config = engine::ModelConfig::FromJson(j["config"].dump());
    if (!config.ok()) return Status::InvalidArgument("weights manifest: " + config.status().message());
    m.config = std::move(config.value());
    auto dtype = DtypeOf(j["dtype"].get<std::string>());
    if (!dtype.ok()) return dtype.status();
    m.plan.dtype = *dtype;
    for (const json& t : j["tensors"]) {
      engine::ImageTensor it;
      it.name = t.at(0).get<std::string>();
      it.shape = t.at(1).get<std::vector<int64_t>>();
      it.offset = t.at(2).get<uint64_t>();
      it.bytes = t.at(3).get<uint64_t>();
      m.plan.tensors.push_back(std::move(it));
    }
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("weights manifest: ") + e.what());
  }
  m.plan.bytes = image_bytes;
  // The plan must be the one this version makes for the config (offsets included).
  const engine::WeightImagePlan expected = engine::PlanWeightImage(m.config, m.plan.dtype);
  bool same = expected.bytes == m.plan.bytes && expected.tensors.size() == m.plan.tensors.size();
  for (size_t i = 0; same && i < expected.tensors.size(); ++i) {
    const auto &a = expected.tensors[i], &b = m.plan.tensors[i];
    same = a.name == b.name && a.shape == b.shape && a.offset == b.offset && a.bytes == b.bytes;
  }
  if (!same) return Status::InvalidArgument("weights manifest: the tensor table does not match its config");
  return m;
}

std::vector<uint32_t> Units(uint64_t first, uint64_t count) {
  std::vector<uint32_t> v(count);
  std::iota(v.begin(), v.end(), static_cast<uint32_t>(first));
  return v;
}

Namespace SourceNamespace() { return Namespace(kWeightsSourceTenant, Digest{}, WeightsLayout()); }
Namespace FingerprintNamespace(const Digest& fp) { return Namespace(kWeightsSourceTenant, fp, WeightsLayout()); }

// A digest as the 8 "tokens" of an index entry or a chain root.
std::vector<uint32_t> Words(const Digest& d) {
  std::vector<uint32_t> t(kSourceUnits);
  for (uint32_t i = 0; i < kSourceUnits; ++i) t[i] = DecodeLE32(d.bytes.data() + 4 * i);
  return t;
}

std::vector<uint32_t> SourceTokens(const std::string& identity) { return Words(Sha256(std::string_view(identity))); }

// The key chunk 0 of the stream of manifest `manifest` follows (see weight_store.h).
ChunkKey StreamRoot(const Namespace& ns, const Digest& manifest) { return ChainKey(ns, ns.id(), Words(manifest)); }

// An index entry (source or fingerprint index): [magic][fingerprint][manifest digest].
Status PutIndexEntry(Store& store, const Namespace& ns, std::span<const uint32_t> tokens, const Digest& fingerprint,
                     const Digest& manifest) {
  std::vector<std::byte> payload(WeightsLayout().chunk_bytes(kSourceUnits));
  std::memcpy(payload.data(), kSourceMagic, 8);
  std::memcpy(payload.data() + 8, fingerprint.bytes.data(), 32);
  std::memcpy(payload.data() + 40, manifest.bytes.data(), 32);
  return store.Put(ns, ns.id(), tokens, payload);
}

Status GetIndexEntry(Store& store, const Namespace& ns, std::span<const uint32_t> tokens, Digest* fingerprint,
                     Digest* manifest) {
  Result<ChunkReader> r = store.OpenChunk(ns, ChainKey(ns, ns.id(), tokens));
  if (!r.ok()) return Status::NotFound(r.status().message());
  std::byte head[72];
  if (r->size() < sizeof head) return Status::NotFound("a short entry");
  KVAULT_RETURN_IF_ERROR(r->ReadRange(0, head));
  if (std::memcmp(head, kSourceMagic, 8) != 0) return Status::NotFound("a foreign entry");
  if (fingerprint != nullptr) std::memcpy(fingerprint->bytes.data(), head + 8, 32);
  if (manifest != nullptr) std::memcpy(manifest->bytes.data(), head + 40, 32);
  return Status::OK();
}

// Up to 64 KiB at `offset` of `path`, hashed.
std::string HashOfRange(std::ifstream& in, uint64_t offset, uint64_t size) {
  std::string buf(size, '\0');
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(buf.data(), static_cast<std::streamsize>(size));
  buf.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return Sha256(std::string_view(buf)).Hex();
}

Result<std::string> FileIdentity(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return Status::NotFound("weights source: " + file.string() + " is missing");
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status::NotFound("weights source: cannot read " + file.string());
  constexpr uint64_t kEdge = 64 << 10;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const uint64_t mtime_ns = static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + st.st_mtim.tv_nsec;
  return file.string() + " size=" + std::to_string(size) + " mtime_ns=" + std::to_string(mtime_ns) +
         " ino=" + std::to_string(st.st_ino) + " dev=" + std::to_string(st.st_dev) +
         " head=" + HashOfRange(in, 0, std::min(size, kEdge)) +
         " tail=" + HashOfRange(in, size - std::min(size, kEdge), std::min(size, kEdge)) + "\n";
}

}  // namespace

KvLayout WeightsLayout() {
  KvLayout l;
  l.num_layers = 1;
  l.num_kv_heads = 1;
  l.head_dim = 2048;
  l.dtype = DType::kF8;
  l.chunk_tokens = kUnitsPerChunk;
  l.rope = RopeMode::kPostRope;
  return l;
}

const char* WeightsFromName(WeightsFrom from) {
  switch (from) {
    case WeightsFrom::kFile: return "file";
    case WeightsFrom::kT1: return "T1";
    case WeightsFrom::kT2: return "T2";
    case WeightsFrom::kT3: return "T3";
    case WeightsFrom::kGenerated: return "generated";
  }
  return "?";
}

Status PutWeightImage(Store& store, const engine::ModelConfig& config, const engine::ModelWeights& weights,
                      const std::string& extras_json, Digest* manifest_digest) {
  if (!weights.embed.defined()) return Status::InvalidArgument("weights: no tensors to store");
  const engine::WeightImagePlan plan = engine::PlanWeightImage(config, weights.embed.scalar_type());
  auto manifest = BuildManifest(config, plan, weights.fingerprint, extras_json);
  if (!manifest.ok()) return manifest.status();
  const Namespace ns(kWeightsTenant, weights.fingerprint, WeightsLayout());
  const Digest digest = Sha256(std::span<const std::byte>(*manifest));
  if (manifest_digest != nullptr) *manifest_digest = digest;
  const uint64_t manifest_bytes = manifest->size();
  const uint64_t units = (manifest_bytes + plan.bytes) / kUnitBytes;
  const std::vector<uint32_t> tokens = Units(0, units);
  const std::vector<ChunkSpan> chunks = ChunkKeysFrom(ns, StreamRoot(ns, digest), tokens);
  // A put never waits for the disk: under T1 pressure the store drops chunks the write-behind
  // has not reached. So the writer waits for it (Flush) each time it has put a quarter of T1
  // (256 MiB when T1's size is not known, as for a tenant-bound kvaultd client).
  const StoreStats stats = store.Stats();
  const uint64_t chunk_bytes = WeightsLayout().chunk_bytes(kUnitsPerChunk);
  if (stats.t1_capacity_bytes > 0 && stats.t2_capacity_bytes == 0 && units * kUnitBytes > stats.t1_capacity_bytes) {
    return Status::NoSpace("weights: an image of " + std::to_string(units * kUnitBytes) +
                           " bytes does not fit in T1 (" + std::to_string(stats.t1_capacity_bytes) +
                           " bytes) and the store has no T2");
  }
  const uint64_t flush_every =
      stats.t1_capacity_bytes > 0 ? std::max(stats.t1_capacity_bytes / 4, chunk_bytes) : uint64_t{256} << 20;
  uint64_t unflushed = 0;
  for (const ChunkSpan& c : chunks) {
    if (unflushed >= flush_every) {
      KVAULT_RETURN_IF_ERROR(store.Flush());
      unflushed = 0;
    }
    const std::span<const uint32_t> chunk_tokens(tokens.data() + c.begin, c.tokens);
    Result<ChunkWriter> w = store.BeginPut(ns, c.parent, chunk_tokens);
    // Another writer (this process or another) is putting the same chunk: it will be there.
    for (int tries = 0; !w.ok() && w.status().code() == Code::kResourceExhausted && tries < 200; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      w = store.BeginPut(ns, c.parent, chunk_tokens);
    }
    if (!w.ok()) return Status(w.status().code(), "weights: storing chunk " + std::to_string(c.begin / kUnitsPerChunk) +
                                                      ": " + w.status().message());
    if (w->exists()) continue;
    const uint64_t stream_begin = uint64_t{c.begin} * kUnitBytes;
    Status fill;
    size_t at = 0;  // payload offset of the next piece
    KVAULT_RETURN_IF_ERROR(w->ForEachPiece(0, w->size(), [&](std::span<std::byte> piece) {
      // The piece holds stream bytes [s, s + piece.size()): manifest bytes, then image bytes.
      uint64_t s = stream_begin + at;
      at += piece.size();
      while (!piece.empty() && fill.ok()) {
        if (s < manifest_bytes) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(), manifest_bytes - s));
          std::memcpy(piece.data(), manifest->data() + s, n);
          piece = piece.subspan(n);
          s += n;
        } else {
          fill = engine::WriteWeightImageRange(config, weights, plan, s - manifest_bytes, piece);
          piece = {};
        }
      }
    }));
    KVAULT_RETURN_IF_ERROR(fill);
    KVAULT_RETURN_IF_ERROR(w->MarkWritten(0, w->size()));
    KVAULT_RETURN_IF_ERROR(w->Commit());
    unflushed += w->size();
  }
  // The whole stream on T2 before any index names it: T1 under pressure drops what the
  // write-behind has not reached, and an index entry must never point at a stream with a hole.
  KVAULT_RETURN_IF_ERROR(store.Flush());
  // The first manifest stored for these weights is the one a reader with only the fingerprint
  // finds (an existing entry is kept).
  return PutIndexEntry(store, FingerprintNamespace(weights.fingerprint), Words(weights.fingerprint),
                       weights.fingerprint, digest);
}

Result<ImageRead> GetWeightImage(Store& store, const Digest& fingerprint, const ReadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const Namespace ns(kWeightsTenant, fingerprint, WeightsLayout());
  const std::string model = "stored weights " + fingerprint.ShortHex();
  Digest manifest_digest = options.manifest;
  if (manifest_digest.IsZero()) {
    Status st = GetIndexEntry(store, FingerprintNamespace(fingerprint), Words(fingerprint), nullptr, &manifest_digest);
    if (!st.ok()) return Status::NotFound(model + ": not in the store (" + st.message() + ")");
  }
  const ChunkKey root = StreamRoot(ns, manifest_digest);
  // Chunk 0 (whole, or the partial chunk of a stream shorter than one chunk) holds the header.
  const std::vector<uint32_t> first_units = Units(0, kUnitsPerChunk);
  const LookupResult found = store.LookupFrom(ns, root, first_units);
  if (found.chunks.empty()) return Status::NotFound(model + ": not in the store");
  Result<ChunkReader> first = store.OpenChunk(ns, found.chunks[0].key);
  if (!first.ok()) return Status::NotFound(model + ": chunk 0: " + first.status().message());
  std::byte header_bytes[kHeaderBytes];
  if (first->size() < kHeaderBytes) return Status::InvalidArgument(model + ": chunk 0 is too short");
  KVAULT_RETURN_IF_ERROR(first->ReadRange(0, header_bytes));
  auto header = ParseHeader(header_bytes);
  if (!header.ok()) return Status(header.status().code(), model + ": " + header.status().message());
  if (header->fingerprint != fingerprint) return Status::InvalidArgument(model + ": the manifest names another model");
  const uint64_t manifest_bytes = header->manifest_bytes, image_bytes = header->image_bytes;
  const uint64_t units = (manifest_bytes + image_bytes) / kUnitBytes;
  const std::vector<uint32_t> tokens = Units(0, units);
  const std::vector<ChunkSpan> chunks = ChunkKeysFrom(ns, root, tokens);
  if (chunks.empty() || chunks[0].key != first->key()) {
    return Status::InvalidArgument(model + ": chunk 0 does not match the manifest's length");
  }

  ImageRead out;
  out.image_bytes = image_bytes;
  out.chunks = chunks.size();
  try {
    out.arena = options.reuse_arena.defined() && options.reuse_arena.dim() == 1 &&
                        options.reuse_arena.scalar_type() == torch::kUInt8 && options.reuse_arena.is_contiguous() &&
                        static_cast<uint64_t>(options.reuse_arena.numel()) >= image_bytes
                    ? options.reuse_arena
                    : engine::AllocateArena(image_bytes);
  } catch (const std::exception& e) {
    return Status::ResourceExhausted(model + ": cannot allocate " + std::to_string(image_bytes) + " bytes: " + e.what());
  }
  std::vector<std::byte> manifest(manifest_bytes);
  std::byte* const arena = static_cast<std::byte*>(out.arena.data_ptr());

  // Chunks are read by `threads` workers taking the next index; each copies its manifest part
  // and its image part into place (disjoint ranges). The first failure stops the others.
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> by_tier[4] = {};
  Mutex mu;
  Status first_error;  // GUARDED_BY(mu)
  auto read_chunk = [&](size_t i, const ChunkReader& r) -> Status {
    const uint64_t begin = uint64_t{chunks[i].begin} * kUnitBytes, size = uint64_t{chunks[i].tokens} * kUnitBytes;
    if (r.size() != size) return Status::InvalidArgument("chunk " + std::to_string(i) + " has the wrong size");
    by_tier[static_cast<size_t>(r.served_from()) & 3].fetch_add(1, std::memory_order_relaxed);
    uint64_t s = begin;
    if (s < manifest_bytes) {
      const uint64_t n = std::min(size, manifest_bytes - s);
      KVAULT_RETURN_IF_ERROR(r.ReadRange(0, std::span(manifest.data() + s, n)));
      s += n;
    }
    if (s < begin + size) {
      KVAULT_RETURN_IF_ERROR(r.ReadRange(s - begin, std::span(arena + (s - manifest_bytes), begin + size - s)));
    }
    return Status::OK();
  };
  auto worker = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= chunks.size() || failed.load()) return;
      Status st;
      if (i == 0) {
        st = read_chunk(0, *first);
        *first = ChunkReader();  // unpin
      } else {
        Result<ChunkReader> r = store.OpenChunk(ns, chunks[i].key);
        // T1 full of pinned chunks (the other readers' promotions): they unpin soon.
        for (int tries = 0; !r.ok() && r.status().code() == Code::kResourceExhausted && tries < 2000; ++tries) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          r = store.OpenChunk(ns, chunks[i].key);
        }
        st = r.ok() ? read_chunk(i, *r) : r.status();
      }
      if (!st.ok()) {
        MutexLock lock(mu);
        if (first_error.ok()) {
          first_error = Status(st.code(), "chunk " + std::to_string(i) + " of " + std::to_string(chunks.size()) +
                                              ": " + st.message());
        }
        failed.store(true);
        return;
      }
    }
  };
  // Each reader pins one chunk in T1 while it copies: at most half of T1 pinned at once.
  int threads = std::clamp<int>(options.threads, 1, 64);
  if (const uint64_t t1 = store.Stats().t1_capacity_bytes; t1 > 0) {
    threads = std::clamp<int>(static_cast<int>(t1 / (2 * WeightsLayout().chunk_bytes(kUnitsPerChunk))), 1, threads);
  }
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min<int>(threads, static_cast<int>(chunks.size())); ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (failed.load()) {
    MutexLock lock(mu);
    const Code code = first_error.code() == Code::kResourceExhausted || first_error.code() == Code::kNoSpace
                          ? first_error.code()
                          : Code::kNotFound;
    return Status(code, model + ": " + first_error.message());
  }

  if (Sha256(std::span<const std::byte>(manifest)) != manifest_digest) {
    return Status::NotFound(model + ": the manifest does not match its digest");
  }
  const char* const text = reinterpret_cast<const char*>(manifest.data()) + kHeaderBytes;
  auto parsed = ParseManifestJson(std::string_view(text, header->json_bytes), image_bytes);
  if (!parsed.ok()) return Status(parsed.status().code(), model + ": " + parsed.status().message());
  parsed->extras_json.assign(text + header->json_bytes, header->extras_bytes);
  auto weights = engine::WeightsFromImage(parsed->config, parsed->plan, out.arena, fingerprint);
  if (!weights.ok()) return Status(weights.status().code(), model + ": " + weights.status().message());
  if (options.verify) {
    const Digest actual = engine::ComputeFingerprint(parsed->config, *weights);
    if (actual != fingerprint) {
      return Status::Corruption(model + ": the loaded tensors have fingerprint " + actual.Hex());
    }
  }
  out.config = std::move(parsed->config);
  out.weights = std::move(weights.value());
  out.extras_json = std::move(parsed->extras_json);
  out.chunks_t1 = by_tier[1].load();
  out.chunks_t2 = by_tier[2].load();
  out.chunks_t3 = by_tier[3].load();
  out.from = out.chunks_t3 > 0 ? WeightsFrom::kT3 : out.chunks_t2 > 0 ? WeightsFrom::kT2 : WeightsFrom::kT1;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

Status PutSourceFingerprint(Store& store, const std::string& identity, const Digest& fingerprint,
                            const Digest& manifest) {
  return PutIndexEntry(store, SourceNamespace(), SourceTokens(identity), fingerprint, manifest);
}

Result<Digest> GetSourceFingerprint(Store& store, const std::string& identity, Digest* manifest) {
  Digest fingerprint;
  Status st = GetIndexEntry(store, SourceNamespace(), SourceTokens(identity), &fingerprint, manifest);
  if (!st.ok()) return Status::NotFound("weights source index: " + st.message());
  return fingerprint;
}

Result<std::string> SourceIdentity(const std::string& path, torch::ScalarType dtype) {
  std::error_code ec;
  const fs::path canonical = fs::canonical(path, ec);
  if (ec) return Status::NotFound("weights source: " + path + ": " + ec.message());
  std::string id = std::string(kLoaderVersion) + " dtype=" + DtypeName(dtype) + "\n";
  if (!fs::is_directory(canonical, ec)) {
    auto f = FileIdentity(canonical);
    if (!f.ok()) return f.status();
    return id + *f;
  }
  // A Hugging Face directory: every file the loader may read (configs, weights, tokenizer).
  if (!fs::exists(canonical / "config.json", ec)) {
    return Status::NotFound("weights source: " + path + " has no config.json");
  }
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::directory_iterator(canonical, ec)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file(ec) && (ext == ".json" || ext == ".safetensors" || ext == ".model" || ext == ".jinja")) {
      files.push_back(e.path());
    }
  }
  if (ec) return Status::NotFound("weights source: " + path + ": " + ec.message());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    auto fi = FileIdentity(f);
    if (!fi.ok()) return fi.status();
    id += *fi;
  }
  return id;
}

}  // namespace kvault::models

#include "test_util.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace kvtest {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace

TempDir::TempDir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + tmpl);
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

KvLayout MakeLayout(kvault::DType dtype, uint32_t layers, uint32_t kv_heads, uint32_t head_dim,
                    uint32_t chunk_tokens, kvault::RopeMode rope) {
  KvLayout l;
  l.num_layers = layers;
  l.num_kv_heads = kv_heads;
  l.head_dim = head_dim;
  l.dtype = dtype;
  l.chunk_tokens = chunk_tokens;
  l.rope = rope;
  return l;
}

Namespace MakeNamespace(const KvLayout& layout, const std::string& tenant, const std::string& model) {
  return Namespace(tenant, kvault::Sha256(model), layout);
}

std::vector<uint32_t> MakeTokens(uint64_t seed, size_t n) {
  uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
  std::vector<uint32_t> out(n);
  for (auto& t : out) t = static_cast<uint32_t>(SplitMix64(&s) & 0x1ffff);
  return out;
}

std::vector<std::byte> PayloadFor(const ChunkKey& key, size_t bytes) {
  const uint8_t* k = key.bytes.data();
  uint64_t state = Load64(k) ^ Load64(k + 8) ^ Load64(k + 16) ^ Load64(k + 24);
  std::vector<std::byte> out(bytes);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t v = SplitMix64(&state);
    std::memcpy(out.data() + i, &v, 8);
  }
  if (i < bytes) {
    uint64_t v = SplitMix64(&state);
    std::memcpy(out.data() + i, &v, bytes - i);
  }
  return out;
}

kvault::Status PutChain(Store& store, const Namespace& ns, std::span<const uint32_t> tokens,
                        std::vector<kvault::ChunkSpan>* spans) {
  std::vector<kvault::ChunkSpan> chunks = kvault::ChunkKeys(ns, tokens);
  for (const kvault::ChunkSpan& c : chunks) {
    std::vector<std::byte> payload = PayloadFor(c.key, ns.layout().chunk_bytes(c.tokens));
    KVAULT_RETURN_IF_ERROR(store.Put(ns, c.parent, tokens.subspan(c.begin, c.tokens), payload));
  }
  if (spans != nullptr) *spans = std::move(chunks);
  return kvault::Status::OK();
}

kvault::Status PutChainMixed(Store& store, const Namespace& ns, std::span<const uint32_t> tokens,
                             std::mt19937_64& rng, uint32_t layered_one_in, uint32_t abandon_one_in) {
  const KvLayout& layout = ns.layout();
  for (const kvault::ChunkSpan& c : kvault::ChunkKeys(ns, tokens)) {
    const std::vector<std::byte> payload = PayloadFor(c.key, layout.chunk_bytes(c.tokens));
    const std::span<const uint32_t> chunk_tokens = tokens.subspan(c.begin, c.tokens);
    if (rng() % layered_one_in != 0) {
      KVAULT_RETURN_IF_ERROR(store.Put(ns, c.parent, chunk_tokens, payload));
      continue;
    }
    auto w = store.BeginPut(ns, c.parent, chunk_tokens);
    if (!w.ok()) return w.status();
    std::vector<uint32_t> order(layout.num_layers);
    for (uint32_t l = 0; l < order.size(); ++l) order[l] = l;
    std::shuffle(order.begin(), order.end(), rng);
    for (uint32_t l : order) {
      const kvault::ByteRange r = layout.layer_range(l, c.tokens);
      KVAULT_RETURN_IF_ERROR(w->WriteLayer(l, std::span(payload).subspan(r.offset, r.size)));
    }
    if (abandon_one_in != 0 && rng() % abandon_one_in == 0) continue;  // dropped without Commit
    KVAULT_RETURN_IF_ERROR(w->Commit());
  }
  return kvault::Status::OK();
}

const char* CheckName(Check c) {
  switch (c) {
    case Check::kMatch: return "match";
    case Check::kMissing: return "missing";
    case Check::kMismatch: return "MISMATCH";
  }
  return "?";
}

Check CheckChunk(Store& store, const Namespace& ns, const ChunkKey& key, uint32_t tokens, kvault::Tier* served_from,
                 std::string* why, kvault::Status* status) {
  std::string scratch;
  if (why == nullptr) why = &scratch;
  auto reader = store.OpenChunk(ns, key);
  if (!reader.ok()) {
    if (status != nullptr) *status = reader.status();
    *why = reader.status().ToString();
    return Check::kMissing;
  }
  if (served_from != nullptr) *served_from = reader->served_from();
  const KvLayout& layout = ns.layout();
  if (reader->key() != key || reader->tokens() != tokens || reader->size() != layout.chunk_bytes(tokens)) {
    *why = "key/tokens/size differ: tokens " + std::to_string(reader->tokens()) + " vs " + std::to_string(tokens);
    return Check::kMismatch;
  }
  const std::vector<std::byte> want = PayloadFor(key, reader->size());
  std::vector<std::byte> got(reader->size());
  kvault::Status st = reader->ReadRange(0, got);
  if (!st.ok() || got != want) {
    *why = "whole payload differs (" + st.ToString() + ")";
    return Check::kMismatch;
  }
  for (uint32_t l = 0; l < layout.num_layers; ++l) {
    kvault::ByteRange r = layout.layer_range(l, tokens);
    std::vector<std::byte> layer(r.size);
    st = reader->ReadLayer(l, layer);
    if (!st.ok() || std::memcmp(layer.data(), want.data() + r.offset, r.size) != 0) {
      *why = "layer " + std::to_string(l) + " differs (" + st.ToString() + ")";
      return Check::kMismatch;
    }
  }
  size_t at = 0;
  bool pieces_ok = true;
  st = reader->ForEachPiece(0, want.size(), [&](std::span<const std::byte> piece) {
    if (at + piece.size() > want.size() || std::memcmp(piece.data(), want.data() + at, piece.size()) != 0) {
      pieces_ok = false;
    }
    at += piece.size();
  });
  if (!st.ok() || !pieces_ok || at != want.size()) {
    *why = "ForEachPiece differs (" + st.ToString() + ")";
    return Check::kMismatch;
  }
  return Check::kMatch;
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = ::readdir(d)) {
    struct stat st;
    std::string p = dir + "/" + e->d_name;
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += static_cast<uint64_t>(st.st_size);
  }
  ::closedir(d);
  return total;
}

kvault::StoreOptions SmallOptions(const std::string& dir) {
  kvault::StoreOptions o;
  o.dir = dir;
  o.page_bytes = 16u << 10;
  o.t1_bytes = 8ull << 20;
  o.t2_bytes = 64ull << 20;
  o.segment_bytes = 256ull << 10;
  o.huge_pages = false;
  return o;
}

KvLayout CrashLayout() { return MakeLayout(kvault::DType::kBF16, 4, 2, 32, 16); }

Namespace CrashNamespace() { return MakeNamespace(CrashLayout(), "crash-tenant", "crash-model"); }

kvault::StoreOptions CrashOptions(const std::string& dir) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.t1_bytes = 64ull << 20;       // never drops an unwritten chunk
  o.t2_bytes = 4ull << 30;         // never reclaims a flushed one
  o.segment_bytes = 512ull << 10;   // many segments, sealed and not
  return o;
}

std::vector<uint32_t> CrashChainTokens(uint64_t seed) {
  std::vector<uint32_t> tokens = MakeTokens(1000 + seed % 3, 40);  // shared prompt: 2.5 chunks
  uint64_t s = seed;
  const size_t tail = 16 + SplitMix64(&s) % 85;                    // 16..100 own tokens
  std::vector<uint32_t> own = MakeTokens(seed * 7919 + 17, tail);
  tokens.insert(tokens.end(), own.begin(), own.end());
  return tokens;
}

}  // namespace kvtest

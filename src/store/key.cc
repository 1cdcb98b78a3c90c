#include "kvault/key.h"

#include <openssl/evp.h>

#include <bit>
#include <stdexcept>

#include "store/little_endian.h"

namespace kvault {
namespace {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big);

// Incremental SHA-256 over OpenSSL's EVP interface. Not thread-safe; one per call.
class Sha256Hasher {
 public:
  Sha256Hasher() : ctx_(EVP_MD_CTX_new()) {
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, Md(), nullptr) != 1) throw std::runtime_error("EVP_DigestInit_ex failed");
  }
  ~Sha256Hasher() { EVP_MD_CTX_free(ctx_); }
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;

  void Update(const void* data, size_t size) { EVP_DigestUpdate(ctx_, data, size); }
  void UpdateU32(uint32_t v) {
    uint8_t b[4];
    EncodeLE32(b, v);
    Update(b, 4);
  }
  Digest Finish() {
    Digest d;
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, d.bytes.data(), &len);
    return d;
  }

 private:
  static const EVP_MD* Md() {
    static const EVP_MD* md = EVP_sha256();  // fetched once; thread-safe static init
    return md;
  }
  EVP_MD_CTX* ctx_;
};

}  // namespace

std::string Digest::Hex() const {
  static const char* kHex = "0123456789abcdef";
  std::string s(64, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    s[2 * i] = kHex[bytes[i] >> 4];
    s[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return s;
}

Digest Sha256(std::span<const std::byte> data) {
  Sha256Hasher h;
  h.Update(data.data(), data.size());
  return h.Finish();
}

Digest Sha256(std::string_view text) { return Sha256(std::as_bytes(std::span(text.data(), text.size()))); }

Namespace::Namespace(std::string tenant, Digest model_fingerprint, KvLayout layout)
    : tenant_(std::move(tenant)), model_(model_fingerprint), layout_(layout) {
  Sha256Hasher h;
  static constexpr char kDomain[] = "kvault/namespace/v1";
  h.Update(kDomain, sizeof kDomain - 1);
  h.UpdateU32(static_cast<uint32_t>(tenant_.size()));
  h.Update(tenant_.data(), tenant_.size());
  h.Update(model_.bytes.data(), model_.bytes.size());
  h.UpdateU32(layout_.num_layers);
  h.UpdateU32(layout_.num_kv_heads);
  h.UpdateU32(layout_.head_dim);
  h.UpdateU32(static_cast<uint32_t>(layout_.dtype));
  h.UpdateU32(layout_.chunk_tokens);
  h.UpdateU32(static_cast<uint32_t>(layout_.rope));
  id_ = h.Finish();
}

ChunkKey ChainKey(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  Sha256Hasher h;
  h.Update(parent.bytes.data(), parent.bytes.size());
  h.Update(ns.id().bytes.data(), ns.id().bytes.size());
  if constexpr (std::endian::native == std::endian::little) {
    h.Update(tokens.data(), tokens.size_bytes());
  } else {
    for (uint32_t t : tokens) h.UpdateU32(t);
  }
  return h.Finish();
}

std::vector<ChunkSpan> ChunkKeys(const Namespace& ns, std::span<const uint32_t> tokens, bool include_partial) {
  return ChunkKeysFrom(ns, ns.id(), tokens, include_partial);
}

std::vector<ChunkSpan> ChunkKeysFrom(const Namespace& ns, const ChunkKey& first_parent, std::span<const uint32_t> tokens,
                                     bool include_partial) {
  const uint32_t c = ns.layout().chunk_tokens;
  std::vector<ChunkSpan> out;
  out.reserve(tokens.size() / c + 1);
  ChunkKey parent = first_parent;
  for (size_t begin = 0; begin < tokens.size(); begin += c) {
    uint32_t n = static_cast<uint32_t>(std::min<size_t>(c, tokens.size() - begin));
    if (n < c && !include_partial) break;
    ChunkSpan span;
    span.parent = parent;
    span.key = ChainKey(ns, parent, tokens.subspan(begin, n));
    span.begin = static_cast<uint32_t>(begin);
    span.tokens = n;
    parent = span.key;
    out.push_back(span);
  }
  return out;
}

KeyedTokens KeyTokens(const Namespace& ns, std::span<const uint32_t> tokens) {
  return KeyTokensFrom(ns, ns.id(), tokens);
}

KeyedTokens KeyTokensFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  return KeyedTokens{tokens, parent, ChunkKeysFrom(ns, parent, tokens, /*include_partial=*/false)};
}

bool HasWholeChunkKeys(const KeyedTokens& k, uint32_t chunk_tokens) {
  if (chunk_tokens == 0 || k.full.size() != k.tokens.size() / chunk_tokens) return false;
  for (size_t i = 0; i < k.full.size(); ++i) {
    const ChunkSpan& s = k.full[i];
    if (s.begin != i * chunk_tokens || s.tokens != chunk_tokens) return false;
    if (s.parent != (i == 0 ? k.first_parent : k.full[i - 1].key)) return false;
  }
  return true;
}

}  // namespace kvault

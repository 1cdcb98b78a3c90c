// Keys and namespaces (DESIGN.md §2).
//
// A namespace is (tenant, model fingerprint, KV layout); its id is a SHA-256 over all three,
// so two namespaces never share an entry. Chunk keys are chained:
//   key_i = SHA-256(key_{i-1} || namespace id || tokens of chunk i as little-endian u32)
// with key_{-1} = the namespace id. Equal keys mean equal prefixes. Hashing has no
// per-process seed: keys are the same across processes and machines.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvault/layout.h"

namespace kvault {

struct Digest {
  std::array<uint8_t, 32> bytes{};

  std::string Hex() const;
  std::string ShortHex() const { return Hex().substr(0, 12); }
  bool operator==(const Digest&) const = default;
  bool IsZero() const { return *this == Digest{}; }
};

using ChunkKey = Digest;

// SHA-256 of arbitrary bytes; a thin wrapper over OpenSSL.
Digest Sha256(std::span<const std::byte> data);
Digest Sha256(std::string_view text);

class Namespace {
 public:
  // `model_fingerprint` identifies the weights (see DESIGN.md §2); `tenant` may be empty.
  Namespace(std::string tenant, Digest model_fingerprint, KvLayout layout);

  const std::string& tenant() const { return tenant_; }
  const Digest& model_fingerprint() const { return model_; }
  const KvLayout& layout() const { return layout_; }
  // SHA-256 over tenant, fingerprint and every layout field. Also the chain's root key.
  const Digest& id() const { return id_; }

 private:
  std::string tenant_;
  Digest model_;
  KvLayout layout_;
  Digest id_;
};

// Key of the chunk holding `tokens` (1..chunk_tokens of them) that follows `parent`
// (the previous chunk's key, or ns.id() for the first chunk).
ChunkKey ChainKey(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);

// One chunk of a token stream with its chained key.
struct ChunkSpan {
  ChunkKey key;
  ChunkKey parent;
  uint32_t begin = 0;   // index of the chunk's first token in the stream
  uint32_t tokens = 0;  // tokens in this chunk; < chunk_tokens only for a trailing partial chunk
};

// Cuts `tokens` into chunks of ns.layout().chunk_tokens and computes their keys. A trailing
// partial chunk is included when `include_partial` is true.
std::vector<ChunkSpan> ChunkKeys(const Namespace& ns, std::span<const uint32_t> tokens,
                                 bool include_partial = true);
// The same for a stream that continues the chain after `parent` (begins are relative to
// `tokens`): ChunkKeys(ns, t) == ChunkKeysFrom(ns, ns.id(), t).
std::vector<ChunkSpan> ChunkKeysFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
                                     bool include_partial = true);

// A token stream with the keys of its whole chunks computed once (per process), passed to
// Store::LookupKeyed, HintKeyed and (chunk by chunk) BeginPutKeyed so that a prompt is not
// hashed again at each. The trailing partial chunk, if any, is not keyed here: its key
// depends on how many of its tokens a caller stores or looks for.
// Invariant: full == ChunkKeysFrom(ns, first_parent, tokens, /*include_partial=*/false)
// for the namespace it was keyed in.
struct KeyedTokens {
  std::span<const uint32_t> tokens;  // the stream; the caller keeps it alive
  ChunkKey first_parent;             // ns.id(), or the chunk the stream continues after
  std::vector<ChunkSpan> full;       // the stream's whole chunks with their keys
};

// Keys the whole chunks of `tokens` from the start of the chain (first_parent = ns.id()).
KeyedTokens KeyTokens(const Namespace& ns, std::span<const uint32_t> tokens);
// The same for a stream that continues the chain after chunk `parent`.
KeyedTokens KeyTokensFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);
// Whether `k` has the shape KeyTokensFrom gives (one key per whole chunk of k.tokens, begins
// and parents chained from k.first_parent). Checks the shape only, never a hash: a caller that
// keyed other tokens or another namespace is not caught, but stays in its own namespace (a
// key of another namespace's entry is a miss). The store re-keys a stream that fails it.
bool HasWholeChunkKeys(const KeyedTokens& k, uint32_t chunk_tokens);

struct DigestHash {
  size_t operator()(const Digest& d) const {
    size_t h;
    std::memcpy(&h, d.bytes.data(), sizeof h);  // SHA-256 output is uniformly distributed
    return h;
  }
};

}  // namespace kvault

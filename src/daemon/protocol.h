// kvaultd's protocol: versioned, length-prefixed frames over a Unix or TCP stream socket.
// docs/DAEMON.md has the prose version; keep both true.
//
// Frame: a 16-byte header, then `payload_bytes` bytes.
//   u32 magic "KVD1" | u16 version | u16 type | u32 payload_bytes | u32 reserved (zero)
// Integers are little-endian. The client sends requests; the daemon answers each request
// whose type has a reply, in order (kAbortPut, kRelease and kHint have none). The first
// request of a connection must be kHello. A frame with a bad magic, version or type, a
// payload over the negotiated limit or its type's cap (MaxRequestBytes), or a payload that
// does not decode exactly gets a kError reply and the connection is closed (a shared-memory
// connection's pins stay until the client closes its end). A well-formed request the
// daemon's message budget cannot hold now is answered in its own reply type with
// kResourceExhausted, and the connection stays.
//
// Data travels one of two ways, chosen at kHello:
//   - shared memory (local clients the daemon trusts with T1, see docs/DAEMON.md): the
//     daemon passes its T1 memfd with SCM_RIGHTS in the kHello reply; replies to kBeginPut
//     and kOpen carry the chunk's pieces as (offset in the arena, length), pinned until
//     kCommitPut / kAbortPut / kRelease or until the connection closes;
//   - inline: kOpen replies carry the payload, kCommitPut requests carry it.
//
// Each message is described once, by its static Fields(m, v): the wire fields in order
// (wire_codec.h lists the kinds) and the checks a decoder applies. Encode and Decode below
// walk that description, so the two can never disagree.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvault/key.h"
#include "kvault/layout.h"
#include "kvault/status.h"
#include "kvault/store.h"
#include "daemon/wire_codec.h"

namespace kvault::wire {

inline constexpr uint32_t kMagic = 0x3144564b;  // "KVD1"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 16;
inline constexpr size_t kMaxTenantBytes = 256;
inline constexpr size_t kMaxTokenBytes = 4096;
inline constexpr size_t kMaxMessageBytes = 1ull << 30;  // the hard ceiling of any limit
// Per-request caps (beyond the frame limit) that keep the daemon's work per message bounded.
inline constexpr size_t kMaxTokensPerRequest = 1u << 24;  // tokens in a lookup / a hint's prompts
inline constexpr size_t kMaxChunksPerRequest = 1u << 16;  // whole chunks a lookup or hint covers
inline constexpr size_t kMaxPromptsPerHint = 4096;
inline constexpr size_t kMaxPiecesPerMessage = 1u << 20;
inline constexpr size_t kMaxReplyChunks = 1u << 20;  // chunks in one lookup reply
inline constexpr size_t kMaxStatsJsonBytes = 1u << 20;
// The largest frame a connection may send before its hello.
inline constexpr size_t kMaxHelloBytes = 64u << 10;
// The largest encoded WireNamespace: tenant (u32 length + bytes), model key, layout fields.
inline constexpr size_t kMaxWireNamespaceBytes = 4 + kMaxTenantBytes + 32 + 4 + 4 + 4 + 1 + 4 + 1;
// The most tokens a layout lets one chunk hold (KvLayout::Validate).
inline constexpr size_t kMaxChunkTokens = 1u << 20;

enum class MsgType : uint16_t {
  kError = 1,  // daemon -> client: the connection is being closed; payload: status
  kHello = 2,
  kHelloReply = 3,
  kLookup = 4,
  kLookupReply = 5,
  kBeginPut = 6,
  kBeginPutReply = 7,
  kCommitPut = 8,
  kCommitPutReply = 9,
  kAbortPut = 10,  // no reply
  kOpen = 11,
  kOpenReply = 12,
  kRelease = 13,  // no reply
  kHint = 14,     // no reply
  kFlush = 15,
  kFlushReply = 16,
  kStats = 17,
  kStatsReply = 18,
  kWaitPrefetch = 19,
  kWaitPrefetchReply = 20,
  // Keyed requests: the client sends the keys of the whole chunks it computed once, so the
  // daemon hashes none of them. A daemon that predates them answers kError (unknown type).
  kLookupKeyed = 21,  // reply: kLookupReply
  kHintKeyed = 22,    // no reply
};
inline constexpr MsgType kLastMsgType = MsgType::kHintKeyed;
const char* MsgTypeName(MsgType t);
bool IsRequestType(uint16_t t);  // a type a client may send
// The largest payload a request of `type` can legitimately have, given the daemon's message
// limit: a fixed-size request (open, release, flush, ...) its largest encoding, a begin-put
// its namespace, parent and one chunk's tokens, the others (lookups, hints, commits, which
// carry token arrays or chunk bytes) `max_message_bytes`. A frame header announcing more is
// refused before any payload is read. 0 for a type that is not a request.
size_t MaxRequestBytes(MsgType type, size_t max_message_bytes);
// The largest commit-put a connection may send while its largest open put is
// `largest_put_bytes` (0: none open): that put's payload inline, or its written ranges (at
// most kMaxPiecesPerMessage) through shared memory, plus the fixed fields.
size_t MaxCommitPutBytes(size_t largest_put_bytes, size_t max_message_bytes);

struct FrameHeader {
  MsgType type = MsgType::kError;
  uint32_t payload_bytes = 0;
};
void EncodeFrameHeader(const FrameHeader& h, std::byte* out);  // writes kFrameHeaderBytes
// Checks magic, version, reserved bytes, that the type is known and the size within max_payload.
Status DecodeFrameHeader(std::span<const std::byte> in, size_t max_payload, FrameHeader* h);

// A namespace as it travels: the daemon rebuilds the Namespace (and its id) from it.
struct WireNamespace {
  std::string tenant;
  Digest model;
  KvLayout layout;
  bool operator==(const WireNamespace&) const = default;

  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.Str(m.tenant, kMaxTenantBytes);
    v.Key(m.model);
    v.U32(m.layout.num_layers);
    v.U32(m.layout.num_kv_heads);
    v.U32(m.layout.head_dim);
    v.Enum8(m.layout.dtype);
    v.U32(m.layout.chunk_tokens);
    v.Enum8(m.layout.rope);
    v.Check(m.layout.Validate().ok());
  }
};
WireNamespace ToWire(const Namespace& ns);

// One contiguous piece of a chunk in the daemon's T1 arena.
struct Piece {
  uint64_t offset = 0;
  uint64_t size = 0;
};

// A list of pieces: none empty or wrapping around, each inside [0, arena_bytes) when
// arena_bytes > 0.
template <typename List, typename V>
void PieceList(List& pieces, uint64_t arena_bytes, V& v) {
  v.List(pieces, kMaxPiecesPerMessage, 16, [&v, arena_bytes](auto& p) {
    v.U64(p.offset);
    v.U64(p.size);
    v.Check(p.size != 0 && p.offset <= UINT64_MAX - p.size);
    v.Check(arena_bytes == 0 || p.offset + p.size <= arena_bytes);
  });
}

struct HelloRequest {
  std::string token;  // empty: none
  bool want_shm = true;

  static constexpr const char* kWireName = "hello";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.Str(m.token, kMaxTokenBytes);
    v.Bool(m.want_shm);
  }
};
struct HelloReply {
  Status status;
  std::string tenant;          // the tenant the connection is bound to
  bool bound = false;          // false: any tenant (a trusted local client, no tokens configured)
  bool shm = false;            // the T1 memfd came with this reply
  uint64_t arena_bytes = 0;    // bytes to map
  uint32_t max_message_bytes = 0;

  static constexpr const char* kWireName = "hello reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.StatusOf(m.status);
    v.Str(m.tenant, kMaxTenantBytes);
    v.Bool(m.bound);
    v.Bool(m.shm);
    v.U64(m.arena_bytes);
    v.U32(m.max_message_bytes);
    v.Check(m.max_message_bytes <= kMaxMessageBytes);
  }
};

struct LookupRequest {
  WireNamespace ns;
  bool has_parent = false;  // LookupFrom
  ChunkKey parent;
  std::vector<uint32_t> tokens;

  static constexpr const char* kWireName = "lookup";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    if (v.Bool(m.has_parent)) v.Key(m.parent);
    v.U32Array(m.tokens, kMaxTokensPerRequest);
  }
};
// The whole chunks of a keyed stream: one key per chunk_tokens tokens (a trailing partial
// chunk has none). The chain starts after `first_parent` (see KeyedTokens in key.h).
template <typename Self, typename V>
void ChunkKeyList(Self& keys, V& v) {
  v.List(keys, kMaxTokensPerRequest, sizeof(ChunkKey::bytes), [&v](auto& k) { v.Key(k); });
}
// True when `keys` holds exactly the whole chunks of `tokens` tokens under `layout` (a decoder
// check: chunk_tokens is nonzero only in a valid layout).
inline bool KeysCoverWholeChunks(const KvLayout& layout, size_t tokens, size_t keys) {
  return layout.chunk_tokens != 0 && keys == tokens / layout.chunk_tokens;
}

// kLookupKeyed: LookupKeyed over the wire. The tokens still travel (a stored partial chunk is
// matched against them, and they bound the result); the keys spare the daemon the hashing.
struct LookupKeyedRequest {
  WireNamespace ns;
  bool has_parent = false;  // false: the chain starts at the namespace (first_parent = ns.id())
  ChunkKey parent;
  std::vector<uint32_t> tokens;
  std::vector<ChunkKey> keys;  // the whole chunks' keys, in order

  static constexpr const char* kWireName = "keyed lookup";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    if (v.Bool(m.has_parent)) v.Key(m.parent);
    v.U32Array(m.tokens, kMaxTokensPerRequest);
    ChunkKeyList(m.keys, v);
    v.Check(KeysCoverWholeChunks(m.ns.layout, m.tokens.size(), m.keys.size()));
  }
};

struct LookupReply {
  Status status;  // not OK: refused (e.g. another tenant's namespace); result is empty
  LookupResult result;

  static constexpr const char* kWireName = "lookup reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.StatusOf(m.status);
    v.U32(m.result.cached_tokens);
    v.U32(m.result.total_tokens);
    v.List(m.result.chunks, kMaxReplyChunks, sizeof(ChunkKey::bytes) + 9, [&v](auto& c) {
      v.Key(c.key);
      v.U32(c.begin);
      v.U32(c.tokens);
      v.Enum8(c.tier);
      v.Check(c.tier != Tier::kNone && c.tier <= Tier::kT3 && c.tokens != 0);
    });
    v.Check(m.result.cached_tokens <= m.result.total_tokens);
  }
};

struct BeginPutRequest {
  WireNamespace ns;
  ChunkKey parent;
  std::vector<uint32_t> tokens;

  static constexpr const char* kWireName = "begin-put";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    v.Key(m.parent);
    v.U32Array(m.tokens, kMaxTokensPerRequest);
    v.Check(!m.tokens.empty() && m.tokens.size() <= m.ns.layout.chunk_tokens);
  }
};
struct BeginPutReply {
  Status status;
  bool exists = false;
  uint64_t handle = 0;
  std::vector<Piece> pieces;  // shared memory only

  static constexpr const char* kWireName = "begin-put reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.StatusOf(m.status);
    v.Bool(m.exists);
    v.U64(m.handle);
    PieceList(m.pieces, v.arena_bytes(), v);
  }
};

struct CommitPutRequest {
  uint64_t handle = 0;
  std::vector<Piece> written;     // shared memory: payload ranges the client wrote
  std::span<const std::byte> payload;  // inline: the whole payload (a view into the frame)

  static constexpr const char* kWireName = "commit-put";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.U64(m.handle);
    PieceList(m.written, /*arena_bytes=*/0, v);  // checked against the chunk by the daemon
    v.Blob(m.payload);
  }
};
struct StatusReply {  // kCommitPutReply, kFlushReply, kWaitPrefetchReply, kError
  Status status;

  static constexpr const char* kWireName = "status reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.StatusOf(m.status);
  }
};
struct HandleRequest {  // kAbortPut, kRelease
  uint64_t handle = 0;

  static constexpr const char* kWireName = "handle";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.U64(m.handle);
  }
};

struct OpenRequest {
  WireNamespace ns;
  ChunkKey key;

  static constexpr const char* kWireName = "open";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    v.Key(m.key);
  }
};
struct OpenReply {
  Status status;
  uint64_t handle = 0;  // shared memory: release it with kRelease; inline: 0
  uint32_t tokens = 0;
  Tier tier = Tier::kNone;
  std::vector<Piece> pieces;            // shared memory
  std::span<const std::byte> payload;   // inline (a view into the frame or the caller's data)

  static constexpr const char* kWireName = "open reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.StatusOf(m.status);
    v.U64(m.handle);
    v.U32(m.tokens);
    v.Enum8(m.tier);
    v.Check(m.tier <= Tier::kT3);
    PieceList(m.pieces, v.arena_bytes(), v);
    v.Blob(m.payload);
  }
};

struct HintRequest {
  WireNamespace ns;
  std::vector<std::vector<uint32_t>> prompts;

  static constexpr const char* kWireName = "hint";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    v.List(m.prompts, kMaxPromptsPerHint, 4, [&v](auto& p) { v.U32Array(p, kMaxTokensPerRequest); });
  }
};

// kHintKeyed: HintKeyed over the wire; every prompt is keyed from the start of the chain.
struct KeyedPrompt {
  std::vector<uint32_t> tokens;
  std::vector<ChunkKey> keys;  // the whole chunks' keys, in order
};
struct HintKeyedRequest {
  WireNamespace ns;
  std::vector<KeyedPrompt> prompts;

  static constexpr const char* kWireName = "keyed hint";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    WireNamespace::Fields(m.ns, v);
    v.List(m.prompts, kMaxPromptsPerHint, 8, [&v, &m](auto& p) {
      v.U32Array(p.tokens, kMaxTokensPerRequest);
      ChunkKeyList(p.keys, v);
      v.Check(KeysCoverWholeChunks(m.ns.layout, p.tokens.size(), p.keys.size()));
    });
  }
};

struct StatsReply {
  std::string json;  // StoreStats::ToJson

  static constexpr const char* kWireName = "stats reply";
  template <typename Self, typename V>
  static void Fields(Self& m, V& v) {
    v.Str(m.json, kMaxStatsJsonBytes);
  }
};

// A message struct above: described by its Fields and named for errors.
template <typename M>
concept WireMessage = requires(M& m, FieldReader& r) {
  { M::kWireName } -> std::convertible_to<const char*>;
  M::Fields(m, r);
};

// The frame's payload (without the header).
template <WireMessage M>
std::vector<std::byte> Encode(const M& m) {
  FieldWriter w;
  M::Fields(m, w);
  return w.Take();
}

// Reads `payload` exactly (no bytes left over) and validates every field (layouts, counts,
// tiers, string lengths, piece ranges against `arena_bytes` where given and the message has
// arena pieces); kInvalidArgument when anything is wrong. Views (payload spans) point into
// `payload`.
template <WireMessage M>
Status Decode(std::span<const std::byte> payload, M* m, uint64_t arena_bytes = 0) {
  FieldReader r(payload, arena_bytes);
  M::Fields(*m, r);
  return r.Finish(M::kWireName);
}

}  // namespace kvault::wire

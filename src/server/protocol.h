// kvaultd's protocol: versioned, length-prefixed frames over a Unix or TCP stream socket.
// docs/DAEMON.md has the prose version; keep both true.
//
// Frame: a 16-byte header, then `payload_bytes` bytes.
//   u32 magic "KVD1" | u16 version | u16 type | u32 payload_bytes | u32 reserved (zero)
// Integers are little-endian. The client sends requests; the daemon answers each request
// whose type has a reply, in order (kAbortPut, kRelease and kHint have none). The first
// request of a connection must be kHello. A frame with a bad magic, version or type, a
// payload over the negotiated limit, or a payload that does not decode exactly gets a kError
// reply and the connection is closed.
//
// Data travels one of two ways, chosen at kHello:
//   - shared memory (local clients the daemon trusts with T1, see docs/DAEMON.md): the
//     daemon passes its T1 memfd with SCM_RIGHTS in the kHello reply; replies to kBeginPut
//     and kOpen carry the chunk's pieces as (offset in the arena, length), pinned until
//     kCommitPut / kAbortPut / kRelease or until the connection closes;
//   - inline: kOpen replies carry the payload, kCommitPut requests carry it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvault/key.h"
#include "kvault/layout.h"
#include "kvault/status.h"
#include "kvault/store.h"

namespace kvault::wire {

inline constexpr uint32_t kMagic = 0x3144564b;  // "KVD1"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 16;
inline constexpr size_t kMaxTenantBytes = 256;
inline constexpr size_t kMaxTokenBytes = 4096;
inline constexpr size_t kMaxMessageBytes = 1ull << 30;  // the hard ceiling of any limit
inline constexpr size_t kMaxErrorMessageBytes = 4096;
// Per-request caps (beyond the frame limit) that keep the daemon's work per message bounded.
inline constexpr size_t kMaxTokensPerRequest = 1u << 24;  // tokens in a lookup / a hint's prompts
inline constexpr size_t kMaxChunksPerRequest = 1u << 16;  // whole chunks a lookup or hint covers
inline constexpr size_t kMaxPromptsPerHint = 4096;
inline constexpr size_t kMaxPiecesPerMessage = 1u << 20;
// The largest frame a connection may send before its hello.
inline constexpr size_t kMaxHelloBytes = 64u << 10;

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
};
const char* MsgTypeName(MsgType t);
bool IsRequestType(uint16_t t);  // a type a client may send

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
};
WireNamespace ToWire(const Namespace& ns);

// One contiguous piece of a chunk in the daemon's T1 arena.
struct Piece {
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct HelloRequest {
  std::string token;  // empty: none
  bool want_shm = true;
};
struct HelloReply {
  Status status;
  std::string tenant;          // the tenant the connection is bound to
  bool bound = false;          // false: any tenant (a trusted local client, no tokens configured)
  bool shm = false;            // the T1 memfd came with this reply
  uint64_t arena_bytes = 0;    // bytes to map
  uint32_t max_message_bytes = 0;
};

struct LookupRequest {
  WireNamespace ns;
  bool has_parent = false;  // LookupFrom
  ChunkKey parent;
  std::vector<uint32_t> tokens;
};
struct LookupReply {
  Status status;  // not OK: refused (e.g. another tenant's namespace); result is empty
  LookupResult result;
};

struct BeginPutRequest {
  WireNamespace ns;
  ChunkKey parent;
  std::vector<uint32_t> tokens;
};
struct BeginPutReply {
  Status status;
  bool exists = false;
  uint64_t handle = 0;
  std::vector<Piece> pieces;  // shared memory only
};

struct CommitPutRequest {
  uint64_t handle = 0;
  std::vector<Piece> written;     // shared memory: payload ranges the client wrote
  std::span<const std::byte> payload;  // inline: the whole payload (a view into the frame)
};
struct StatusReply {  // kCommitPutReply, kFlushReply, kWaitPrefetchReply
  Status status;
};
struct HandleRequest {  // kAbortPut, kRelease
  uint64_t handle = 0;
};

struct OpenRequest {
  WireNamespace ns;
  ChunkKey key;
};
struct OpenReply {
  Status status;
  uint64_t handle = 0;  // shared memory: release it with kRelease; inline: 0
  uint32_t tokens = 0;
  Tier tier = Tier::kNone;
  std::vector<Piece> pieces;            // shared memory
  std::span<const std::byte> payload;   // inline (a view into the frame or the caller's data)
};

struct HintRequest {
  WireNamespace ns;
  std::vector<std::vector<uint32_t>> prompts;
};

struct StatsReply {
  std::string json;  // StoreStats::ToJson
};

// Encoders return the frame's payload (without the header).
std::vector<std::byte> Encode(const HelloRequest& m);
std::vector<std::byte> Encode(const HelloReply& m);
std::vector<std::byte> Encode(const LookupRequest& m);
std::vector<std::byte> Encode(const LookupReply& m);
std::vector<std::byte> Encode(const BeginPutRequest& m);
std::vector<std::byte> Encode(const BeginPutReply& m);
std::vector<std::byte> Encode(const CommitPutRequest& m);
std::vector<std::byte> Encode(const StatusReply& m);
std::vector<std::byte> Encode(const HandleRequest& m);
std::vector<std::byte> Encode(const OpenRequest& m);
std::vector<std::byte> Encode(const OpenReply& m);
std::vector<std::byte> Encode(const HintRequest& m);
std::vector<std::byte> Encode(const StatsReply& m);

// Decoders read `payload` exactly (no bytes left over) and validate every field (layouts,
// counts, tiers, string lengths, piece ranges against `arena_bytes` where given); kInvalidArgument
// when anything is wrong. Views (payload spans) point into `payload`.
Status Decode(std::span<const std::byte> payload, HelloRequest* m);
Status Decode(std::span<const std::byte> payload, HelloReply* m);
Status Decode(std::span<const std::byte> payload, LookupRequest* m);
Status Decode(std::span<const std::byte> payload, LookupReply* m);
Status Decode(std::span<const std::byte> payload, BeginPutRequest* m);
Status Decode(std::span<const std::byte> payload, BeginPutReply* m, uint64_t arena_bytes);
Status Decode(std::span<const std::byte> payload, CommitPutRequest* m);
Status Decode(std::span<const std::byte> payload, StatusReply* m);
Status Decode(std::span<const std::byte> payload, HandleRequest* m);
Status Decode(std::span<const std::byte> payload, OpenRequest* m);
Status Decode(std::span<const std::byte> payload, OpenReply* m, uint64_t arena_bytes);
Status Decode(std::span<const std::byte> payload, HintRequest* m);
Status Decode(std::span<const std::byte> payload, StatsReply* m);

}  // namespace kvault::wire

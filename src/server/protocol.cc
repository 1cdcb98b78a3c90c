#include "server/protocol.h"

#include "server/wire_codec.h"

namespace kvault::wire {
namespace {

constexpr size_t kMaxReplyChunks = 1u << 20;  // chunks in one lookup reply

void PutStatus(WireWriter& w, const Status& st) {
  w.U8(static_cast<uint8_t>(st.code()));
  w.Str(st.message().size() > kMaxErrorMessageBytes ? st.message().substr(0, kMaxErrorMessageBytes) : st.message());
}

Status GetStatus(WireReader& r) {
  uint8_t code = r.U8();
  std::string msg = r.Str(kMaxErrorMessageBytes);
  if (code > static_cast<uint8_t>(Code::kPermissionDenied)) r.Fail();
  if (!r.ok() || code == 0) return Status::OK();
  return Status(static_cast<Code>(code), std::move(msg));
}

void PutNamespace(WireWriter& w, const WireNamespace& ns) {
  w.Str(ns.tenant);
  w.Key(ns.model);
  w.U32(ns.layout.num_layers);
  w.U32(ns.layout.num_kv_heads);
  w.U32(ns.layout.head_dim);
  w.U8(static_cast<uint8_t>(ns.layout.dtype));
  w.U32(ns.layout.chunk_tokens);
  w.U8(static_cast<uint8_t>(ns.layout.rope));
}

WireNamespace GetNamespace(WireReader& r) {
  WireNamespace ns;
  ns.tenant = r.Str(kMaxTenantBytes);
  ns.model = r.Key();
  ns.layout.num_layers = r.U32();
  ns.layout.num_kv_heads = r.U32();
  ns.layout.head_dim = r.U32();
  ns.layout.dtype = static_cast<DType>(r.U8());
  ns.layout.chunk_tokens = r.U32();
  ns.layout.rope = static_cast<RopeMode>(r.U8());
  if (r.ok() && !ns.layout.Validate().ok()) r.Fail();
  return ns;
}

void PutPieces(WireWriter& w, const std::vector<Piece>& pieces) {
  w.U32(static_cast<uint32_t>(pieces.size()));
  for (const Piece& p : pieces) {
    w.U64(p.offset);
    w.U64(p.size);
  }
}

// Pieces of at most `total` bytes in all; each inside [0, arena_bytes) when arena_bytes > 0.
std::vector<Piece> GetPieces(WireReader& r, uint64_t arena_bytes) {
  uint32_t n = r.U32();
  if (n > kMaxPiecesPerMessage || uint64_t{n} * 16 > r.left()) r.Fail();
  std::vector<Piece> pieces;
  if (!r.ok()) return pieces;
  pieces.resize(n);
  for (Piece& p : pieces) {
    p.offset = r.U64();
    p.size = r.U64();
    if (p.size == 0 || p.offset > UINT64_MAX - p.size) r.Fail();
    if (arena_bytes > 0 && p.offset + p.size > arena_bytes) r.Fail();
  }
  return pieces;
}

Status Finish(const WireReader& r, const char* what) {
  if (r.done()) return Status::OK();
  return Status::InvalidArgument(std::string("malformed ") + what + " message");
}

}  // namespace

const char* MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kError: return "error";
    case MsgType::kHello: return "hello";
    case MsgType::kHelloReply: return "hello-reply";
    case MsgType::kLookup: return "lookup";
    case MsgType::kLookupReply: return "lookup-reply";
    case MsgType::kBeginPut: return "begin-put";
    case MsgType::kBeginPutReply: return "begin-put-reply";
    case MsgType::kCommitPut: return "commit-put";
    case MsgType::kCommitPutReply: return "commit-put-reply";
    case MsgType::kAbortPut: return "abort-put";
    case MsgType::kOpen: return "open";
    case MsgType::kOpenReply: return "open-reply";
    case MsgType::kRelease: return "release";
    case MsgType::kHint: return "hint";
    case MsgType::kFlush: return "flush";
    case MsgType::kFlushReply: return "flush-reply";
    case MsgType::kStats: return "stats";
    case MsgType::kStatsReply: return "stats-reply";
    case MsgType::kWaitPrefetch: return "wait-prefetch";
    case MsgType::kWaitPrefetchReply: return "wait-prefetch-reply";
  }
  return "unknown";
}

bool IsRequestType(uint16_t t) {
  switch (static_cast<MsgType>(t)) {
    case MsgType::kHello:
    case MsgType::kLookup:
    case MsgType::kBeginPut:
    case MsgType::kCommitPut:
    case MsgType::kAbortPut:
    case MsgType::kOpen:
    case MsgType::kRelease:
    case MsgType::kHint:
    case MsgType::kFlush:
    case MsgType::kStats:
    case MsgType::kWaitPrefetch:
      return true;
    default:
      return false;
  }
}

void EncodeFrameHeader(const FrameHeader& h, std::byte* out) {
  WireWriter w;
  w.U32(kMagic);
  w.U32(uint32_t{kVersion} | (uint32_t{static_cast<uint16_t>(h.type)} << 16));
  w.U32(h.payload_bytes);
  w.U32(0);
  std::memcpy(out, w.buffer().data(), kFrameHeaderBytes);
}

Status DecodeFrameHeader(std::span<const std::byte> in, size_t max_payload, FrameHeader* h) {
  WireReader r(in.first(std::min(in.size(), kFrameHeaderBytes)));
  const uint32_t magic = r.U32();
  const uint32_t version_type = r.U32();
  const uint32_t bytes = r.U32();
  const uint32_t reserved = r.U32();
  if (!r.done()) return Status::InvalidArgument("short frame header");
  if (magic != kMagic) return Status::InvalidArgument("bad frame magic");
  if ((version_type & 0xffff) != kVersion) {
    return Status::InvalidArgument("protocol version " + std::to_string(version_type & 0xffff) + " is not supported (this side speaks " +
                                   std::to_string(kVersion) + ")");
  }
  if (reserved != 0) return Status::InvalidArgument("reserved frame bytes are not zero");
  const uint16_t type = static_cast<uint16_t>(version_type >> 16);
  if (type < static_cast<uint16_t>(MsgType::kError) || type > static_cast<uint16_t>(MsgType::kWaitPrefetchReply)) {
    return Status::InvalidArgument("unknown message type " + std::to_string(type));
  }
  if (bytes > max_payload) {
    return Status::InvalidArgument("message of " + std::to_string(bytes) + " bytes exceeds the limit of " +
                                   std::to_string(max_payload));
  }
  h->type = static_cast<MsgType>(type);
  h->payload_bytes = bytes;
  return Status::OK();
}

WireNamespace ToWire(const Namespace& ns) { return {ns.tenant(), ns.model_fingerprint(), ns.layout()}; }

// --- encoders ------------------------------------------------------------------------------

std::vector<std::byte> Encode(const HelloRequest& m) {
  WireWriter w;
  w.Str(m.token);
  w.U8(m.want_shm);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const HelloReply& m) {
  WireWriter w;
  PutStatus(w, m.status);
  w.Str(m.tenant);
  w.U8(m.bound);
  w.U8(m.shm);
  w.U64(m.arena_bytes);
  w.U32(m.max_message_bytes);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const LookupRequest& m) {
  WireWriter w;
  PutNamespace(w, m.ns);
  w.U8(m.has_parent);
  if (m.has_parent) w.Key(m.parent);
  w.U32Array(m.tokens);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const LookupReply& m) {
  WireWriter w;
  PutStatus(w, m.status);
  w.U32(m.result.cached_tokens);
  w.U32(m.result.total_tokens);
  w.U32(static_cast<uint32_t>(m.result.chunks.size()));
  for (const CachedChunk& c : m.result.chunks) {
    w.Key(c.key);
    w.U32(c.begin);
    w.U32(c.tokens);
    w.U8(static_cast<uint8_t>(c.tier));
  }
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const BeginPutRequest& m) {
  WireWriter w;
  PutNamespace(w, m.ns);
  w.Key(m.parent);
  w.U32Array(m.tokens);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const BeginPutReply& m) {
  WireWriter w;
  PutStatus(w, m.status);
  w.U8(m.exists);
  w.U64(m.handle);
  PutPieces(w, m.pieces);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const CommitPutRequest& m) {
  WireWriter w;
  w.U64(m.handle);
  PutPieces(w, m.written);
  w.U64(m.payload.size());
  w.Bytes(m.payload);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const StatusReply& m) {
  WireWriter w;
  PutStatus(w, m.status);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const HandleRequest& m) {
  WireWriter w;
  w.U64(m.handle);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const OpenRequest& m) {
  WireWriter w;
  PutNamespace(w, m.ns);
  w.Key(m.key);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const OpenReply& m) {
  WireWriter w;
  PutStatus(w, m.status);
  w.U64(m.handle);
  w.U32(m.tokens);
  w.U8(static_cast<uint8_t>(m.tier));
  PutPieces(w, m.pieces);
  w.U64(m.payload.size());
  w.Bytes(m.payload);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const HintRequest& m) {
  WireWriter w;
  PutNamespace(w, m.ns);
  w.U32(static_cast<uint32_t>(m.prompts.size()));
  for (const auto& p : m.prompts) w.U32Array(p);
  return std::move(w.buffer());
}

std::vector<std::byte> Encode(const StatsReply& m) {
  WireWriter w;
  w.Str(m.json);
  return std::move(w.buffer());
}

// --- decoders ------------------------------------------------------------------------------

Status Decode(std::span<const std::byte> payload, HelloRequest* m) {
  WireReader r(payload);
  m->token = r.Str(kMaxTokenBytes);
  m->want_shm = r.Bool();
  return Finish(r, "hello");
}

Status Decode(std::span<const std::byte> payload, HelloReply* m) {
  WireReader r(payload);
  m->status = GetStatus(r);
  m->tenant = r.Str(kMaxTenantBytes);
  m->bound = r.Bool();
  m->shm = r.Bool();
  m->arena_bytes = r.U64();
  m->max_message_bytes = r.U32();
  if (m->max_message_bytes > kMaxMessageBytes) r.Fail();
  return Finish(r, "hello reply");
}

Status Decode(std::span<const std::byte> payload, LookupRequest* m) {
  WireReader r(payload);
  m->ns = GetNamespace(r);
  m->has_parent = r.Bool();
  if (m->has_parent) m->parent = r.Key();
  m->tokens = r.U32Array(kMaxTokensPerRequest);
  return Finish(r, "lookup");
}

Status Decode(std::span<const std::byte> payload, LookupReply* m) {
  WireReader r(payload);
  m->status = GetStatus(r);
  m->result.cached_tokens = r.U32();
  m->result.total_tokens = r.U32();
  const uint32_t n = r.U32();
  if (n > kMaxReplyChunks || uint64_t{n} * (32 + 9) > r.left()) r.Fail();
  m->result.chunks.clear();
  for (uint32_t i = 0; r.ok() && i < n; ++i) {
    CachedChunk c;
    c.key = r.Key();
    c.begin = r.U32();
    c.tokens = r.U32();
    const uint8_t tier = r.U8();
    if (tier == 0 || tier > static_cast<uint8_t>(Tier::kCluster) || c.tokens == 0) r.Fail();
    c.tier = static_cast<Tier>(tier);
    m->result.chunks.push_back(c);
  }
  if (r.ok() && m->result.cached_tokens > m->result.total_tokens) r.Fail();
  return Finish(r, "lookup reply");
}

Status Decode(std::span<const std::byte> payload, BeginPutRequest* m) {
  WireReader r(payload);
  m->ns = GetNamespace(r);
  m->parent = r.Key();
  m->tokens = r.U32Array(kMaxTokensPerRequest);
  if (r.ok() && (m->tokens.empty() || m->tokens.size() > m->ns.layout.chunk_tokens)) r.Fail();
  return Finish(r, "begin-put");
}

Status Decode(std::span<const std::byte> payload, BeginPutReply* m, uint64_t arena_bytes) {
  WireReader r(payload);
  m->status = GetStatus(r);
  m->exists = r.Bool();
  m->handle = r.U64();
  m->pieces = GetPieces(r, arena_bytes);
  return Finish(r, "begin-put reply");
}

Status Decode(std::span<const std::byte> payload, CommitPutRequest* m) {
  WireReader r(payload);
  m->handle = r.U64();
  m->written = GetPieces(r, 0);
  const uint64_t n = r.U64();
  if (n > r.left()) r.Fail();
  m->payload = r.Bytes(static_cast<size_t>(n));
  return Finish(r, "commit-put");
}

Status Decode(std::span<const std::byte> payload, StatusReply* m) {
  WireReader r(payload);
  m->status = GetStatus(r);
  return Finish(r, "status reply");
}

Status Decode(std::span<const std::byte> payload, HandleRequest* m) {
  WireReader r(payload);
  m->handle = r.U64();
  return Finish(r, "handle");
}

Status Decode(std::span<const std::byte> payload, OpenRequest* m) {
  WireReader r(payload);
  m->ns = GetNamespace(r);
  m->key = r.Key();
  return Finish(r, "open");
}

Status Decode(std::span<const std::byte> payload, OpenReply* m, uint64_t arena_bytes) {
  WireReader r(payload);
  m->status = GetStatus(r);
  m->handle = r.U64();
  m->tokens = r.U32();
  const uint8_t tier = r.U8();
  if (tier > static_cast<uint8_t>(Tier::kCluster)) r.Fail();
  m->tier = static_cast<Tier>(tier);
  m->pieces = GetPieces(r, arena_bytes);
  const uint64_t n = r.U64();
  if (n > r.left()) r.Fail();
  m->payload = r.Bytes(static_cast<size_t>(n));
  return Finish(r, "open reply");
}

Status Decode(std::span<const std::byte> payload, HintRequest* m) {
  WireReader r(payload);
  m->ns = GetNamespace(r);
  const uint32_t n = r.U32();
  if (n > kMaxPromptsPerHint || uint64_t{n} * 4 > r.left()) r.Fail();
  m->prompts.clear();
  for (uint32_t i = 0; r.ok() && i < n; ++i) m->prompts.push_back(r.U32Array(kMaxTokensPerRequest));
  return Finish(r, "hint");
}

Status Decode(std::span<const std::byte> payload, StatsReply* m) {
  WireReader r(payload);
  m->json = r.Str(1u << 20);
  return Finish(r, "stats reply");
}

}  // namespace kvault::wire

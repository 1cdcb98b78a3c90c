#include "daemon/protocol.h"

#include <algorithm>

#include "daemon/wire_codec.h"

namespace kvault::wire {
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
    case MsgType::kLookupKeyed: return "keyed-lookup";
    case MsgType::kHintKeyed: return "keyed-hint";
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
    case MsgType::kLookupKeyed:
    case MsgType::kHintKeyed:
      return true;
    default:
      return false;
  }
}

size_t MaxRequestBytes(MsgType type, size_t max_message_bytes) {
  size_t cap = 0;
  switch (type) {
    case MsgType::kHello: cap = kMaxHelloBytes; break;
    case MsgType::kOpen: cap = kMaxWireNamespaceBytes + 32; break;
    case MsgType::kAbortPut:
    case MsgType::kRelease: cap = 8; break;
    case MsgType::kFlush:
    case MsgType::kStats:
    case MsgType::kWaitPrefetch: cap = 0; break;
    case MsgType::kBeginPut: cap = kMaxWireNamespaceBytes + 32 + 4 + 4 * kMaxChunkTokens; break;
    case MsgType::kLookup:
    case MsgType::kLookupKeyed:
    case MsgType::kCommitPut:
    case MsgType::kHint:
    case MsgType::kHintKeyed: cap = max_message_bytes; break;
    default: return 0;
  }
  return std::min(cap, max_message_bytes);
}

size_t MaxCommitPutBytes(size_t largest_put_bytes, size_t max_message_bytes) {
  constexpr size_t kFixed = 8 + 4 + 8;  // handle, range count, payload length
  return std::min(kFixed + std::max(largest_put_bytes, 16 * kMaxPiecesPerMessage), max_message_bytes);
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
  if (type < static_cast<uint16_t>(MsgType::kError) || type > static_cast<uint16_t>(kLastMsgType)) {
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

}  // namespace kvault::wire

#include "daemon_protocol_fuzz.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "daemon/protocol.h"
#include "kvault/key.h"

namespace kvault::daemon_fuzz {
namespace {

using namespace kvault::wire;

constexpr size_t kTypes = static_cast<size_t>(kLastMsgType);

std::vector<uint64_t>& Accepted() {
  static std::vector<uint64_t> accepted(kTypes + 1, 0);
  return accepted;
}

[[noreturn]] void Fail(const char* what, MsgType type, size_t size) {
  std::fprintf(stderr, "daemon protocol fuzz: %s (type %s, payload of %zu bytes)\n", what, MsgTypeName(type), size);
  std::abort();
}

// Decodes `payload` as an M; when accepted, checks the re-encoding.
template <WireMessage M>
void CheckMessage(MsgType type, std::span<const std::byte> payload, uint64_t arena_bytes) {
  M m;
  if (!Decode(payload, &m, arena_bytes).ok()) return;
  ++Accepted()[static_cast<size_t>(type)];
  const std::vector<std::byte> again = Encode(m);
  if (again.size() != payload.size() || std::memcmp(again.data(), payload.data(), again.size()) != 0) {
    Fail("a decoded message does not re-encode to its bytes", type, payload.size());
  }
  M back;
  if (!Decode(again, &back, arena_bytes).ok()) Fail("a re-encoded message does not decode", type, payload.size());
  if (Encode(back) != again) Fail("the re-encoding is not a fixed point", type, payload.size());
  if (IsRequestType(static_cast<uint16_t>(type)) && payload.size() > MaxRequestBytes(type, kMaxMessageBytes)) {
    Fail("an accepted request is larger than its type's frame cap", type, payload.size());
  }
}

// A request without payload (flush, stats, wait-prefetch): exactly empty.
void CheckEmpty(MsgType type, std::span<const std::byte> payload) {
  if (!payload.empty()) return;
  ++Accepted()[static_cast<size_t>(type)];
  if (MaxRequestBytes(type, kMaxMessageBytes) != 0) Fail("a payload-free request has a nonzero cap", type, 0);
}

void DecodeAs(MsgType type, std::span<const std::byte> payload, uint64_t arena_bytes) {
  switch (type) {
    case MsgType::kError:
    case MsgType::kCommitPutReply:
    case MsgType::kFlushReply:
    case MsgType::kWaitPrefetchReply: return CheckMessage<StatusReply>(type, payload, arena_bytes);
    case MsgType::kHello: return CheckMessage<HelloRequest>(type, payload, arena_bytes);
    case MsgType::kHelloReply: return CheckMessage<HelloReply>(type, payload, arena_bytes);
    case MsgType::kLookup: return CheckMessage<LookupRequest>(type, payload, arena_bytes);
    case MsgType::kLookupReply: return CheckMessage<LookupReply>(type, payload, arena_bytes);
    case MsgType::kBeginPut: return CheckMessage<BeginPutRequest>(type, payload, arena_bytes);
    case MsgType::kBeginPutReply: return CheckMessage<BeginPutReply>(type, payload, arena_bytes);
    case MsgType::kCommitPut: return CheckMessage<CommitPutRequest>(type, payload, arena_bytes);
    case MsgType::kAbortPut:
    case MsgType::kRelease: return CheckMessage<HandleRequest>(type, payload, arena_bytes);
    case MsgType::kOpen: return CheckMessage<OpenRequest>(type, payload, arena_bytes);
    case MsgType::kOpenReply: return CheckMessage<OpenReply>(type, payload, arena_bytes);
    case MsgType::kHint: return CheckMessage<HintRequest>(type, payload, arena_bytes);
    case MsgType::kFlush:
    case MsgType::kStats:
    case MsgType::kWaitPrefetch: return CheckEmpty(type, payload);
    case MsgType::kStatsReply: return CheckMessage<StatsReply>(type, payload, arena_bytes);
    case MsgType::kLookupKeyed: return CheckMessage<LookupKeyedRequest>(type, payload, arena_bytes);
    case MsgType::kHintKeyed: return CheckMessage<HintKeyedRequest>(type, payload, arena_bytes);
  }
}

std::vector<uint8_t> FrameOf(MsgType type, const std::vector<std::byte>& payload) {
  std::vector<uint8_t> out(kFrameHeaderBytes + payload.size());
  EncodeFrameHeader({type, static_cast<uint32_t>(payload.size())}, reinterpret_cast<std::byte*>(out.data()));
  if (!payload.empty()) std::memcpy(out.data() + kFrameHeaderBytes, payload.data(), payload.size());
  return out;
}

}  // namespace

void FuzzOne(const uint8_t* data, size_t size) {
  const auto in = std::as_bytes(std::span(data, size));
  const auto header = in.first(std::min(size, kFrameHeaderBytes));
  const auto payload = in.subspan(header.size());
  FrameHeader h;
  if (DecodeFrameHeader(header, kMaxMessageBytes, &h).ok()) {
    std::byte again[kFrameHeaderBytes];
    EncodeFrameHeader(h, again);
    if (std::memcmp(again, header.data(), kFrameHeaderBytes) != 0) Fail("a frame header does not re-encode", h.type, 0);
    if (h.payload_bytes == payload.size() && IsRequestType(static_cast<uint16_t>(h.type))) {
      // What the daemon would hand to its dispatcher: a complete frame of a request type.
      (void)MaxRequestBytes(h.type, kMaxMessageBytes);
    }
  }
  // Every decoder gets the payload, whatever the header says (so a mutated header still
  // reaches the decoders): the type field picks the decoder, byte 12 the arena size.
  uint16_t raw_type = 0;
  if (size >= 8) raw_type = static_cast<uint16_t>(data[6] | (data[7] << 8));
  const auto type = static_cast<MsgType>(1 + raw_type % kTypes);
  const uint64_t arena_bytes = size >= 13 && (data[12] & 1) != 0 ? uint64_t{1} << 20 : 0;
  DecodeAs(type, payload, arena_bytes);
}

std::vector<std::vector<uint8_t>> SeedCorpus() {
  KvLayout layout;
  layout.num_layers = 4;
  layout.num_kv_heads = 2;
  layout.head_dim = 32;
  layout.dtype = DType::kBF16;
  layout.chunk_tokens = 16;
  const Namespace ns("fuzz-tenant", Sha256("fuzz-model"), layout);
  const WireNamespace wns = ToWire(ns);
  std::vector<uint32_t> tokens(40);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 7919 % 50000);
  const std::vector<uint32_t> chunk(tokens.begin(), tokens.begin() + 16);
  const ChunkKey k1 = ChainKey(ns, ns.id(), chunk);
  const ChunkKey k2 = ChainKey(ns, k1, std::vector<uint32_t>(tokens.begin() + 16, tokens.begin() + 32));
  const std::vector<std::byte> bytes(100, std::byte{3});
  LookupReply lr;
  lr.result.chunks = {{k1, 0, 16, Tier::kT1}, {k2, 16, 16, Tier::kT2}};
  lr.result.cached_tokens = 32;
  lr.result.total_tokens = 40;

  std::vector<std::vector<uint8_t>> out;
  out.push_back(FrameOf(MsgType::kError, Encode(StatusReply{Status::ResourceExhausted("too many connections")})));
  out.push_back(FrameOf(MsgType::kHello, Encode(HelloRequest{"token", true})));
  out.push_back(FrameOf(MsgType::kHello, Encode(HelloRequest{"", false})));
  out.push_back(FrameOf(MsgType::kHelloReply, Encode(HelloReply{Status::OK(), "t", true, true, 1 << 20, 1 << 16})));
  out.push_back(FrameOf(MsgType::kLookup, Encode(LookupRequest{wns, false, {}, tokens})));
  out.push_back(FrameOf(MsgType::kLookup, Encode(LookupRequest{wns, true, k1, {1, 2, 3}})));
  out.push_back(FrameOf(MsgType::kLookupReply, Encode(lr)));
  out.push_back(FrameOf(MsgType::kBeginPut, Encode(BeginPutRequest{wns, k1, chunk})));
  out.push_back(FrameOf(MsgType::kBeginPutReply, Encode(BeginPutReply{Status::OK(), false, 9, {{0, 4096}, {8192, 100}}})));
  out.push_back(FrameOf(MsgType::kCommitPut, Encode(CommitPutRequest{9, {{0, 100}, {200, 50}}, {}})));
  out.push_back(FrameOf(MsgType::kCommitPut, Encode(CommitPutRequest{9, {}, bytes})));
  out.push_back(FrameOf(MsgType::kCommitPutReply, Encode(StatusReply{Status::NoSpace("full")})));
  out.push_back(FrameOf(MsgType::kAbortPut, Encode(HandleRequest{42})));
  out.push_back(FrameOf(MsgType::kOpen, Encode(OpenRequest{wns, k1})));
  out.push_back(FrameOf(MsgType::kOpenReply, Encode(OpenReply{Status::OK(), 0, 16, Tier::kT1, {}, bytes})));
  out.push_back(FrameOf(MsgType::kOpenReply, Encode(OpenReply{Status::OK(), 5, 16, Tier::kT2, {{0, 4096}, {8192, 100}}, {}})));
  out.push_back(FrameOf(MsgType::kRelease, Encode(HandleRequest{7})));
  out.push_back(FrameOf(MsgType::kHint, Encode(HintRequest{wns, {tokens, {1, 2}, {}}})));
  out.push_back(FrameOf(MsgType::kFlush, {}));
  out.push_back(FrameOf(MsgType::kFlushReply, Encode(StatusReply{})));
  out.push_back(FrameOf(MsgType::kStats, {}));
  out.push_back(FrameOf(MsgType::kStatsReply, Encode(StatsReply{"{\"t1_bytes\":1}"})));
  out.push_back(FrameOf(MsgType::kWaitPrefetch, {}));
  out.push_back(FrameOf(MsgType::kWaitPrefetchReply, Encode(StatusReply{Status::Unavailable("away")})));
  out.push_back(FrameOf(MsgType::kLookupKeyed, Encode(LookupKeyedRequest{wns, false, {}, tokens, {k1, k2}})));
  out.push_back(FrameOf(MsgType::kHintKeyed, Encode(HintKeyedRequest{wns, {{tokens, {k1, k2}}, {{5}, {}}}})));
  return out;
}

const std::vector<uint64_t>& AcceptedByType() { return Accepted(); }

}  // namespace kvault::daemon_fuzz

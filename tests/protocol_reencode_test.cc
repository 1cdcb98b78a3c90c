// kvaultd's messages are encoded and decoded from one Fields() description each: a decoded
// message re-encodes to exactly the bytes it came from, for every message type, and the
// bytes of a few messages are pinned so the wire format cannot drift unnoticed.
#include <gtest/gtest.h>

#include <string>

#include "daemon/protocol.h"
#include "test_util.h"

namespace kvault::wire {
namespace {

std::string Hex(std::span<const std::byte> b) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (std::byte x : b) {
    out += kDigits[static_cast<unsigned>(x) >> 4];
    out += kDigits[static_cast<unsigned>(x) & 15];
  }
  return out;
}

// Encodes `m`, decodes the bytes, re-encodes what was decoded: the two encodings must be equal.
template <WireMessage M>
void ExpectReencodesIdentically(const M& m, const char* what, uint64_t arena_bytes = 0) {
  const std::vector<std::byte> bytes = Encode(m);
  M back;
  ASSERT_TRUE(Decode(bytes, &back, arena_bytes).ok()) << what;
  EXPECT_EQ(Hex(Encode(back)), Hex(bytes)) << what;
}

TEST(ProtocolReencodeTest, EveryMessageTypeReencodesByteIdentically) {
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout());
  const ChunkKey k = ChainKey(ns, ns.id(), kvtest::MakeTokens(1, 16));
  const std::vector<std::byte> payload(100, std::byte{3});
  LookupReply lr;
  lr.status = Status::OK();
  lr.result.chunks = {{k, 0, 16, Tier::kT1}, {k, 16, 16, Tier::kT2}, {ns.id(), 32, 5, Tier::kT3}};
  lr.result.cached_tokens = 37;
  lr.result.total_tokens = 40;

  ExpectReencodesIdentically(HelloRequest{"token", true}, "hello");
  ExpectReencodesIdentically(HelloRequest{"", false}, "hello without a token");
  ExpectReencodesIdentically(HelloReply{Status::PermissionDenied("no"), "tenant", true, false, 1 << 20, 1 << 16}, "hello reply");
  ExpectReencodesIdentically(LookupRequest{ToWire(ns), true, k, {1, 2, 3, 4}}, "lookup from a parent");
  ExpectReencodesIdentically(LookupRequest{ToWire(ns), false, {}, {}}, "lookup of nothing");
  ExpectReencodesIdentically(lr, "lookup reply");
  ExpectReencodesIdentically(LookupReply{Status::PermissionDenied("other tenant"), {}}, "refused lookup");
  ExpectReencodesIdentically(BeginPutRequest{ToWire(ns), k, {5, 6}}, "begin-put");
  ExpectReencodesIdentically(BeginPutReply{Status::OK(), false, 9, {{0, 4096}, {8192, 100}}}, "begin-put reply", 1 << 20);
  ExpectReencodesIdentically(BeginPutReply{Status::OK(), true, 0, {}}, "begin-put reply: exists");
  ExpectReencodesIdentically(CommitPutRequest{9, {{0, 100}, {200, 50}}, {}}, "commit-put, shared memory");
  ExpectReencodesIdentically(CommitPutRequest{9, {}, payload}, "commit-put, inline");
  ExpectReencodesIdentically(StatusReply{Status::NoSpace("full")}, "status reply");
  ExpectReencodesIdentically(StatusReply{}, "OK status reply");
  ExpectReencodesIdentically(HandleRequest{42}, "handle");
  ExpectReencodesIdentically(OpenRequest{ToWire(ns), k}, "open");
  ExpectReencodesIdentically(OpenReply{Status::OK(), 0, 16, Tier::kT1, {}, payload}, "open reply, inline");
  ExpectReencodesIdentically(OpenReply{Status::OK(), 5, 16, Tier::kT2, {{0, 4096}, {8192, 100}}, {}}, "open reply, shm", 1 << 20);
  ExpectReencodesIdentically(OpenReply{Status::NotFound("gone"), 0, 0, Tier::kNone, {}, {}}, "open reply, miss");
  ExpectReencodesIdentically(HintRequest{ToWire(ns), {{1, 2}, {3}, {}}}, "hint");
  ExpectReencodesIdentically(StatsReply{"{\"t1\":1}"}, "stats reply");
  const std::vector<uint32_t> tokens = kvtest::MakeTokens(2, 16 * 3 + 5);
  const KeyedTokens keyed = KeyTokens(ns, tokens);
  std::vector<ChunkKey> keys;
  for (const ChunkSpan& s : keyed.full) keys.push_back(s.key);
  ExpectReencodesIdentically(LookupKeyedRequest{ToWire(ns), false, {}, tokens, keys}, "keyed lookup");
  ExpectReencodesIdentically(LookupKeyedRequest{ToWire(ns), true, k, {1, 2}, {}}, "keyed lookup from a parent");
  ExpectReencodesIdentically(HintKeyedRequest{ToWire(ns), {{tokens, keys}, {{7}, {}}}}, "keyed hint");
}

// The keys of a keyed request must be exactly the whole chunks of its tokens.
TEST(ProtocolReencodeTest, KeyedRequestsNeedOneKeyPerWholeChunk) {
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout());
  const std::vector<uint32_t> tokens = kvtest::MakeTokens(3, 16 * 2 + 1);
  const KeyedTokens keyed = KeyTokens(ns, tokens);
  std::vector<ChunkKey> keys = {keyed.full[0].key, keyed.full[1].key};
  LookupKeyedRequest m;
  EXPECT_TRUE(Decode(Encode(LookupKeyedRequest{ToWire(ns), false, {}, tokens, keys}), &m).ok());
  EXPECT_EQ(m.keys, keys);
  EXPECT_FALSE(Decode(Encode(LookupKeyedRequest{ToWire(ns), false, {}, tokens, {keys[0]}}), &m).ok());
  EXPECT_FALSE(Decode(Encode(LookupKeyedRequest{ToWire(ns), false, {}, {1, 2}, {keys[0]}}), &m).ok());
  HintKeyedRequest h;
  EXPECT_TRUE(Decode(Encode(HintKeyedRequest{ToWire(ns), {{tokens, keys}}}), &h).ok());
  EXPECT_FALSE(Decode(Encode(HintKeyedRequest{ToWire(ns), {{tokens, {keys[1]}}}}), &h).ok());
  // A layout with chunk_tokens 0 is refused, not divided by.
  WireNamespace bad = ToWire(ns);
  bad.layout.chunk_tokens = 0;
  EXPECT_FALSE(Decode(Encode(LookupKeyedRequest{bad, false, {}, {1}, {}}), &m).ok());
  // Truncated anywhere: refused.
  const auto bytes = Encode(LookupKeyedRequest{ToWire(ns), true, keys[0], tokens, keys});
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_FALSE(Decode(std::span(bytes).first(cut), &m).ok()) << cut;
  }
}

TEST(ProtocolReencodeTest, ErrorMessagesAreTruncatedOnTheWire) {
  StatusReply back;
  ASSERT_TRUE(Decode(Encode(StatusReply{Status::IOError(std::string(kMaxErrorMessageBytes + 10, 'x'))}), &back).ok());
  EXPECT_EQ(back.status.code(), Code::kIOError);
  EXPECT_EQ(back.status.message().size(), kMaxErrorMessageBytes);
}

// Each status has one encoding: an OK code followed by text is malformed (it would decode to
// a plain OK and re-encode to other bytes; the protocol fuzz target found it).
TEST(ProtocolReencodeTest, AnOkStatusCarriesNoText) {
  std::vector<std::byte> bytes = Encode(StatusReply{Status::NotFound("x")});
  StatusReply back;
  ASSERT_TRUE(Decode(bytes, &back).ok());
  bytes[0] = std::byte{0};  // the code: OK, the text still "x"
  EXPECT_FALSE(Decode(bytes, &back).ok());
  EXPECT_TRUE(Decode(Encode(StatusReply{}), &back).ok());
}

// The bytes of version 1 as deployed clients and daemons speak them.
TEST(ProtocolReencodeTest, WireBytesArePinned) {
  EXPECT_EQ(Hex(Encode(HelloRequest{"token", true})), "05000000746f6b656e01");
  EXPECT_EQ(Hex(Encode(HelloReply{Status::NotFound("zz"), "t", true, false, 1 << 20, 1 << 16})),
            "01020000007a7a01000000740100000010000000000000000100");
  EXPECT_EQ(Hex(Encode(BeginPutReply{Status::OK(), true, 9, {{0, 4096}, {8192, 7}}})),
            "000000000001090000000000000002000000000000000000000000100000000000000020000000000000"
            "0700000000000000");
  EXPECT_EQ(Hex(Encode(HandleRequest{42})), "2a00000000000000");
  EXPECT_EQ(Hex(Encode(StatsReply{"{\"a\":1}"})), "070000007b2261223a317d");
}

}  // namespace
}  // namespace kvault::wire

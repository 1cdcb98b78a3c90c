// kvaultd's message codec: round trips, and decoders that refuse (never crash on, never
// over-allocate for) truncated, extended, mutated or random input.
#include <gtest/gtest.h>

#include <random>

#include "daemon/protocol.h"
#include "test_util.h"

namespace kvault::wire {
namespace {

Namespace TestNs() { return kvtest::MakeNamespace(kvtest::MakeLayout()); }

// Every message kind, encoded, with a decoder that reports whether the bytes were accepted.
struct Sample {
  const char* name;
  std::vector<std::byte> bytes;
  std::function<Status(std::span<const std::byte>)> decode;
};

std::vector<Sample> Samples() {
  const Namespace ns = TestNs();
  const ChunkKey k = ChainKey(ns, ns.id(), kvtest::MakeTokens(1, 16));
  std::vector<std::byte> payload(100, std::byte{3});
  LookupReply lr;
  lr.result.chunks = {{k, 0, 16, Tier::kT1}, {k, 16, 5, Tier::kT2}};
  lr.result.cached_tokens = 21;
  lr.result.total_tokens = 30;
  OpenReply open_inline{Status::OK(), 0, 16, Tier::kT1, {}, payload};
  OpenReply open_shm{Status::OK(), 5, 16, Tier::kT2, {{0, 4096}, {8192, 100}}, {}};
  return {
      {"hello", Encode(HelloRequest{"token", true}), [](auto b) { HelloRequest m; return Decode(b, &m); }},
      {"hello-reply", Encode(HelloReply{Status::OK(), "t", true, true, 1 << 20, 1 << 16}),
       [](auto b) { HelloReply m; return Decode(b, &m); }},
      {"lookup", Encode(LookupRequest{ToWire(ns), true, k, {1, 2, 3, 4}}), [](auto b) { LookupRequest m; return Decode(b, &m); }},
      {"lookup-reply", Encode(lr), [](auto b) { LookupReply m; return Decode(b, &m); }},
      {"begin-put", Encode(BeginPutRequest{ToWire(ns), k, {5, 6}}), [](auto b) { BeginPutRequest m; return Decode(b, &m); }},
      {"begin-put-reply", Encode(BeginPutReply{Status::OK(), false, 9, {{0, 4096}}}),
       [](auto b) { BeginPutReply m; return Decode(b, &m, 1 << 20); }},
      {"commit-put", Encode(CommitPutRequest{9, {{0, 100}}, {}}), [](auto b) { CommitPutRequest m; return Decode(b, &m); }},
      {"status", Encode(StatusReply{Status::NotFound("x")}), [](auto b) { StatusReply m; return Decode(b, &m); }},
      {"handle", Encode(HandleRequest{42}), [](auto b) { HandleRequest m; return Decode(b, &m); }},
      {"open", Encode(OpenRequest{ToWire(ns), k}), [](auto b) { OpenRequest m; return Decode(b, &m); }},
      {"open-reply-inline", Encode(open_inline), [](auto b) { OpenReply m; return Decode(b, &m, 0); }},
      {"open-reply-shm", Encode(open_shm), [](auto b) { OpenReply m; return Decode(b, &m, 1 << 20); }},
      {"hint", Encode(HintRequest{ToWire(ns), {{1, 2}, {3}}}), [](auto b) { HintRequest m; return Decode(b, &m); }},
      {"stats", Encode(StatsReply{"{}"}), [](auto b) { StatsReply m; return Decode(b, &m); }},
  };
}

TEST(ProtocolTest, EveryMessageRoundTrips) {
  for (const Sample& s : Samples()) EXPECT_TRUE(s.decode(s.bytes).ok()) << s.name;
  const Namespace ns = TestNs();
  LookupRequest in{ToWire(ns), true, ns.id(), {7, 8, 9}};
  LookupRequest out;
  ASSERT_TRUE(Decode(Encode(in), &out).ok());
  EXPECT_EQ(out.ns, in.ns);
  EXPECT_EQ(out.parent, in.parent);
  EXPECT_EQ(out.tokens, in.tokens);
  OpenReply o{Status::OK(), 3, 16, Tier::kT2, {{4096, 8192}}, {}};
  OpenReply back;
  ASSERT_TRUE(Decode(Encode(o), &back, 1 << 20).ok());
  EXPECT_EQ(back.handle, 3u);
  EXPECT_EQ(back.tier, Tier::kT2);
  ASSERT_EQ(back.pieces.size(), 1u);
  EXPECT_EQ(back.pieces[0].offset, 4096u);
  StatusReply sr;
  ASSERT_TRUE(Decode(Encode(StatusReply{Status::PermissionDenied("no")}), &sr).ok());
  EXPECT_EQ(sr.status.code(), Code::kPermissionDenied);
  EXPECT_EQ(sr.status.message(), "no");
}

TEST(ProtocolTest, TruncatedOrExtendedMessagesAreRefused) {
  for (const Sample& s : Samples()) {
    for (size_t cut = 0; cut < s.bytes.size(); ++cut) {
      EXPECT_FALSE(s.decode(std::span(s.bytes).first(cut)).ok()) << s.name << " cut at " << cut;
    }
    auto longer = s.bytes;
    longer.push_back(std::byte{0});
    EXPECT_FALSE(s.decode(longer).ok()) << s.name << " with a trailing byte";
  }
}

TEST(ProtocolTest, FieldsAreValidated) {
  const Namespace ns = TestNs();
  WireNamespace bad = ToWire(ns);
  bad.layout.num_layers = 0;
  LookupRequest m;
  EXPECT_FALSE(Decode(Encode(LookupRequest{bad, false, {}, {1}}), &m).ok());
  bad = ToWire(ns);
  bad.layout.dtype = static_cast<DType>(200);
  EXPECT_FALSE(Decode(Encode(LookupRequest{bad, false, {}, {1}}), &m).ok());
  bad = ToWire(ns);
  bad.tenant = std::string(kMaxTenantBytes + 1, 'x');
  EXPECT_FALSE(Decode(Encode(LookupRequest{bad, false, {}, {1}}), &m).ok());
  // A put of more tokens than a chunk holds, or of none.
  BeginPutRequest p;
  EXPECT_FALSE(Decode(Encode(BeginPutRequest{ToWire(ns), ns.id(), std::vector<uint32_t>(17, 1)}), &p).ok());
  EXPECT_FALSE(Decode(Encode(BeginPutRequest{ToWire(ns), ns.id(), {}}), &p).ok());
  // Pieces outside the arena, empty or wrapping around.
  OpenReply o;
  EXPECT_FALSE(Decode(Encode(OpenReply{Status::OK(), 1, 16, Tier::kT1, {{4096, 4096}}, {}}), &o, 4096).ok());
  EXPECT_FALSE(Decode(Encode(OpenReply{Status::OK(), 1, 16, Tier::kT1, {{0, 0}}, {}}), &o, 4096).ok());
  EXPECT_FALSE(Decode(Encode(OpenReply{Status::OK(), 1, 16, Tier::kT1, {{UINT64_MAX, 2}}, {}}), &o, 0).ok());
  EXPECT_FALSE(Decode(Encode(OpenReply{Status::OK(), 1, 16, static_cast<Tier>(9), {}, {}}), &o, 0).ok());
  // A lookup reply claiming more cached tokens than looked up.
  LookupReply lr;
  lr.result.cached_tokens = 5;
  lr.result.total_tokens = 4;
  LookupReply back;
  EXPECT_FALSE(Decode(Encode(lr), &back).ok());
  // A count larger than the bytes that follow: refused before allocating.
  std::vector<std::byte> huge = Encode(HandleRequest{0});
  HintRequest h;
  auto hint = Encode(HintRequest{ToWire(ns), {}});
  hint.resize(hint.size() - 4);
  for (int i = 0; i < 4; ++i) hint.push_back(std::byte{0xff});
  EXPECT_FALSE(Decode(hint, &h).ok());
}

// A hint carries at most kMaxPromptsPerHint prompts of at most kMaxTokensPerRequest tokens
// each: one more is malformed, even when every byte of it is present (the caps bound the
// daemon's work per hint, not only its allocations). Fails if the decoder's cap check goes.
TEST(ProtocolTest, HintDecodersRefuseMoreThanTheirCaps) {
  const Namespace ns = TestNs();
  HintRequest h;
  const std::vector<std::vector<uint32_t>> at_cap(kMaxPromptsPerHint, std::vector<uint32_t>{1});
  EXPECT_TRUE(Decode(Encode(HintRequest{ToWire(ns), at_cap}), &h).ok());
  EXPECT_EQ(h.prompts.size(), kMaxPromptsPerHint);
  auto over = at_cap;
  over.push_back({1});
  EXPECT_FALSE(Decode(Encode(HintRequest{ToWire(ns), over}), &h).ok());
  over.assign(kMaxPromptsPerHint + 1, {});  // empty prompts: 4 bytes each, all present
  EXPECT_FALSE(Decode(Encode(HintRequest{ToWire(ns), over}), &h).ok());

  const std::vector<uint32_t> longest(kMaxTokensPerRequest, 7);
  EXPECT_TRUE(Decode(Encode(HintRequest{ToWire(ns), {longest}}), &h).ok());
  auto too_long = longest;
  too_long.push_back(7);
  EXPECT_FALSE(Decode(Encode(HintRequest{ToWire(ns), {too_long}}), &h).ok());

  HintKeyedRequest k;
  std::vector<KeyedPrompt> keyed(kMaxPromptsPerHint, KeyedPrompt{{1}, {}});
  EXPECT_TRUE(Decode(Encode(HintKeyedRequest{ToWire(ns), keyed}), &k).ok());
  keyed.push_back(KeyedPrompt{{1}, {}});
  EXPECT_FALSE(Decode(Encode(HintKeyedRequest{ToWire(ns), keyed}), &k).ok());
}

TEST(ProtocolTest, FrameHeadersAreChecked) {
  std::byte raw[kFrameHeaderBytes];
  FrameHeader h;
  EncodeFrameHeader({MsgType::kLookup, 100}, raw);
  ASSERT_TRUE(DecodeFrameHeader(raw, 1000, &h).ok());
  EXPECT_EQ(h.type, MsgType::kLookup);
  EXPECT_EQ(h.payload_bytes, 100u);
  EXPECT_FALSE(DecodeFrameHeader(raw, 99, &h).ok());  // over the limit
  auto corrupt = [&](size_t at, std::byte v) {
    std::byte copy[kFrameHeaderBytes];
    std::memcpy(copy, raw, sizeof copy);
    copy[at] = v;
    return DecodeFrameHeader(copy, 1000, &h).ok();
  };
  EXPECT_FALSE(corrupt(0, std::byte{0}));    // magic
  EXPECT_FALSE(corrupt(4, std::byte{2}));    // version
  EXPECT_FALSE(corrupt(6, std::byte{99}));   // type
  EXPECT_FALSE(corrupt(12, std::byte{1}));   // reserved
  EXPECT_FALSE(DecodeFrameHeader(std::span(raw).first(10), 1000, &h).ok());
  EXPECT_TRUE(IsRequestType(static_cast<uint16_t>(MsgType::kOpen)));
  EXPECT_FALSE(IsRequestType(static_cast<uint16_t>(MsgType::kOpenReply)));
}

// A deterministic fuzz pass over every decoder (runs in CI; the sanitizer builds catch any
// read out of bounds): mutated valid messages and pure noise.
TEST(ProtocolTest, MutationFuzz) {
  std::mt19937_64 rng(12345);
  const auto samples = Samples();
  int accepted = 0;
  for (int i = 0; i < 40000; ++i) {
    const Sample& s = samples[rng() % samples.size()];
    std::vector<std::byte> b = s.bytes;
    switch (rng() % 4) {
      case 0:  // flip bytes
        for (int f = 0, n = 1 + rng() % 4; f < n && !b.empty(); ++f) b[rng() % b.size()] ^= static_cast<std::byte>(1 + rng() % 255);
        break;
      case 1:  // truncate
        b.resize(b.empty() ? 0 : rng() % b.size());
        break;
      case 2:  // insert noise
        for (int f = 0, n = 1 + rng() % 8; f < n; ++f) b.insert(b.begin() + (b.empty() ? 0 : rng() % b.size()), static_cast<std::byte>(rng()));
        break;
      default:  // pure noise
        b.resize(rng() % 256);
        for (auto& x : b) x = static_cast<std::byte>(rng());
    }
    if (s.decode(b).ok()) ++accepted;
  }
  // Some mutations are harmless (a token id, a payload byte); most are refused.
  EXPECT_LT(accepted, 40000 / 2);
}

}  // namespace
}  // namespace kvault::wire

// kvaultd in process: clients over the Unix socket, shared memory and inline data, tenants,
// malformed messages, restarts. Every payload is checked byte for byte (test_util's
// PayloadFor), so a chunk served from the wrong place cannot pass.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <random>
#include <thread>

#include "kvault/client.h"
#include "daemon/daemon.h"
#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "daemon_test_util.h"
#include "test_util.h"

namespace kvault {
namespace {

using kvtest::Check;
using kvtest::CheckChunk;
using kvtest::MakeLayout;
using kvtest::MakeNamespace;
using kvtest::MakeTokens;
using kvtest::PutChain;
using kvtest::TempDir;

using kvtest::StartDaemon;
using kvtest::SmallDaemonOptions;

std::unique_ptr<Client> Connect(const std::string& socket, const std::string& token = "", bool shm = true) {
  ClientOptions o;
  o.address = socket;
  o.token = token;
  o.shared_memory = shm;
  o.timeout_ms = 5000;
  o.reconnect_min_ms = 5;
  o.reconnect_max_ms = 50;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c.value()) : nullptr;
}

// Puts a chain through `writer`, then checks every chunk through `reader`.
void SaveThenLoad(Store& writer, Store& reader, const Namespace& ns, uint64_t seed, size_t n_tokens) {
  const auto tokens = MakeTokens(seed, n_tokens);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(PutChain(writer, ns, tokens, &spans).ok());
  const LookupResult r = reader.Lookup(ns, tokens);
  EXPECT_EQ(r.cached_tokens, n_tokens);
  ASSERT_EQ(r.chunks.size(), spans.size());
  for (const ChunkSpan& s : spans) {
    std::string why;
    EXPECT_EQ(CheckChunk(reader, ns, s.key, s.tokens, nullptr, &why), Check::kMatch) << why;
  }
}

TEST(DaemonTest, SecondClientLoadsWhatTheFirstSavedThroughSharedMemory) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  auto a = Connect(d->socket_path());
  auto b = Connect(d->socket_path());
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(a->shared_memory());
  EXPECT_TRUE(b->shared_memory());
  const Namespace ns = MakeNamespace(MakeLayout());
  SaveThenLoad(*a, *b, ns, 1, 16 * 5 + 7);  // five whole chunks and a partial one
  // The daemon saw one put per chunk and the second client's hits.
  const StoreStats s = b->Stats();
  EXPECT_EQ(s.puts, 6u);
  EXPECT_GE(s.hit_tokens_t1, 16u * 5 + 7);
}

TEST(DaemonTest, InlineClientsShareWithSharedMemoryClients) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  auto shm = Connect(d->socket_path());
  auto inl = Connect(d->socket_path(), "", /*shm=*/false);
  ASSERT_TRUE(shm && inl);
  EXPECT_FALSE(inl->shared_memory());
  const Namespace ns = MakeNamespace(MakeLayout());
  SaveThenLoad(*inl, *shm, ns, 2, 16 * 3);
  SaveThenLoad(*shm, *inl, ns, 3, 16 * 2 + 3);
}

TEST(DaemonTest, LayerWritesAndPiecesThroughTheClient) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  for (bool shm : {true, false}) {
    auto c = Connect(d->socket_path(), "", shm);
    ASSERT_TRUE(c);
    const Namespace ns = MakeNamespace(MakeLayout(), shm ? "shm" : "inline");
    const auto tokens = MakeTokens(4, 16);
    const ChunkKey key = ChainKey(ns, ns.id(), tokens);
    const auto payload = kvtest::PayloadFor(key, ns.layout().chunk_bytes(16));
    auto w = c->BeginPut(ns, ns.id(), tokens);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    // Layers in reverse order; the last one through the DMA-style interface.
    for (uint32_t l = ns.layout().num_layers; l-- > 1;) {
      const ByteRange r = ns.layout().layer_range(l, 16);
      ASSERT_TRUE(w->WriteLayer(l, std::span(payload).subspan(r.offset, r.size)).ok());
    }
    const ByteRange r0 = ns.layout().layer_range(0, 16);
    size_t at = 0;
    ASSERT_TRUE(w->ForEachPiece(r0.offset, r0.size, [&](std::span<std::byte> p) {
                   std::memcpy(p.data(), payload.data() + r0.offset + at, p.size());
                   at += p.size();
                 }).ok());
    ASSERT_TRUE(w->MarkWritten(r0.offset, r0.size).ok());
    ASSERT_TRUE(w->Commit().ok());
    std::string why;
    EXPECT_EQ(CheckChunk(*c, ns, key, 16, nullptr, &why), Check::kMatch) << why;
  }
}

TEST(DaemonTest, IncompleteCommitIsRefusedAndNothingIsPublished) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  for (bool shm : {true, false}) {
    auto c = Connect(d->socket_path(), "", shm);
    ASSERT_TRUE(c);
    const Namespace ns = MakeNamespace(MakeLayout(), shm ? "shm2" : "inline2");
    const auto tokens = MakeTokens(5, 16);
    auto w = c->BeginPut(ns, ns.id(), tokens);
    ASSERT_TRUE(w.ok());
    const ByteRange r = ns.layout().layer_range(0, 16);
    std::vector<std::byte> junk(r.size, std::byte{7});
    ASSERT_TRUE(w->WriteLayer(0, junk).ok());
    EXPECT_EQ(w->Commit().code(), Code::kInvalidArgument);
    EXPECT_EQ(c->Lookup(ns, tokens).cached_tokens, 0u);
  }
}

TEST(DaemonTest, TenantsNeverSeeEachOthersEntries) {
  TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.tokens = {{"alice", "tok-alice", /*shared_memory=*/false}, {"bob", "tok-bob", false}};
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto alice = Connect(d->socket_path(), "tok-alice");
  auto bob = Connect(d->socket_path(), "tok-bob");
  ASSERT_TRUE(alice && bob);
  EXPECT_FALSE(alice->shared_memory());  // bound tenants see no shared memory unless trusted

  const Namespace alice_ns = MakeNamespace(MakeLayout(), "alice");
  const Namespace bob_ns = MakeNamespace(MakeLayout(), "bob");
  const auto tokens = MakeTokens(6, 16 * 3);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*alice, alice_ns, tokens, &spans).ok());
  EXPECT_EQ(alice->Lookup(alice_ns, tokens).cached_tokens, tokens.size());

  // Bob naming Alice's namespace is refused (a miss to him) and counted.
  EXPECT_EQ(bob->Lookup(alice_ns, tokens).cached_tokens, 0u);
  EXPECT_FALSE(bob->OpenChunk(alice_ns, spans[0].key).ok());
  EXPECT_FALSE(bob->BeginPut(alice_ns, alice_ns.id(), std::span(tokens).first(16)).ok());
  EXPECT_GE(d->Counters().tenant_violations, 3u);
  // In his own namespace the same tokens miss, and Alice's keys are not his.
  EXPECT_EQ(bob->Lookup(bob_ns, tokens).cached_tokens, 0u);
  auto stolen = bob->OpenChunk(bob_ns, spans[0].key);
  EXPECT_EQ(stolen.status().code(), Code::kNotFound);
  // Node-wide totals would reveal Alice's entries: Bob sees only his own counters.
  EXPECT_EQ(bob->Stats().puts, 0u);
  EXPECT_EQ(bob->Stats().t1_entries, 0u);

  // A wrong or missing token gets no connection at all.
  ClientOptions bad;
  bad.address = d->socket_path();
  bad.token = "tok-mallory";
  EXPECT_EQ(Client::Connect(bad).status().code(), Code::kPermissionDenied);
  bad.token = "";
  EXPECT_EQ(Client::Connect(bad).status().code(), Code::kPermissionDenied);
  EXPECT_GE(d->Counters().auth_failures, 2u);
}

// A raw connection that speaks frames by hand.
struct RawConn {
  wire::UniqueFd fd;
  explicit RawConn(const std::string& path) {
    auto c = wire::ConnectUnix(path);
    EXPECT_TRUE(c.ok());
    if (c.ok()) fd = std::move(c.value());
    wire::SetIoTimeouts(fd.get(), 5000);
  }
  Status Send(std::span<const std::byte> bytes) {
    return send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())
               ? Status::OK()
               : Status::IOError("send");
  }
  // The type of the next frame, or kNotFound / kUnavailable when the daemon closed.
  Result<wire::MsgType> Next() {
    wire::FrameHeader h;
    std::vector<std::byte> payload;
    Status st = wire::ReadFrame(fd.get(), 1u << 20, &h, &payload);
    if (!st.ok()) return st;
    return h.type;
  }
  // The next frame's type; 0 (no type) when the daemon closed instead.
  wire::MsgType NextType() {
    auto t = Next();
    return t.ok() ? t.value() : static_cast<wire::MsgType>(0);
  }
  bool ClosedByPeer() {
    for (;;) {
      auto t = Next();
      if (!t.ok()) return t.status().code() == Code::kNotFound || t.status().code() == Code::kUnavailable;
    }
  }
};

std::vector<std::byte> Frame(wire::MsgType type, const std::vector<std::byte>& payload) {
  std::vector<std::byte> out(wire::kFrameHeaderBytes);
  wire::EncodeFrameHeader({type, static_cast<uint32_t>(payload.size())}, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

TEST(DaemonTest, MalformedAndOversizedMessagesGetAnErrorAndAClosedConnection) {
  TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.max_message_bytes = 64 << 10;
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  const auto hello = Frame(wire::MsgType::kHello, wire::Encode(wire::HelloRequest{"", false}));

  {  // garbage instead of a header
    RawConn c(d->socket_path());
    std::vector<std::byte> junk(16, std::byte{0x41});
    ASSERT_TRUE(c.Send(junk).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // a request before hello
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kFlush, {})).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // an oversized frame: refused from its header, before any payload is read
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(hello).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kHelloReply);
    std::vector<std::byte> header(wire::kFrameHeaderBytes);
    wire::EncodeFrameHeader({wire::MsgType::kLookup, 1u << 30}, header.data());
    ASSERT_TRUE(c.Send(header).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // before hello, a frame larger than a hello is refused from its header
    RawConn c(d->socket_path());
    std::vector<std::byte> header(wire::kFrameHeaderBytes);
    wire::EncodeFrameHeader({wire::MsgType::kHello, 1u << 20}, header.data());
    ASSERT_TRUE(c.Send(header).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // a lookup whose token count claims more than the frame holds
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(hello).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kHelloReply);
    const Namespace ns = MakeNamespace(MakeLayout());
    auto payload = wire::Encode(wire::LookupRequest{wire::ToWire(ns), false, {}, {1, 2, 3}});
    payload.resize(payload.size() - 8);  // cut two tokens off
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kLookup, payload)).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // a reply type sent as a request, and an unknown handle (refused, connection kept)
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(hello).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kHelloReply);
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kCommitPut, wire::Encode(wire::CommitPutRequest{99, {}, {}}))).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kCommitPutReply);
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kLookupReply, {})).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kError);
    EXPECT_TRUE(c.ClosedByPeer());
  }
  {  // a shared-memory commit whose written ranges are out of order: refused, connection kept
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kHello, wire::Encode(wire::HelloRequest{"", true}))).ok());
    ASSERT_EQ(c.NextType(), wire::MsgType::kHelloReply);
    const Namespace ns = MakeNamespace(MakeLayout(), "unsorted");
    wire::BeginPutRequest bp{wire::ToWire(ns), ns.id(), MakeTokens(77, 16)};
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kBeginPut, wire::Encode(bp))).ok());
    wire::FrameHeader h;
    std::vector<std::byte> payload;
    ASSERT_TRUE(wire::ReadFrame(c.fd.get(), 1u << 20, &h, &payload).ok());
    wire::BeginPutReply reply;
    ASSERT_TRUE(wire::Decode(payload, &reply, 0).ok());
    const uint64_t half = ns.layout().chunk_bytes(16) / 2;
    wire::CommitPutRequest commit{reply.handle, {{half, half}, {0, half}}, {}};
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kCommitPut, wire::Encode(commit))).ok());
    ASSERT_TRUE(wire::ReadFrame(c.fd.get(), 1u << 20, &h, &payload).ok());
    ASSERT_EQ(h.type, wire::MsgType::kCommitPutReply);
    wire::StatusReply st;
    ASSERT_TRUE(wire::Decode(payload, &st).ok());
    EXPECT_EQ(st.status.code(), Code::kInvalidArgument);
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kFlush, {})).ok());
    EXPECT_EQ(c.NextType(), wire::MsgType::kFlushReply);
  }
  EXPECT_GE(d->Counters().protocol_errors, 6u);
  EXPECT_GE(d->Counters().handle_errors, 1u);

  // Random frames: valid headers around random payloads, and random bytes. The daemon keeps
  // serving well-behaved clients throughout.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 300; ++i) {
    RawConn c(d->socket_path());
    if (i % 3 != 0) {
      ASSERT_TRUE(c.Send(hello).ok());
      (void)c.Next();
    }
    std::vector<std::byte> payload(rng() % 200);
    for (auto& b : payload) b = static_cast<std::byte>(rng());
    const auto type = static_cast<wire::MsgType>(1 + rng() % static_cast<uint16_t>(wire::kLastMsgType));
    auto frame = i % 5 == 0 ? payload : Frame(type, payload);
    (void)c.Send(frame);
    shutdown(c.fd.get(), SHUT_WR);
    (void)c.ClosedByPeer();
  }
  auto ok = Connect(d->socket_path());
  ASSERT_TRUE(ok);
  const Namespace ns = MakeNamespace(MakeLayout());
  SaveThenLoad(*ok, *ok, ns, 8, 40);
}

TEST(DaemonTest, ClientsSeeMissesWhileTheDaemonIsAwayAndReconnect) {
  TempDir dir;
  const DaemonOptions o = SmallDaemonOptions(dir.path());
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto c = Connect(d->socket_path());
  ASSERT_TRUE(c);
  const Namespace ns = MakeNamespace(MakeLayout());
  const auto tokens = MakeTokens(9, 16 * 4);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*c, ns, tokens, &spans).ok());
  // A reader opened before the outage stays readable after it.
  auto early = c->OpenChunk(ns, spans[0].key);
  ASSERT_TRUE(early.ok());
  ASSERT_TRUE(c->Flush().ok());
  const std::string socket = d->socket_path();
  ASSERT_TRUE(d->Stop().ok());
  d.reset();

  // Away: misses and refusals, never a crash or a hang.
  EXPECT_EQ(c->Lookup(ns, tokens).cached_tokens, 0u);
  EXPECT_EQ(c->OpenChunk(ns, spans[1].key).status().code(), Code::kNotFound);
  EXPECT_FALSE(c->BeginPut(ns, ns.id(), std::span(tokens).first(16)).ok());
  c->Hint(ns, {std::span<const uint32_t>(tokens)});
  EXPECT_FALSE(c->connected());
  std::vector<std::byte> buf(early->size());
  ASSERT_TRUE(early->ReadRange(0, buf).ok());
  EXPECT_EQ(buf, kvtest::PayloadFor(spans[0].key, buf.size()));
  early = ChunkReader();  // its release has no connection to go to: dropped quietly

  // Back (same directory): T2 is recovered and the client reconnects by itself.
  d = StartDaemon(o);
  ASSERT_TRUE(d);
  LookupResult r;
  for (int i = 0; i < 200 && r.cached_tokens == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    r = c->Lookup(ns, tokens);
  }
  EXPECT_EQ(r.cached_tokens, tokens.size());
  EXPECT_TRUE(c->connected());
  EXPECT_GE(c->reconnects(), 1u);
  for (const ChunkSpan& s : spans) {
    Tier from = Tier::kNone;
    EXPECT_EQ(CheckChunk(*c, ns, s.key, s.tokens, &from), Check::kMatch);
    EXPECT_EQ(from, Tier::kT2);  // recovered from T2
  }
}

TEST(DaemonTest, ADisconnectingClientReleasesItsPinsAndPuts) {
  TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.store.t2_bytes = 0;  // T1 only: a pinned chunk has nowhere to go
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  const Namespace ns = MakeNamespace(MakeLayout());
  const size_t chunk = ns.layout().chunk_bytes(16);
  const size_t fit = o.store.t1_bytes / chunk;
  auto c = Connect(d->socket_path());
  ASSERT_TRUE(c);
  std::vector<ChunkKey> keys;
  for (size_t i = 0; i < fit - 2; ++i) {
    const auto t = MakeTokens(100 + i, 16);
    keys.push_back(ChainKey(ns, ns.id(), t));
    ASSERT_TRUE(c->Put(ns, ns.id(), t, kvtest::PayloadFor(keys.back(), chunk)).ok()) << i;
  }
  // A raw client pins every one of them and starts two puts, then goes away without a word.
  {
    RawConn raw(d->socket_path());
    ASSERT_TRUE(raw.Send(Frame(wire::MsgType::kHello, wire::Encode(wire::HelloRequest{"", true}))).ok());
    ASSERT_EQ(raw.NextType(), wire::MsgType::kHelloReply);
    for (const ChunkKey& k : keys) {
      ASSERT_TRUE(raw.Send(Frame(wire::MsgType::kOpen, wire::Encode(wire::OpenRequest{wire::ToWire(ns), k}))).ok());
      ASSERT_EQ(raw.NextType(), wire::MsgType::kOpenReply);
    }
    for (int i = 0; i < 2; ++i) {
      wire::BeginPutRequest bp{wire::ToWire(ns), ns.id(), MakeTokens(5000 + i, 16)};
      ASSERT_TRUE(raw.Send(Frame(wire::MsgType::kBeginPut, wire::Encode(bp))).ok());
      ASSERT_EQ(raw.NextType(), wire::MsgType::kBeginPutReply);
    }
    // While it holds them, T1 is full of pinned chunks: a new put cannot find room.
    const auto t = MakeTokens(9000, 16);
    EXPECT_FALSE(c->Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk)).ok());
  }
  // Gone: the daemon released everything it held for that connection.
  Status last;
  for (int attempt = 0; attempt < 100; ++attempt) {  // the daemon notices the close asynchronously
    const auto t = MakeTokens(9001, 16);
    last = c->Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk));
    if (last.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(last.ok()) << last.ToString();
  for (size_t i = 0; i < fit; ++i) {
    const auto t = MakeTokens(20000 + i, 16);
    ASSERT_TRUE(c->Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk)).ok()) << i;
  }
}

// Each engine hints its own queue; the daemon keeps every client's window, so the "aware"
// policy protects all of them (one client's hint does not erase another's).
TEST(DaemonTest, EveryClientsWindowIsProtected) {
  TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.store.policy = "aware";
  o.store.t2_bytes = 0;  // what T1 evicts is gone
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto a = Connect(d->socket_path());
  auto b = Connect(d->socket_path());
  auto filler = Connect(d->socket_path());
  ASSERT_TRUE(a && b && filler);
  const Namespace ns = MakeNamespace(MakeLayout());
  const auto x = MakeTokens(31, 16 * 10), y = MakeTokens(32, 16 * 10);
  ASSERT_TRUE(PutChain(*a, ns, x).ok());
  ASSERT_TRUE(PutChain(*b, ns, y).ok());
  a->Hint(ns, {std::span<const uint32_t>(x)});
  b->Hint(ns, {std::span<const uint32_t>(y)});
  (void)a->Lookup(ns, x);  // a round trip after each hint: the daemon has taken both
  (void)b->Lookup(ns, y);
  // Three times T1's worth of other chunks.
  const size_t chunk = ns.layout().chunk_bytes(16);
  for (size_t i = 0; i < 3 * o.store.t1_bytes / chunk; ++i) {
    const auto t = MakeTokens(50000 + i, 16);
    ASSERT_TRUE(filler->Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk)).ok());
  }
  EXPECT_EQ(a->Lookup(ns, x).cached_tokens, x.size());
  EXPECT_EQ(b->Lookup(ns, y).cached_tokens, y.size());
  // A client that goes away takes its window with it.
  a.reset();
  for (int i = 0; i < 100 && d->Counters().connections_open > 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (size_t i = 0; i < 3 * o.store.t1_bytes / chunk; ++i) {
    const auto t = MakeTokens(90000 + i, 16);
    ASSERT_TRUE(filler->Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk)).ok());
  }
  EXPECT_EQ(b->Lookup(ns, x).cached_tokens, 0u);
  EXPECT_EQ(b->Lookup(ns, y).cached_tokens, y.size());
}

// Puts every whole chunk of `keyed` through BeginPutKeyed (payloads from PayloadFor).
void PutKeyed(Store& store, const Namespace& ns, const KeyedTokens& keyed) {
  for (const ChunkSpan& span : keyed.full) {
    auto w = store.BeginPutKeyed(ns, span, keyed.tokens.subspan(span.begin, span.tokens));
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ(w->key(), span.key);
    if (w->exists()) continue;
    ASSERT_TRUE(w->WriteRange(0, kvtest::PayloadFor(span.key, ns.layout().chunk_bytes(span.tokens))).ok());
    ASSERT_TRUE(w->Commit().ok());
  }
}

void ExpectSameResult(const LookupResult& a, const LookupResult& b) {
  EXPECT_EQ(a.cached_tokens, b.cached_tokens);
  EXPECT_EQ(a.total_tokens, b.total_tokens);
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) {
    EXPECT_EQ(a.chunks[i].key, b.chunks[i].key) << i;
    EXPECT_EQ(a.chunks[i].begin, b.chunks[i].begin) << i;
    EXPECT_EQ(a.chunks[i].tokens, b.chunks[i].tokens) << i;
    EXPECT_EQ(a.chunks[i].tier, b.chunks[i].tier) << i;
  }
}

TEST(DaemonTest, KeyedCallsSendKeysAndAnswerLikeTheTokenCalls) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  for (bool shm : {true, false}) {
    auto c = Connect(d->socket_path(), "", shm);
    ASSERT_TRUE(c);
    const Namespace ns = MakeNamespace(MakeLayout(), shm ? "keyed-shm" : "keyed-inline");
    const auto tokens = MakeTokens(shm ? 41 : 42, 16 * 6 + 5);
    const KeyedTokens keyed = KeyTokens(ns, tokens);
    ASSERT_EQ(keyed.full.size(), 6u);
    PutKeyed(*c, ns, keyed);

    // The same answer as the token calls, from the start and after a parent.
    const LookupResult by_keys = c->LookupKeyed(ns, keyed);
    EXPECT_EQ(by_keys.cached_tokens, 16u * 6);
    ExpectSameResult(by_keys, c->Lookup(ns, tokens));
    const auto tail = std::span<const uint32_t>(tokens).subspan(32);
    const KeyedTokens keyed_tail = KeyTokensFrom(ns, keyed.full[1].key, tail);
    const LookupResult tail_by_keys = c->LookupKeyed(ns, keyed_tail);
    EXPECT_EQ(tail_by_keys.cached_tokens, 16u * 4);
    ExpectSameResult(tail_by_keys, c->LookupFrom(ns, keyed.full[1].key, tail));
    for (const ChunkSpan& span : keyed.full) {
      std::string why;
      EXPECT_EQ(CheckChunk(*c, ns, span.key, span.tokens, nullptr, &why), Check::kMatch) << why;
    }
    // A second keyed put of a stored chunk is deduplicated by the daemon.
    auto again = c->BeginPutKeyed(ns, keyed.full[0], std::span<const uint32_t>(tokens).first(16));
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(again->exists());
    // A span that disagrees with its tokens is refused before anything is sent.
    EXPECT_EQ(c->BeginPutKeyed(ns, keyed.full[0], std::span<const uint32_t>(tokens).first(15)).status().code(),
              Code::kInvalidArgument);

    // Keyed hints (sent once the daemon has answered a keyed lookup) are taken: the
    // connection stays in step.
    c->HintKeyed(ns, {&keyed, &keyed_tail});
    EXPECT_EQ(c->LookupKeyed(ns, keyed).cached_tokens, 16u * 6);
  }
  EXPECT_EQ(d->Counters().protocol_errors, 0u);
}

TEST(DaemonTest, KeysOfAnotherNamespaceReachNothing) {
  TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.tokens = {{"alice", "tok-alice", /*shared_memory=*/false}, {"bob", "tok-bob", false}};
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto alice = Connect(d->socket_path(), "tok-alice");
  auto bob = Connect(d->socket_path(), "tok-bob");
  ASSERT_TRUE(alice && bob);
  const Namespace alice_ns = MakeNamespace(MakeLayout(), "alice");
  const Namespace bob_ns = MakeNamespace(MakeLayout(), "bob");
  const auto tokens = MakeTokens(61, 16 * 4);
  const KeyedTokens alice_keys = KeyTokens(alice_ns, tokens);
  PutKeyed(*alice, alice_ns, alice_keys);
  ASSERT_EQ(alice->LookupKeyed(alice_ns, alice_keys).cached_tokens, tokens.size());

  // Alice's keys sent in Bob's own namespace: the store matches an entry only in the
  // request's namespace, so they are misses.
  EXPECT_EQ(bob->LookupKeyed(bob_ns, alice_keys).cached_tokens, 0u);
  bob->HintKeyed(bob_ns, {&alice_keys});
  // A put with Alice's key: the daemon keys the chunk itself in Bob's namespace, so Bob
  // learns nothing about Alice's entry (no "exists") and stores his own.
  auto w = bob->BeginPutKeyed(bob_ns, alice_keys.full[0], std::span<const uint32_t>(tokens).first(16));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_FALSE(w->exists());
  // Naming Alice's namespace is refused and counted, as for the token calls.
  const uint64_t violations = d->Counters().tenant_violations;
  EXPECT_EQ(bob->LookupKeyed(alice_ns, alice_keys).cached_tokens, 0u);
  EXPECT_EQ(d->Counters().tenant_violations, violations + 1);
  // Alice's entries are untouched.
  EXPECT_EQ(alice->LookupKeyed(alice_ns, alice_keys).cached_tokens, tokens.size());
  EXPECT_EQ(d->Counters().protocol_errors, 0u);
}

// A daemon that predates keyed requests, speaking frames by hand: it answers hello, lookups
// (the first chunk of every stream is "cached") and hints, and refuses any other type with an
// error frame and a closed connection, as such a daemon's frame check does.
class OlderDaemon {
 public:
  explicit OlderDaemon(const std::string& path) {
    auto l = wire::ListenUnix(path, 0600);
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    if (l.ok()) listener_ = std::move(l.value());
    thread_ = std::thread([this] { Run(); });
  }
  ~OlderDaemon() {
    shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
    thread_.join();
  }
  std::vector<wire::MsgType> Seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  void Run() {
    for (;;) {
      const int fd = accept(listener_.get(), nullptr, nullptr);
      if (fd < 0) return;
      wire::UniqueFd conn(fd);
      wire::FrameHeader h;
      std::vector<std::byte> payload;
      while (wire::ReadFrame(conn.get(), 1u << 20, &h, &payload).ok()) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          seen_.push_back(h.type);
        }
        if (h.type == wire::MsgType::kHello) {
          (void)wire::WriteFrame(conn.get(), wire::MsgType::kHelloReply,
                                 wire::Encode(wire::HelloReply{Status::OK(), "", false, false, 0, 1u << 20}));
        } else if (h.type == wire::MsgType::kLookup) {
          wire::LookupRequest m;
          ASSERT_TRUE(wire::Decode(payload, &m).ok());
          const Namespace ns(m.ns.tenant, m.ns.model, m.ns.layout);
          wire::LookupReply r;
          const auto first = std::span<const uint32_t>(m.tokens).first(16);
          r.result = {{{ChainKey(ns, ns.id(), first), 0, 16, Tier::kT1}}, 16, static_cast<uint32_t>(m.tokens.size())};
          (void)wire::WriteFrame(conn.get(), wire::MsgType::kLookupReply, wire::Encode(r));
        } else if (h.type != wire::MsgType::kHint) {
          (void)wire::WriteFrame(conn.get(), wire::MsgType::kError,
                                 wire::Encode(wire::StatusReply{Status::InvalidArgument("unknown message type")}));
          break;
        }
      }
    }
  }

  wire::UniqueFd listener_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<wire::MsgType> seen_;  // GUARDED_BY(mu_)
};

TEST(DaemonTest, KeyedCallsFallBackToTokensAgainstAnOlderDaemon) {
  TempDir dir;
  OlderDaemon old(dir.Sub("old.sock"));
  auto c = Connect(dir.Sub("old.sock"));
  ASSERT_TRUE(c);
  const Namespace ns = MakeNamespace(MakeLayout());
  const auto tokens = MakeTokens(71, 16 * 3);
  const KeyedTokens keyed = KeyTokens(ns, tokens);
  c->HintKeyed(ns, {&keyed});  // support not known yet: a token hint
  // Refused: the client reconnects at once (no backoff) and asks again by tokens, so even
  // this first lookup is answered.
  const LookupResult r = c->LookupKeyed(ns, keyed);
  EXPECT_EQ(r.cached_tokens, 16u);
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].key, keyed.full[0].key);
  c->HintKeyed(ns, {&keyed});
  EXPECT_EQ(c->LookupKeyed(ns, keyed).cached_tokens, 16u);
  const std::vector<wire::MsgType> want = {wire::MsgType::kHello,  wire::MsgType::kHint, wire::MsgType::kLookupKeyed,
                                           wire::MsgType::kHello,  wire::MsgType::kLookup, wire::MsgType::kHint,
                                           wire::MsgType::kLookup};
  EXPECT_EQ(old.Seen(), want);
}

TEST(DaemonTest, ConcurrentClientsFromManyThreads) {
  TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  auto shared = Connect(d->socket_path());
  ASSERT_TRUE(shared);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto own = Connect(d->socket_path(), "", t % 2 == 0);
      Store& s = t < 2 ? static_cast<Store&>(*shared) : static_cast<Store&>(*own);
      const Namespace ns = MakeNamespace(MakeLayout(), "t" + std::to_string(t));
      for (int i = 0; i < 20; ++i) {
        const auto tokens = MakeTokens(t * 100 + i, 16 * 2 + 5);
        std::vector<ChunkSpan> spans;
        if (!PutChain(s, ns, tokens, &spans).ok()) ++failures;
        for (const ChunkSpan& sp : spans) {
          if (CheckChunk(s, ns, sp.key, sp.tokens) == Check::kMismatch) ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace kvault

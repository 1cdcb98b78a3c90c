// kvaultd's memory and time limits against hostile clients (docs/DAEMON.md, "Limits"): a frame
// header announcing a huge payload commits no memory, frames too big for their type are
// refused from the header, big frames on many connections share one budget (a request past it
// is answered and its connection kept), a frame that stalls or trickles is cut at its deadline
// while idle connections may stay, a shared-memory client's pins outlive a connection the
// daemon ends until the client closes it, and a normal client keeps working throughout. Memory is measured as this process's resident set (the
// daemon runs in it) and by the daemon's own accounting.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/daemon.h"
#include "daemon/message_budget.h"
#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "kvault/client.h"
#include "daemon_test_util.h"
#include "test_util.h"

namespace kvault {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// This process's resident memory (VmRSS), in bytes.
uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

std::vector<std::byte> Frame(wire::MsgType type, const std::vector<std::byte>& payload) {
  std::vector<std::byte> out(wire::kFrameHeaderBytes);
  wire::EncodeFrameHeader({type, static_cast<uint32_t>(payload.size())}, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::byte> Header(wire::MsgType type, uint32_t payload_bytes) {
  std::vector<std::byte> out(wire::kFrameHeaderBytes);
  wire::EncodeFrameHeader({type, payload_bytes}, out.data());
  return out;
}

// A raw connection that has said hello (no token, inline data).
struct RawConn {
  wire::UniqueFd fd;
  explicit RawConn(const std::string& path, bool say_hello = true) {
    auto c = wire::ConnectUnix(path);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (c.ok()) fd = std::move(c.value());
    wire::SetIoTimeouts(fd.get(), 10000);  // a hang fails the test instead of blocking it
    if (say_hello) {
      EXPECT_TRUE(Send(Frame(wire::MsgType::kHello, wire::Encode(wire::HelloRequest{"", false}))));
      wire::FrameHeader h;
      std::vector<std::byte> payload;
      EXPECT_TRUE(wire::ReadFrame(fd.get(), 1u << 20, &h, &payload).ok());
      EXPECT_EQ(h.type, wire::MsgType::kHelloReply);
    }
  }
  bool Send(std::span<const std::byte> bytes) {
    return send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // The next frame; its status when it is an error frame. kUnavailable / kNotFound when the
  // daemon closed or nothing came within the socket's 10 s timeout.
  Status NextError(wire::MsgType* type = nullptr) {
    wire::FrameHeader h;
    std::vector<std::byte> payload;
    Status st = wire::ReadFrame(fd.get(), 1u << 20, &h, &payload);
    if (!st.ok()) return st;
    if (type != nullptr) *type = h.type;
    if (h.type != wire::MsgType::kError) return Status::OK();
    wire::StatusReply r;
    EXPECT_TRUE(wire::Decode(payload, &r).ok());
    return r.status;
  }
  // The next frame, which must be of type `want`, decoded into *r.
  template <typename Rep>
  Status NextReply(wire::MsgType want, Rep* r, uint64_t arena_bytes = 0) {
    wire::FrameHeader h;
    std::vector<std::byte> payload;
    KVAULT_RETURN_IF_ERROR(wire::ReadFrame(fd.get(), 64u << 20, &h, &payload));
    if (h.type != want) return Status::InvalidArgument(std::string("got ") + wire::MsgTypeName(h.type));
    return wire::Decode(payload, r, arena_bytes);
  }
  // True when the daemon closed the connection (after whatever it still sent).
  bool ClosedByPeer() {
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd.get(), buf, sizeof buf, 0)) > 0) {
    }
    return n == 0 || errno == ECONNRESET;
  }
};

using kvtest::StartDaemon;
using kvtest::SmallDaemonOptions;

std::unique_ptr<Client> Connect(const std::string& socket, bool shared_memory = false) {
  ClientOptions o;
  o.address = socket;
  o.shared_memory = shared_memory;  // default inline: its requests and replies go through the daemon's buffers
  o.timeout_ms = 10000;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c.value()) : nullptr;
}

// A normal client's save and load, checked byte for byte.
void NormalClientWorks(Store& client, uint64_t seed) {
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout(), "normal");
  const auto tokens = kvtest::MakeTokens(seed, 40);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(kvtest::PutChain(client, ns, tokens, &spans).ok());
  EXPECT_EQ(client.Lookup(ns, tokens).cached_tokens, 40u);
  for (const ChunkSpan& s : spans) {
    std::string why;
    EXPECT_EQ(kvtest::CheckChunk(client, ns, s.key, s.tokens, nullptr, &why), kvtest::Check::kMatch) << why;
  }
}

// Waits (at most 10 s) until the daemon's counters satisfy `done`.
template <typename Done>
bool WaitForCounters(const Daemon& d, Done done) {
  const auto until = Clock::now() + 10s;
  while (!done(d.Counters())) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Waits until the daemon has read `bytes` frame bytes in all.
bool WaitForBytesReceived(const Daemon& d, uint64_t bytes) {
  return WaitForCounters(d, [&](const DaemonCounters& c) { return c.bytes_received >= bytes; });
}

// The reproduction: after hello, frame headers announcing 250 MiB and a few bytes of
// payload. Before the fix each connection's read allocated (and zeroed) the announced size at
// once: six of them took the resident set up by 1.5 GiB.
TEST(DaemonLimitsTest, AHugeFrameHeaderCommitsNoMemory) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.max_message_bytes = 256u << 20;  // the default
  o.frame_timeout_ms = 60000;         // the frames stay open while we measure
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto client = Connect(d->socket_path());
  ASSERT_TRUE(client);
  NormalClientWorks(*client, 1);

  const uint64_t rss_before = ResidentBytes();
  const uint64_t received_before = d->Counters().bytes_received;
  constexpr int kConns = 6;
  std::vector<std::unique_ptr<RawConn>> conns;
  std::vector<std::byte> some(4096, std::byte{1});
  for (int i = 0; i < kConns; ++i) {
    conns.push_back(std::make_unique<RawConn>(d->socket_path()));
    ASSERT_TRUE(conns.back()->Send(Header(wire::MsgType::kLookup, 250u << 20)));
    ASSERT_TRUE(conns.back()->Send(some));
  }
  ASSERT_TRUE(WaitForBytesReceived(*d, received_before + kConns * (wire::kFrameHeaderBytes + some.size())));
  const uint64_t growth = ResidentBytes() - std::min(ResidentBytes(), rss_before);
  EXPECT_LT(growth, 64ull << 20) << "announced: " << kConns << " x 250 MiB";
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);  // 4 KiB each: within every connection's own allowance

  NormalClientWorks(*client, 2);  // meanwhile
  conns.clear();
  NormalClientWorks(*client, 3);
}

// A frame bigger than its type can carry is refused from its header, whatever the message
// limit: an open, a release or a flush is small, a begin-put holds one chunk's tokens, a
// commit one open put's payload.
TEST(DaemonLimitsTest, AFrameLargerThanItsTypeCarriesIsRefusedFromItsHeader) {
  kvtest::TempDir dir;
  auto d = StartDaemon(SmallDaemonOptions(dir.path()));
  ASSERT_TRUE(d);
  for (auto [type, bytes] : {std::pair{wire::MsgType::kOpen, 1u << 20}, std::pair{wire::MsgType::kRelease, 9u},
                             std::pair{wire::MsgType::kFlush, 1u}, std::pair{wire::MsgType::kBeginPut, 64u << 20},
                             // a commit carries one put's payload or its written ranges: with no
                             // put open, 16 MiB of ranges at most
                             std::pair{wire::MsgType::kCommitPut, 32u << 20}}) {
    RawConn c(d->socket_path());
    ASSERT_TRUE(c.Send(Header(type, bytes)));
    const Status st = c.NextError();
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << wire::MsgTypeName(type) << ": " << st.ToString();
    EXPECT_NE(st.message().find("exceeds its limit"), std::string::npos) << st.ToString();
    EXPECT_TRUE(c.ClosedByPeer());
  }
  // The caps leave room for the largest legitimate requests of those types.
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout(), std::string(wire::kMaxTenantBytes, 't'));
  const size_t open_bytes = wire::Encode(wire::OpenRequest{wire::ToWire(ns), ns.id()}).size();
  EXPECT_EQ(open_bytes, wire::MaxRequestBytes(wire::MsgType::kOpen, 1u << 30));
  KvLayout big = kvtest::MakeLayout();
  big.chunk_tokens = wire::kMaxChunkTokens;
  ASSERT_TRUE(big.Validate().ok());
  const Namespace big_ns = kvtest::MakeNamespace(big, std::string(wire::kMaxTenantBytes, 't'));
  const auto put = wire::Encode(wire::BeginPutRequest{wire::ToWire(big_ns), big_ns.id(), kvtest::MakeTokens(1, wire::kMaxChunkTokens)});
  EXPECT_EQ(put.size(), wire::MaxRequestBytes(wire::MsgType::kBeginPut, 1u << 30));
}

// Big frames on many connections at once share the daemon-wide budget: past it a request is
// read to its end but dropped and answered with a clear error in its own reply type, the
// connection kept; the resident set stays within the budget plus each connection's
// allowance, and small requests are never refused.
TEST(DaemonLimitsTest, ManyBigFramesShareOneBudget) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.max_message_bytes = 64u << 20;
  o.message_budget_bytes = 4u << 20;
  o.frame_timeout_ms = 60000;
  std::vector<std::string> log;
  std::mutex log_mu;
  o.log = [&](const std::string& line) {
    std::lock_guard lock(log_mu);
    log.push_back(line);
  };
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto client = Connect(d->socket_path());
  ASSERT_TRUE(client);

  const uint64_t rss_before = ResidentBytes();
  constexpr int kConns = 8;
  const std::vector<std::byte> chunk(2u << 20, std::byte{7});  // each sends 2 MiB of a 32 MiB lookup
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < kConns; ++i) conns.push_back(std::make_unique<RawConn>(d->socket_path()));
  std::vector<std::thread> senders;
  for (auto& c : conns) {
    senders.emplace_back([&c, &chunk] {
      if (c->Send(Header(wire::MsgType::kLookup, 32u << 20))) (void)c->Send(chunk);  // a refused one fails midway
    });
  }
  for (auto& t : senders) t.join();
  // Let the daemon read what it will (the counter stops moving), then measure.
  uint64_t last = 0;
  for (auto until = Clock::now() + 10s; Clock::now() < until;) {
    std::this_thread::sleep_for(200ms);
    const uint64_t now = d->Counters().bytes_received;
    if (now == last) break;
    last = now;
  }
  const DaemonCounters mid = d->Counters();
  EXPECT_GE(mid.budget_refusals, 1u);
  EXPECT_LE(mid.message_bytes_peak, o.message_budget_bytes);
  const uint64_t growth = ResidentBytes() - std::min(ResidentBytes(), rss_before);
  // Old code: 8 x 32 MiB = 256 MiB zeroed at the headers. Now: the budget, plus 2 x 256 KiB
  // per connection, plus a buffer being copied while it grows; 96 MiB leaves room for noise
  // and for ThreadSanitizer's shadow memory (56 MiB measured under it), still far below 256.
  EXPECT_LT(growth, 96ull << 20);

  NormalClientWorks(*client, 4);  // small requests never compete for the budget

  // The rest of every frame: none fits the budget (32 MiB > 4 MiB), so each connection gets a
  // lookup reply that says so, and then serves its next request.
  const std::vector<std::byte> rest((32u << 20) - chunk.size(), std::byte{0});
  senders.clear();
  for (auto& c : conns) senders.emplace_back([&c, &rest] { (void)c->Send(rest); });
  for (auto& c : conns) {  // no ASSERT until the senders are joined
    wire::LookupReply r;
    const Status st = c->NextReply(wire::MsgType::kLookupReply, &r);
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) continue;
    EXPECT_EQ(r.status.code(), Code::kResourceExhausted) << r.status.ToString();
    EXPECT_NE(r.status.message().find("message budget"), std::string::npos) << r.status.ToString();
    EXPECT_NE(r.status.message().find("retry later"), std::string::npos) << r.status.ToString();
  }
  for (auto& t : senders) t.join();
  EXPECT_EQ(d->Counters().budget_refusals, static_cast<uint64_t>(kConns));
  {
    std::lock_guard lock(log_mu);
    ASSERT_FALSE(log.empty());
    EXPECT_NE(log.front().find("request refused"), std::string::npos) << log.front();
    EXPECT_NE(log.front().find("message budget"), std::string::npos) << log.front();
  }
  for (auto& c : conns) {
    ASSERT_TRUE(c->Send(Frame(wire::MsgType::kFlush, {})));
    wire::StatusReply r;
    EXPECT_TRUE(c->NextReply(wire::MsgType::kFlushReply, &r).ok());
  }
  EXPECT_EQ(d->Counters().connections_open, static_cast<uint64_t>(kConns) + 1);
  conns.clear();
  for (auto until = Clock::now() + 10s; d->Counters().message_bytes_in_use != 0 && Clock::now() < until;) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);
  NormalClientWorks(*client, 5);
}

// Past --max-connections a new connection gets an error frame and is closed, with a log
// line; once one closes, the next is accepted.
TEST(DaemonLimitsTest, ConnectionsPastTheCapAreRefused) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.max_connections = 4;
  std::vector<std::string> log;
  std::mutex log_mu;
  o.log = [&](const std::string& line) {
    std::lock_guard lock(log_mu);
    log.push_back(line);
  };
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<RawConn>(d->socket_path()));
  RawConn fifth(d->socket_path(), /*say_hello=*/false);
  const Status st = fifth.NextError();
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("too many connections"), std::string::npos) << st.ToString();
  EXPECT_TRUE(fifth.ClosedByPeer());
  {
    std::lock_guard lock(log_mu);
    ASSERT_EQ(log.size(), 1u);
    EXPECT_NE(log[0].find("--max-connections"), std::string::npos) << log[0];
  }
  conns.pop_back();
  for (auto until = Clock::now() + 10s; d->Counters().connections_open > 3 && Clock::now() < until;) {
    std::this_thread::sleep_for(5ms);
  }
  RawConn again(d->socket_path());  // says hello: accepted
  ASSERT_TRUE(again.Send(Frame(wire::MsgType::kFlush, {})));
  wire::MsgType type{};
  EXPECT_TRUE(again.NextError(&type).ok());
  EXPECT_EQ(type, wire::MsgType::kFlushReply);
}

// A frame whose payload stops coming is cut at the frame deadline, with an error frame that
// says so; the daemon's other clients carry on.
TEST(DaemonLimitsTest, AStalledFrameIsCutAtTheDeadline) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.frame_timeout_ms = 300;
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  RawConn c(d->socket_path());
  ASSERT_TRUE(c.Send(Header(wire::MsgType::kLookup, 4096)));
  ASSERT_TRUE(c.Send(std::vector<std::byte>(10, std::byte{0})));
  const Status st = c.NextError();
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("not complete within 300 ms"), std::string::npos) << st.ToString();
  EXPECT_TRUE(c.ClosedByPeer());
  EXPECT_EQ(d->Counters().frame_timeouts, 1u);
  auto client = Connect(d->socket_path());
  ASSERT_TRUE(client);
  NormalClientWorks(*client, 6);
}

// One byte at a time, each well within any per-read timeout: the deadline is the whole
// frame's, so the trickle is cut too.
TEST(DaemonLimitsTest, ATrickledFrameIsCutAtTheDeadline) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.frame_timeout_ms = 500;
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  RawConn c(d->socket_path());
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout());
  const auto frame = Frame(wire::MsgType::kLookup, wire::Encode(wire::LookupRequest{wire::ToWire(ns), false, {}, kvtest::MakeTokens(1, 1000)}));
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (size_t i = 0; i < frame.size() && !stop.load(); ++i) {
      if (send(c.fd.get(), &frame[i], 1, MSG_NOSIGNAL) != 1) return;  // closed by the daemon
      std::this_thread::sleep_for(20ms);
    }
  });
  const auto start = Clock::now();
  const Status st = c.NextError();
  stop = true;
  trickle.join();
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("not complete within 500 ms"), std::string::npos) << st.ToString();
  EXPECT_LT(Clock::now() - start, 8s);  // a hang guard, not a speed target
  auto client = Connect(d->socket_path());
  ASSERT_TRUE(client);
  NormalClientWorks(*client, 7);
}

// Between requests an authenticated connection may idle as long as it likes (engines do, and
// their pins must stay); the hello itself has a deadline.
TEST(DaemonLimitsTest, IdleConnectionsStayButAHelloHasADeadline) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.frame_timeout_ms = 100;
  o.hello_timeout_ms = 300;
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  RawConn idle(d->socket_path());
  RawConn silent(d->socket_path(), /*say_hello=*/false);
  std::this_thread::sleep_for(700ms);
  ASSERT_TRUE(idle.Send(Frame(wire::MsgType::kFlush, {})));
  wire::MsgType type{};
  EXPECT_TRUE(idle.NextError(&type).ok());
  EXPECT_EQ(type, wire::MsgType::kFlushReply);
  const Status st = silent.NextError();
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("no hello within 300 ms"), std::string::npos) << st.ToString();
  EXPECT_TRUE(silent.ClosedByPeer());
}

// Inline open replies draw on the same budget: past it the open is refused (the client sees
// a miss), never the daemon's memory; so is an inline commit too big for it.
TEST(DaemonLimitsTest, InlineRepliesDrawOnTheBudget) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.message_budget_bytes = 64u << 10;  // less than one chunk beyond the allowance
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  // A layout whose chunk is 512 KiB: 256 KiB over a buffer's allowance.
  const KvLayout big = kvtest::MakeLayout(DType::kBF16, 16, 8, 128, 16);
  ASSERT_GT(big.chunk_bytes(16), kConnectionBufferBytes + o.message_budget_bytes);
  const Namespace ns = kvtest::MakeNamespace(big, "big");
  const auto tokens = kvtest::MakeTokens(8, 16);
  std::vector<ChunkSpan> spans;
  {  // saved through shared memory: no payload travels
    ClientOptions co;
    co.address = d->socket_path();
    auto shm = Client::Connect(co);
    ASSERT_TRUE(shm.ok());
    ASSERT_TRUE(kvtest::PutChain(**shm, ns, tokens, &spans).ok());
    ASSERT_EQ(spans.size(), 1u);
  }
  auto inline_client = Connect(d->socket_path());
  ASSERT_TRUE(inline_client);
  EXPECT_EQ(inline_client->Lookup(ns, tokens).cached_tokens, 16u);
  auto reader = inline_client->OpenChunk(ns, spans[0].key);
  EXPECT_FALSE(reader.ok());
  EXPECT_EQ(d->Counters().budget_refusals, 1u);
  EXPECT_EQ(inline_client->reconnects(), 0u);
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);
  NormalClientWorks(*inline_client, 9);  // small chunks still go through, on the same connection

  // An inline commit of the big chunk is a request over the budget: refused.
  const auto other = kvtest::MakeTokens(10, 16);
  std::vector<ChunkSpan> more;
  EXPECT_FALSE(kvtest::PutChain(*inline_client, ns, other, &more).ok());
  EXPECT_EQ(d->Counters().budget_refusals, 2u);
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);
  EXPECT_EQ(inline_client->reconnects(), 0u);  // answered: the connection stays
  NormalClientWorks(*inline_client, 10);
  auto fresh = Connect(d->socket_path());
  ASSERT_TRUE(fresh);
  NormalClientWorks(*fresh, 11);
}

// Puts `n` chunks through `writer` (a fresh chain of one chunk each): with T1 only, every
// chunk nobody pins has its pages handed to another chunk several times over.
void PressT1(Store& writer, const Namespace& ns, size_t n, uint64_t seed) {
  const size_t chunk = ns.layout().chunk_bytes(ns.layout().chunk_tokens);
  for (size_t i = 0; i < n; ++i) {
    const auto t = kvtest::MakeTokens(seed + i, ns.layout().chunk_tokens);
    ASSERT_TRUE(writer.Put(ns, ns.id(), t, kvtest::PayloadFor(ChainKey(ns, ns.id(), t), chunk)).ok()) << i;
  }
}

// Waits until the daemon holds exactly `bytes` of its message budget.
bool WaitForBudgetInUse(const Daemon& d, uint64_t bytes) {
  return WaitForCounters(d, [&](const DaemonCounters& c) { return c.message_bytes_in_use == bytes; });
}

// The review's scenario (issue 16, item 2): other connections hold the message budget while a
// shared-memory engine reads a pinned chunk through the mapping and sends a big lookup and a
// big hint. Each is answered (a kResourceExhausted lookup reply; the hint dropped) and the
// engine's connection stays, with its pins: after T1 has recycled every other page, the
// chunk it holds still reads as its own bytes. Before the fix the refusal closed the
// connection and released the pin at once: the engine reconnected and read another chunk's
// bytes through its reader, with no error.
TEST(DaemonLimitsTest, ABudgetRefusalKeepsASharedMemoryClientsConnectionAndPins) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.store.t2_bytes = 0;  // T1 only: an unpinned chunk's pages go to the next puts
  o.max_message_bytes = 64u << 20;
  o.message_budget_bytes = 4u << 20;
  o.frame_timeout_ms = 60000;
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto engine = Connect(d->socket_path(), /*shared_memory=*/true);
  auto writer = Connect(d->socket_path(), /*shared_memory=*/true);
  ASSERT_TRUE(engine && writer);
  ASSERT_TRUE(engine->shared_memory());
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout(), "engine");
  const auto tokens = kvtest::MakeTokens(21, 16 * 4);
  std::vector<ChunkSpan> spans;
  ASSERT_TRUE(kvtest::PutChain(*engine, ns, tokens, &spans).ok());
  auto reader = engine->OpenChunk(ns, spans[0].key);  // pinned; read through the mapping
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();

  // Another connection takes the budget: 2 MiB of a 32 MiB lookup, read into a 4 MiB buffer
  // (3.75 MiB of the budget) while the rest does not come.
  RawConn hog(d->socket_path());
  ASSERT_TRUE(hog.Send(Header(wire::MsgType::kLookup, 32u << 20)));
  ASSERT_TRUE(hog.Send(std::vector<std::byte>(2u << 20, std::byte{7})));
  ASSERT_TRUE(WaitForBudgetInUse(*d, (4u << 20) - kConnectionBufferBytes));

  // The engine's big requests (3.2 MB each) do not fit now.
  const auto big = kvtest::MakeTokens(22, 800000);
  EXPECT_EQ(engine->Lookup(ns, big).cached_tokens, 0u);  // a miss
  engine->Hint(ns, {std::span<const uint32_t>(big)});    // dropped
  EXPECT_EQ(engine->Lookup(ns, tokens).cached_tokens, tokens.size());
  EXPECT_EQ(d->Counters().budget_refusals, 2u);
  EXPECT_TRUE(engine->connected());
  EXPECT_EQ(engine->reconnects(), 0u) << "the refusal cost the engine its connection";

  // T1 pressure: 3 x T1 of other chunks. The pinned chunk's pages are never among them.
  PressT1(*writer, ns, 3 * o.store.t1_bytes / ns.layout().chunk_bytes(16), 100000);
  std::vector<std::byte> got(reader->size());
  ASSERT_TRUE(reader->ReadRange(0, got).ok());
  EXPECT_TRUE(got == kvtest::PayloadFor(spans[0].key, got.size())) << "the pinned chunk's bytes changed under its reader";

  // On the wire: the lookup's own reply type, kResourceExhausted, and the connection serves on.
  RawConn raw(d->socket_path());
  ASSERT_TRUE(raw.Send(Frame(wire::MsgType::kLookup, wire::Encode(wire::LookupRequest{wire::ToWire(ns), false, {}, big}))));
  wire::LookupReply lr;
  EXPECT_TRUE(raw.NextReply(wire::MsgType::kLookupReply, &lr).ok());
  EXPECT_EQ(lr.status.code(), Code::kResourceExhausted) << lr.status.ToString();
  EXPECT_NE(lr.status.message().find("retry later"), std::string::npos) << lr.status.ToString();
  EXPECT_EQ(lr.result.cached_tokens, 0u);
  ASSERT_TRUE(raw.Send(Frame(wire::MsgType::kFlush, {})));
  wire::StatusReply fr;
  EXPECT_TRUE(raw.NextReply(wire::MsgType::kFlushReply, &fr).ok());
  EXPECT_EQ(d->Counters().budget_refusals, 3u);

  EXPECT_EQ(d->Counters().message_bytes_in_use, (4u << 20) - kConnectionBufferBytes);  // the hog, still
}

// When the daemon itself ends a shared-memory connection that holds pins (a missed frame
// deadline, a malformed frame), the client may still be copying from the pinned pages: the
// daemon sends its error frame and the end of the stream, but keeps the pins until the
// client closes its socket. Before the fix it released them at once, and T1 pressure then
// rewrote the pages the client was reading.
TEST(DaemonLimitsTest, ADaemonEndedSharedMemoryConnectionKeepsItsPinsUntilTheClientCloses) {
  kvtest::TempDir dir;
  DaemonOptions o = SmallDaemonOptions(dir.path());
  o.store.t2_bytes = 0;  // T1 only: an unpinned chunk's pages go to the next puts
  o.frame_timeout_ms = 300;
  std::vector<std::string> log;
  std::mutex log_mu;
  o.log = [&](const std::string& line) {
    std::lock_guard lock(log_mu);
    log.push_back(line);
  };
  auto d = StartDaemon(o);
  ASSERT_TRUE(d);
  auto writer = Connect(d->socket_path(), /*shared_memory=*/true);
  ASSERT_TRUE(writer);
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout(), "engine");
  const size_t chunk = ns.layout().chunk_bytes(16);
  const size_t t1_chunks = o.store.t1_bytes / chunk;

  enum class Ending { kFrameDeadline, kMalformedFrame };
  for (Ending ending : {Ending::kFrameDeadline, Ending::kMalformedFrame}) {
    const bool deadline = ending == Ending::kFrameDeadline;
    SCOPED_TRACE(deadline ? "frame deadline" : "malformed frame");
    std::vector<ChunkSpan> spans;
    ASSERT_TRUE(kvtest::PutChain(*writer, ns, kvtest::MakeTokens(deadline ? 31 : 32, 16), &spans).ok());
    const ChunkSpan& s = spans[0];
    // A shared-memory client by hand: hello, map T1, open (pin) the chunk.
    RawConn c(d->socket_path(), /*say_hello=*/false);
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kHello, wire::Encode(wire::HelloRequest{"", true}))));
    wire::FrameHeader h;
    std::vector<std::byte> payload;
    wire::UniqueFd memfd;
    ASSERT_TRUE(wire::ReadFrame(c.fd.get(), 1u << 20, &h, &payload, &memfd).ok());
    wire::HelloReply hello;
    ASSERT_TRUE(wire::Decode(payload, &hello).ok());
    ASSERT_TRUE(hello.shm);
    ASSERT_GE(memfd.get(), 0);
    void* base = mmap(nullptr, hello.arena_bytes, PROT_READ, MAP_SHARED, memfd.get(), 0);
    ASSERT_NE(base, MAP_FAILED);
    ASSERT_TRUE(c.Send(Frame(wire::MsgType::kOpen, wire::Encode(wire::OpenRequest{wire::ToWire(ns), s.key}))));
    wire::OpenReply open;
    ASSERT_TRUE(c.NextReply(wire::MsgType::kOpenReply, &open, hello.arena_bytes).ok());
    ASSERT_TRUE(open.status.ok()) << open.status.ToString();
    auto read_pinned = [&] {
      std::vector<std::byte> out;
      for (const wire::Piece& p : open.pieces) {
        const auto* at = static_cast<const std::byte*>(base) + p.offset;
        out.insert(out.end(), at, at + p.size);
      }
      return out;
    };
    ASSERT_EQ(read_pinned(), kvtest::PayloadFor(s.key, chunk));

    // The daemon ends the connection.
    if (deadline) {
      ASSERT_TRUE(c.Send(Header(wire::MsgType::kLookup, 4096)));
      ASSERT_TRUE(c.Send(std::vector<std::byte>(10, std::byte{0})));
      EXPECT_EQ(c.NextError().code(), Code::kResourceExhausted);
    } else {
      ASSERT_TRUE(c.Send(Frame(wire::MsgType::kLookupReply, {})));
      EXPECT_EQ(c.NextError().code(), Code::kInvalidArgument);
    }
    EXPECT_TRUE(c.ClosedByPeer());  // the end of the stream: the client knows to leave

    // The client still reads its chunk while T1 recycles every other page, 3 times over.
    PressT1(*writer, ns, 3 * t1_chunks, deadline ? 200000 : 300000);
    EXPECT_TRUE(read_pinned() == kvtest::PayloadFor(s.key, chunk)) << "the pinned chunk's bytes changed under its reader";
    EXPECT_EQ(d->Counters().connections_open, 2u);  // the writer and the closing connection

    // The client closes its socket: now the daemon lets the connection and its pins go.
    munmap(base, hello.arena_bytes);
    c.fd.reset();
    for (auto until = Clock::now() + 10s; d->Counters().connections_open != 1 && Clock::now() < until;) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(d->Counters().connections_open, 1u);
  }
  {
    std::lock_guard lock(log_mu);
    ASSERT_EQ(log.size(), 2u);
    EXPECT_NE(log[0].find("stay until the client closes its socket"), std::string::npos) << log[0];
  }
  NormalClientWorks(*writer, 12);
}

}  // namespace
}  // namespace kvault

// kvaultd's memory and time limits against hostile clients (docs/DAEMON.md, "Limits"): a frame
// header announcing a huge payload commits no memory, frames too big for their type are
// refused from the header, big frames on many connections share one budget, a frame that
// stalls or trickles is cut at its deadline while idle connections may stay, and a normal
// client keeps working throughout. Memory is measured as this process's resident set (the
// daemon runs in it) and by the daemon's own accounting.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/daemon.h"
#include "daemon/message_budget.h"
#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "kvault/client.h"
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
  // True when the daemon closed the connection (after whatever it still sent).
  bool ClosedByPeer() {
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd.get(), buf, sizeof buf, 0)) > 0) {
    }
    return n == 0 || errno == ECONNRESET;
  }
};

DaemonOptions LimitsDaemon(const std::string& dir) {
  DaemonOptions o;
  o.store = kvtest::SmallOptions(dir);
  o.store.huge_pages = false;
  return o;
}

std::unique_ptr<Daemon> StartDaemon(const DaemonOptions& o) {
  auto d = Daemon::Start(o);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? std::move(d.value()) : nullptr;
}

std::unique_ptr<Client> Connect(const std::string& socket) {
  ClientOptions o;
  o.address = socket;
  o.shared_memory = false;  // inline: its requests and replies go through the daemon's buffers
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

// Waits (at most 10 s) until the daemon has read `bytes` frame bytes in all.
bool WaitForBytesReceived(const Daemon& d, uint64_t bytes) {
  const auto until = Clock::now() + 10s;
  while (d.Counters().bytes_received < bytes) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// The reproduction: after hello, frame headers announcing 250 MiB and a few bytes of
// payload. Before the fix each connection's read allocated (and zeroed) the announced size at
// once: six of them took the resident set up by 1.5 GiB.
TEST(DaemonLimitsTest, AHugeFrameHeaderCommitsNoMemory) {
  kvtest::TempDir dir;
  DaemonOptions o = LimitsDaemon(dir.path());
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
  auto d = StartDaemon(LimitsDaemon(dir.path()));
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
// refused with a clear error and its connection closed, the resident set stays within the
// budget plus each connection's allowance, and small requests are never refused.
TEST(DaemonLimitsTest, ManyBigFramesShareOneBudget) {
  kvtest::TempDir dir;
  DaemonOptions o = LimitsDaemon(dir.path());
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
  // Old code: 8 x 32 MiB zeroed at the headers. Now: the budget, plus 2 x 256 KiB per
  // connection, plus a buffer being copied while it grows; 48 MiB leaves room for noise.
  EXPECT_LT(growth, 48ull << 20);

  NormalClientWorks(*client, 4);  // small requests never compete for the budget

  int refused = 0;
  for (auto& c : conns) {
    pollfd p{c->fd.get(), POLLIN, 0};
    if (poll(&p, 1, 0) != 1) continue;  // still being received (holds part of the budget)
    const Status st = c->NextError();
    EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
    EXPECT_NE(st.message().find("message budget"), std::string::npos) << st.ToString();
    ++refused;
  }
  EXPECT_GE(refused, 1);
  {
    std::lock_guard lock(log_mu);
    ASSERT_FALSE(log.empty());
    EXPECT_NE(log.front().find("message budget"), std::string::npos) << log.front();
  }
  conns.clear();  // closed mid-frame: every share goes back
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
  DaemonOptions o = LimitsDaemon(dir.path());
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
  DaemonOptions o = LimitsDaemon(dir.path());
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
  DaemonOptions o = LimitsDaemon(dir.path());
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
  DaemonOptions o = LimitsDaemon(dir.path());
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
  DaemonOptions o = LimitsDaemon(dir.path());
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
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);
  NormalClientWorks(*inline_client, 9);  // small chunks still go through, on the same connection

  // An inline commit of the big chunk is a request over the budget: refused.
  const auto other = kvtest::MakeTokens(10, 16);
  std::vector<ChunkSpan> more;
  EXPECT_FALSE(kvtest::PutChain(*inline_client, ns, other, &more).ok());
  EXPECT_EQ(d->Counters().budget_refusals, 2u);
  EXPECT_EQ(d->Counters().message_bytes_in_use, 0u);
  auto fresh = Connect(d->socket_path());
  ASSERT_TRUE(fresh);
  NormalClientWorks(*fresh, 11);
}

}  // namespace
}  // namespace kvault

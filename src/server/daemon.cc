#include "server/daemon.h"

#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "server/http_endpoint.h"
#include "server/latency_histogram.h"
#include "server/prometheus_text.h"
#include "server/protocol.h"
#include "server/socket_io.h"
#include "store/embedded_store.h"

namespace kvault {

using wire::MsgType;
using wire::UniqueFd;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kHelloTimeoutMs = 5000;  // a new connection must say hello within this
constexpr int kNextRequestSpinUs = 30;  // awake after a reply, waiting for the next request

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Counters bumped from connection threads.
struct AtomicCounters {
  std::atomic<uint64_t> connections_accepted{0}, connections_open{0}, requests{0}, protocol_errors{0},
      auth_failures{0}, tenant_violations{0}, handle_errors{0};
};

}  // namespace

Result<std::vector<TenantToken>> ParseTokensFile(const std::string& text) {
  std::vector<TenantToken> out;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    TenantToken t;
    std::string flag, extra;
    if (!(fields >> t.tenant)) continue;  // blank or comment
    if (!(fields >> t.token)) return Status::InvalidArgument("tokens file line " + std::to_string(n) + ": expected 'tenant token [shm]'");
    if (fields >> flag) {
      if (flag != "shm") return Status::InvalidArgument("tokens file line " + std::to_string(n) + ": unknown flag '" + flag + "'");
      t.shared_memory = true;
    }
    if (fields >> extra) return Status::InvalidArgument("tokens file line " + std::to_string(n) + ": trailing text");
    if (t.tenant.size() > wire::kMaxTenantBytes || t.token.size() > wire::kMaxTokenBytes) {
      return Status::InvalidArgument("tokens file line " + std::to_string(n) + ": tenant or token too long");
    }
    for (const TenantToken& o : out) {
      if (o.token == t.token) return Status::InvalidArgument("tokens file line " + std::to_string(n) + ": duplicate token");
    }
    out.push_back(std::move(t));
  }
  return out;
}

// One client connection. Everything but `fd` and `done` belongs to the connection's thread.
struct Connection {
  UniqueFd fd;
  bool is_unix = true;
  std::thread thread;
  std::atomic<bool> done{false};

  bool hello_done = false;
  bool bound = false;  // requests must name `tenant`
  std::string tenant;
  bool shm = false;    // the client mapped T1; pieces instead of bytes
  uint64_t next_handle = 1;
  std::unordered_map<uint64_t, ChunkReader> readers;  // pins held for the client
  std::unordered_map<uint64_t, ChunkWriter> writers;  // puts in progress
  // The last namespace used, rebuilt only when it changes (hashing the id costs a SHA-256).
  std::optional<wire::WireNamespace> last_wire;
  std::optional<Namespace> last_ns;
};

class Daemon::Impl {
 public:
  explicit Impl(const DaemonOptions& o) : opt_(o) {}

  Status Start();
  Status Stop();
  std::string MetricsText() const;
  DaemonCounters Counters() const;
  int MetricsPort() const { return http_.port(); }
  StoreStats StoreStatistics() const { return store_ ? store_->Stats() : final_stats_; }

  DaemonOptions opt_;
  std::unique_ptr<Store> store_owner_;
  EmbeddedStore* store_ = nullptr;
  std::string socket_path_;
  int tcp_port_ = -1;

 private:
  void AcceptLoop(int listen_fd, bool is_unix);
  void Serve(Connection* c);
  // Handles one request. A non-OK Status is a protocol violation: the caller sends kError
  // and closes the connection.
  Status Dispatch(Connection* c, MsgType type, std::span<const std::byte> payload);
  Status Reply(Connection* c, MsgType type, const std::vector<std::byte>& payload, int pass_fd = -1);
  Status OnHello(Connection* c, std::span<const std::byte> payload);
  Status OnLookup(Connection* c, std::span<const std::byte> payload);
  Status OnBeginPut(Connection* c, std::span<const std::byte> payload);
  Status OnCommitPut(Connection* c, std::span<const std::byte> payload);
  Status OnOpen(Connection* c, std::span<const std::byte> payload);
  Status OnHint(Connection* c, std::span<const std::byte> payload);
  // kAbortPut / kRelease: drops the handle (a writer aborts, a reader unpins).
  template <typename Map>
  Status DropHandle(Map& handles, std::span<const std::byte> payload);
  // Replaces connection c's look-ahead window (nullopt: c is gone) and hints the store with
  // every client's window merged: first prompts of all clients, then second ones, and so on,
  // so that each engine's next request ranks alike. A store has one window; without the merge
  // each engine's hint would erase the others'.
  struct ClientWindow {
    Namespace ns;
    std::vector<std::vector<uint32_t>> prompts;
    std::vector<std::vector<ChunkSpan>> full;  // each prompt's whole chunks, hashed once
  };
  void SetWindow(const Connection* c, std::optional<ClientWindow> w);
  // The namespace of a request, or kPermissionDenied when a bound client names another tenant.
  Result<const Namespace*> Resolve(Connection* c, const wire::WireNamespace& ns);
  bool HandlesFull(const Connection* c) const {
    return c->readers.size() + c->writers.size() >= opt_.max_handles_per_connection;
  }

  UniqueFd unix_listener_, tcp_listener_;
  std::thread unix_accept_, tcp_accept_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  bool own_socket_ = false;  // this daemon bound socket_path_
  StoreStats final_stats_;   // the store's counters when Stop() closed it
  mutable std::mutex conns_mu_;
  std::list<std::unique_ptr<Connection>> conns_;  // GUARDED_BY(conns_mu_)
  AtomicCounters counters_;
  std::mutex windows_mu_;
  std::unordered_map<const Connection*, ClientWindow> windows_;  // GUARDED_BY(windows_mu_)
  LatencyHistogram lookup_seconds_, open_seconds_, begin_put_seconds_, commit_seconds_;
  HttpEndpoint http_;
  uid_t uid_ = geteuid();
};

Status Daemon::Impl::Start() {
  if (!opt_.tcp_listen.empty() && opt_.tokens.empty()) {
    return Status::InvalidArgument("the TCP listener requires tokens (--tokens-file): other nodes must authenticate");
  }
  if (opt_.max_message_bytes < 4096 || opt_.max_message_bytes > wire::kMaxMessageBytes) {
    return Status::InvalidArgument("max_message_bytes must be in [4096, 1 GiB]");
  }
  StoreOptions so = opt_.store;
  so.shared_dram = true;
  auto store = Store::Open(so);
  if (!store.ok()) return store.status();
  store_owner_ = std::move(store.value());
  store_ = static_cast<EmbeddedStore*>(store_owner_.get());

  socket_path_ = opt_.socket_path.empty() ? opt_.store.dir + "/kvaultd.sock" : opt_.socket_path;
  auto ul = wire::ListenUnix(socket_path_, opt_.socket_mode);
  if (!ul.ok()) return ul.status();
  unix_listener_ = std::move(ul.value());
  own_socket_ = true;  // from here on the socket file is ours to remove
  if (!opt_.tcp_listen.empty()) {
    auto tl = wire::ListenTcp(opt_.tcp_listen);
    if (!tl.ok()) return tl.status();
    tcp_listener_ = std::move(tl.value());
    tcp_port_ = wire::BoundPort(tcp_listener_.get());
  }
  if (opt_.metrics_port >= 0) {
    HttpHandlers h;
    h.metrics = [this] { return MetricsText(); };
    h.health = [this]() -> std::pair<bool, std::string> {
      if (stopping_.load()) return {false, "stopping"};
      return {true, "ok"};
    };
    KVAULT_RETURN_IF_ERROR(http_.Start(opt_.metrics_host, opt_.metrics_port, std::move(h)));
  }
  unix_accept_ = std::thread([this] { AcceptLoop(unix_listener_.get(), true); });
  if (tcp_listener_.get() >= 0) tcp_accept_ = std::thread([this] { AcceptLoop(tcp_listener_.get(), false); });
  return Status::OK();
}

Status Daemon::Impl::Stop() {
  if (stopped_) return Status::OK();
  stopped_ = true;
  stopping_ = true;
  // shutdown() wakes a thread blocked in accept() or read() on Linux.
  if (unix_listener_.get() >= 0) shutdown(unix_listener_.get(), SHUT_RDWR);
  if (tcp_listener_.get() >= 0) shutdown(tcp_listener_.get(), SHUT_RDWR);
  if (unix_accept_.joinable()) unix_accept_.join();
  if (tcp_accept_.joinable()) tcp_accept_.join();
  std::list<std::unique_ptr<Connection>> conns;
  {
    std::lock_guard<std::mutex> lock(conns_mu_);
    for (auto& c : conns_) shutdown(c->fd.get(), SHUT_RDWR);
    conns.swap(conns_);
  }
  for (auto& c : conns) c->thread.join();
  conns.clear();  // every connection's pins and unfinished puts, now that no request runs
  http_.Stop();
  Status st = Status::OK();
  if (store_owner_) {
    st = store_owner_->Flush();
    final_stats_ = store_owner_->Stats();
    store_owner_.reset();
    store_ = nullptr;
  }
  unix_listener_.reset();
  tcp_listener_.reset();
  if (own_socket_) unlink(socket_path_.c_str());  // never another daemon's
  return st;
}

void Daemon::Impl::AcceptLoop(int listen_fd, bool is_unix) {
  while (!stopping_.load()) {
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) return;
      // Interrupted, a peer's aborted or failed connection, out of fds or memory: none of it
      // ends the listener. Back off briefly on the ones that may repeat.
      if (errno != EINTR && errno != ECONNABORTED) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->fd.reset(fd);
    c->is_unix = is_unix;
    std::lock_guard<std::mutex> lock(conns_mu_);
    // Reap finished connections.
    for (auto it = conns_.begin(); it != conns_.end();) {
      if ((*it)->done.load()) {
        (*it)->thread.join();
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_.load()) return;
    if (conns_.size() >= opt_.max_connections) {
      ++counters_.protocol_errors;
      auto payload = wire::Encode(wire::StatusReply{Status::ResourceExhausted("too many connections")});
      (void)wire::WriteFrame(fd, MsgType::kError, payload);
      continue;  // c closes the fd
    }
    ++counters_.connections_accepted;
    Connection* raw = c.get();
    conns_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void Daemon::Impl::Serve(Connection* c) {
  ++counters_.connections_open;
  wire::FrameHeader h;
  std::vector<std::byte> payload;
  // Until its hello, a connection gets small frames and a deadline: a peer that has not
  // authenticated cannot make the daemon allocate or wait much.
  wire::SetIoTimeouts(c->fd.get(), kHelloTimeoutMs);
  for (;;) {
    const size_t limit = c->hello_done ? opt_.max_message_bytes : wire::kMaxHelloBytes;
    wire::SpinUntilReadable(c->fd.get(), kNextRequestSpinUs);  // engines send bursts (lookup, opens)
    Status st = wire::ReadFrame(c->fd.get(), limit, &h, &payload);
    if (st.ok() && !wire::IsRequestType(static_cast<uint16_t>(h.type))) {
      st = Status::InvalidArgument(std::string("unexpected message type ") + wire::MsgTypeName(h.type));
    }
    if (st.ok() && !c->hello_done && h.type != MsgType::kHello) {
      st = Status::InvalidArgument("the first message must be hello");
    }
    if (st.ok()) {
      ++counters_.requests;
      const bool was_hello = !c->hello_done;
      st = Dispatch(c, h.type, payload);
      if (was_hello && c->hello_done) {  // authenticated: no read deadline (engines idle), a send one
        wire::SetIoTimeouts(c->fd.get(), 0);
        timeval tv{opt_.io_timeout_ms / 1000, (opt_.io_timeout_ms % 1000) * 1000};
        setsockopt(c->fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      }
      if (payload.capacity() > (4u << 20)) std::vector<std::byte>().swap(payload);  // don't keep a peak
      if (st.ok()) continue;
    }
    // The peer left (kNotFound / kUnavailable from the socket) or broke the protocol.
    if (st.code() != Code::kNotFound && st.code() != Code::kUnavailable) {
      if (st.code() != Code::kPermissionDenied) ++counters_.protocol_errors;  // auth: counted at hello
      (void)wire::WriteFrame(c->fd.get(), MsgType::kError, wire::Encode(wire::StatusReply{st}));
    }
    break;
  }
  // Release the connection's pins and unfinished puts, unless the daemon is stopping: then
  // Stop() releases every connection's at once, after all connection threads are done, so
  // that no request still running reuses pages another client may still be reading.
  if (!stopping_.load()) {
    c->readers.clear();
    c->writers.clear();
    SetWindow(c, std::nullopt);
  }
  shutdown(c->fd.get(), SHUT_RDWR);
  --counters_.connections_open;
  c->done = true;
}

Status Daemon::Impl::Reply(Connection* c, MsgType type, const std::vector<std::byte>& payload, int pass_fd) {
  return wire::WriteFrame(c->fd.get(), type, payload, pass_fd);
}

Status Daemon::Impl::Dispatch(Connection* c, MsgType type, std::span<const std::byte> payload) {
  switch (type) {
    case MsgType::kHello:
      return OnHello(c, payload);
    case MsgType::kLookup:
      return OnLookup(c, payload);
    case MsgType::kBeginPut:
      return OnBeginPut(c, payload);
    case MsgType::kCommitPut:
      return OnCommitPut(c, payload);
    case MsgType::kAbortPut:
      return DropHandle(c->writers, payload);
    case MsgType::kOpen:
      return OnOpen(c, payload);
    case MsgType::kRelease:
      return DropHandle(c->readers, payload);
    case MsgType::kHint:
      return OnHint(c, payload);
    case MsgType::kFlush:
      if (!payload.empty()) return Status::InvalidArgument("flush carries no payload");
      return Reply(c, MsgType::kFlushReply, wire::Encode(wire::StatusReply{store_->Flush()}));
    case MsgType::kStats: {
      if (!payload.empty()) return Status::InvalidArgument("stats carries no payload");
      // The node's totals describe every tenant's entries: bound clients get none.
      wire::StatsReply r{c->bound ? std::string("{}") : store_->Stats().ToJson()};
      return Reply(c, MsgType::kStatsReply, wire::Encode(r));
    }
    case MsgType::kWaitPrefetch:
      if (!payload.empty()) return Status::InvalidArgument("wait-prefetch carries no payload");
      store_->WaitForPrefetch();
      return Reply(c, MsgType::kWaitPrefetchReply, wire::Encode(wire::StatusReply{}));
    default:
      return Status::InvalidArgument("unexpected message");
  }
}

template <typename Map>
Status Daemon::Impl::DropHandle(Map& handles, std::span<const std::byte> payload) {
  wire::HandleRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  if (handles.erase(m.handle) == 0) ++counters_.handle_errors;  // one-way: nothing to answer
  return Status::OK();
}

Status Daemon::Impl::OnHello(Connection* c, std::span<const std::byte> payload) {
  if (c->hello_done) return Status::InvalidArgument("hello sent twice");
  wire::HelloRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::HelloReply r;
  const TenantToken* match = nullptr;
  for (const TenantToken& t : opt_.tokens) {
    if (t.token.size() == m.token.size() && !m.token.empty() &&
        CRYPTO_memcmp(t.token.data(), m.token.data(), m.token.size()) == 0) {
      match = &t;
    }
  }
  if (!opt_.tokens.empty() && match == nullptr) {
    ++counters_.auth_failures;  // before the reply: a client that sees it finds it counted
    r.status = Status::PermissionDenied("unknown token");
    (void)Reply(c, MsgType::kHelloReply, wire::Encode(r));
    return r.status;
  }
  c->bound = match != nullptr;
  c->tenant = match ? match->tenant : "";
  const long peer = c->is_unix ? wire::PeerUid(c->fd.get()) : -1;
  const bool trusted_peer = peer >= 0 && (static_cast<uid_t>(peer) == uid_ || peer == 0);
  c->shm = m.want_shm && c->is_unix && trusted_peer && (!c->bound || match->shared_memory);
  c->hello_done = true;
  r.tenant = c->tenant;
  r.bound = c->bound;
  r.shm = c->shm;
  r.arena_bytes = c->shm ? store_->arena().map_bytes() : 0;
  r.max_message_bytes = opt_.max_message_bytes;
  return Reply(c, MsgType::kHelloReply, wire::Encode(r), c->shm ? store_->arena().fd() : -1);
}

Result<const Namespace*> Daemon::Impl::Resolve(Connection* c, const wire::WireNamespace& ns) {
  if (c->bound && ns.tenant != c->tenant) {
    ++counters_.tenant_violations;
    return Status::PermissionDenied("this connection may only use tenant '" + c->tenant + "'");
  }
  if (!c->last_wire || !(*c->last_wire == ns)) {
    c->last_ns.emplace(ns.tenant, ns.model, ns.layout);
    c->last_wire = ns;
  }
  return &*c->last_ns;
}

Status Daemon::Impl::OnLookup(Connection* c, std::span<const std::byte> payload) {
  const auto start = Clock::now();
  wire::LookupRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::LookupReply r;
  auto ns = Resolve(c, m.ns);
  if (!ns.ok()) {
    r.status = ns.status();
  } else {
    // Bounded work per request: a longer lookup answers for its head (a true, shorter prefix).
    const size_t cap = wire::kMaxChunksPerRequest * size_t{m.ns.layout.chunk_tokens};
    if (m.tokens.size() > cap) m.tokens.resize(cap);
    r.result = m.has_parent ? store_->LookupFrom(**ns, m.parent, m.tokens) : store_->Lookup(**ns, m.tokens);
  }
  Status st = Reply(c, MsgType::kLookupReply, wire::Encode(r));
  lookup_seconds_.Observe(SecondsSince(start));
  return st;
}

Status Daemon::Impl::OnBeginPut(Connection* c, std::span<const std::byte> payload) {
  const auto start = Clock::now();
  wire::BeginPutRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::BeginPutReply r;
  auto ns = Resolve(c, m.ns);
  if (!ns.ok()) {
    r.status = ns.status();
  } else if (HandlesFull(c)) {
    ++counters_.handle_errors;
    r.status = Status::ResourceExhausted("too many open handles on this connection");
  } else if (auto w = store_->BeginPut(**ns, m.parent, m.tokens); !w.ok()) {
    r.status = w.status();
  } else if (w->exists()) {
    r.exists = true;
  } else {
    r.handle = c->next_handle++;
    if (c->shm) {
      const std::byte* base = store_->arena().base();
      (void)w->ForEachPiece(0, w->size(), [&](std::span<std::byte> p) {
        r.pieces.push_back({static_cast<uint64_t>(p.data() - base), p.size()});
      });
    }
    c->writers.emplace(r.handle, std::move(w.value()));
  }
  Status st = Reply(c, MsgType::kBeginPutReply, wire::Encode(r));
  begin_put_seconds_.Observe(SecondsSince(start));
  return st;
}

Status Daemon::Impl::OnCommitPut(Connection* c, std::span<const std::byte> payload) {
  const auto start = Clock::now();
  wire::CommitPutRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::StatusReply r;
  auto it = c->writers.find(m.handle);
  if (it == c->writers.end()) {
    ++counters_.handle_errors;
    r.status = Status::InvalidArgument("unknown put handle");
  } else {
    ChunkWriter& w = it->second;
    if (c->shm) {
      if (!m.payload.empty()) r.status = Status::InvalidArgument("a shared-memory commit carries no payload");
      // Ranges must come sorted and apart (the client merges them): each is then appended to
      // the writer's range list in constant time, whatever the client sends.
      for (size_t i = 1; i < m.written.size() && r.status.ok(); ++i) {
        if (m.written[i].offset <= m.written[i - 1].offset + m.written[i - 1].size) {
          r.status = Status::InvalidArgument("written ranges must be sorted and disjoint");
        }
      }
      for (const wire::Piece& p : m.written) {
        if (r.status.ok()) r.status = w.MarkWritten(p.offset, p.size);
      }
    } else if (m.payload.size() != w.size() || !m.written.empty()) {
      r.status = Status::InvalidArgument("an inline commit carries the whole payload");
    } else {
      r.status = w.WriteRange(0, m.payload);
    }
    if (r.status.ok()) r.status = w.Commit();
    c->writers.erase(it);  // committed, or dropped on any error
  }
  Status st = Reply(c, MsgType::kCommitPutReply, wire::Encode(r));
  commit_seconds_.Observe(SecondsSince(start));
  return st;
}

Status Daemon::Impl::OnOpen(Connection* c, std::span<const std::byte> payload) {
  const auto start = Clock::now();
  wire::OpenRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::OpenReply r;
  std::vector<std::byte> bytes;
  auto ns = Resolve(c, m.ns);
  if (!ns.ok()) {
    r.status = ns.status();
  } else if (HandlesFull(c)) {
    ++counters_.handle_errors;
    r.status = Status::ResourceExhausted("too many open handles on this connection");
  } else if (auto rd = store_->OpenChunk(**ns, m.key); !rd.ok()) {
    // A tenant-bound client learns only that its chunk is not cached, never why (the reason
    // could tell it about another tenant's entry).
    r.status = c->bound && rd.status().code() == Code::kNotFound
                   ? Status::NotFound("chunk " + m.key.ShortHex() + " is not cached")
                   : rd.status();
  } else {
    r.tokens = rd->tokens();
    r.tier = rd->served_from();
    if (c->shm) {
      r.handle = c->next_handle++;
      const std::byte* base = store_->arena().base();
      (void)rd->ForEachPiece(0, rd->size(), [&](std::span<const std::byte> p) {
        r.pieces.push_back({static_cast<uint64_t>(p.data() - base), p.size()});
      });
      c->readers.emplace(r.handle, std::move(rd.value()));
    } else if (rd->size() + 4096 > opt_.max_message_bytes) {
      r.status = Status::ResourceExhausted("chunk larger than the message limit; use shared memory");
    } else {
      bytes.resize(rd->size());
      r.status = rd->ReadRange(0, bytes);
      r.payload = bytes;
    }
  }
  Status st = Reply(c, MsgType::kOpenReply, wire::Encode(r));
  open_seconds_.Observe(SecondsSince(start));
  return st;
}

Status Daemon::Impl::OnHint(Connection* c, std::span<const std::byte> payload) {
  wire::HintRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  auto ns = Resolve(c, m.ns);
  if (!ns.ok()) return Status::OK();  // no reply to a hint; counted as a tenant violation
  // Bounded work per hint: the window's head, up to kMaxChunksPerRequest chunks in all.
  size_t budget = wire::kMaxChunksPerRequest * size_t{m.ns.layout.chunk_tokens};
  ClientWindow w{**ns, {}, {}};
  for (auto& p : m.prompts) {
    if (budget == 0) break;
    p.resize(std::min(p.size(), budget));
    budget -= p.size();
    w.full.push_back(ChunkKeys(w.ns, p, /*include_partial=*/false));
    w.prompts.push_back(std::move(p));
  }
  SetWindow(c, std::move(w));
  return Status::OK();
}

void Daemon::Impl::SetWindow(const Connection* c, std::optional<ClientWindow> w) {
  std::lock_guard<std::mutex> lock(windows_mu_);
  if (w) {
    windows_.insert_or_assign(c, std::move(*w));
  } else if (windows_.erase(c) == 0) {
    return;  // it never hinted: nothing changes
  }
  std::vector<HintPrompt> merged;
  size_t chunks = 0;
  for (size_t depth = 0;; ++depth) {
    bool any = false;
    for (const auto& [conn, cw] : windows_) {
      if (depth >= cw.prompts.size()) continue;
      any = true;
      chunks += cw.full[depth].size();
      if (chunks > 4 * wire::kMaxChunksPerRequest) break;  // the merged window's cap
      merged.push_back({&cw.ns, cw.prompts[depth], &cw.full[depth]});
    }
    if (!any || chunks > 4 * wire::kMaxChunksPerRequest) break;
  }
  store_->Hint(merged);
}

DaemonCounters Daemon::Impl::Counters() const {
  DaemonCounters d;
  d.connections_accepted = counters_.connections_accepted;
  d.connections_open = counters_.connections_open;
  d.requests = counters_.requests;
  d.protocol_errors = counters_.protocol_errors;
  d.auth_failures = counters_.auth_failures;
  d.tenant_violations = counters_.tenant_violations;
  d.handle_errors = counters_.handle_errors;
  return d;
}

std::string Daemon::Impl::MetricsText() const {
  PrometheusWriter w;
  if (store_ != nullptr) {
    const std::optional<RemoteTierStats> t3 = store_->ClusterStats();
    AppendStoreMetrics(w, store_->Stats(), t3 ? &*t3 : nullptr);
  }
  const NamedHistogram ops[] = {{"lookup", &lookup_seconds_},
                                {"load", &open_seconds_},
                                {"begin_save", &begin_put_seconds_},
                                {"save", &commit_seconds_}};
  AppendLatencyHistograms(w, "kvault_daemon_op_seconds", "Daemon-side latency of client requests, by operation.", "op", ops);
  const DaemonCounters d = Counters();
  w.AddGauge("kvault_daemon_connected_clients", "Client connections open now.", {}, d.connections_open);
  w.AddCounter("kvault_daemon_connections_total", "Client connections accepted.", {}, d.connections_accepted);
  w.AddCounter("kvault_daemon_requests_total", "Requests served.", {}, d.requests);
  const char* help = "Requests refused or connections closed, by kind.";
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "protocol"}}, d.protocol_errors);
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "auth"}}, d.auth_failures);
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "tenant"}}, d.tenant_violations);
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "handle"}}, d.handle_errors);
  return w.Text();
}

// --- Daemon ----------------------------------------------------------------------------------

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Daemon::~Daemon() { (void)Stop(); }

Result<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  Status st = impl->Start();
  if (!st.ok()) {
    (void)impl->Stop();
    return st;
  }
  return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

Status Daemon::Stop() { return impl_->Stop(); }
const std::string& Daemon::socket_path() const { return impl_->socket_path_; }
int Daemon::tcp_port() const { return impl_->tcp_port_; }
int Daemon::metrics_port() const { return impl_->opt_.metrics_port >= 0 ? impl_->MetricsPort() : -1; }
DaemonCounters Daemon::Counters() const { return impl_->Counters(); }
StoreStats Daemon::StoreStatistics() const { return impl_->StoreStatistics(); }
std::string Daemon::MetricsText() const { return impl_->MetricsText(); }

}  // namespace kvault

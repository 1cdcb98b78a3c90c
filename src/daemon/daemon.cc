#include "daemon/daemon.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>

#include "daemon/daemon_impl.h"
#include "metrics/prometheus_text.h"

namespace kvault {

using wire::MsgType;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kNextRequestSpinUs = 30;  // awake after a reply, waiting for the next request
constexpr int kLogLinesPerSecond = 20;

std::string MiB(uint64_t bytes) {
  std::ostringstream o;
  o << static_cast<double>(bytes) / (1 << 20) << " MiB";
  return o.str();
}

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

Status Daemon::Impl::Start() {
  if (!opt_.tcp_listen.empty() && opt_.tokens.empty()) {
    return Status::InvalidArgument("the TCP listener requires tokens (--tokens-file): other nodes must authenticate");
  }
  if (opt_.max_message_bytes < 4096 || opt_.max_message_bytes > wire::kMaxMessageBytes) {
    return Status::InvalidArgument("max_message_bytes must be in [4096, 1 GiB]");
  }
  if (opt_.hello_timeout_ms <= 0 || opt_.frame_timeout_ms <= 0 || opt_.io_timeout_ms <= 0) {
    return Status::InvalidArgument("the hello, frame and io timeouts must be positive");
  }
  if (opt_.max_connections == 0) return Status::InvalidArgument("max_connections must be at least 1");
  StoreOptions so = opt_.store;
  so.shared_t1 = true;
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
    MutexLock lock(conns_mu_);
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
    auto c = std::make_unique<Connection>(&budget_);
    c->fd.reset(fd);
    c->is_unix = is_unix;
    MutexLock lock(conns_mu_);
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
      lock.Unlock();  // the refusal below must not hold up reaping or Stop()
      ++counters_.protocol_errors;
      auto payload = wire::Encode(wire::StatusReply{Status::ResourceExhausted("too many connections")});
      wire::SetIoTimeouts(fd, 100);  // a peer that does not read cannot hold the listener
      (void)wire::WriteFrame(fd, MsgType::kError, payload);
      Log("connection refused: " + std::to_string(opt_.max_connections) + " connections open (--max-connections)");
      continue;  // c closes the fd
    }
    c->id = ++counters_.connections_accepted;
    Connection* raw = c.get();
    conns_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

// Deadlines: until its hello, everything a connection sends must arrive by hello_deadline
// (frames of at most kMaxHelloBytes), so a peer that has not authenticated can make the daemon
// neither allocate nor wait much. Afterwards a connection may idle between requests (engines
// do, and their handles keep pins that must not go with an idle timeout), but once the first
// byte of a request has arrived the whole frame must arrive within frame_timeout_ms.
Status Daemon::Impl::ReceiveRequest(Connection* c, Clock::time_point hello_deadline, wire::FrameHeader* h, Status* refused) {
  *refused = Status::OK();
  const int fd = c->fd.get();
  Clock::time_point deadline = c->hello_done ? Clock::time_point::max() : hello_deadline;
  auto timed_out = [&](const char* what) {
    ++counters_.frame_timeouts;
    return Status::ResourceExhausted(c->hello_done ? std::string(what) + " not complete within " +
                                                         std::to_string(opt_.frame_timeout_ms) + " ms"
                                                   : "no hello within " + std::to_string(opt_.hello_timeout_ms) + " ms");
  };
  // Reads into dst until it is full; not OK when the peer left or the deadline passed.
  auto read_into = [&](std::span<std::byte> dst, bool frame_started, const char* what) -> Status {
    size_t got = 0;
    while (got < dst.size()) {
      auto n = wire::RecvSome(fd, dst.subspan(got), deadline);
      if (!n.ok()) {
        if (Clock::now() >= deadline) return timed_out(what);
        return n.status();
      }
      if (*n == 0) {
        return !frame_started && got == 0 ? Status::NotFound("connection closed") : Status::Unavailable("connection closed mid-frame");
      }
      if (!frame_started && got == 0 && c->hello_done) {
        deadline = Clock::now() + std::chrono::milliseconds(opt_.frame_timeout_ms);  // a frame started
      }
      got += *n;
      counters_.bytes_received += *n;
    }
    return Status::OK();
  };

  std::byte raw[wire::kFrameHeaderBytes];
  KVAULT_RETURN_IF_ERROR(read_into(raw, /*frame_started=*/false, "request frame header"));
  const size_t limit = c->hello_done ? opt_.max_message_bytes : wire::kMaxHelloBytes;
  KVAULT_RETURN_IF_ERROR(wire::DecodeFrameHeader(raw, limit, h));
  // Everything about the frame that its header tells is checked before any payload is read.
  if (!wire::IsRequestType(static_cast<uint16_t>(h->type))) {
    return Status::InvalidArgument(std::string("unexpected message type ") + wire::MsgTypeName(h->type));
  }
  if (!c->hello_done && h->type != MsgType::kHello) return Status::InvalidArgument("the first message must be hello");
  size_t cap = wire::MaxRequestBytes(h->type, limit);
  if (h->type == MsgType::kCommitPut) cap = wire::MaxCommitPutBytes(c->largest_put_bytes, cap);
  if (h->payload_bytes > cap) {
    return Status::InvalidArgument(std::string("a ") + wire::MsgTypeName(h->type) + " request of " +
                                   std::to_string(h->payload_bytes) + " bytes exceeds its limit of " + std::to_string(cap));
  }

  // The payload, into a buffer that grows with what arrives: at most twice the bytes received
  // (at least the connection's allowance), never what the header merely announces.
  const size_t want = h->payload_bytes;
  std::vector<std::byte>& buf = c->payload;
  buf.clear();
  size_t have = 0;
  while (have < want) {
    const size_t next = std::min(want, std::max(2 * have, kConnectionBufferBytes));
    if (!c->payload_share.CoverCapacity(std::max(next, buf.capacity()))) {
      // Refused for other connections' load, not for anything this one did wrong: the rest of
      // the frame is read and dropped (through a small fixed buffer, still under the frame
      // deadline), so the stream stays in step and the connection, with its pins, stays. The
      // caller answers the request with kResourceExhausted. buf keeps the head that arrived
      // (at least the allowance: a refusal needs more), which names a commit's handle.
      ++counters_.budget_refusals;
      *refused = Status::ResourceExhausted("a " + std::string(wire::MsgTypeName(h->type)) + " request of " + MiB(want) +
                                           " does not fit in the daemon's message budget now (" + MiB(budget_.limit()) +
                                           ", --message-budget-mib); retry later");
      std::byte scratch[kDiscardBufferBytes];
      for (size_t left = want - have; left > 0;) {
        const size_t n = std::min(left, sizeof scratch);
        KVAULT_RETURN_IF_ERROR(read_into(std::span(scratch, n), /*frame_started=*/true, "request frame"));
        left -= n;
      }
      return Status::OK();
    }
    if (buf.capacity() < next) {
      std::vector<std::byte> grown;
      grown.reserve(next);  // exactly `next`: the budget covers capacity, not size
      grown.assign(buf.begin(), buf.end());
      buf.swap(grown);
    }
    buf.resize(next);
    KVAULT_RETURN_IF_ERROR(read_into(std::span(buf).subspan(have, next - have), /*frame_started=*/true, "request frame"));
    have = next;
  }
  buf.resize(want);
  return Status::OK();
}

void Daemon::Impl::TrimBuffers(Connection* c) {
  if (c->payload.capacity() > kConnectionBufferBytes) std::vector<std::byte>().swap(c->payload);
  if (c->reply_bytes.capacity() > kConnectionBufferBytes) std::vector<std::byte>().swap(c->reply_bytes);
  if (c->payload.capacity() <= kConnectionBufferBytes) c->payload_share.Reset();
  if (c->reply_bytes.capacity() <= kConnectionBufferBytes) c->reply_share.Reset();
}

void Daemon::Impl::Log(const std::string& line) {
  if (!opt_.log) return;
  const int64_t second = std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
  uint64_t suppressed = 0;
  {
    MutexLock lock(log_mu_);
    if (log_limiter_.second != second) {
      suppressed = log_limiter_.suppressed;
      log_limiter_ = {second, 0, 0};
    }
    if (++log_limiter_.lines > kLogLinesPerSecond) {
      ++log_limiter_.suppressed;
      return;
    }
  }
  if (suppressed != 0) opt_.log(std::to_string(suppressed) + " more connection lines suppressed in the last second");
  opt_.log(line);
}

void Daemon::Impl::Serve(Connection* c) {
  ++counters_.connections_open;
  wire::FrameHeader h;
  const auto hello_deadline = Clock::now() + std::chrono::milliseconds(opt_.hello_timeout_ms);
  wire::SetIoTimeouts(c->fd.get(), opt_.hello_timeout_ms);  // sends, until hello
  auto describe = [&] {
    return "connection " + std::to_string(c->id) + (c->is_unix ? " (unix" : " (tcp") +
           (c->bound ? ", tenant " + c->tenant + ")" : ")");
  };
  for (;;) {
    wire::SpinUntilReadable(c->fd.get(), kNextRequestSpinUs);  // engines send bursts (lookup, opens)
    Status refused;
    Status st = ReceiveRequest(c, hello_deadline, &h, &refused);
    if (st.ok() && !refused.ok()) {  // read whole, not handled: answered, the connection stays
      Log(describe() + " request refused: " + refused.ToString());
      st = Refuse(c, h.type, c->payload, refused);
      TrimBuffers(c);
      if (st.ok()) continue;
    } else if (st.ok()) {
      ++counters_.requests;
      const bool was_hello = !c->hello_done;
      st = Dispatch(c, h.type, c->payload);
      if (was_hello && c->hello_done) {  // authenticated: reads are bounded per frame, a send deadline
        wire::SetIoTimeouts(c->fd.get(), 0);
        timeval tv{opt_.io_timeout_ms / 1000, (opt_.io_timeout_ms % 1000) * 1000};
        setsockopt(c->fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      }
      TrimBuffers(c);  // don't keep a peak, give the budget back
      if (st.ok()) continue;
    }
    TrimBuffers(c);
    // The peer left (kNotFound / kUnavailable from the socket), hit a limit or broke the protocol.
    if (st.code() != Code::kNotFound && st.code() != Code::kUnavailable) {
      // auth: counted at hello; limits: counted where they are hit
      if (st.code() != Code::kPermissionDenied && st.code() != Code::kResourceExhausted) ++counters_.protocol_errors;
      (void)wire::WriteFrame(c->fd.get(), MsgType::kError, wire::Encode(wire::StatusReply{st}));
      const size_t held = c->readers.size() + c->writers.size();
      Log(describe() + " closed: " + st.ToString() +
          (c->shm && held != 0 ? " (its " + std::to_string(held) + " shared-memory handles stay until the client closes its socket)" : ""));
    }
    break;
  }
  // Release the connection's pins and unfinished puts (a shared-memory client's only once it
  // has closed its socket: AwaitPeerClose), unless the daemon is stopping: then Stop()
  // releases every connection's at once, after all connection threads are done, so that no
  // request still running reuses pages another client may still be reading.
  if (!stopping_.load()) SetWindow(c, std::nullopt);
  if (c->shm && !(c->readers.empty() && c->writers.empty())) AwaitPeerClose(c);
  if (!stopping_.load()) {
    c->readers.clear();
    c->writers.clear();
  }
  shutdown(c->fd.get(), SHUT_RDWR);
  --counters_.connections_open;
  c->done = true;
}

// A shared-memory client copies from (and writes into) the pages of the chunks its handles
// pin, without asking the daemon, for as long as it holds them: releasing them while the
// client is alive would let T1 hand those pages to other chunks under its reads, and the
// client would get another chunk's bytes with no error. So when the daemon ends such a
// connection itself (a frame deadline, a malformed frame, a reply the client does not read),
// the pins and slots stay until the client's socket is observed closed: the daemon shuts its
// side for writing (the client reads the error frame, then the end of the stream, and moves
// to a new connection; its handles keep the old socket open until the last one is gone, see
// client_impl.h), and reads and drops whatever still arrives. A client that left by itself
// is seen at once (the read returns the end or a reset). Stop() ends the wait by shutting
// the socket. What the connection costs meanwhile (a thread, a connection slot, the pins) is
// what it cost while idle.
void Daemon::Impl::AwaitPeerClose(Connection* c) {
  shutdown(c->fd.get(), SHUT_WR);
  std::byte scratch[kDiscardBufferBytes];
  for (;;) {
    auto n = wire::RecvSome(c->fd.get(), scratch, Clock::time_point::max());
    if (!n.ok() || *n == 0) return;
    counters_.bytes_received += *n;
  }
}

Status Daemon::Impl::Reply(Connection* c, MsgType type, const std::vector<std::byte>& payload, int pass_fd) {
  return wire::WriteFrame(c->fd.get(), type, payload, pass_fd);
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
  d.budget_refusals = counters_.budget_refusals;
  d.frame_timeouts = counters_.frame_timeouts;
  d.bytes_received = counters_.bytes_received;
  d.message_bytes_in_use = budget_.in_use();
  d.message_bytes_peak = budget_.peak();
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
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "budget"}}, d.budget_refusals);
  w.AddCounter("kvault_daemon_errors_total", help, {{"kind", "timeout"}}, d.frame_timeouts);
  w.AddGauge("kvault_daemon_message_budget_bytes", "Bytes of the daemon-wide message budget, by state.", {{"state", "in_use"}},
             d.message_bytes_in_use);
  w.AddGauge("kvault_daemon_message_budget_bytes", "Bytes of the daemon-wide message budget, by state.", {{"state", "limit"}},
             budget_.limit());
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

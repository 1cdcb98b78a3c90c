#include "daemon/daemon.h"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <sstream>

#include "daemon/daemon_impl.h"
#include "metrics/prometheus_text.h"

namespace kvault {

using wire::MsgType;

namespace {

constexpr int kHelloTimeoutMs = 5000;  // a new connection must say hello within this
constexpr int kNextRequestSpinUs = 30;  // awake after a reply, waiting for the next request

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
    auto c = std::make_unique<Connection>();
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
      if (c->reply_bytes.capacity() > (4u << 20)) std::vector<std::byte>().swap(c->reply_bytes);
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

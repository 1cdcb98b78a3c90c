// kvault::http::Server on Boost.Asio, with Boost.Beast's request parser. The only translation
// unit that includes Beast (it compiles slowly); the rest of kvault sees http_server.h.
//
// Ownership: Server owns the Core (io_context, acceptor, live-connection registry). A Connection
// is owned by the registry while open and by its pending operations; Responders hold only weak
// references, so nothing outside the io_context keeps a socket alive. Stop closes the acceptor
// and every connection, then lets the io threads run until no work is left, so every
// connection is destroyed while the io_context still exists.
//
// Threading: a Connection's members are touched only on its strand (the executor its socket
// was accepted with), except `closed_flag_` (atomic) and the const members.
#include "http/http_server.h"

#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstdio>
#include <deque>
#include <exception>
#include <optional>
#include <thread>
#include <unordered_map>

#include "store/mutex.h"

namespace kvault::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

const char* const kLinesEnd = "\r\n";

std::string StatusLine(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(StatusText(status)) + kLinesEnd;
}

// A whole response for errors the server itself answers; the connection closes after it.
std::string CannedResponse(int status, std::string_view body) {
  return StatusLine(status) + "Content-Type: text/plain; charset=utf-8\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + std::string(body);
}

bool IsParseError(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category();
}

}  // namespace

std::string_view StatusText(int status) {
  const beast::string_view s = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  return std::string_view(s.data(), s.size());
}

std::string Request::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (beast::iequals(n, beast::string_view(name.data(), name.size()))) return v;
  }
  return {};
}

class Server::Core {
 public:
  Core(const Options& options, const Handler& handler) : options(options), handler(handler) {}

  void Accept();
  void CloseAll() EXCLUDES(mu);
  void Unregister(Connection* c) EXCLUDES(mu);

  asio::io_context ioc;  // first: destroyed last
  tcp::acceptor acceptor{ioc};
  asio::steady_timer accept_retry{ioc};
  const Options options;
  const Handler handler;
  std::atomic<bool> stopped{false};
  std::atomic<uint64_t> open{0}, rejecting{0}, accepted{0}, rejected{0}, timeouts{0}, bad{0};
  std::vector<std::thread> threads;

  Mutex mu;
  std::unordered_map<Connection*, std::shared_ptr<Connection>> live GUARDED_BY(mu);
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Core* core, tcp::socket socket, bool counted)
      : core_(core), executor_(socket.get_executor()), socket_(std::move(socket)), timer_(executor_),
        counted_(counted) {}

  // On the strand: serve requests, or (a connection past the cap) answer 503 and close.
  void Start() { ReadRequest(); }
  void Reject() {
    out_.push_back(CannedResponse(503, "too many connections\n"));
    responding_ = true;
    ended_ = true;
    keep_alive_ = false;
    Flush();
  }
  void Close();

  void DoRespond(uint64_t seq, Response r);
  void DoStartStream(uint64_t seq, int status, const std::string& content_type, const Headers& headers);
  void DoWrite(uint64_t seq, std::string data);
  void DoEnd(uint64_t seq);
  void DoOnClose(uint64_t seq, std::function<void()> fn) {
    if (seq == seq_ && responding_ && !closed_) on_close_ = std::move(fn);
  }

  Server::Core* const core_;
  const asio::any_io_executor executor_;  // the strand
  std::atomic<bool> closed_flag_{false};

 private:
  enum class Phase { kNone, kIdle, kHeader, kBody, kWrite, kLinger };

  void ReadRequest();
  void ReadHeader();
  void OnHeader(const error_code& ec);
  void ReadBody();
  void ReadFailed(const error_code& ec);
  void Dispatch();
  void Watch();
  void Flush();
  void MaybeFinish();
  void Linger();
  void Arm(std::chrono::milliseconds d, Phase phase);
  void Disarm() {
    ++timer_epoch_;
    timer_.cancel();
    phase_ = Phase::kNone;
  }
  void OnDeadline();
  void ServerError(int status, std::string_view body) {
    ++core_->bad;
    CannedClose(status, body);
  }
  void CannedClose(int status, std::string_view body) {
    responding_ = true;
    ended_ = true;
    response_started_ = true;
    keep_alive_ = false;
    out_.push_back(CannedResponse(status, body));
    Flush();
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  const bool counted_;  // counts against max_connections (a rejected one does not)
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Phase phase_ = Phase::kNone;
  uint64_t timer_epoch_ = 0;
  bool timed_out_ = false;
  bool closed_ = false;
  bool first_ = true;
  size_t requests_ = 0;

  // The request being answered.
  uint64_t seq_ = 0;
  bool responding_ = false;        // dispatched, response not fully written
  bool response_started_ = false;  // Respond or StartStream was called
  bool ended_ = false;             // the whole response is queued
  bool stream_ = false, chunked_ = false, head_ = false, keep_alive_ = false, http11_ = true;
  std::function<void()> on_close_;
  bool watching_ = false;

  std::deque<std::string> out_;
  std::string writing_buf_;
  bool writing_ = false;
  char scratch_[4096];
};

// ---------------------------------------------------------------------------------------------
// Core

void Server::Core::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](const error_code& ec, tcp::socket socket) {
    if (stopped.load()) {
      error_code ignored;
      socket.close(ignored);
      return;
    }
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      // E.g. out of file descriptors: try again shortly rather than spin or stop accepting.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](const error_code& e) {
        if (!e && !stopped.load()) Accept();
      });
      return;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (options.send_buffer_bytes != 0) {
      socket.set_option(asio::socket_base::send_buffer_size(static_cast<int>(options.send_buffer_bytes)), ignored);
    }
    const bool over = open.load() >= static_cast<uint64_t>(options.max_connections);
    if (over && rejecting.load() >= static_cast<uint64_t>(options.max_connections)) {
      ++rejected;
      socket.close(ignored);  // a flood: not even a 503
    } else {
      if (over) {
        ++rejected;
        ++rejecting;
      } else {
        ++open;
        ++accepted;
      }
      auto c = std::make_shared<Connection>(this, std::move(socket), !over);
      {
        MutexLock lock(mu);
        live[c.get()] = c;
      }
      asio::dispatch(c->executor_, [c, over] { over ? c->Reject() : c->Start(); });
    }
    Accept();
  });
}

void Server::Core::CloseAll() {
  std::vector<std::shared_ptr<Connection>> all;
  {
    MutexLock lock(mu);
    for (auto& [_, c] : live) all.push_back(c);
  }
  for (auto& c : all) asio::dispatch(c->executor_, [c] { c->Close(); });
}

void Server::Core::Unregister(Connection* c) {
  std::shared_ptr<Connection> last;  // released outside the lock
  MutexLock lock(mu);
  auto it = live.find(c);
  if (it != live.end()) {
    last = std::move(it->second);
    live.erase(it);
  }
}

// ---------------------------------------------------------------------------------------------
// Connection: reading requests

void Connection::Arm(std::chrono::milliseconds d, Phase phase) {
  phase_ = phase;
  timed_out_ = false;
  timer_.expires_after(d);
  timer_.async_wait([self = shared_from_this(), epoch = ++timer_epoch_](const error_code& ec) {
    if (ec || epoch != self->timer_epoch_ || self->closed_) return;
    self->OnDeadline();
  });
}

void Connection::OnDeadline() {
  ++core_->timeouts;
  timed_out_ = true;
  switch (phase_) {
    case Phase::kHeader:
    case Phase::kBody: {
      error_code ignored;
      socket_.cancel(ignored);  // the read fails with operation_aborted; ReadFailed answers 408
      return;
    }
    default:  // idle keep-alive, a stalled write, a lingering close
      Close();
  }
}

void Connection::ReadRequest() {
  if (closed_) return;
  if (core_->options.max_requests_per_connection != 0 && requests_ >= core_->options.max_requests_per_connection) {
    return Linger();
  }
  if (first_ || buffer_.size() != 0) return ReadHeader();
  // Keep-alive: the next request's first byte within idle_timeout.
  Arm(core_->options.idle_timeout, Phase::kIdle);
  socket_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](const error_code& ec, size_t n) {
    self->buffer_.commit(n);
    if (self->closed_) return;
    if (ec) return self->Close();  // the client closed, or the idle deadline did
    self->ReadHeader();
  });
}

void Connection::ReadHeader() {
  first_ = false;
  Arm(core_->options.header_timeout, Phase::kHeader);
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(core_->options.max_header_bytes));
  parser_->body_limit(core_->options.max_body_bytes);
  bhttp::async_read_header(socket_, buffer_, *parser_,
                           [self = shared_from_this()](const error_code& ec, size_t) { self->OnHeader(ec); });
}

void Connection::OnHeader(const error_code& ec) {
  if (closed_) return;
  if (ec) return ReadFailed(ec);
  if (const auto length = parser_->content_length(); length && *length > core_->options.max_body_bytes) {
    Disarm();
    return ServerError(413, "request body too large\n");
  }
  const auto& req = parser_->get();
  if (!parser_->is_done() && beast::iequals(req[bhttp::field::expect], "100-continue")) {
    Disarm();
    out_.push_back("HTTP/1.1 100 Continue\r\n\r\n");
    writing_buf_ = std::move(out_.front());
    out_.pop_front();
    writing_ = true;
    Arm(core_->options.write_timeout, Phase::kWrite);
    asio::async_write(socket_, asio::buffer(writing_buf_), [self = shared_from_this()](const error_code& e, size_t) {
      self->writing_ = false;
      if (self->closed_) return;
      if (e) return self->Close();
      self->ReadBody();
    });
    return;
  }
  ReadBody();
}

void Connection::ReadBody() {
  if (parser_->is_done()) return Dispatch();
  Arm(core_->options.body_timeout, Phase::kBody);
  bhttp::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](const error_code& ec, size_t) {
    if (self->closed_) return;
    if (ec) return self->ReadFailed(ec);
    self->Dispatch();
  });
}

void Connection::ReadFailed(const error_code& ec) {
  const Phase phase = phase_;
  Disarm();
  if (timed_out_ && (phase == Phase::kHeader || phase == Phase::kBody)) {
    // Part of a request came, but not in time.
    if (phase == Phase::kBody || buffer_.size() != 0 || parser_->got_some()) {
      return CannedClose(408, "request timeout\n");
    }
    return Close();
  }
  if (ec == bhttp::error::body_limit) return ServerError(413, "request body too large\n");
  if (ec == bhttp::error::header_limit) return ServerError(431, "request header too large\n");
  if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) return Close();
  if (IsParseError(ec)) return ServerError(400, "bad request\n");
  Close();  // a socket error: the client is gone
}

void Connection::Dispatch() {
  Disarm();
  bhttp::request<bhttp::string_body> msg = parser_->release();
  parser_.reset();
  ++requests_;
  ++seq_;
  responding_ = true;
  response_started_ = ended_ = stream_ = chunked_ = false;
  on_close_ = nullptr;
  head_ = msg.method() == bhttp::verb::head;
  http11_ = msg.version() >= 11;
  keep_alive_ = msg.keep_alive() && !core_->stopped.load();
  if (core_->options.max_requests_per_connection != 0 && requests_ >= core_->options.max_requests_per_connection) {
    keep_alive_ = false;
  }
  if (msg.method() == bhttp::verb::unknown) return ServerError(400, "bad request\n");

  Request r;
  r.method = std::string(msg.method_string());
  r.target = std::string(msg.target());
  r.path = r.target.substr(0, r.target.find('?'));
  r.version = static_cast<int>(msg.version());
  for (const auto& f : msg) r.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  r.body = std::move(msg.body());
  Watch();
  auto responder = std::make_shared<Responder>(weak_from_this(), seq_);
  try {
    core_->handler(std::move(r), std::move(responder));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvault http: handler failed: %s\n", e.what());
    if (!response_started_) DoRespond(seq_, {500, "text/plain; charset=utf-8", {}, "internal error\n"});
  } catch (...) {
    if (!response_started_) DoRespond(seq_, {500, "text/plain; charset=utf-8", {}, "internal error\n"});
  }
}

// While a response is pending nothing reads the socket: watch it, so that a client that leaves
// (EOF or reset) closes the connection and cancels its work. Bytes of a pipelined request end
// the watch; they are read once this response is out.
void Connection::Watch() {
  if (watching_ || closed_) return;
  watching_ = true;
  socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    self->watching_ = false;
    if (ec || self->closed_ || !self->responding_) return;
    char c;
    const ssize_t n = ::recv(self->socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return self->Close();
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return self->Watch();
      return self->Close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Connection: writing responses

void Connection::DoRespond(uint64_t seq, Response r) {
  if (closed_ || seq != seq_ || !responding_ || response_started_) return;
  response_started_ = ended_ = true;
  std::string out = StatusLine(r.status);
  out += "Content-Type: " + r.content_type + kLinesEnd;
  for (const auto& [n, v] : r.headers) out += n + ": " + v + kLinesEnd;
  out += "Content-Length: " + std::to_string(r.body.size()) + kLinesEnd;
  if (!keep_alive_) out += "Connection: close\r\n";
  out += kLinesEnd;
  if (!head_) out += r.body;
  out_.push_back(std::move(out));
  Flush();
}

void Connection::DoStartStream(uint64_t seq, int status, const std::string& content_type, const Headers& headers) {
  if (closed_ || seq != seq_ || !responding_ || response_started_) return;
  response_started_ = stream_ = true;
  chunked_ = http11_;
  std::string out = StatusLine(status);
  out += "Content-Type: " + content_type + kLinesEnd;
  for (const auto& [n, v] : headers) out += n + ": " + v + kLinesEnd;
  if (chunked_) {
    out += "Transfer-Encoding: chunked\r\n";
  } else {
    keep_alive_ = false;  // HTTP/1.0: the body runs until the connection closes
  }
  if (!keep_alive_) out += "Connection: close\r\n";
  out += kLinesEnd;
  out_.push_back(std::move(out));
  Flush();
}

void Connection::DoWrite(uint64_t seq, std::string data) {
  if (closed_ || seq != seq_ || !stream_ || ended_ || head_ || data.empty()) return;
  if (chunked_) {
    char size[24];
    std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    data.insert(0, size);
    data += kLinesEnd;
  }
  out_.push_back(std::move(data));
  Flush();
}

void Connection::DoEnd(uint64_t seq) {
  if (closed_ || seq != seq_ || !stream_ || ended_) return;
  ended_ = true;
  if (chunked_ && !head_) out_.push_back("0\r\n\r\n");
  Flush();
}

void Connection::Flush() {
  if (closed_ || writing_) return;
  if (out_.empty()) return MaybeFinish();
  writing_buf_.clear();
  for (std::string& s : out_) writing_buf_ += s;
  out_.clear();
  writing_ = true;
  Arm(core_->options.write_timeout, Phase::kWrite);
  asio::async_write(socket_, asio::buffer(writing_buf_), [self = shared_from_this()](const error_code& ec, size_t) {
    self->writing_ = false;
    if (self->closed_) return;
    self->Disarm();
    if (ec) return self->Close();
    self->Flush();
  });
}

void Connection::MaybeFinish() {
  if (!responding_ || !ended_ || writing_ || !out_.empty()) return;
  responding_ = false;
  on_close_ = nullptr;
  if (!counted_) --core_->rejecting;
  if (!keep_alive_) return Linger();
  ReadRequest();
}

// Closes after the last response: stop sending, then read (and drop) what the client still
// sends, for a moment, so that the close does not reset the connection under an answer the
// client has not read yet.
void Connection::Linger() {
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  Arm(std::chrono::milliseconds(1000), Phase::kLinger);
  socket_.async_read_some(asio::buffer(scratch_), [self = shared_from_this()](const error_code& ec, size_t) {
    if (self->closed_) return;
    if (ec) return self->Close();
    self->phase_ = Phase::kLinger;
    self->socket_.async_read_some(asio::buffer(self->scratch_), [self](const error_code&, size_t) { self->Close(); });
  });
}

void Connection::Close() {
  if (closed_) return;
  auto self = shared_from_this();  // Unregister may drop the registry's reference
  closed_ = true;
  closed_flag_.store(true);
  ++timer_epoch_;
  timer_.cancel();
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  if (counted_) {
    --core_->open;
  } else if (responding_) {
    --core_->rejecting;
  }
  const bool cut_short = responding_;
  responding_ = false;
  out_.clear();
  if (cut_short && on_close_) {
    auto fn = std::move(on_close_);
    on_close_ = nullptr;
    try {
      fn();
    } catch (...) {
    }
  }
  core_->Unregister(this);
}

// ---------------------------------------------------------------------------------------------
// Responder

bool Responder::Run(std::function<void(Connection&)> fn, bool defer) const {
  std::shared_ptr<Connection> c = connection_.lock();
  if (c == nullptr || c->core_->stopped.load() || c->closed_flag_.load()) return false;
  auto task = [c, fn = std::move(fn)] { fn(*c); };
  if (defer) {
    asio::post(c->executor_, std::move(task));
  } else {
    asio::dispatch(c->executor_, std::move(task));
  }
  return true;
}

void Responder::Respond(Response response) {
  Run([seq = sequence_, r = std::move(response)](Connection& c) mutable { c.DoRespond(seq, std::move(r)); }, false);
}

void Responder::StartStream(int status, std::string content_type, Headers headers) {
  Run([seq = sequence_, status, ct = std::move(content_type), h = std::move(headers)](Connection& c) {
    c.DoStartStream(seq, status, ct, h);
  }, false);
}

void Responder::Write(std::string data) {
  Run([seq = sequence_, d = std::move(data)](Connection& c) mutable { c.DoWrite(seq, std::move(d)); }, false);
}

void Responder::End() {
  Run([seq = sequence_](Connection& c) { c.DoEnd(seq); }, false);
}

bool Responder::Post(std::function<void()> fn) {
  return Run([f = std::move(fn)](Connection&) { f(); }, true);
}

void Responder::OnClose(std::function<void()> fn) {
  Run([seq = sequence_, f = std::move(fn)](Connection& c) mutable { c.DoOnClose(seq, std::move(f)); }, false);
}

bool Responder::closed() const {
  std::shared_ptr<Connection> c = connection_.lock();
  return c == nullptr || c->closed_flag_.load();
}

// ---------------------------------------------------------------------------------------------
// Server

Server::Server(Options options, Handler handler) : options_(std::move(options)), handler_(std::move(handler)) {}

Server::~Server() { Stop(); }

Status Server::Start(const std::string& host, int port) {
  if (core_ != nullptr) return Status::InvalidArgument("http server already started on port " + std::to_string(this->port()));
  if (port < 0 || port > 65535) return Status::InvalidArgument("invalid port " + std::to_string(port));
  const auto& o = options_;
  if (!handler_ || o.io_threads < 1 || o.max_connections < 1 || o.header_timeout.count() <= 0 ||
      o.body_timeout.count() <= 0 || o.idle_timeout.count() <= 0 || o.write_timeout.count() <= 0 ||
      o.max_header_bytes == 0) {
    return Status::InvalidArgument(
        "http server options: a handler, io_threads, max_connections, timeouts and header size must be positive");
  }
  auto core = std::make_shared<Core>(options_, handler_);
  const std::string where = host + ":" + std::to_string(port);
  error_code ec;
  tcp::endpoint endpoint;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, static_cast<unsigned short>(port));
  } else {
    tcp::resolver resolver(core->ioc);
    auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
    if (ec || results.empty()) return Status::IOError("cannot listen on " + where + ": cannot resolve host: " + ec.message());
    endpoint = results.begin()->endpoint();
  }
  tcp::acceptor& acceptor = core->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  // SO_REUSEADDR only (a quick restart across TIME_WAIT); never SO_REUSEPORT, which would let a
  // second server bind a port that is already serving.
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (ec == asio::error::address_in_use) {
    return Status::IOError("cannot listen on " + where + ": port already in use (another server is listening)");
  }
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IOError("cannot listen on " + where + ": " + ec.message());
  const int bound = acceptor.local_endpoint(ec).port();
  if (ec) return Status::IOError("cannot listen on " + where + ": " + ec.message());
  // Published before any io thread runs: handlers (e.g. a /metrics that reads stats()) may
  // read core_ from the first accepted connection on.
  core_ = std::move(core);
  port_.store(bound, std::memory_order_release);
  core_->Accept();
  for (int i = 0; i < o.io_threads; ++i) {
    core_->threads.emplace_back([c = core_.get()] {
      for (;;) {
        try {
          c->ioc.run();
          return;
        } catch (const std::exception& e) {
          std::fprintf(stderr, "kvault http: io thread: %s\n", e.what());
        }
      }
    });
  }
  return Status::OK();
}

void Server::Stop() {
  if (core_ == nullptr) return;
  port_.store(0, std::memory_order_release);
  core_->stopped.store(true);
  asio::post(core_->ioc, [c = core_.get()] {
    error_code ignored;
    c->acceptor.close(ignored);
    c->accept_retry.cancel();
    c->CloseAll();
  });
  // Every connection closes and every pending operation completes: run() returns.
  for (std::thread& t : core_->threads) t.join();
  core_->threads.clear();
  core_.reset();
}

Stats Server::stats() const {
  Stats s;
  // core_ changes only in Start/Stop, which do not race stats() callers by contract... except
  // a /metrics handler on an io thread, which runs while core_ is set.
  const Core* c = core_.get();
  if (c == nullptr) return s;
  s.open_connections = c->open.load();
  s.accepted_connections = c->accepted.load();
  s.rejected_connections = c->rejected.load();
  s.timeouts = c->timeouts.load();
  s.bad_requests = c->bad.load();
  return s;
}

}  // namespace kvault::http

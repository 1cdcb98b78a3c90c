// kvault::http::Server on Boost.Asio, with Boost.Beast's request parser. The only translation
// unit that includes Beast (it compiles slowly); the rest of kvault sees http_server.h.
//
// Ownership: Server owns the Core (io_context, acceptor, live-connection registry) from Start
// to its destructor (or the next Start): Stop closes the acceptor and every connection and joins
// the io threads, but keeps the Core, so that a thread still holding a Responder (an engine
// thread that has not noticed the stop yet) only ever touches live memory; such a thread must
// be joined before the Server is destroyed. A Connection is owned by the registry while open and
// by its pending operations (a task posted after the io threads ended stays queued and is
// destroyed with the io_context); Responders hold only weak references, so nothing outside the
// io_context keeps a socket alive.
//
// Threading: a Connection's members are touched only on its strand (the executor its socket
// was accepted with), except `closed_flag_` (atomic) and the const members. The acceptor, its
// retry timer and the stop task run on the Core's accept strand.
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
  if (bhttp::int_to_status(static_cast<unsigned>(status)) == bhttp::status::unknown) return "Unknown";
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
  // Serves (or, past max_connections, refuses) one accepted socket. On accept_strand.
  void Admit(tcp::socket socket);
  void CloseAll() EXCLUDES(mu);
  void Unregister(Connection* c) EXCLUDES(mu);

  asio::io_context ioc;  // first: destroyed last
  // The acceptor's handlers, its retry timer and Stop's closing task all run here, so they
  // never race each other.
  const asio::strand<asio::io_context::executor_type> accept_strand = asio::make_strand(ioc);
  tcp::acceptor acceptor{accept_strand};
  asio::steady_timer accept_retry{accept_strand};
  const Options options;
  const Handler handler;
  std::atomic<bool> stopped{false};
  std::atomic<uint64_t> open{0}, rejecting{0}, accepted{0}, rejected{0}, timeouts{0}, bad{0};
  std::vector<std::thread> threads;

  Mutex mu;
  std::unordered_map<Connection*, std::shared_ptr<Connection>> live GUARDED_BY(mu);
  bool closing GUARDED_BY(mu) = false;  // CloseAll ran: a connection accepted now is closed at once

  // Adds `c` to the registry; false (and `c` is not added) once CloseAll ran.
  bool Register(const std::shared_ptr<Connection>& c) EXCLUDES(mu);
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
  void DoOnClose(uint64_t seq, std::function<void()> fn);

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
  void LingerRead(size_t drained);
  void WriteSome();
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
  bool cut_short_ = false;  // closed while a response was pending (its on-close callback is due)
  bool peer_eof_ = false;   // the client shut down its sending side (a half-close)
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
  size_t written_ = 0;  // bytes of writing_buf_ the socket took
  bool writing_ = false;
  char scratch_[4096];
};

// ---------------------------------------------------------------------------------------------
// Core

void Server::Core::Accept() {
  // Runs on accept_strand (the acceptor's executor), as does its handler.
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
    try {
      Admit(std::move(socket));
    } catch (const std::exception& e) {  // e.g. bad_alloc: drop this client, keep accepting
      std::fprintf(stderr, "kvault http: accepting a connection failed: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "kvault http: accepting a connection failed\n");
    }
    Accept();
  });
}

void Server::Core::Admit(tcp::socket socket) {
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  if (options.send_buffer_bytes != 0) {
    socket.set_option(asio::socket_base::send_buffer_size(static_cast<int>(options.send_buffer_bytes)), ignored);
  }
  const bool over = open.load() >= static_cast<uint64_t>(options.max_connections);
  if (over && rejecting.load() >= static_cast<uint64_t>(options.max_connections)) {
    ++rejected;
    socket.close(ignored);  // a flood: not even a 503
    return;
  }
  auto c = std::make_shared<Connection>(this, std::move(socket), !over);
  if (!Register(c)) return;  // the server stops: `c` closes its socket as it goes
  if (over) {
    ++rejected;
    ++rejecting;
  } else {
    ++open;
    ++accepted;
  }
  asio::dispatch(c->executor_, [c, over] { over ? c->Reject() : c->Start(); });
}

bool Server::Core::Register(const std::shared_ptr<Connection>& c) {
  MutexLock lock(mu);
  if (closing) return false;
  live[c.get()] = c;
  return true;
}

void Server::Core::CloseAll() {
  std::vector<std::shared_ptr<Connection>> all;
  {
    MutexLock lock(mu);
    closing = true;
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

// A deadline passed. `timeouts` counts connections a deadline closed: for a header or body
// read that is decided in ReadFailed (the read may complete at the same moment, and then the
// request is served and nothing is counted).
void Connection::OnDeadline() {
  timed_out_ = true;
  switch (phase_) {
    case Phase::kHeader:
    case Phase::kBody: {
      error_code ignored;
      socket_.cancel(ignored);  // the read fails with operation_aborted; ReadFailed answers 408
      return;
    }
    case Phase::kLinger:  // the normal end of a lingering close, not a client's fault
      return Close();
    default:  // idle keep-alive, a write that made no progress
      ++core_->timeouts;
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
  // 100 Continue only to HTTP/1.1 clients (RFC 9110 10.1.1: never to HTTP/1.0).
  if (!parser_->is_done() && req.version() >= 11 && beast::iequals(req[bhttp::field::expect], "100-continue")) {
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
    ++core_->timeouts;
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
  // A well-formed request with a method nobody here knows: 501 (RFC 9110 15.6.2).
  if (msg.method() == bhttp::verb::unknown) return ServerError(501, "not implemented\n");

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
// (a reset) closes the connection and cancels its work. Bytes of a pipelined request end the
// watch; they are read once this response is out. An EOF ends the watch too but keeps the
// connection: it may be a half-close (the client sent its request and shut down its sending
// side, and still reads the answer). A client that closed completely is noticed when a write
// fails (its kernel answers the first bytes with a reset): at once for a stream, when the
// answer is written for the rest.
void Connection::Watch() {
  if (watching_ || closed_ || peer_eof_) return;
  watching_ = true;
  socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    self->watching_ = false;
    if (ec || self->closed_ || !self->responding_) return;
    char c;
    const ssize_t n = ::recv(self->socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) {
      self->peer_eof_ = true;  // a half-close, or gone: the writes tell
      return;
    }
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
  if (!keep_alive_) {
    out += "Connection: close\r\n";
  } else if (!http11_) {
    out += "Connection: keep-alive\r\n";  // an HTTP/1.0 client keeps the connection only when told
  }
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
  written_ = 0;
  writing_ = true;
  WriteSome();
}

// Writes the rest of writing_buf_ piece by piece; the write deadline restarts with every piece
// the socket takes, so it closes only a connection whose writes make no progress for
// write_timeout (a client that stopped reading), however long the whole answer takes.
void Connection::WriteSome() {
  Arm(core_->options.write_timeout, Phase::kWrite);
  socket_.async_write_some(asio::buffer(writing_buf_.data() + written_, writing_buf_.size() - written_),
                           [self = shared_from_this()](const error_code& ec, size_t n) {
                             if (self->closed_) return;
                             if (ec) return self->Close();
                             self->written_ += n;
                             if (self->written_ < self->writing_buf_.size()) return self->WriteSome();
                             self->writing_ = false;
                             self->Disarm();
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
// Lingers for at most a second and reads at most kLingerBytes; the client's EOF ends it sooner.
void Connection::Linger() {
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  Arm(std::chrono::milliseconds(1000), Phase::kLinger);
  LingerRead(0);
}

void Connection::LingerRead(size_t drained) {
  constexpr size_t kLingerBytes = size_t{1} << 20;
  if (drained >= kLingerBytes) return Close();
  socket_.async_read_some(asio::buffer(scratch_), [self = shared_from_this(), drained](const error_code& ec, size_t n) {
    if (self->closed_) return;
    if (ec) return self->Close();
    self->LingerRead(drained + n);
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
  cut_short_ = cut_short;
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

void Connection::DoOnClose(uint64_t seq, std::function<void()> fn) {
  if (seq != seq_) return;
  if (!closed_) {
    if (responding_) on_close_ = std::move(fn);
    return;
  }
  if (cut_short_) fn();  // it closed before this got here: the callback is still due
}

// ---------------------------------------------------------------------------------------------
// Responder

bool Responder::Run(std::function<void(Connection&)> fn, bool defer) const {
  std::shared_ptr<Connection> c = connection_.lock();
  // closed_flag_ first: Stop closes every connection before the io threads end, so a closed
  // connection's core_ is never needed here. (core_ itself lives until ~Server.)
  if (c == nullptr || c->closed_flag_.load() || c->core_->stopped.load()) return false;
  // A task that throws (bad_alloc, say) closes its connection instead of escaping the io
  // thread's run() and leaving the connection "responding" forever.
  auto task = [c, fn = std::move(fn)] {
    try {
      fn(*c);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvault http: a response task failed: %s\n", e.what());
      c->Close();
    } catch (...) {
      std::fprintf(stderr, "kvault http: a response task failed\n");
      c->Close();
    }
  };
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
  // Shared: if Run refuses (the connection is closed or gone), `fn` runs here.
  auto shared = std::make_shared<std::function<void()>>(std::move(fn));
  if (!Run([seq = sequence_, shared](Connection& c) { c.DoOnClose(seq, std::move(*shared)); }, false)) (*shared)();
}

bool Responder::closed() const {
  std::shared_ptr<Connection> c = connection_.lock();
  return c == nullptr || c->closed_flag_.load();
}

// ---------------------------------------------------------------------------------------------
// Server

Server::Server(Options options, Handler handler) : options_(std::move(options)), handler_(std::move(handler)) {}

Server::~Server() {
  Stop();
  core_.reset();  // destroys the io_context and with it any task posted after the stop
}

Status Server::Start(const std::string& host, int port) {
  if (core_ != nullptr && !core_->stopped.load()) {
    return Status::InvalidArgument("http server already started on port " + std::to_string(this->port()));
  }
  core_.reset();  // a previous run's, stopped and joined
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
  if (core_ == nullptr || core_->stopped.exchange(true)) return;
  port_.store(0, std::memory_order_release);
  // On the accept strand: never concurrent with an accept handler.
  asio::post(core_->accept_strand, [c = core_.get()] {
    error_code ignored;
    c->acceptor.close(ignored);
    c->accept_retry.cancel();
    c->CloseAll();
  });
  // Every connection closes and every pending operation completes: run() returns. The Core
  // stays (see the top of this file).
  for (std::thread& t : core_->threads) t.join();
  core_->threads.clear();
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

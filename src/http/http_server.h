// kvault::http::Server: an event-driven HTTP/1.1 server (Boost.Beast's parser on Boost.Asio),
// the transport of `kvault serve` and of kvaultd's observability endpoint.
//
// Every socket operation is asynchronous on one io_context run by `io_threads` threads; each
// connection has its own strand, so a slow, idle or malicious client costs a little memory and
// never a thread. Per connection:
//   - the first request's header must arrive within header_timeout, later requests' first byte
//     within idle_timeout (keep-alive) and their header within header_timeout after it;
//   - a body must arrive within body_timeout; one larger than max_body_bytes is refused (413);
//   - a response write that makes no progress for write_timeout closes the connection (a client
//     that stops reading its stream): the deadline restarts whenever the socket takes more bytes,
//     so a large answer to a slow reader is not cut;
//   - past max_connections open connections, a new one gets a canned 503 and is closed.
// Header/body deadlines answer 408 and close; idle keep-alive connections are closed silently.
// Requests on one connection are answered in order (pipelining); HTTP/1.0 and
// "Connection: close" requests get a response that closes the connection (an HTTP/1.0 request
// with "Connection: keep-alive" gets it echoed and the connection stays); a streamed response
// is chunked for HTTP/1.1 and sent until close for HTTP/1.0. "Expect: 100-continue" gets a
// 100 Continue from HTTP/1.1 clients only; a method the parser does not know gets 501.
//
// The handler runs on the connection's strand (an io thread): it must not block. It answers
// through its Responder, now or later, from any thread. While a response is pending the
// connection watches for the client leaving (a reset, or a failed write); then the Responder's
// on-close callback runs. A client that shuts down only its sending side after its request (a
// half-close) still gets the whole answer; one that closed completely is noticed when the
// answer's first bytes are refused (so a non-streamed answer is computed to the end).
//
// Lifetime: Stop closes every connection and joins the io threads; the internals stay until the
// destructor (or the next Start), so a thread that still calls a Responder after Stop is safe
// (its calls are ignored). Such threads must be joined before the Server is destroyed.
//
// Thread-safety: Start/Stop/the destructor from the owner's thread; port()/stats() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvault/status.h"

namespace kvault::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;  // as sent, e.g. "GET"
  std::string target;  // path and query, as sent
  std::string path;    // target up to '?'
  int version = 11;    // 10 (HTTP/1.0) or 11
  Headers headers;
  std::string body;
  // The first header of that name (case-insensitive), or "" when absent.
  std::string Header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  Headers headers;  // extra headers (Content-Length, Connection are the server's)
  std::string body;
};

// Text of a status code ("Not Found"); "Unknown" for codes it does not know.
std::string_view StatusText(int status);

class Connection;

// How a handler answers one request. Either Respond once, or StartStream, then Write any number
// of times, then End. Every method may be called from any thread and never blocks: the work is
// posted to the connection's strand. Calls after the connection closed are ignored.
class Responder {
 public:
  Responder(std::weak_ptr<Connection> connection, uint64_t sequence)
      : connection_(std::move(connection)), sequence_(sequence) {}

  void Respond(Response response);
  void StartStream(int status, std::string content_type, Headers headers = {});
  void Write(std::string data);
  void End();
  // Runs `fn` on the connection's strand (serialised with its I/O and the on-close callback).
  // False when the connection is gone or the server stops: then `fn` never runs. When true,
  // `fn` runs unless the server stops first.
  bool Post(std::function<void()> fn);
  // `fn` runs once if the connection closes before the response ended (client gone, a
  // deadline, server stop): on the strand, or at once on the calling thread when it has
  // already closed (or is gone). May be called from any thread.
  void OnClose(std::function<void()> fn);
  // The connection closed (may lag the truth; for cheap early exits only).
  bool closed() const;

 private:
  bool Run(std::function<void(Connection&)> fn, bool defer) const;

  const std::weak_ptr<Connection> connection_;
  const uint64_t sequence_;  // which request of the connection this answers
};

using Handler = std::function<void(Request request, std::shared_ptr<Responder> responder)>;

struct Options {
  int io_threads = 2;
  int max_connections = 1024;
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{30'000};
  std::chrono::milliseconds idle_timeout{60'000};
  std::chrono::milliseconds write_timeout{30'000};
  size_t max_body_bytes = size_t{16} << 20;
  size_t max_header_bytes = size_t{64} << 10;
  size_t max_requests_per_connection = 0;  // then the connection closes; 0: no limit
  // Each connection's kernel send buffer (SO_SNDBUF; 0: the kernel's autotuning, up to
  // tcp_wmem's maximum, 4 MiB by default). Bounds what a client that stops reading pins in the
  // kernel, and makes the write deadline notice it sooner.
  size_t send_buffer_bytes = size_t{256} << 10;
};

struct Stats {
  uint64_t open_connections = 0;
  uint64_t accepted_connections = 0;
  uint64_t rejected_connections = 0;  // past max_connections (503)
  uint64_t timeouts = 0;              // header/body/idle/write deadlines that closed a connection
  uint64_t bad_requests = 0;          // unparsable (400), too large (413/431)
};

class Server {
 public:
  Server(Options options, Handler handler);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (0: a free port) with SO_REUSEADDR only (never SO_REUSEPORT), so a port in
  // use is an error naming it; returns once the socket listens. Errors: InvalidArgument (bad
  // options or port, already started), IOError "... in use" / other bind errors.
  Status Start(const std::string& host, int port);
  // Stops accepting, closes every connection (their on-close callbacks run) and joins the io
  // threads. Idempotent. Responders stay safe to call until the destructor.
  void Stop();
  int port() const { return port_.load(std::memory_order_acquire); }
  Stats stats() const;

  class Core;

 private:
  const Options options_;
  const Handler handler_;
  std::shared_ptr<Core> core_;  // set from Start to the destructor (or the next Start)
  std::atomic<int> port_{0};
};

}  // namespace kvault::http

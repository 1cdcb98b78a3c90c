// HttpEndpoint: kvaultd's observability port, on kvault::http (src/http/http_server.h).
//
//   GET /metrics  200, Content-Type "text/plain; version=0.0.4", body from `metrics`
//   GET /healthz  200 "ok" when `health` answers {true, _}; 503 with its reason otherwise
//   other methods on those two paths: 405 with "Allow: GET, HEAD"; any other path: 404
//   (HEAD is answered like GET without a body; a request that cannot be parsed gets 400, a
//   method HTTP does not know (BREW) 501, a body over max_body_bytes 413.)
//
// Connections are served asynchronously by `threads` io threads (at most 2 are useful), with
// io_timeout_ms as the header, body, idle keep-alive and write deadline, a small body cap and a
// cap on open connections (past it a 503), so a slow, idle or malformed client costs a little
// memory, never a thread. A callback that throws answers 500.
//
// Thread-safety: Start, Stop and the destructor must not race each other (call them from the
// owner's thread); port() and running() may be called from any thread. The callbacks run on
// the io threads, several at once: they must be thread-safe, quick, and must not call Stop.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "kvault/status.h"

namespace kvault::http {
class Server;
}

namespace kvault {

struct HttpHandlers {
  // The body of GET /metrics (Prometheus text). Required.
  std::function<std::string()> metrics;
  // {healthy, reason}; null means always healthy.
  std::function<std::pair<bool, std::string>()> health;
};

struct HttpEndpointOptions {
  size_t threads = 2;               // io threads (>= 1)
  int io_timeout_ms = 5000;         // header, body, idle keep-alive and write deadline
  size_t max_body_bytes = 64 << 10; // larger request bodies are refused (413)
  size_t keep_alive_max_requests = 100;
  int max_connections = 256;        // open at once; past it a 503 and close
};

class HttpEndpoint {
 public:
  HttpEndpoint();  // out of line: http::Server is incomplete here
  ~HttpEndpoint();  // Stop()
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Binds host:port (port 0: a free port the OS picks; see port()) and starts serving in a
  // background thread. Returns once the socket listens, so a client may connect right away.
  // Errors: InvalidArgument (no metrics callback, bad port or options, already started),
  // IOError / Unavailable naming host:port when the bind fails (e.g. the port is taken).
  Status Start(const std::string& host, int port, HttpHandlers handlers,
               const HttpEndpointOptions& options = HttpEndpointOptions());

  // Stops accepting, closes every connection and joins every thread (promptly: no request
  // is waited for). Idempotent; after it, Start may be called again.
  void Stop();

  // The bound port while running (the real one when Start was given 0), else 0.
  int port() const { return port_.load(std::memory_order_acquire); }
  bool running() const { return port() != 0; }

 private:
  std::unique_ptr<http::Server> server_;  // set while started
  std::atomic<int> port_{0};
};

}  // namespace kvault

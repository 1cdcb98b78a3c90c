// HttpEndpoint: kvaultd's observability port, on cpp-httplib.
//
//   GET /metrics  200, Content-Type "text/plain; version=0.0.4", body from `metrics`
//   GET /healthz  200 "ok" when `health` answers {true, _}; 503 with its reason otherwise
//   other methods on those two paths: 405 with "Allow: GET, HEAD"; any other path: 404
//   (HEAD is answered like GET without a body; a request httplib cannot parse gets 400.)
//
// Requests are served by a fixed pool of `threads` workers, with read/write timeouts and a
// small body cap, so a slow or malformed client costs one worker for at most the timeout and
// never the process. A callback that throws answers 500.
//
// Thread-safety: Start, Stop and the destructor must not race each other (call them from the
// owner's thread); port() and running() may be called from any thread. The callbacks run on
// the worker threads, several at once: they must be thread-safe and must not call Stop.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "kvault/status.h"

namespace httplib {
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
  size_t threads = 4;               // worker threads (>= 1)
  int io_timeout_ms = 5000;         // per read and per write on a connection
  size_t max_body_bytes = 64 << 10; // larger request bodies are refused (413)
  size_t keep_alive_max_requests = 100;
};

class HttpEndpoint {
 public:
  HttpEndpoint();  // out of line: httplib::Server is incomplete here
  ~HttpEndpoint();  // Stop()
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Binds host:port (port 0: a free port the OS picks; see port()) and starts serving in a
  // background thread. Returns once the socket listens, so a client may connect right away.
  // Errors: InvalidArgument (no metrics callback, bad port or options, already started),
  // IOError / Unavailable naming host:port when the bind fails (e.g. the port is taken).
  Status Start(const std::string& host, int port, HttpHandlers handlers,
               const HttpEndpointOptions& options = HttpEndpointOptions());

  // Stops accepting, finishes the requests in progress and joins every thread: it returns
  // within about a second plus io_timeout_ms (an idle keep-alive connection is held for up to
  // 1 s). Idempotent; after it, Start may be called again.
  void Stop();

  // The bound port while running (the real one when Start was given 0), else 0.
  int port() const { return port_.load(std::memory_order_acquire); }
  bool running() const { return port() != 0; }

 private:
  std::unique_ptr<httplib::Server> server_;  // set while started
  std::thread listener_;                     // runs the accept loop
  std::atomic<bool> listener_done_{false};
  std::atomic<int> port_{0};
};

}  // namespace kvault

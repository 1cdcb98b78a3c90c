#include "metrics/http_endpoint.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>

namespace kvault {

namespace {

constexpr const char* kMetricsPath = "/metrics";
constexpr const char* kHealthPath = "/healthz";
constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";

const char* ErrorText(int status) {
  switch (status) {
    case 400: return "bad request\n";
    case 404: return "not found\n";
    case 405: return "method not allowed\n";
    case 413: return "payload too large\n";
    case 414: return "uri too long\n";
    case 416: return "range not satisfiable\n";
    case 500: return "internal error\n";
    default: return "error\n";
  }
}

// Only SO_REUSEADDR (quick restarts across TIME_WAIT): httplib's default adds SO_REUSEPORT,
// which would let a second endpoint bind a port that is already serving.
void SetSocketOptions(int sock) {
  int yes = 1;
  (void)setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

void MethodNotAllowed(const httplib::Request&, httplib::Response& res) {
  res.status = 405;
  res.set_header("Allow", "GET, HEAD");
  res.set_content("method not allowed\n", kTextContentType);
}

}  // namespace

HttpEndpoint::HttpEndpoint() = default;
HttpEndpoint::~HttpEndpoint() { Stop(); }

Status HttpEndpoint::Start(const std::string& host, int port, HttpHandlers handlers,
                           const HttpEndpointOptions& options) {
  if (server_ != nullptr) return Status::InvalidArgument("http endpoint already started on port " +
                                                         std::to_string(port_.load()));
  if (!handlers.metrics) return Status::InvalidArgument("http endpoint needs a metrics callback");
  if (port < 0 || port > 65535) return Status::InvalidArgument("invalid port " + std::to_string(port));
  if (options.threads == 0 || options.io_timeout_ms <= 0 || options.keep_alive_max_requests == 0) {
    return Status::InvalidArgument("http endpoint options: threads, io_timeout_ms and "
                                   "keep_alive_max_requests must be positive");
  }

  auto server = std::make_unique<httplib::Server>();
  const size_t threads = options.threads;
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_socket_options(SetSocketOptions);
  // Headers and body go out in separate writes: without TCP_NODELAY a keep-alive client
  // waits for Nagle and delayed ACK (~40 ms) on every response.
  server->set_tcp_nodelay(true);
  const time_t timeout_s = options.io_timeout_ms / 1000;
  const time_t timeout_us = static_cast<time_t>(options.io_timeout_ms % 1000) * 1000;
  server->set_read_timeout(timeout_s, timeout_us);
  server->set_write_timeout(timeout_s, timeout_us);
  // An idle keep-alive connection holds a worker, and delays Stop, for at most this long
  // (httplib's unit is whole seconds; scrapes come every 15 s or so, so reuse buys little).
  server->set_keep_alive_timeout(1);
  server->set_keep_alive_max_count(options.keep_alive_max_requests);
  server->set_payload_max_length(options.max_body_bytes);

  auto metrics = std::move(handlers.metrics);
  server->Get(kMetricsPath, [metrics](const httplib::Request&, httplib::Response& res) {
    try {
      res.set_content(metrics(), kMetricsContentType);
      res.status = 200;
    } catch (const std::exception& e) {
      res.status = 500;
      res.set_content(std::string("metrics failed: ") + e.what() + "\n", kTextContentType);
    } catch (...) {
      res.status = 500;
      res.set_content("metrics failed\n", kTextContentType);
    }
  });
  auto health = std::move(handlers.health);
  server->Get(kHealthPath, [health](const httplib::Request&, httplib::Response& res) {
    std::pair<bool, std::string> verdict{true, ""};
    try {
      if (health) verdict = health();
    } catch (const std::exception& e) {
      verdict = {false, std::string("health check failed: ") + e.what()};
    } catch (...) {
      verdict = {false, "health check failed"};
    }
    res.status = verdict.first ? 200 : 503;
    std::string body = verdict.first ? "ok" : (verdict.second.empty() ? "unhealthy" : verdict.second);
    res.set_content(body + "\n", kTextContentType);
  });
  // The other methods httplib routes (it reads their bodies first, so keep-alive stays sound).
  for (const char* path : {kMetricsPath, kHealthPath}) {
    server->Post(path, MethodNotAllowed);
    server->Put(path, MethodNotAllowed);
    server->Patch(path, MethodNotAllowed);
    server->Delete(path, MethodNotAllowed);
    server->Options(path, MethodNotAllowed);
  }
  // A short text body for every error httplib produces itself (404 for unknown paths, 400...).
  server->set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        res.set_content(ErrorText(res.status), kTextContentType);
        return httplib::Server::HandlerResponse::Handled;
      }));

  errno = 0;
  int bound = -1;
  if (port == 0) {
    bound = server->bind_to_any_port(host);
  } else if (server->bind_to_port(host, port)) {
    bound = port;
  }
  const int err = errno;
  if (bound <= 0) {
    std::string where = host + ":" + std::to_string(port);
    if (err != 0) return Status::FromErrno(err, "http endpoint cannot listen on " + where);
    return Status::IOError("http endpoint cannot listen on " + where +
                           " (port in use, address not local, or not permitted)");
  }

  listener_done_.store(false, std::memory_order_release);
  httplib::Server* raw = server.get();
  listener_ = std::thread([this, raw] {
    raw->listen_after_bind();
    listener_done_.store(true, std::memory_order_release);
  });
  // The socket already listens; wait until the accept loop runs, so that a Stop right after
  // Start is seen by it (httplib's stop() is a no-op before then).
  while (!raw->is_running() && !listener_done_.load(std::memory_order_acquire)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server_ = std::move(server);
  if (listener_done_.load(std::memory_order_acquire)) {
    Stop();
    return Status::IOError("http endpoint on " + host + ":" + std::to_string(bound) + " stopped at once");
  }
  port_.store(bound, std::memory_order_release);
  return Status::OK();
}

void HttpEndpoint::Stop() {
  if (server_ == nullptr) return;
  port_.store(0, std::memory_order_release);
  server_->stop();  // closes the listening socket; the accept loop then drains its workers
  if (listener_.joinable()) listener_.join();
  server_.reset();
}

}  // namespace kvault

#include "metrics/http_endpoint.h"

#include <exception>

#include "http/http_server.h"

namespace kvault {

namespace {

constexpr const char* kMetricsPath = "/metrics";
constexpr const char* kHealthPath = "/healthz";
constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";

http::Response Text(int status, std::string body) { return {status, kTextContentType, {}, std::move(body)}; }

// Answers one request; runs on an io thread.
http::Response Answer(const http::Request& req, const HttpHandlers& h) {
  if (req.path != kMetricsPath && req.path != kHealthPath) return Text(404, "not found\n");
  if (req.method != "GET" && req.method != "HEAD") {
    http::Response r = Text(405, "method not allowed\n");
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }
  if (req.path == kMetricsPath) {
    try {
      return {200, kMetricsContentType, {}, h.metrics()};
    } catch (const std::exception& e) {
      return Text(500, std::string("metrics failed: ") + e.what() + "\n");
    } catch (...) {
      return Text(500, "metrics failed\n");
    }
  }
  std::pair<bool, std::string> verdict{true, ""};
  try {
    if (h.health) verdict = h.health();
  } catch (const std::exception& e) {
    verdict = {false, std::string("health check failed: ") + e.what()};
  } catch (...) {
    verdict = {false, "health check failed"};
  }
  if (verdict.first) return Text(200, "ok\n");
  return Text(503, (verdict.second.empty() ? "unhealthy" : verdict.second) + "\n");
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
  if (options.threads == 0 || options.io_timeout_ms <= 0 || options.keep_alive_max_requests == 0 ||
      options.max_connections <= 0) {
    return Status::InvalidArgument("http endpoint options: threads, io_timeout_ms, "
                                   "keep_alive_max_requests and max_connections must be positive");
  }
  http::Options o;
  o.io_threads = static_cast<int>(options.threads);
  o.max_connections = options.max_connections;
  o.header_timeout = o.body_timeout = o.idle_timeout = o.write_timeout =
      std::chrono::milliseconds(options.io_timeout_ms);
  o.max_body_bytes = options.max_body_bytes;
  o.max_header_bytes = 16 << 10;
  o.max_requests_per_connection = options.keep_alive_max_requests;
  auto server = std::make_unique<http::Server>(
      o, [h = std::move(handlers)](http::Request req, std::shared_ptr<http::Responder> responder) {
        responder->Respond(Answer(req, h));
      });
  if (Status st = server->Start(host, port); !st.ok()) {
    return Status(st.code(), "http endpoint " + st.message());
  }
  port_.store(server->port(), std::memory_order_release);
  server_ = std::move(server);
  return Status::OK();
}

void HttpEndpoint::Stop() {
  if (server_ == nullptr) return;
  port_.store(0, std::memory_order_release);
  server_->Stop();
  server_.reset();
}

}  // namespace kvault

// The HTTP side of `kvault bench serve`: a plain-HTTP/1.1 client over POSIX sockets for one
// session thread (keep-alive, Content-Length and chunked bodies, one absolute deadline per
// request), and the parser of a streamed chat completion's Server-Sent Events. No TLS: the
// load generator talks to servers on this machine or its network (http:// URLs only).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "kvault/status.h"

namespace kvault::serve_load {

// A server's base URL: http://HOST[:PORT][/PATH]. The chat endpoint is PATH +
// "/v1/chat/completions", or PATH + "/chat/completions" when PATH already ends in "/v1" (as an
// OpenAI client's base_url).
struct BaseUrl {
  std::string host;
  int port = 80;
  std::string path;  // "" or "/prefix" without a trailing slash
  std::string ChatPath() const;
};
Result<BaseUrl> ParseBaseUrl(const std::string& url);

// One connection to one server, used by one thread at a time (not thread-safe). The
// connection is kept between requests when the server allows it and the previous response was
// read to its end; otherwise the next request opens a new one.
class HttpClient {
 public:
  using Clock = std::chrono::steady_clock;
  explicit HttpClient(BaseUrl url) : url_(std::move(url)) {}
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  struct Response {
    int status = 0;       // 0: no status line arrived
    std::string error;    // "" when the body was read to its end; else "timeout", "connect: ...", ...
    std::string body;     // the body of a non-2xx answer (for the error message); empty otherwise
  };
  // Sends `method` `path` (with a JSON `body` when not empty) and hands the decoded
  // (de-chunked) body of a 2xx answer to `on_body` as it arrives; `on_body` returns false to
  // stop reading (the connection is then closed and the response has error "stopped"). Every
  // step honours `deadline`. Never throws.
  Response Request(const std::string& method, const std::string& path, const std::string& body,
                   Clock::time_point deadline, const std::function<bool(std::string_view)>& on_body);

 private:
  Response RequestOnce(const std::string& method, const std::string& path, const std::string& body,
                       Clock::time_point deadline, const std::function<bool(std::string_view)>& on_body,
                       bool* nothing_received);
  Status Connect(Clock::time_point deadline);
  // Reads more bytes into buf_; "" on success, else the error ("timeout", "closed", ...).
  std::string Fill(Clock::time_point deadline);
  void Close();

  BaseUrl url_;
  int fd_ = -1;
  std::string buf_;  // bytes read and not yet consumed
};

// Turns a streamed chat completion (the decoded body of text/event-stream) into its events:
// each complete "data: ..." payload is handed on (joined with "\n" for multi-line data), in
// order; comments and other fields are skipped. Bytes may arrive split anywhere.
class SseParser {
 public:
  explicit SseParser(std::function<void(std::string_view data)> on_data) : on_data_(std::move(on_data)) {}
  void Feed(std::string_view bytes);

 private:
  void Line(std::string_view line);
  std::function<void(std::string_view)> on_data_;
  std::string partial_;  // an incomplete line
  std::string data_;     // the data lines of the current event
  bool has_data_ = false;
};

// What a streamed chat completion said, chunk by chunk (one JSON payload per Add).
struct ChatStreamState {
  bool done = false;               // "[DONE]" arrived
  bool first_token_seen = false;   // a non-empty delta.content or a finish_reason arrived
  std::string text;                // the answer so far
  int64_t content_chunks = 0;      // chunks with non-empty delta.content
  int64_t prompt_tokens = -1, completion_tokens = -1, cached_tokens = -1;  // from usage
  std::string error;               // an "error" object in the stream, or an unreadable payload
  // Takes one event's data; returns true when this payload carried the first token (the
  // caller stamps TTFT then).
  bool Add(std::string_view data);
};

}  // namespace kvault::serve_load

#include "serve_load_http.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace kvault::serve_load {
namespace {

using Clock = HttpClient::Clock;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

// Milliseconds left until `deadline` for poll(): at least 0, at most a day.
int MsLeft(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 86'400'000));
}

// Waits for `events` on `fd` until `deadline`: "" when ready, else "timeout" or the error.
std::string WaitFd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, MsLeft(deadline));
    if (n > 0) return "";
    if (n == 0) return "timeout";
    if (errno != EINTR) return std::string("poll: ") + std::strerror(errno);
  }
}

// An integer field of `j`, or `fallback` when it is missing or not a number.
int64_t IntOr(const nlohmann::json& j, const char* key, int64_t fallback) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<int64_t>() : fallback;
}

}  // namespace

std::string BaseUrl::ChatPath() const {
  if (path.size() >= 3 && path.compare(path.size() - 3, 3, "/v1") == 0) return path + "/chat/completions";
  return path + "/v1/chat/completions";
}

Result<BaseUrl> ParseBaseUrl(const std::string& url) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) {
    return Status::InvalidArgument("--url must start with http:// (no TLS): " + url);
  }
  std::string rest = url.substr(kScheme.size());
  BaseUrl out;
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) out.path = rest.substr(slash);
  while (!out.path.empty() && out.path.back() == '/') out.path.pop_back();
  if (!hostport.empty() && hostport.front() == '[') {  // [IPv6]:port
    const size_t close = hostport.find(']');
    if (close == std::string::npos) return Status::InvalidArgument("bad host in --url: " + url);
    out.host = hostport.substr(1, close - 1);
    hostport = hostport.substr(close + 1);
    if (!hostport.empty() && hostport.front() != ':') return Status::InvalidArgument("bad port in --url: " + url);
  } else {
    const size_t colon = hostport.find(':');
    out.host = hostport.substr(0, colon);
    hostport = colon == std::string::npos ? "" : hostport.substr(colon);
  }
  if (!hostport.empty()) {
    try {
      size_t used = 0;
      out.port = std::stoi(hostport.substr(1), &used);
      if (used != hostport.size() - 1 || out.port <= 0 || out.port > 65535) throw std::out_of_range("port");
    } catch (const std::exception&) {
      return Status::InvalidArgument("bad port in --url: " + url);
    }
  }
  if (out.host.empty()) return Status::InvalidArgument("no host in --url: " + url);
  return out;
}

HttpClient::~HttpClient() { Close(); }

void HttpClient::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  buf_.clear();
}

Status HttpClient::Connect(Clock::time_point deadline) {
  Close();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(url_.port);
  if (const int rc = ::getaddrinfo(url_.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Status::Unavailable(std::string("connect: ") + ::gai_strerror(rc));
  }
  std::string last = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      const std::string w = WaitFd(fd, POLLOUT, deadline);
      int err = 0;
      socklen_t len = sizeof err;
      if (!w.empty()) {
        last = w;
      } else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        rc = 0;
      } else {
        last = std::strerror(err != 0 ? err : errno);
      }
    } else if (rc != 0) {
      last = std::strerror(errno);
    }
    if (rc == 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      fd_ = fd;
      ::freeaddrinfo(found);
      return Status::OK();
    }
    ::close(fd);
    if (last == "timeout") break;
  }
  ::freeaddrinfo(found);
  return Status::Unavailable(last == "timeout" ? "timeout" : "connect: " + last);
}

std::string HttpClient::Fill(Clock::time_point deadline) {
  char chunk[16384];
  for (;;) {
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      buf_.append(chunk, static_cast<size_t>(n));
      return "";
    }
    if (n == 0) return "closed";
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return std::string("recv: ") + std::strerror(errno);
    if (std::string w = WaitFd(fd_, POLLIN, deadline); !w.empty()) return w;
  }
}

HttpClient::Response HttpClient::Request(const std::string& method, const std::string& path,
                                         const std::string& body, Clock::time_point deadline,
                                         const std::function<bool(std::string_view)>& on_body) {
  const bool reused = fd_ >= 0;
  bool nothing_received = false;
  Response r = RequestOnce(method, path, body, deadline, on_body, &nothing_received);
  // A kept connection the server closed while idle fails before a byte comes back: send once
  // more on a fresh connection (what HTTP clients do; the request never reached the server).
  if (reused && nothing_received && r.error != "timeout" && Clock::now() < deadline) {
    r = RequestOnce(method, path, body, deadline, on_body, &nothing_received);
  }
  return r;
}

HttpClient::Response HttpClient::RequestOnce(const std::string& method, const std::string& path,
                                             const std::string& body, Clock::time_point deadline,
                                             const std::function<bool(std::string_view)>& on_body,
                                             bool* nothing_received) {
  Response r;
  *nothing_received = true;
  auto fail = [&](std::string why) {
    Close();
    r.error = std::move(why);
    return r;
  };
  if (fd_ < 0) {
    if (Status st = Connect(deadline); !st.ok()) return fail(st.message());
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + url_.host + ":" + std::to_string(url_.port) +
                    "\r\nAccept: text/event-stream, application/json\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  for (size_t sent = 0; sent < req.size();) {
    const ssize_t n = ::send(fd_, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (std::string w = WaitFd(fd_, POLLOUT, deadline); !w.empty()) return fail(w);
    } else if (n < 0 && errno != EINTR) {
      return fail(std::string("send: ") + std::strerror(errno));
    }
  }

  // Status line and headers (1xx answers are skipped).
  bool chunked = false, keep_alive = true;
  int64_t content_length = -1;
  for (;;) {
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (buf_.size() > 65536) return fail("headers too long");
      if (std::string e = Fill(deadline); !e.empty()) return fail(e);
      *nothing_received = false;
    }
    *nothing_received = false;
    const std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    const size_t eol = head.find("\r\n");
    const std::string status_line = head.substr(0, eol);
    if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) return fail("bad status line");
    r.status = std::atoi(status_line.c_str() + 9);
    if (status_line.compare(0, 8, "HTTP/1.0") == 0) keep_alive = false;
    size_t pos = eol == std::string::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
      size_t next = head.find("\r\n", pos);
      if (next == std::string::npos) next = head.size();
      const std::string line = head.substr(pos, next - pos);
      pos = next + 2;
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      const std::string name = Lower(Trim(line.substr(0, colon)));
      const std::string value = Lower(Trim(line.substr(colon + 1)));
      if (name == "transfer-encoding") chunked = value.find("chunked") != std::string::npos;
      if (name == "content-length") content_length = std::atoll(value.c_str());
      if (name == "connection") keep_alive = value.find("close") == std::string::npos;
    }
    if (r.status >= 200) break;
  }

  // The body: chunked, Content-Length, or until the server closes.
  const bool success = r.status >= 200 && r.status < 300;
  auto deliver = [&](std::string_view bytes) {
    if (success) return on_body(bytes);
    if (r.body.size() < 4096) r.body.append(bytes.substr(0, 4096 - r.body.size()));
    return true;
  };
  // Delivers the next `left` bytes of the body; "" or why not ("stream cut", "stopped", ...).
  auto deliver_exactly = [&](uint64_t left) -> std::string {
    while (left > 0) {
      if (buf_.empty()) {
        if (std::string e = Fill(deadline); !e.empty()) return e == "closed" ? "stream cut" : e;
      }
      const size_t take = static_cast<size_t>(std::min<uint64_t>(left, buf_.size()));
      const bool go_on = deliver(std::string_view(buf_).substr(0, take));
      buf_.erase(0, take);
      left -= take;
      if (!go_on) return "stopped";
    }
    return "";
  };
  if (chunked) {
    for (;;) {
      size_t eol;
      while ((eol = buf_.find("\r\n")) == std::string::npos) {
        if (std::string e = Fill(deadline); !e.empty()) return fail(e == "closed" ? "stream cut" : e);
      }
      const uint64_t size = std::strtoull(buf_.c_str(), nullptr, 16);
      buf_.erase(0, eol + 2);
      if (size == 0) {  // trailers, then the empty line
        for (;;) {
          while ((eol = buf_.find("\r\n")) == std::string::npos) {
            if (std::string e = Fill(deadline); !e.empty()) return fail(e == "closed" ? "stream cut" : e);
          }
          const bool last = eol == 0;
          buf_.erase(0, eol + 2);
          if (last) break;
        }
        break;
      }
      if (std::string e = deliver_exactly(size); !e.empty()) return fail(e);
      while (buf_.size() < 2) {
        if (std::string e = Fill(deadline); !e.empty()) return fail(e == "closed" ? "stream cut" : e);
      }
      buf_.erase(0, 2);
    }
  } else if (content_length >= 0) {
    if (std::string e = deliver_exactly(static_cast<uint64_t>(content_length)); !e.empty()) return fail(e);
  } else {
    keep_alive = false;
    for (;;) {
      if (!buf_.empty()) {
        const bool go_on = deliver(buf_);
        buf_.clear();
        if (!go_on) return fail("stopped");
      }
      std::string e = Fill(deadline);
      if (e == "closed") break;
      if (!e.empty()) return fail(e);
    }
  }
  if (!keep_alive) Close();
  return r;
}

void SseParser::Feed(std::string_view bytes) {
  partial_.append(bytes);
  size_t start = 0;
  for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(partial_.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    Line(line);
  }
  partial_.erase(0, start);
}

void SseParser::Line(std::string_view line) {
  if (line.empty()) {  // the end of an event
    if (has_data_) on_data_(data_);
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line.rfind("data:", 0) != 0) return;  // comments (":...") and other fields
  line.remove_prefix(5);
  if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (has_data_) data_ += '\n';
  data_.append(line);
  has_data_ = true;
}

bool ChatStreamState::Add(std::string_view data) {
  if (data == "[DONE]") {
    done = true;
    return false;
  }
  const nlohmann::json j = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    if (error.empty()) error = "bad stream payload";
    return false;
  }
  if (const auto e = j.find("error"); e != j.end() && !e->is_null()) {
    if (error.empty()) error = "stream error";
    return false;
  }
  bool first = false;
  if (const auto c = j.find("choices"); c != j.end() && c->is_array()) {
    for (const auto& choice : *c) {
      bool token = false;
      if (const auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
        if (const auto content = d->find("content"); content != d->end() && content->is_string()) {
          const std::string& s = content->get_ref<const std::string&>();
          if (!s.empty()) {
            text += s;
            ++content_chunks;
            token = true;
          }
        }
      }
      if (const auto f = choice.find("finish_reason"); f != choice.end() && f->is_string()) token = true;
      if (token && !first_token_seen) first_token_seen = first = true;
    }
  }
  if (const auto u = j.find("usage"); u != j.end() && u->is_object()) {
    prompt_tokens = IntOr(*u, "prompt_tokens", -1);
    completion_tokens = IntOr(*u, "completion_tokens", -1);
    if (const auto d = u->find("prompt_tokens_details"); d != u->end() && d->is_object()) {
      cached_tokens = IntOr(*d, "cached_tokens", -1);
    }
  }
  return first;
}

}  // namespace kvault::serve_load

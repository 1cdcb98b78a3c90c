#include "store/redis_connection.h"

// sds.h has no extern "C" of its own, and hiredis.h includes it: it goes first.
extern "C" {
#include <hiredis/sds.h>
}
#include <hiredis/hiredis.h>
#include <limits.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kvault {
namespace {

using Clock = std::chrono::steady_clock;

// Arguments up to this size are copied into the framing text; longer ones are sent in place.
constexpr size_t kInlineArgBytes = 1024;
// Reads go straight into hiredis' reader buffer, at most this much per recv.
constexpr size_t kMinReadBytes = 64u << 10;
constexpr size_t kMaxReadBytes = 1u << 20;

timeval ToTimeval(int ms) {
  timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

// hiredis' reader builds RedisReply trees through these (no redisReply, no second copy of a
// bulk string). The root is heap-allocated; children live in their parent's `elements`,
// which is sized once by createArray and never resized, so pointers to them stay valid.
RedisReply* NewReplyNode(const redisReadTask* task) {
  if (task->parent == nullptr) return new RedisReply();
  auto* parent = static_cast<RedisReply*>(task->parent->obj);
  return &parent->elements[static_cast<size_t>(task->idx)];
}

void* CreateString(const redisReadTask* task, char* str, size_t len) {
  RedisReply* r = NewReplyNode(task);
  r->type = task->type == REDIS_REPLY_ERROR    ? RedisReply::Type::kError
            : task->type == REDIS_REPLY_STATUS ? RedisReply::Type::kStatus
                                               : RedisReply::Type::kString;
  const auto* begin = reinterpret_cast<const std::byte*>(str);
  r->bytes.assign(begin, begin + len);
  return r;
}

void* CreateArray(const redisReadTask* task, int elements) {
  RedisReply* r = NewReplyNode(task);
  r->type = RedisReply::Type::kArray;
  r->elements.resize(static_cast<size_t>(std::max(elements, 0)));
  return r;
}

void* CreateInteger(const redisReadTask* task, long long value) {
  RedisReply* r = NewReplyNode(task);
  r->type = RedisReply::Type::kInteger;
  r->integer = value;
  return r;
}

void* CreateNil(const redisReadTask* task) {
  RedisReply* r = NewReplyNode(task);
  r->type = RedisReply::Type::kNil;
  return r;
}

// hiredis frees only roots (an unfinished reply when the reader fails or is freed).
void FreeReply(void* reply) { delete static_cast<RedisReply*>(reply); }

redisReplyObjectFunctions kReplyFunctions = {CreateString, CreateArray, CreateInteger, CreateNil, FreeReply};

// The RESP encoding of a pipeline of commands as iovecs: the framing (and short arguments) in
// one string, longer arguments referenced where they are.
class CommandEncoder {
 public:
  void Add(const RedisArgs& args) {
    AppendText("*" + std::to_string(args.size()) + "\r\n");
    for (std::string_view arg : args) {
      AppendText("$" + std::to_string(arg.size()) + "\r\n");
      if (arg.size() <= kInlineArgBytes) {
        AppendText(arg);
      } else {
        pieces_.push_back({arg.data(), 0, arg.size()});
      }
      AppendText("\r\n");
    }
  }

  std::vector<iovec> Iovecs() const {
    std::vector<iovec> iov;
    iov.reserve(pieces_.size());
    for (const Piece& p : pieces_) {
      const char* base = p.external != nullptr ? p.external : text_.data() + p.offset;
      iov.push_back({const_cast<char*>(base), p.len});
    }
    return iov;
  }

 private:
  struct Piece {
    const char* external;  // nullptr: bytes [offset, offset + len) of text_
    size_t offset;
    size_t len;
  };

  void AppendText(std::string_view s) {
    if (pieces_.empty() || pieces_.back().external != nullptr) pieces_.push_back({nullptr, text_.size(), 0});
    text_.append(s);
    pieces_.back().len += s.size();
  }

  std::string text_;
  std::vector<Piece> pieces_;
};

}  // namespace

RedisCluster::Connection::Connection(const std::string& host, int port, const RedisClusterOptions& options, Counters* counters)
    : host_(host), port_(port), address_(host + ":" + std::to_string(port)), options_(options),
      counters_(counters) {}

RedisCluster::Connection::~Connection() {
  Close();
}

// Writes every command, then reads one reply per command.
Result<std::vector<RedisReply>> RedisCluster::Connection::RoundTrip(std::span<const RedisArgs> commands) {
  KVAULT_RETURN_IF_ERROR(EnsureOpen());
  return Exchange(commands);
}

Result<std::vector<RedisReply>> RedisCluster::Connection::Exchange(std::span<const RedisArgs> commands) {
  CommandEncoder encoder;
  for (const RedisArgs& args : commands) encoder.Add(args);
  KVAULT_RETURN_IF_ERROR(Send(encoder.Iovecs()));
  std::vector<RedisReply> replies(commands.size());
  for (RedisReply& reply : replies) KVAULT_RETURN_IF_ERROR(ReadReply(&reply));
  TrimReadBuffer();
  return replies;
}

// Opens the connection unless it is open or in its backoff window.
Status RedisCluster::Connection::EnsureOpen() {
  if (ctx_ != nullptr) return Status::OK();
  const Clock::time_point now = Clock::now();
  if (now < retry_after_) {
    counters_->backoff_rejections.fetch_add(1, std::memory_order_relaxed);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(retry_after_ - now).count();
    return Status::Unavailable("redis node " + address_ + " unreachable; next attempt in " + std::to_string(wait) +
                               " ms");
  }
  Status st = Open();
  if (st.ok()) {
    backoff_ms_ = 0;
    counters_->connects.fetch_add(1, std::memory_order_relaxed);
    return st;
  }
  counters_->connect_failures.fetch_add(1, std::memory_order_relaxed);
  if (IsRedisTimeout(st)) counters_->timeouts.fetch_add(1, std::memory_order_relaxed);
  backoff_ms_ = backoff_ms_ == 0 ? options_.reconnect_backoff_min_ms
                                 : std::min(2 * backoff_ms_, options_.reconnect_backoff_max_ms);
  retry_after_ = Clock::now() + std::chrono::milliseconds(backoff_ms_);
  return st;
}

Status RedisCluster::Connection::Open() {
  redisContext* c = redisConnectWithTimeout(host_.c_str(), port_, ToTimeval(options_.connect_timeout_ms));
  if (c == nullptr) return Status::Unavailable("redis connect " + address_ + ": out of memory");
  if (c->err != 0) {
    const bool timed_out = std::strstr(c->errstr, "timed out") != nullptr;
    std::string msg = "connect " + address_ + ": " + c->errstr;
    redisFree(c);
    return timed_out ? RedisTimeoutError(msg) : Status::Unavailable("redis " + msg);
  }
  if (redisSetTimeout(c, ToTimeval(options_.command_timeout_ms)) != REDIS_OK) {
    redisFree(c);
    return Status::Unavailable("redis " + address_ + ": cannot set socket timeouts");
  }
  c->reader->fn = &kReplyFunctions;
  ctx_ = c;
  if (!options_.password.empty()) {
    const RedisArgs auth = {"AUTH", options_.password};
    auto replies = Exchange(std::span<const RedisArgs>(&auth, 1));
    if (!replies.ok()) {
      Close();
      return replies.status();
    }
    if (!(*replies)[0].IsOk()) {
      Close();
      return Status::Unavailable("redis " + address_ + ": AUTH failed: " + std::string((*replies)[0].text()));
    }
  }
  return Status::OK();
}

void RedisCluster::Connection::Close() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
}

// After a failed read or write the stream is in an unknown state: close it. The next call
// reconnects at once (a failing reconnect starts the backoff).
Status RedisCluster::Connection::Fail(const std::string& what, int err) {
  Close();
  counters_->io_errors.fetch_add(1, std::memory_order_relaxed);
  if (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT) {
    counters_->timeouts.fetch_add(1, std::memory_order_relaxed);
    return RedisTimeoutError(what + " " + address_ + ": no progress in " + std::to_string(options_.command_timeout_ms) +
                        " ms");
  }
  return Status::Unavailable("redis " + what + " " + address_ + ": " +
                             (err != 0 ? std::string(std::strerror(err)) : std::string("connection closed")));
}

Status RedisCluster::Connection::Send(std::vector<iovec> iov) {
  size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[first];
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t n = ::sendmsg(ctx_->fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail("send to", errno);
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0 && first < iov.size()) {
      const size_t take = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      left -= take;
      if (iov[first].iov_len == 0) ++first;
    }
    while (first < iov.size() && iov[first].iov_len == 0) ++first;
  }
  return Status::OK();
}

// Receives until hiredis' reader holds one whole reply. Bytes go straight into the
// reader's buffer, which grows geometrically.
Status RedisCluster::Connection::ReadReply(RedisReply* out) {
  redisReader* r = ctx_->reader;
  for (;;) {
    void* obj = nullptr;
    if (redisReaderGetReply(r, &obj) != REDIS_OK) {
      std::string msg = std::string("protocol error from ") + address_ + ": " + r->errstr;
      Close();
      counters_->io_errors.fetch_add(1, std::memory_order_relaxed);
      return Status::IOError("redis " + msg);
    }
    if (obj != nullptr) {
      auto* reply = static_cast<RedisReply*>(obj);
      *out = std::move(*reply);
      delete reply;
      return Status::OK();
    }
    if (sdsavail(r->buf) < kMinReadBytes) {
      sds grown = sdsMakeRoomFor(r->buf, std::max(kMinReadBytes, sdslen(r->buf)));
      if (grown == nullptr) return Fail("read buffer for", ENOMEM);
      r->buf = grown;
    }
    const size_t want = std::min(sdsavail(r->buf), kMaxReadBytes);
    const ssize_t n = ::recv(ctx_->fd, r->buf + sdslen(r->buf), want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Fail("read from", n < 0 ? errno : 0);
    sdsIncrLen(r->buf, static_cast<int>(n));
    r->len = sdslen(r->buf);
  }
}

// Frees a large read buffer once it holds nothing unread.
void RedisCluster::Connection::TrimReadBuffer() {
  redisReader* r = ctx_->reader;
  if (r->pos < r->len || sdsavail(r->buf) + sdslen(r->buf) <= options_.read_buffer_retain_bytes) return;
  sdsfree(r->buf);
  r->buf = sdsempty();
  r->pos = 0;
  r->len = 0;
}

}  // namespace kvault

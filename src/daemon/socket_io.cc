#include "daemon/socket_io.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>

namespace kvault::wire {
namespace {

Status SocketError(int err, const std::string& what) {
  if (err == EAGAIN || err == EWOULDBLOCK) return Status::Unavailable(what + ": timed out");
  if (err == EPIPE || err == ECONNRESET || err == ECONNREFUSED || err == ENOENT) {
    return Status::Unavailable(what + ": " + std::strerror(err));
  }
  return Status::FromErrno(err, what);
}

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path must be 1.." + std::to_string(sizeof(addr.sun_path) - 1) +
                                   " bytes: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

Status SplitHostPort(const std::string& host_port, std::string* host, std::string* port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) {
    return Status::InvalidArgument("expected host:port, got '" + host_port + "'");
  }
  *host = host_port.substr(0, colon);
  *port = host_port.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return Status::OK();
}

// Reads exactly dst.size() bytes; *got_any tells whether the first byte had arrived.
Status ReadFully(int fd, std::span<std::byte> dst, UniqueFd* received_fd, bool* got_any) {
  size_t done = 0;
  while (done < dst.size()) {
    iovec iov{dst.data() + done, dst.size() - done};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (received_fd != nullptr) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
    }
    const ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SocketError(errno, "read");
    }
    if (n == 0) {
      return done == 0 && !*got_any ? Status::NotFound("connection closed") : Status::Unavailable("connection closed mid-frame");
    }
    if (received_fd != nullptr && msg.msg_controllen > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
          int passed;
          std::memcpy(&passed, CMSG_DATA(c), sizeof passed);
          received_fd->reset(passed);
        }
      }
    }
    *got_any = true;
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}
UniqueFd::~UniqueFd() { reset(); }
int UniqueFd::release() { return std::exchange(fd_, -1); }
void UniqueFd::reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

Result<UniqueFd> ListenUnix(const std::string& path, int mode) {
  auto addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Status::FromErrno(errno, "socket");
  // A socket file left by a daemon that died: replace it, but only if nobody answers there.
  if (auto probe = ConnectUnix(path); probe.ok()) {
    return Status::Unavailable("another daemon is listening on " + path);
  }
  unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr.value()), sizeof(sockaddr_un)) != 0) {
    return Status::FromErrno(errno, "bind " + path);
  }
  if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) return Status::FromErrno(errno, "chmod " + path);
  if (listen(fd.get(), 128) != 0) return Status::FromErrno(errno, "listen " + path);
  return fd;
}

Result<UniqueFd> ListenTcp(const std::string& host_port) {
  std::string host, port;
  KVAULT_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Status::InvalidArgument("cannot resolve " + host_port + ": " + gai_strerror(rc));
  }
  Status last = Status::InvalidArgument("no address for " + host_port);
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd.get() < 0) continue;
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || listen(fd.get(), 128) != 0) {
      last = Status::FromErrno(errno, "listen on " + host_port);
      continue;
    }
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

int BoundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return -1;
}

Result<UniqueFd> ConnectUnix(const std::string& path) {
  auto addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Status::FromErrno(errno, "socket");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr.value()), sizeof(sockaddr_un)) != 0) {
    return SocketError(errno, "connect " + path);
  }
  return fd;
}

Result<UniqueFd> ConnectTcp(const std::string& host_port, int timeout_ms) {
  std::string host, port;
  KVAULT_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Status::InvalidArgument("cannot resolve " + host_port + ": " + gai_strerror(rc));
  }
  Status last = Status::Unavailable("no address for " + host_port);
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (fd.get() < 0) continue;
    int rc = connect(fd.get(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd.get(), POLLOUT, 0};
      rc = poll(&p, 1, timeout_ms > 0 ? timeout_ms : -1) == 1 ? 0 : -1;
      int err = rc == 0 ? 0 : ETIMEDOUT;
      socklen_t len = sizeof err;
      if (rc == 0) getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = SocketError(err, "connect " + host_port);
        continue;
      }
    } else if (rc != 0) {
      last = SocketError(errno, "connect " + host_port);
      continue;
    }
    fcntl(fd.get(), F_SETFL, fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

void SetIoTimeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

long PeerUid(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
  return static_cast<long>(cred.uid);
}

void SpinUntilReadable(int fd, int spin_us) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
  }
}

Result<size_t> RecvSome(int fd, std::span<std::byte> dst, std::chrono::steady_clock::time_point deadline) {
  using Clock = std::chrono::steady_clock;
  for (;;) {
    const ssize_t n = recv(fd, dst.data(), dst.size(), MSG_DONTWAIT);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return SocketError(errno, "read");
    // Nothing there yet: wait for it, at most until the deadline (poll wakes on data, on the
    // peer's close and on shutdown() of this socket).
    int wait_ms = -1;
    if (deadline != Clock::time_point::max()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Status::Unavailable("read: timed out");
      wait_ms = static_cast<int>(std::min<int64_t>(left, 60'000));
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, wait_ms) < 0 && errno != EINTR) return SocketError(errno, "poll");
  }
}

Status WriteFrame(int fd, MsgType type, std::span<const std::byte> payload, int pass_fd) {
  if (payload.size() > kMaxMessageBytes) return Status::InvalidArgument("message too large");
  std::byte header[kFrameHeaderBytes];
  EncodeFrameHeader({type, static_cast<uint32_t>(payload.size())}, header);
  iovec iov[2] = {{header, sizeof header}, {const_cast<std::byte*>(payload.data()), payload.size()}};
  size_t total = sizeof header + payload.size(), sent = 0;
  bool first = true;
  while (sent < total) {
    // Skip what went already.
    iovec rest[2];
    int n_iov = 0;
    size_t skip = sent;
    for (const iovec& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      rest[n_iov++] = {static_cast<char*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    msghdr msg{};
    msg.msg_iov = rest;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (first && pass_fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &pass_fd, sizeof pass_fd);
    }
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SocketError(errno, "write");
    }
    first = false;
    sent += static_cast<size_t>(n);
  }
  return Status::OK();
}

Status ReadFrame(int fd, size_t max_payload, FrameHeader* header, std::vector<std::byte>* payload,
                 UniqueFd* received_fd) {
  std::byte raw[kFrameHeaderBytes];
  bool got_any = false;
  KVAULT_RETURN_IF_ERROR(ReadFully(fd, raw, received_fd, &got_any));
  KVAULT_RETURN_IF_ERROR(DecodeFrameHeader(raw, max_payload, header));
  payload->resize(header->payload_bytes);
  return ReadFully(fd, *payload, received_fd, &got_any);
}

}  // namespace kvault::wire

// Stream sockets for kvaultd and its clients: listening, connecting, and whole frames.
// Every call either completes or fails with a Status; none raises SIGPIPE.
// Thread-safety: functions are reentrant; one fd must not be read (or written) by two
// threads at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvault/status.h"
#include "daemon/protocol.h"

namespace kvault::wire {

// Closes the fd on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  ~UniqueFd();
  int get() const { return fd_; }
  int release();
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A listening Unix socket at `path` (a stale socket file there is replaced) with mode `mode`.
Result<UniqueFd> ListenUnix(const std::string& path, int mode);
// A listening TCP socket on "host:port" (port 0: any free port; see BoundPort).
Result<UniqueFd> ListenTcp(const std::string& host_port);
int BoundPort(int fd);
Result<UniqueFd> ConnectUnix(const std::string& path);
Result<UniqueFd> ConnectTcp(const std::string& host_port, int timeout_ms);
// Send and receive timeouts (0: none). A timed-out read or write fails with kUnavailable.
void SetIoTimeouts(int fd, int timeout_ms);
// The uid of a Unix socket's peer, or -1.
long PeerUid(int fd);

// Polls `fd` for input without sleeping for up to `spin_us` microseconds; returns early when
// input is there. Called before a blocking read that is likely to be satisfied soon (a
// reply, a client's next request in a burst): a thread that sleeps must be woken, which costs
// tens of microseconds in a virtual machine whose idle vCPU halts.
void SpinUntilReadable(int fd, int spin_us);

// Reads what has arrived, at most dst.size() bytes, waiting for the first byte until
// `deadline` (steady_clock::time_point::max(): no deadline). Returns the bytes read, 0 when
// the peer closed; kUnavailable("timed out") when the deadline passed with nothing to read.
// Only the bytes read are written, so a caller can grow its buffer as data arrives.
Result<size_t> RecvSome(int fd, std::span<std::byte> dst, std::chrono::steady_clock::time_point deadline);

// Writes one frame; `pass_fd` >= 0 travels with it (SCM_RIGHTS, Unix sockets only).
Status WriteFrame(int fd, MsgType type, std::span<const std::byte> payload, int pass_fd = -1);
// Reads one frame whose payload is at most max_payload bytes. `received_fd`, when given,
// receives an fd passed with the frame (or -1). kUnavailable when the peer closed
// (kNotFound at a clean end between frames), kInvalidArgument for a bad header.
Status ReadFrame(int fd, size_t max_payload, FrameHeader* header, std::vector<std::byte>* payload,
                 UniqueFd* received_fd = nullptr);

}  // namespace kvault::wire

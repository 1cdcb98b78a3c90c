// RedisCluster's connection to one node and the counters the connections and the cluster share.
// Private to the Redis Cluster client (redis_cluster.cc routes, redis_connection.cc talks RESP).
#pragma once

#include <atomic>
#include <chrono>
#include <span>
#include <string>
#include <vector>

#include <sys/uio.h>

#include "store/redis_cluster.h"

struct redisContext;

namespace kvault {

// The error of a call that made no progress within its timeout (IsRedisTimeout is true of it).
Status RedisTimeoutError(const std::string& what);

struct RedisCluster::Counters {
  std::atomic<uint64_t> moved{0}, ask{0}, tryagain{0}, refreshes{0}, refresh_failures{0};
  std::atomic<uint64_t> connects{0}, connect_failures{0}, io_errors{0}, timeouts{0}, backoff_rejections{0};
};

// One connection to one node. Thread-safety: used by one thread at a time, the holder of its
// lease from the node's pool (Node::Acquire).
class RedisCluster::Connection {
 public:
  Connection(const std::string& host, int port, const RedisClusterOptions& options, Counters* counters);
  ~Connection();
  // Writes every command, then reads one reply per command.
  Result<std::vector<RedisReply>> RoundTrip(std::span<const RedisArgs> commands);

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

 private:
  // RoundTrip on an open connection.
  Result<std::vector<RedisReply>> Exchange(std::span<const RedisArgs> commands);

  // Opens the connection unless it is open or in its backoff window.
  Status EnsureOpen();
  Status Open();
  void Close();

  // After a failed read or write the stream is in an unknown state: close it. The next call
  // reconnects at once (a failing reconnect starts the backoff).
  Status Fail(const std::string& what, int err);

  // Writes every iovec, however many sendmsg calls it takes.
  Status Send(std::vector<iovec> iov);

  // Receives until hiredis' reader holds one whole reply. Bytes go straight into the
  // reader's buffer, which grows geometrically.
  Status ReadReply(RedisReply* out);

  // Frees a large read buffer once it holds nothing unread.
  void TrimReadBuffer();

  const std::string host_;
  const int port_;
  const std::string address_;
  const RedisClusterOptions& options_;
  Counters* const counters_;
  redisContext* ctx_ = nullptr;
  std::chrono::steady_clock::time_point retry_after_{};
  int backoff_ms_ = 0;
};

}  // namespace kvault

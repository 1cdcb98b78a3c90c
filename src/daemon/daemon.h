// kvaultd: one store per node, shared by every engine process of the node.
//
// The daemon owns an EmbeddedStore whose T1 lives in a memfd (StoreOptions::shared_t1).
// Clients (kvault::Client) speak protocol.h over a Unix socket, or over TCP from other nodes
// when enabled (a token is then required). Local clients the daemon trusts with T1 map the
// memfd and copy chunk bytes themselves; the others get the bytes inline.
//
// Trust and isolation (docs/DAEMON.md): with no tokens configured, every Unix-socket client
// may use any tenant and gets shared memory when its uid is the daemon's. With tokens, every
// client must present one and is bound to its tenant: a request naming another tenant's
// namespace is refused, and chunk keys of other tenants never match (keys are salted by the
// tenant). A bound client gets shared memory only when its token says so (shared memory
// exposes all of T1 to the client).
//
// Thread-safety: Start/Stop from one thread; the daemon runs one thread per connection, an
// accept thread per listener and the HTTP endpoint's threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvault/options.h"
#include "kvault/stats.h"
#include "kvault/status.h"

namespace kvault {

struct TenantToken {
  std::string tenant;
  std::string token;
  bool shared_memory = false;  // may map T1 (trusted local process)
};

struct DaemonOptions {
  StoreOptions store;             // shared_t1 is forced on
  std::string socket_path;        // "" = <store.dir>/kvaultd.sock
  int socket_mode = 0660;
  std::string tcp_listen;         // "host:port" for other nodes; "" = off (the default)
  std::vector<TenantToken> tokens;
  std::string metrics_host = "127.0.0.1";
  int metrics_port = -1;          // -1: no HTTP endpoint; 0: any free port
  // Memory limits (docs/DAEMON.md, "Limits"). A request's buffer grows as its bytes arrive,
  // never from what its header announces; beyond kConnectionBufferBytes per buffer
  // (message_budget.h), receive and inline reply buffers draw on one daemon-wide budget, and
  // a request or inline open that the budget cannot hold now is refused in its reply (a
  // refused request is still read to its end and dropped; the connection stays).
  uint32_t max_message_bytes = 256u << 20;  // any one frame; fixed-size requests get less
  uint64_t message_budget_bytes = 1ull << 30;
  uint32_t max_handles_per_connection = 1u << 16;  // open readers + writers
  uint32_t max_connections = 1024;
  // Deadlines. A connection must complete its hello within hello_timeout_ms of connecting;
  // afterwards it may idle between requests, but a request frame, once its first byte has
  // arrived, must be complete within frame_timeout_ms.
  int hello_timeout_ms = 5000;
  int frame_timeout_ms = 30000;
  int io_timeout_ms = 30000;      // a client that stops reading its replies this long is dropped
  // One line for each connection the daemon closes for a limit or a protocol error (at most
  // 20 lines a second; the rest are counted in a later line). Empty: no log. Called from the
  // connection and accept threads, possibly at once.
  std::function<void(const std::string&)> log;
};

// Parses a tokens file: one `tenant token [shm]` per line; '#' starts a comment.
Result<std::vector<TenantToken>> ParseTokensFile(const std::string& text);

struct DaemonCounters {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t requests = 0;
  uint64_t protocol_errors = 0;   // malformed, oversized, unexpected messages
  uint64_t auth_failures = 0;     // bad or missing token
  uint64_t tenant_violations = 0; // a bound client naming another tenant
  uint64_t handle_errors = 0;     // unknown handles, too many handles
  uint64_t budget_refusals = 0;   // requests and inline opens refused: the message budget was in use
  uint64_t frame_timeouts = 0;    // connections closed: a hello or a request frame not complete in time
  uint64_t bytes_received = 0;    // frame bytes read from clients
  uint64_t message_bytes_in_use = 0;  // of the message budget, now
  uint64_t message_bytes_peak = 0;    // of the message budget, the most at once
};

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();  // Stop()
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Stops accepting, closes every connection (releasing their pins and unfinished puts),
  // flushes the store to T2 and closes it. Idempotent.
  Status Stop();

  const std::string& socket_path() const;
  int tcp_port() const;      // -1 when off
  int metrics_port() const;  // -1 when off
  DaemonCounters Counters() const;
  StoreStats StoreStatistics() const;
  std::string MetricsText() const;  // Prometheus text (what /metrics serves)

  class Impl;

 private:
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvault

// The daemon's inside, shared by its two halves: daemon.cc (start and stop, listeners, the
// per-connection read loop, metrics) and request_handlers.cc (what each request does).
//
// Thread-safety: a Connection's fields other than `fd` and `done` belong to its connection
// thread; handlers run on that thread. The store is thread-safe. windows_ is guarded by
// windows_mu_, conns_ by conns_mu_; the counters and histograms are atomic.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "daemon/daemon.h"
#include "daemon/message_budget.h"
#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "metrics/http_endpoint.h"
#include "metrics/latency_histogram.h"
#include "store/embedded_store.h"
#include "store/mutex.h"

namespace kvault {

// The most tokens a connection's look-ahead window keeps (with their whole chunks' keys):
// a hint longer than this is kept for its head, so a window costs the daemon at most
// 4 MiB of tokens and 65,536 chunk keys per connection, whatever the hint's size.
inline constexpr size_t kMaxWindowTokens = 1u << 20;

// The buffer through which the daemon reads and drops bytes it will not keep (the rest of a
// refused frame, what a closing connection still sends): on the connection thread's stack.
inline constexpr size_t kDiscardBufferBytes = 16u << 10;

// One client connection. Everything but `fd` and `done` belongs to the connection's thread.
struct Connection {
  explicit Connection(MessageBudget* budget) : payload_share(budget), reply_share(budget) {}

  wire::UniqueFd fd;
  uint64_t id = 0;  // in log lines
  bool is_unix = true;
  std::thread thread;
  std::atomic<bool> done{false};

  bool hello_done = false;
  bool bound = false;  // requests must name `tenant`
  std::string tenant;
  bool shm = false;    // the client mapped T1; pieces instead of bytes
  uint64_t next_handle = 1;
  std::unordered_map<uint64_t, ChunkReader> readers;  // pins held for the client
  std::unordered_map<uint64_t, ChunkWriter> writers;  // puts in progress
  size_t largest_put_bytes = 0;  // the largest of `writers` (0 when none): caps a commit's frame
  // The request being received and handled; memory grows as its bytes arrive. Its capacity
  // beyond kConnectionBufferBytes is covered by payload_share and given back after the request.
  std::vector<std::byte> payload;
  BudgetShare payload_share;
  std::vector<std::byte> reply_bytes;  // an inline open reply's payload, until it is sent
  BudgetShare reply_share;             // covers reply_bytes beyond kConnectionBufferBytes
  // The last namespace used, rebuilt only when it changes (hashing the id costs a SHA-256).
  std::optional<wire::WireNamespace> last_wire;
  std::optional<Namespace> last_ns;
};

// Counters bumped from connection threads.
struct DaemonAtomicCounters {
  std::atomic<uint64_t> connections_accepted{0}, connections_open{0}, requests{0}, protocol_errors{0},
      auth_failures{0}, tenant_violations{0}, handle_errors{0}, budget_refusals{0}, frame_timeouts{0},
      bytes_received{0};
};

// The reply of a one-way request (kAbortPut, kRelease, kHint): none is sent.
struct NoReply {};

// The request of kFlush, kStats and kWaitPrefetch: no payload at all.
struct EmptyRequest {
  static constexpr const char* kWireName = "payload-free request";
  template <typename Self, typename V>
  static void Fields(Self&, V&) {}
};

class Daemon::Impl {
 public:
  explicit Impl(const DaemonOptions& o) : opt_(o) {}

  Status Start();
  Status Stop();
  std::string MetricsText() const;
  DaemonCounters Counters() const;
  int MetricsPort() const { return http_.port(); }
  StoreStats StoreStatistics() const { return store_ ? store_->Stats() : final_stats_; }

  DaemonOptions opt_;
  std::unique_ptr<Store> store_owner_;
  EmbeddedStore* store_ = nullptr;
  std::string socket_path_;
  int tcp_port_ = -1;

 private:
  // --- connections (daemon.cc) ---
  void AcceptLoop(int listen_fd, bool is_unix);
  void Serve(Connection* c);
  // Reads one request frame into c->payload (the deadlines are above it in daemon.cc). A frame
  // whose header announces more than its type may carry, or than the connection may send
  // before hello, is refused from the header; the buffer grows with the bytes that arrive,
  // drawing on the message budget past kConnectionBufferBytes. A frame the budget cannot hold
  // now is still read whole, its rest dropped through a kDiscardBufferBytes buffer: OK with
  // *refused set (kResourceExhausted) and c->payload holding the frame's head; the caller
  // answers it with Refuse and the connection stays. Not OK: kNotFound / kUnavailable, the
  // peer left; kResourceExhausted, a deadline passed; else a protocol error (the connection
  // is closed).
  Status ReceiveRequest(Connection* c, std::chrono::steady_clock::time_point hello_deadline, wire::FrameHeader* h,
                        Status* refused);
  // Waits, holding c's pins and slots, until the client closes its socket (or Stop() shuts
  // it), reading and dropping what arrives; called before a shared-memory connection that
  // holds handles lets them go (daemon.cc says why).
  void AwaitPeerClose(Connection* c);
  // Gives back the buffers of a finished request beyond each connection's allowance.
  static void TrimBuffers(Connection* c);
  // Writes one line to opt_.log, at most kLogLinesPerSecond a second.
  void Log(const std::string& line);
  Status Reply(Connection* c, wire::MsgType type, const std::vector<std::byte>& payload, int pass_fd = -1);

  // --- requests (request_handlers.cc) ---
  // Handles one request. A non-OK Status is a protocol violation: the caller sends kError
  // and closes the connection.
  Status Dispatch(Connection* c, wire::MsgType type, std::span<const std::byte> payload);
  // Answers a well-formed request that was read but not handled (the message budget could not
  // hold it) with `why` in a reply of its type: a lookup gets a lookup reply with no result,
  // a begin-put or commit-put its reply (the commit's put is dropped, as on any failed
  // commit); a one-way hint gets nothing (the connection's previous window stays). `head` is
  // the start of the request's payload. Not OK only when the reply could not be sent (or for
  // a type that never outgrows a connection's own buffer).
  Status Refuse(Connection* c, wire::MsgType type, std::span<const std::byte> head, const Status& why);
  // The one path of every request after hello: decode the request, resolve its namespace
  // when it names one (a bound client naming another tenant gets kPermissionDenied in the
  // reply, or nothing for a one-way request, and the violation is counted), run the handler,
  // send the reply (unless Rep is NoReply) and time it in `latency` (when not null).
  template <typename Req, typename Rep>
  Status Handle(Connection* c, std::span<const std::byte> payload, wire::MsgType reply_type, LatencyHistogram* latency,
                void (Impl::*handler)(Connection*, const Namespace&, Req&, Rep&));
  template <typename Req, typename Rep>
  Status Handle(Connection* c, std::span<const std::byte> payload, wire::MsgType reply_type, LatencyHistogram* latency,
                void (Impl::*handler)(Connection*, Req&, Rep&));
  template <typename Req, typename Rep, typename Run>
  Status HandleWith(Connection* c, std::span<const std::byte> payload, wire::MsgType reply_type,
                    LatencyHistogram* latency, Run run);

  Status OnHello(Connection* c, std::span<const std::byte> payload);
  // Each handler is only its request's own logic; the reply's status starts OK.
  void Lookup(Connection* c, const Namespace& ns, wire::LookupRequest& m, wire::LookupReply& r);
  void BeginPut(Connection* c, const Namespace& ns, wire::BeginPutRequest& m, wire::BeginPutReply& r);
  void CommitPut(Connection* c, wire::CommitPutRequest& m, wire::StatusReply& r);
  void AbortPut(Connection* c, wire::HandleRequest& m, NoReply& r);
  void Open(Connection* c, const Namespace& ns, wire::OpenRequest& m, wire::OpenReply& r);
  void Release(Connection* c, wire::HandleRequest& m, NoReply& r);
  void Hint(Connection* c, const Namespace& ns, wire::HintRequest& m, NoReply& r);
  void LookupKeyed(Connection* c, const Namespace& ns, wire::LookupKeyedRequest& m, wire::LookupReply& r);
  void HintKeyed(Connection* c, const Namespace& ns, wire::HintKeyedRequest& m, NoReply& r);
  void Flush(Connection* c, EmptyRequest& m, wire::StatusReply& r);
  void Stats(Connection* c, EmptyRequest& m, wire::StatsReply& r);
  void WaitPrefetch(Connection* c, EmptyRequest& m, wire::StatusReply& r);

  // Replaces connection c's look-ahead window (nullopt: c is gone) and hints the store with
  // every client's window merged: first prompts of all clients, then second ones, and so on,
  // so that each engine's next request ranks alike. A store has one window; without the merge
  // each engine's hint would erase the others'.
  struct ClientWindow {
    Namespace ns;
    std::vector<std::vector<uint32_t>> prompts;
    std::vector<std::vector<ChunkSpan>> full;  // each prompt's whole chunks, keyed once
  };
  void SetWindow(const Connection* c, std::optional<ClientWindow> w);
  // The namespace of a request, or kPermissionDenied when a bound client names another tenant.
  Result<const Namespace*> Resolve(Connection* c, const wire::WireNamespace& ns);
  bool HandlesFull(const Connection* c) const {
    return c->readers.size() + c->writers.size() >= opt_.max_handles_per_connection;
  }

  wire::UniqueFd unix_listener_, tcp_listener_;
  std::thread unix_accept_, tcp_accept_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  bool own_socket_ = false;  // this daemon bound socket_path_
  StoreStats final_stats_;   // the store's counters when Stop() closed it
  MessageBudget budget_{opt_.message_budget_bytes};  // before conns_: connections hold shares
  mutable Mutex conns_mu_;
  std::list<std::unique_ptr<Connection>> conns_ GUARDED_BY(conns_mu_);
  DaemonAtomicCounters counters_;
  struct LogLimiter {
    int64_t second = -1;   // steady-clock second of the lines counted in `lines`
    int lines = 0;
    uint64_t suppressed = 0;
  };
  Mutex log_mu_;
  LogLimiter log_limiter_ GUARDED_BY(log_mu_);
  Mutex windows_mu_;
  std::unordered_map<const Connection*, ClientWindow> windows_ GUARDED_BY(windows_mu_);
  LatencyHistogram lookup_seconds_, open_seconds_, begin_put_seconds_, commit_seconds_;
  HttpEndpoint http_;
  uid_t uid_ = geteuid();
};

}  // namespace kvault

// RedisCluster: a small blocking Redis Cluster client (RESP2) on hiredis, for the cluster
// tier (redis_tier.h).
//
// Routing. A key maps to one of 16384 slots: CRC16 of the key, or of its hash tag (the part
// between the first '{' and the next '}', when not empty). The slot map comes from CLUSTER
// SLOTS of any reachable node. A MOVED reply re-points that slot at once, asks for a full
// refresh and retries at the new owner; an ASK reply retries once at the target, after
// ASKING, without touching the map; TRYAGAIN (a multi-key command on a slot in migration)
// waits a little and retries. One call follows at most max_redirects of these.
//
// Connections. A small pool per node; a call leases one for itself (waiting at most
// command_timeout_ms for a free one). Commands are encoded here, binary safe, and sent with
// sendmsg straight from the caller's buffers (no copy of values); replies are parsed by
// hiredis' reader into RedisReply. A batch to one node is pipelined: every command is
// written, then every reply read (one round trip).
//
// Failures. A node that refuses the connection, drops it, or makes no progress for
// command_timeout_ms fails the call with kUnavailable (IsRedisTimeout tells a timeout); the
// connection is closed and reopened by a later call, after an exponential backoff during
// which calls to that node fail at once. Topology refreshes (after MOVED or a connection
// failure) run on a background thread, at most one per refresh_interval_ms, so no call waits
// for one.
//
// Thread-safety: every public method may be called from any thread at once.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kvault/status.h"
#include "store/mutex.h"

namespace kvault {

inline constexpr int kRedisClusterSlots = 16384;

struct RedisClusterOptions {
  std::vector<std::string> seeds;  // "host:port" of any nodes of the cluster
  std::string password;            // AUTH on every new connection when not empty
  int connect_timeout_ms = 200;
  // A call fails when a node makes no progress (no byte sent or received) for this long.
  int command_timeout_ms = 200;
  int connections_per_node = 4;
  int max_redirects = 5;             // MOVED / ASK / TRYAGAIN hops per call
  int refresh_interval_ms = 100;     // at most one CLUSTER SLOTS refresh per interval
  int reconnect_backoff_min_ms = 20;
  int reconnect_backoff_max_ms = 1000;
  // A connection keeps a read buffer up to this size between calls (larger ones are freed).
  size_t read_buffer_retain_bytes = 16u << 20;
};

// One RESP2 reply.
struct RedisReply {
  enum class Type : uint8_t { kNil, kString, kStatus, kError, kInteger, kArray };
  Type type = Type::kNil;
  int64_t integer = 0;
  std::vector<std::byte> bytes;      // kString, kStatus, kError
  std::vector<RedisReply> elements;  // kArray

  std::string_view text() const { return {reinterpret_cast<const char*>(bytes.data()), bytes.size()}; }
  bool IsNil() const { return type == Type::kNil; }
  bool IsError() const { return type == Type::kError; }
  bool IsString() const { return type == Type::kString; }
  bool IsOk() const { return type == Type::kStatus && text() == "OK"; }
};

// A command and its arguments, binary safe. The views must stay valid during the call.
using RedisArgs = std::vector<std::string_view>;

inline std::string_view AsStringView(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A single-key command, for RedisCluster::ForEachKey.
struct RedisKeyedCommand {
  std::string_view key;  // decides the slot
  RedisArgs args;
};

struct RedisClusterStats {
  uint64_t moved = 0, ask = 0, tryagain = 0;  // redirects followed
  uint64_t refreshes = 0, refresh_failures = 0;
  uint64_t connects = 0, connect_failures = 0;
  uint64_t io_errors = 0, timeouts = 0;  // failed round trips (timeouts counted in both)
  uint64_t backoff_rejections = 0;        // calls failed at once: the node is in backoff
};

// True when `s` is a failure of a RedisCluster call because a node made no progress in time.
bool IsRedisTimeout(const Status& s);
// True when `s` says a slot stayed in migration (TRYAGAIN) for every retry.
bool IsRedisTryAgain(const Status& s);

class RedisCluster {
 public:
  // Reads the slot map from the first seed that answers CLUSTER SLOTS; kUnavailable when none
  // does, kInvalidArgument for a malformed seed.
  static Result<std::unique_ptr<RedisCluster>> Connect(const RedisClusterOptions& options);
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  // CRC16 (XMODEM) of the key or of its hash tag, mod 16384.
  static uint16_t KeySlot(std::string_view key);

  // Runs one command on the node serving `slot_key`'s slot, following redirects.
  Result<RedisReply> Command(std::string_view slot_key, const RedisArgs& args);
  // Runs `commands` in order on the node serving `slot_key`'s slot, pipelined: one reply per
  // command. Every key they name must hash to that slot. A redirect in any reply sends the
  // whole batch again (so it must be safe to repeat); after ASK, ASKING goes before each
  // command outside a MULTI block (the flag lasts through a MULTI).
  Result<std::vector<RedisReply>> Pipeline(std::string_view slot_key, std::span<const RedisArgs> commands);
  // Runs single-key commands each on its key's node: one pipeline, one round trip, per node.
  // A command that gets redirected runs again on its own with Command. Results are in order;
  // a node that fails fails the commands it was sent.
  std::vector<Result<RedisReply>> ForEachKey(std::span<const RedisKeyedCommand> commands);
  // Runs one command on the node at `address` ("host:port"), no redirects (administration).
  Result<RedisReply> CommandAt(const std::string& address, const RedisArgs& args);

  // The node ("host:port") that the current map says serves `key`'s slot ("" if unknown).
  std::string NodeForKey(std::string_view key) const;
  // Addresses of the masters in the current map.
  std::vector<std::string> Masters() const;
  // Reads CLUSTER SLOTS now, in this thread.
  Status RefreshTopology();
  RedisClusterStats Stats() const;

 private:
  class Connection;
  struct Counters;
  struct Node;
  struct Redirect;

  explicit RedisCluster(const RedisClusterOptions& options);
  std::shared_ptr<Node> NodeAtLocked(const std::string& address) REQUIRES(topo_mu_);
  std::shared_ptr<Node> NodeAt(const std::string& address);
  std::shared_ptr<Node> NodeForSlot(uint16_t slot);
  // Sends `commands` to `node` on one of its connections and reads every reply (ASKING ones
  // dropped).
  Result<std::vector<RedisReply>> RoundTrip(Node& node, std::span<const RedisArgs> commands, bool asking);
  Status RefreshFrom(Node& node);
  void RequestRefresh();
  void RefreshLoop();
  // The first redirect among `replies`, if any. `from` is the node that answered.
  Redirect FindRedirect(const std::vector<RedisReply>& replies, const Node& from) const;

  const RedisClusterOptions options_;
  // Updated by the connections too; declared before nodes_ so that it outlives them.
  const std::unique_ptr<Counters> counters_;

  mutable SharedMutex topo_mu_;
  std::vector<std::shared_ptr<Node>> nodes_ GUARDED_BY(topo_mu_);  // every node ever seen
  // Index into nodes_ of each slot's master, -1 when unknown.
  std::array<int16_t, kRedisClusterSlots> slot_owner_ GUARDED_BY(topo_mu_);
  std::vector<int> masters_ GUARDED_BY(topo_mu_);  // indexes into nodes_

  Mutex refresh_mu_;
  std::condition_variable refresh_cv_;
  bool refresh_wanted_ GUARDED_BY(refresh_mu_) = false;
  bool stopping_ GUARDED_BY(refresh_mu_) = false;
  std::thread refresher_;

};

}  // namespace kvault

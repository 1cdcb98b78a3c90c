#include "store/redis_cluster.h"

#include <strings.h>

#include <algorithm>
#include <charconv>

#include "store/redis_connection.h"

namespace kvault {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kTimeoutTag = "redis timeout: ";
constexpr std::string_view kTryAgainTag = "redis tryagain: ";

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection, as Redis Cluster.
constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();

uint16_t Crc16(std::string_view data) {
  uint16_t crc = 0;
  for (unsigned char c : data) crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table[((crc >> 8) ^ c) & 0xff]);
  return crc;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// "host:port" -> parts; false when malformed.
bool ParseAddress(std::string_view address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string_view port_text = address.substr(colon + 1);
  int p = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || p <= 0 || p > 65535) return false;
  *host = std::string(address.substr(0, colon));
  *port = p;
  return true;
}
}  // namespace

bool IsRedisTimeout(const Status& s) { return !s.ok() && s.message().starts_with(kTimeoutTag); }
bool IsRedisTryAgain(const Status& s) { return !s.ok() && s.message().starts_with(kTryAgainTag); }

Status RedisTimeoutError(const std::string& what) { return Status::Unavailable(std::string(kTimeoutTag) + what); }

struct RedisCluster::Node {
  Node(const std::string& h, int p, const RedisClusterOptions& options, Counters* counters)
      : host(h), port(p), address(h + ":" + std::to_string(p)) {
    const int n = std::max(1, options.connections_per_node);
    for (int i = 0; i < n; ++i) pool.push_back(std::make_unique<Connection>(host, port, options, counters));
    busy.assign(pool.size(), false);
  }

  // A free connection, for the caller alone until Release; nullptr when none became free
  // within `wait`.
  Connection* Acquire(std::chrono::milliseconds wait) {
    MutexLock lock(mu);
    size_t index = 0;
    auto free_one = [&]() REQUIRES(mu) {
      for (size_t i = 0; i < busy.size(); ++i) {
        // Start after the last one handed out, so that every connection gets used.
        const size_t at = (next + i) % busy.size();
        if (!busy[at]) {
          index = at;
          return true;
        }
      }
      return false;
    };
    if (!cv.wait_for(lock.native(), wait, free_one)) return nullptr;
    busy[index] = true;
    next = index + 1;
    return pool[index].get();
  }

  void Release(Connection* conn) {
    {
      MutexLock lock(mu);
      for (size_t i = 0; i < pool.size(); ++i) {
        if (pool[i].get() == conn) busy[i] = false;
      }
    }
    cv.notify_one();
  }

  const std::string host;
  const int port;
  const std::string address;
  std::vector<std::unique_ptr<Connection>> pool;  // fixed after construction

  Mutex mu;
  std::condition_variable cv;  // signalled when a connection is released
  std::vector<bool> busy GUARDED_BY(mu);
  size_t next GUARDED_BY(mu) = 0;
};

struct RedisCluster::Redirect {
  enum class Kind { kNone, kMoved, kAsk, kTryAgain };
  Kind kind = Kind::kNone;
  uint16_t slot = 0;
  std::string address;
};

RedisCluster::RedisCluster(const RedisClusterOptions& options)
    : options_(options), counters_(std::make_unique<Counters>()) {
  slot_owner_.fill(-1);
}

RedisCluster::~RedisCluster() {
  {
    MutexLock lock(refresh_mu_);
    stopping_ = true;
  }
  refresh_cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
}

Result<std::unique_ptr<RedisCluster>> RedisCluster::Connect(const RedisClusterOptions& options) {
  if (options.seeds.empty()) return Status::InvalidArgument("redis: no seed nodes given");
  std::unique_ptr<RedisCluster> cluster(new RedisCluster(options));
  for (const std::string& seed : options.seeds) {
    std::string host;
    int port = 0;
    if (!ParseAddress(seed, &host, &port)) return Status::InvalidArgument("redis: bad seed '" + seed + "' (want host:port)");
  }
  Status st = cluster->RefreshTopology();
  if (!st.ok()) return Status::Unavailable("redis: no seed answered CLUSTER SLOTS: " + st.message());
  cluster->refresher_ = std::thread([c = cluster.get()] { c->RefreshLoop(); });
  return cluster;
}

uint16_t RedisCluster::KeySlot(std::string_view key) {
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return Crc16(key) & (kRedisClusterSlots - 1);
}

std::shared_ptr<RedisCluster::Node> RedisCluster::NodeAtLocked(const std::string& address) {
  for (const auto& node : nodes_) {
    if (node->address == address) return node;
  }
  std::string host;
  int port = 0;
  if (!ParseAddress(address, &host, &port)) return nullptr;
  nodes_.push_back(std::make_shared<Node>(host, port, options_, counters_.get()));
  return nodes_.back();
}

std::shared_ptr<RedisCluster::Node> RedisCluster::NodeAt(const std::string& address) {
  {
    ReaderMutexLock lock(topo_mu_);
    for (const auto& node : nodes_) {
      if (node->address == address) return node;
    }
  }
  WriterMutexLock lock(topo_mu_);
  return NodeAtLocked(address);
}

std::shared_ptr<RedisCluster::Node> RedisCluster::NodeForSlot(uint16_t slot) {
  ReaderMutexLock lock(topo_mu_);
  const int owner = slot_owner_[slot];
  if (owner >= 0) return nodes_[static_cast<size_t>(owner)];
  lock.Unlock();
  // Not in the map (a hole while the cluster is being changed): any master will redirect us.
  RequestRefresh();
  lock.Lock();
  if (!masters_.empty()) return nodes_[static_cast<size_t>(masters_[slot % masters_.size()])];
  return nodes_.empty() ? nullptr : nodes_.front();
}

Result<std::vector<RedisReply>> RedisCluster::RoundTrip(Node& node, std::span<const RedisArgs> commands, bool asking) {
  // A free connection; waiting for one no longer than the timeout.
  Connection* conn = node.Acquire(std::chrono::milliseconds(options_.command_timeout_ms));
  if (conn == nullptr) {
    counters_->timeouts.fetch_add(1, std::memory_order_relaxed);
    return RedisTimeoutError("every connection to " + node.address + " stayed busy");
  }
  struct Lease {
    Node& node;
    Connection* conn;
    ~Lease() { node.Release(conn); }
  } lease{node, conn};
  if (!asking) return conn->RoundTrip(commands);

  // ASKING before each command that is not inside a MULTI block; its replies are dropped.
  static const RedisArgs kAsking = {"ASKING"};
  std::vector<RedisArgs> sequence;
  std::vector<bool> is_asking;
  bool in_multi = false;
  for (const RedisArgs& args : commands) {
    if (!in_multi) {
      sequence.push_back(kAsking);
      is_asking.push_back(true);
    }
    sequence.push_back(args);
    is_asking.push_back(false);
    if (!args.empty() && EqualsIgnoreCase(args[0], "MULTI")) in_multi = true;
    if (!args.empty() && (EqualsIgnoreCase(args[0], "EXEC") || EqualsIgnoreCase(args[0], "DISCARD"))) in_multi = false;
  }
  auto replies = conn->RoundTrip(sequence);
  if (!replies.ok()) return replies;
  std::vector<RedisReply> kept;
  kept.reserve(commands.size());
  for (size_t i = 0; i < replies->size(); ++i) {
    if (!is_asking[i]) kept.push_back(std::move((*replies)[i]));
  }
  return kept;
}

RedisCluster::Redirect RedisCluster::FindRedirect(const std::vector<RedisReply>& replies, const Node& from) const {
  Redirect r;
  for (const RedisReply& reply : replies) {
    if (!reply.IsError()) continue;
    const std::string_view text = reply.text();
    if (text.starts_with("TRYAGAIN")) {
      r.kind = Redirect::Kind::kTryAgain;
      return r;
    }
    const bool moved = text.starts_with("MOVED ");
    if (!moved && !text.starts_with("ASK ")) continue;
    // "MOVED <slot> <host>:<port>"; the host may be empty (the answering node's host then).
    const size_t slot_at = text.find(' ') + 1;
    const size_t addr_at = text.find(' ', slot_at);
    if (addr_at == std::string_view::npos) continue;
    unsigned slot = 0;
    std::from_chars(text.data() + slot_at, text.data() + addr_at, slot);
    std::string address(text.substr(addr_at + 1));
    if (address.starts_with(":")) address = from.host + address;
    r.kind = moved ? Redirect::Kind::kMoved : Redirect::Kind::kAsk;
    r.slot = static_cast<uint16_t>(slot % kRedisClusterSlots);
    r.address = std::move(address);
    return r;
  }
  return r;
}

Result<std::vector<RedisReply>> RedisCluster::Pipeline(std::string_view slot_key, std::span<const RedisArgs> commands) {
  std::shared_ptr<Node> node = NodeForSlot(KeySlot(slot_key));
  if (node == nullptr) return Status::Unavailable("redis: no node known");
  bool asking = false;
  int tryagain_wait_ms = 5;
  for (int hop = 0;; ++hop) {
    auto replies = RoundTrip(*node, commands, asking);
    if (!replies.ok()) {
      RequestRefresh();  // the node may have gone away or lost its slots
      return replies.status();
    }
    const Redirect r = FindRedirect(*replies, *node);
    if (r.kind == Redirect::Kind::kNone) return replies;
    if (hop >= options_.max_redirects) {
      if (r.kind == Redirect::Kind::kTryAgain) {
        return Status::Unavailable(std::string(kTryAgainTag) + "slot of '" + std::string(slot_key) +
                                   "' stays in migration");
      }
      return Status::Unavailable("redis: too many redirects for '" + std::string(slot_key) + "'");
    }
    switch (r.kind) {
      case Redirect::Kind::kMoved: {
        counters_->moved.fetch_add(1, std::memory_order_relaxed);
        {
          WriterMutexLock lock(topo_mu_);
          node = NodeAtLocked(r.address);
          if (node == nullptr) return Status::Unavailable("redis: bad MOVED address " + r.address);
          for (size_t i = 0; i < nodes_.size(); ++i) {
            if (nodes_[i] == node) slot_owner_[r.slot] = static_cast<int16_t>(i);
          }
        }
        RequestRefresh();
        asking = false;
        break;
      }
      case Redirect::Kind::kAsk:
        counters_->ask.fetch_add(1, std::memory_order_relaxed);
        node = NodeAt(r.address);
        if (node == nullptr) return Status::Unavailable("redis: bad ASK address " + r.address);
        asking = true;
        break;
      case Redirect::Kind::kTryAgain:
        counters_->tryagain.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::sleep_for(std::chrono::milliseconds(tryagain_wait_ms));
        tryagain_wait_ms *= 2;
        break;
      case Redirect::Kind::kNone:
        break;
    }
  }
}

Result<RedisReply> RedisCluster::Command(std::string_view slot_key, const RedisArgs& args) {
  auto replies = Pipeline(slot_key, std::span<const RedisArgs>(&args, 1));
  if (!replies.ok()) return replies.status();
  return std::move((*replies)[0]);
}

std::vector<Result<RedisReply>> RedisCluster::ForEachKey(std::span<const RedisKeyedCommand> commands) {
  std::vector<Result<RedisReply>> results(commands.size(), Result<RedisReply>(Status::Unavailable("not run")));
  // Group by node (a handful of nodes: a linear search is fine).
  std::vector<std::pair<std::shared_ptr<Node>, std::vector<size_t>>> groups;
  for (size_t i = 0; i < commands.size(); ++i) {
    std::shared_ptr<Node> node = NodeForSlot(KeySlot(commands[i].key));
    if (node == nullptr) {
      results[i] = Status::Unavailable("redis: no node known");
      continue;
    }
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == node; });
    if (it == groups.end()) {
      groups.push_back({node, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(i);
  }
  for (auto& [node, indexes] : groups) {
    std::vector<RedisArgs> batch;
    batch.reserve(indexes.size());
    for (size_t i : indexes) batch.push_back(commands[i].args);
    auto replies = RoundTrip(*node, batch, /*asking=*/false);
    if (!replies.ok()) {
      RequestRefresh();
      for (size_t i : indexes) results[i] = replies.status();
      continue;
    }
    for (size_t j = 0; j < indexes.size(); ++j) {
      const size_t i = indexes[j];
      std::vector<RedisReply> one;
      one.push_back(std::move((*replies)[j]));
      if (FindRedirect(one, *node).kind != Redirect::Kind::kNone) {
        results[i] = Command(commands[i].key, commands[i].args);
      } else {
        results[i] = std::move(one[0]);
      }
    }
  }
  return results;
}

Result<RedisReply> RedisCluster::CommandAt(const std::string& address, const RedisArgs& args) {
  std::shared_ptr<Node> node = NodeAt(address);
  if (node == nullptr) return Status::InvalidArgument("redis: bad address '" + address + "'");
  auto replies = RoundTrip(*node, std::span<const RedisArgs>(&args, 1), /*asking=*/false);
  if (!replies.ok()) return replies.status();
  return std::move((*replies)[0]);
}

Status RedisCluster::RefreshFrom(Node& node) {
  const RedisArgs args = {"CLUSTER", "SLOTS"};
  auto replies = RoundTrip(node, std::span<const RedisArgs>(&args, 1), /*asking=*/false);
  if (!replies.ok()) return replies.status();
  const RedisReply& reply = (*replies)[0];
  if (reply.IsError()) return Status::Unavailable("redis CLUSTER SLOTS at " + node.address + ": " + std::string(reply.text()));
  if (reply.type != RedisReply::Type::kArray) return Status::IOError("redis CLUSTER SLOTS at " + node.address + ": not an array");
  // Each range: [first slot, last slot, [host, port, id, ...] of the master, replicas...].
  struct Range {
    int first, last;
    std::string address;
  };
  std::vector<Range> ranges;
  for (const RedisReply& r : reply.elements) {
    if (r.type != RedisReply::Type::kArray || r.elements.size() < 3) continue;
    const RedisReply& master = r.elements[2];
    if (r.elements[0].type != RedisReply::Type::kInteger || r.elements[1].type != RedisReply::Type::kInteger ||
        master.type != RedisReply::Type::kArray || master.elements.size() < 2 ||
        master.elements[1].type != RedisReply::Type::kInteger) {
      continue;
    }
    const int first = static_cast<int>(r.elements[0].integer), last = static_cast<int>(r.elements[1].integer);
    if (first < 0 || last >= kRedisClusterSlots || first > last) continue;
    std::string host(master.elements[0].text());
    if (host.empty() || host == "?") host = node.host;  // the node does not know its own address
    ranges.push_back({first, last, host + ":" + std::to_string(master.elements[1].integer)});
  }
  if (ranges.empty()) return Status::Unavailable("redis CLUSTER SLOTS at " + node.address + ": no slot assigned");

  WriterMutexLock lock(topo_mu_);
  slot_owner_.fill(-1);
  masters_.clear();
  for (const Range& range : ranges) {
    std::shared_ptr<Node> owner = NodeAtLocked(range.address);
    if (owner == nullptr) continue;
    const int index = static_cast<int>(std::find(nodes_.begin(), nodes_.end(), owner) - nodes_.begin());
    if (std::find(masters_.begin(), masters_.end(), index) == masters_.end()) masters_.push_back(index);
    std::fill(slot_owner_.begin() + range.first, slot_owner_.begin() + range.last + 1, static_cast<int16_t>(index));
  }
  return Status::OK();
}

Status RedisCluster::RefreshTopology() {
  // The current masters first, then the seeds.
  std::vector<std::string> candidates = Masters();
  for (const std::string& seed : options_.seeds) {
    if (std::find(candidates.begin(), candidates.end(), seed) == candidates.end()) candidates.push_back(seed);
  }
  Status last = Status::Unavailable("redis: no node to ask");
  for (const std::string& address : candidates) {
    std::shared_ptr<Node> node = NodeAt(address);
    if (node == nullptr) continue;
    last = RefreshFrom(*node);
    if (last.ok()) {
      counters_->refreshes.fetch_add(1, std::memory_order_relaxed);
      return last;
    }
  }
  counters_->refresh_failures.fetch_add(1, std::memory_order_relaxed);
  return last;
}

void RedisCluster::RequestRefresh() {
  {
    MutexLock lock(refresh_mu_);
    refresh_wanted_ = true;
  }
  refresh_cv_.notify_one();
}

void RedisCluster::RefreshLoop() {
  MutexLock lock(refresh_mu_);
  Clock::time_point last{};
  for (;;) {
    refresh_cv_.wait(lock.native(), [&]() REQUIRES(refresh_mu_) { return stopping_ || refresh_wanted_; });
    if (stopping_) return;
    const Clock::time_point earliest = last + std::chrono::milliseconds(options_.refresh_interval_ms);
    if (refresh_cv_.wait_until(lock.native(), earliest, [&]() REQUIRES(refresh_mu_) { return stopping_; })) return;
    refresh_wanted_ = false;
    lock.Unlock();
    (void)RefreshTopology();  // a failure is counted; the next trigger tries again
    lock.Lock();
    last = Clock::now();
  }
}

std::string RedisCluster::NodeForKey(std::string_view key) const {
  ReaderMutexLock lock(topo_mu_);
  const int owner = slot_owner_[KeySlot(key)];
  return owner >= 0 ? nodes_[static_cast<size_t>(owner)]->address : std::string();
}

std::vector<std::string> RedisCluster::Masters() const {
  ReaderMutexLock lock(topo_mu_);
  std::vector<std::string> out;
  for (int index : masters_) out.push_back(nodes_[static_cast<size_t>(index)]->address);
  return out;
}

RedisClusterStats RedisCluster::Stats() const {
  const Counters& c = *counters_;
  RedisClusterStats s;
  s.moved = c.moved.load(std::memory_order_relaxed);
  s.ask = c.ask.load(std::memory_order_relaxed);
  s.tryagain = c.tryagain.load(std::memory_order_relaxed);
  s.refreshes = c.refreshes.load(std::memory_order_relaxed);
  s.refresh_failures = c.refresh_failures.load(std::memory_order_relaxed);
  s.connects = c.connects.load(std::memory_order_relaxed);
  s.connect_failures = c.connect_failures.load(std::memory_order_relaxed);
  s.io_errors = c.io_errors.load(std::memory_order_relaxed);
  s.timeouts = c.timeouts.load(std::memory_order_relaxed);
  s.backoff_rejections = c.backoff_rejections.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvault

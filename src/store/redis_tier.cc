#include "store/redis_tier.h"

#include <atomic>
#include <chrono>
#include <list>
#include <unordered_map>

#include "store/little_endian.h"
#include "store/mutex.h"
#include "store/redis_cluster.h"

namespace kvault {
namespace {

constexpr uint64_t kManifestMagic = 0x3154494c5053564bull;  // "KVSPLIT1"
constexpr uint64_t kMaxValueBytes = 1ull << 40;

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::byte>;

Status ReplyError(std::string_view what, const RedisReply& reply) {
  return Status::Unavailable("redis " + std::string(what) + ": " + std::string(reply.text()));
}

}  // namespace

std::string RedisHeadKey(const std::string& prefix, const ChunkKey& key) { return prefix + "{" + key.Hex() + "}"; }

std::string RedisPartKey(const std::string& prefix, const ChunkKey& key, uint32_t part) {
  return RedisHeadKey(prefix, key) + ":" + std::to_string(part);
}

std::vector<std::byte> RedisManifest::Encode() const {
  std::vector<std::byte> out(kBytes);
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  EncodeLE64(p, kManifestMagic);
  EncodeLE64(p + 8, total_bytes);
  EncodeLE64(p + 16, part_bytes);
  EncodeLE32(p + 24, parts);
  EncodeLE32(p + 28, 0);
  return out;
}

bool RedisManifest::LooksLikeManifest(std::span<const std::byte> value) {
  return value.size() == kBytes && DecodeLE64(reinterpret_cast<const uint8_t*>(value.data())) == kManifestMagic;
}

std::optional<RedisManifest> RedisManifest::Decode(std::span<const std::byte> value) {
  if (!LooksLikeManifest(value)) return std::nullopt;
  const auto* p = reinterpret_cast<const uint8_t*>(value.data());
  RedisManifest m;
  m.total_bytes = DecodeLE64(p + 8);
  m.part_bytes = DecodeLE64(p + 16);
  m.parts = DecodeLE32(p + 24);
  const bool consistent = DecodeLE32(p + 28) == 0 && m.part_bytes > 0 && m.total_bytes > 0 &&
                          m.total_bytes <= kMaxValueBytes &&
                          m.parts == (m.total_bytes + m.part_bytes - 1) / m.part_bytes;
  if (!consistent) return std::nullopt;
  return m;
}

uint64_t RedisManifest::PartSize(uint32_t part) const {
  return part < parts ? part_bytes : total_bytes - (uint64_t{parts} - 1) * part_bytes;
}

namespace {

class RedisTier final : public RemoteTier {
 public:
  RedisTier(const RedisTierOptions& options, std::unique_ptr<RedisCluster> cluster)
      : options_(options), ttl_text_(std::to_string(options.ttl_seconds)), cluster_(std::move(cluster)) {}

  std::string name() const override { return "redis"; }

  Status Put(const ChunkKey& key, std::span<const std::byte> record) override {
    if (record.empty() || record.size() > kMaxValueBytes) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      return Status::InvalidArgument("redis tier: value of " + std::to_string(record.size()) + " bytes");
    }
    if (options_.budget_bytes != 0 && record.size() > options_.budget_bytes) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      return Status::NoSpace("redis tier: value larger than the budget");
    }
    const std::string head = RedisHeadKey(options_.key_prefix, key);
    const bool split = record.size() > options_.part_bytes || RedisManifest::LooksLikeManifest(record);
    RedisManifest manifest;
    if (split) {
      manifest.total_bytes = record.size();
      manifest.part_bytes = options_.part_bytes;
      manifest.parts = static_cast<uint32_t>((record.size() + options_.part_bytes - 1) / options_.part_bytes);
    }
    std::vector<Owned> victims;
    const uint64_t ticket = Admit(key, record.size(), split ? manifest.parts : 0, &victims);
    DeleteValues(victims);

    Status st = split ? WriteSplit(key, head, record, manifest) : WriteWhole(head, record);
    if (!st.ok()) {
      Forget(key, ticket);
      CountFailure(st);
      return st;
    }
    counters_.puts.fetch_add(1, std::memory_order_relaxed);
    counters_.bytes_put.fetch_add(record.size(), std::memory_order_relaxed);
    return st;
  }

  Result<std::vector<std::byte>> Get(const ChunkKey& key) override {
    counters_.gets.fetch_add(1, std::memory_order_relaxed);
    const std::string head = RedisHeadKey(options_.key_prefix, key);
    auto value = Read(key, head);
    if (!value.ok()) {
      if (value.status().code() != Code::kNotFound) CountFailure(value.status());
      return value;
    }
    counters_.get_hits.fetch_add(1, std::memory_order_relaxed);
    counters_.bytes_got.fetch_add(value->size(), std::memory_order_relaxed);
    Touch(key);
    return value;
  }

  std::vector<bool> Contains(std::span<const ChunkKey> keys) override {
    counters_.contains_queries.fetch_add(keys.size(), std::memory_order_relaxed);
    std::vector<std::string> heads;
    heads.reserve(keys.size());
    for (const ChunkKey& key : keys) heads.push_back(RedisHeadKey(options_.key_prefix, key));
    std::vector<RedisKeyedCommand> commands;
    commands.reserve(keys.size());
    for (const std::string& head : heads) commands.push_back({head, {"EXISTS", head}});
    std::vector<Result<RedisReply>> replies = cluster_->ForEachKey(commands);
    std::vector<bool> present(keys.size(), false);
    for (size_t i = 0; i < replies.size(); ++i) {
      if (!replies[i].ok()) {
        CountFailure(replies[i].status());
      } else if (replies[i]->type == RedisReply::Type::kInteger) {
        present[i] = replies[i]->integer == 1;
      } else {
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
      }
    }
    return present;
  }

  RemoteTierStats Stats() const override {
    RemoteTierStats s = counters_.Snapshot();
    s.capacity_bytes = options_.budget_bytes;
    MutexLock lock(mu_);
    s.used_bytes = used_bytes_;
    return s;
  }

 private:
  // A value this instance put, as its budget counts it.
  struct Owned {
    ChunkKey key;
    uint64_t bytes = 0;
    uint32_t parts = 0;  // 0: stored whole
    uint64_t ticket = 0;  // tells this Put's entry from a later Put's of the same key
    Clock::time_point put_at;
  };
  using Lru = std::list<Owned>;  // least recently used first

  void AppendExpiry(RedisArgs* args) const {
    if (options_.ttl_seconds == 0) return;
    args->push_back("EX");
    args->push_back(ttl_text_);
  }

  Status WriteWhole(const std::string& head, std::span<const std::byte> value) {
    RedisArgs set = {"SET", head, AsStringView(value)};
    AppendExpiry(&set);
    auto reply = cluster_->Command(head, set);
    if (!reply.ok()) return reply.status();
    return reply->IsOk() ? Status::OK() : ReplyError("SET", *reply);
  }

  // The SET of every part, then the manifest's.
  std::vector<RedisArgs> SplitWrites(const std::vector<std::string>& part_keys, const std::string& head,
                                     std::span<const std::byte> value, const RedisManifest& m,
                                     std::span<const std::byte> manifest_bytes) const {
    std::vector<RedisArgs> sets;
    for (uint32_t part = 1; part <= m.parts; ++part) {
      const uint64_t offset = uint64_t{part - 1} * m.part_bytes;
      RedisArgs set = {"SET", part_keys[part - 1], AsStringView(value.subspan(offset, m.PartSize(part)))};
      AppendExpiry(&set);
      sets.push_back(std::move(set));
    }
    RedisArgs set_head = {"SET", head, AsStringView(manifest_bytes)};
    AppendExpiry(&set_head);
    sets.push_back(std::move(set_head));
    return sets;
  }

  // Parts and manifest in one MULTI/EXEC. While the slot migrates Redis refuses a multi-key
  // transaction (TRYAGAIN); then each key is written on its own, the manifest last.
  Status WriteSplit(const ChunkKey& key, const std::string& head, std::span<const std::byte> value,
                    const RedisManifest& m) {
    std::vector<std::string> part_keys;
    for (uint32_t part = 1; part <= m.parts; ++part) part_keys.push_back(RedisPartKey(options_.key_prefix, key, part));
    const Bytes manifest_bytes = m.Encode();
    std::vector<RedisArgs> sets = SplitWrites(part_keys, head, value, m, manifest_bytes);

    std::vector<RedisArgs> transaction;
    transaction.reserve(sets.size() + 2);
    transaction.push_back({"MULTI"});
    transaction.insert(transaction.end(), sets.begin(), sets.end());
    transaction.push_back({"EXEC"});
    auto replies = cluster_->Pipeline(head, transaction);
    if (!replies.ok()) {
      if (!IsRedisTryAgain(replies.status())) return replies.status();
      return WriteInOrder(head, sets);
    }
    const RedisReply& exec = replies->back();
    if (exec.type != RedisReply::Type::kArray || exec.elements.size() != sets.size()) {
      // EXECABORT: the reason is the first queued command that failed.
      for (const RedisReply& r : *replies) {
        if (r.IsError()) return ReplyError("MULTI/EXEC", r);
      }
      return ReplyError("EXEC", exec);
    }
    for (const RedisReply& r : exec.elements) {
      if (!r.IsOk()) return ReplyError("SET in EXEC", r);
    }
    return Status::OK();
  }

  // One SET at a time, in order (the manifest is last), each following its own redirects.
  Status WriteInOrder(const std::string& head, const std::vector<RedisArgs>& sets) {
    for (const RedisArgs& set : sets) {
      auto reply = cluster_->Command(head, set);
      if (!reply.ok()) return reply.status();
      if (!reply->IsOk()) return ReplyError("SET", *reply);
    }
    return Status::OK();
  }

  Result<Bytes> Read(const ChunkKey& key, const std::string& head) {
    auto reply = cluster_->Command(head, {"GET", head});
    if (!reply.ok()) return reply.status();
    if (reply->IsNil()) return Status::NotFound("redis: no value");
    if (!reply->IsString()) return ReplyError("GET", *reply);
    if (!RedisManifest::LooksLikeManifest(reply->bytes)) return std::move(reply->bytes);
    const std::optional<RedisManifest> m = RedisManifest::Decode(reply->bytes);
    if (!m) return Status::NotFound("redis: damaged manifest");
    return ReadSplit(key, head, *m, reply->bytes);
  }

  // The parts under one MULTI/EXEC with the manifest again, so that they are one snapshot;
  // while the slot migrates (TRYAGAIN), key by key with the manifest read last.
  Result<Bytes> ReadSplit(const ChunkKey& key, const std::string& head, const RedisManifest& m,
                          const Bytes& manifest_bytes) {
    std::vector<std::string> part_keys;
    for (uint32_t part = 1; part <= m.parts; ++part) part_keys.push_back(RedisPartKey(options_.key_prefix, key, part));
    std::vector<RedisArgs> transaction = {{"MULTI"}};
    for (const std::string& part_key : part_keys) transaction.push_back({"GET", part_key});
    transaction.push_back({"GET", head});
    transaction.push_back({"EXEC"});
    auto replies = cluster_->Pipeline(head, transaction);
    std::vector<RedisReply> values;
    if (replies.ok()) {
      RedisReply& exec = replies->back();
      if (exec.type != RedisReply::Type::kArray || exec.elements.size() != m.parts + 1) return ReplyError("EXEC", exec);
      values = std::move(exec.elements);
    } else if (IsRedisTryAgain(replies.status())) {
      std::vector<RedisKeyedCommand> gets;
      for (size_t i = 0; i < transaction.size() - 2; ++i) gets.push_back({head, transaction[i + 1]});
      for (auto& r : cluster_->ForEachKey(gets)) {
        if (!r.ok()) return r.status();
        values.push_back(std::move(*r));
      }
    } else {
      return replies.status();
    }
    return Assemble(m, manifest_bytes, values);
  }

  // The value from its parts, then the manifest as read after them: a miss unless the
  // manifest is unchanged and every part is there with its exact size.
  static Result<Bytes> Assemble(const RedisManifest& m, const Bytes& manifest_bytes, std::vector<RedisReply>& values) {
    const RedisReply& again = values.back();
    if (!again.IsString() || again.bytes != manifest_bytes) return Status::NotFound("redis: value replaced while read");
    for (uint32_t part = 1; part <= m.parts; ++part) {
      const RedisReply& r = values[part - 1];
      if (r.IsError()) return ReplyError("GET part", r);
      if (!r.IsString()) return Status::NotFound("redis: part " + std::to_string(part) + " missing");
      if (r.bytes.size() != m.PartSize(part)) return Status::NotFound("redis: part " + std::to_string(part) + " has the wrong size");
    }
    Bytes out;
    out.reserve(m.total_bytes);
    for (uint32_t part = 1; part <= m.parts; ++part) {
      Bytes& piece = values[part - 1].bytes;
      if (part == 1) {
        out = std::move(piece);
        out.reserve(m.total_bytes);
      } else {
        out.insert(out.end(), piece.begin(), piece.end());
        Bytes().swap(piece);
      }
    }
    return out;
  }

  // Accounts a value about to be put (replacing this key's entry) and picks the values to
  // delete to stay within the budget, oldest first. Returns the entry's ticket.
  uint64_t Admit(const ChunkKey& key, uint64_t bytes, uint32_t parts, std::vector<Owned>* victims) {
    MutexLock lock(mu_);
    EraseLocked(key);
    const Clock::time_point now = Clock::now();
    DropExpiredLocked(now);
    const uint64_t ticket = next_ticket_++;
    lru_.push_back({key, bytes, parts, ticket, now});
    index_[key] = std::prev(lru_.end());
    used_bytes_ += bytes;
    while (options_.budget_bytes != 0 && used_bytes_ > options_.budget_bytes && lru_.front().key != key) {
      victims->push_back(lru_.front());
      EraseLocked(lru_.front().key);
      counters_.evictions.fetch_add(1, std::memory_order_relaxed);
    }
    return ticket;
  }

  // Entries old enough to have expired in Redis stop counting. TTLs are equal, so the oldest
  // puts expire first; an expired entry behind a newer one waits until it reaches the front.
  void DropExpiredLocked(Clock::time_point now) REQUIRES(mu_) {
    if (options_.ttl_seconds == 0) return;
    while (!lru_.empty() && now - lru_.front().put_at > std::chrono::seconds(options_.ttl_seconds)) {
      EraseLocked(lru_.front().key);
    }
  }

  void EraseLocked(const ChunkKey& key) REQUIRES(mu_) {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    used_bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }

  // Undoes Admit after a failed write, unless a later Put of the key replaced the entry.
  void Forget(const ChunkKey& key, uint64_t ticket) {
    MutexLock lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end() && it->second->ticket == ticket) EraseLocked(key);
  }

  void Touch(const ChunkKey& key) {
    MutexLock lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) lru_.splice(lru_.end(), lru_, it->second);
  }

  // Deletes each value (head and parts in one DEL: one slot), one round trip per node.
  void DeleteValues(const std::vector<Owned>& victims) {
    if (victims.empty()) return;
    std::vector<std::vector<std::string>> keys(victims.size());
    std::vector<RedisKeyedCommand> dels(victims.size());
    for (size_t i = 0; i < victims.size(); ++i) {
      keys[i].push_back(RedisHeadKey(options_.key_prefix, victims[i].key));
      for (uint32_t part = 1; part <= victims[i].parts; ++part) {
        keys[i].push_back(RedisPartKey(options_.key_prefix, victims[i].key, part));
      }
      dels[i].key = keys[i][0];
      dels[i].args.push_back("DEL");
      for (const std::string& k : keys[i]) dels[i].args.push_back(k);
    }
    for (const auto& r : cluster_->ForEachKey(dels)) {
      if (!r.ok()) CountFailure(r.status());
    }
  }

  void CountFailure(const Status& st) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (IsRedisTimeout(st)) counters_.timeouts.fetch_add(1, std::memory_order_relaxed);
  }

  const RedisTierOptions options_;
  const std::string ttl_text_;
  const std::unique_ptr<RedisCluster> cluster_;

  mutable Mutex mu_;
  Lru lru_ GUARDED_BY(mu_);
  std::unordered_map<ChunkKey, Lru::iterator, DigestHash> index_ GUARDED_BY(mu_);
  uint64_t used_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t next_ticket_ GUARDED_BY(mu_) = 1;

  RemoteTierCounters counters_;
};

}  // namespace

Result<std::unique_ptr<RemoteTier>> OpenRedisTier(const RedisTierOptions& options) {
  if (options.seeds.empty()) return Status::InvalidArgument("redis tier: no seeds");
  if (options.part_bytes == 0) return Status::InvalidArgument("redis tier: part_bytes must be positive");
  if (options.timeout_ms <= 0) return Status::InvalidArgument("redis tier: timeout_ms must be positive");
  if (options.key_prefix.find_first_of("{}") != std::string::npos) {
    return Status::InvalidArgument("redis tier: the key prefix may not contain '{' or '}' (hash tags)");
  }
  RedisClusterOptions c;
  c.seeds = options.seeds;
  c.password = options.password;
  c.connect_timeout_ms = options.timeout_ms;
  c.command_timeout_ms = options.timeout_ms;
  c.connections_per_node = options.connections_per_node;
  c.read_buffer_retain_bytes = options.part_bytes + (2u << 20);
  auto cluster = RedisCluster::Connect(c);
  if (!cluster.ok()) return cluster.status();
  return std::unique_ptr<RemoteTier>(new RedisTier(options, std::move(cluster.value())));
}

}  // namespace kvault

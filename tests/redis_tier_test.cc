// The Redis Cluster tier (src/store/redis_tier.h) and its client (src/store/redis_cluster.h)
// against a real 3-master Redis Cluster on loopback (local_redis_cluster.h): round trips of
// whole and split values, slot routing, MOVED and ASK during slot migration, TTL, the budget,
// damaged split values, a killed and a paused node, several threads, AUTH.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "local_cluster/local_redis_cluster.h"
#include "store/redis_cluster.h"
#include "store/redis_tier.h"
#include "store/remote_record.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::local_cluster::LocalRedisCluster;
using kvault::local_cluster::LocalRedisClusterOptions;
using kvault::local_cluster::LocalRedisReply;

using kvault::Code;
using kvault::OpenRedisTier;
using kvault::RedisCluster;
using kvault::RedisHeadKey;
using kvault::RedisPartKey;
using kvault::RedisTierOptions;
using kvault::RemoteTier;
using Bytes = std::vector<std::byte>;
using Clock = std::chrono::steady_clock;

constexpr char kPrefix[] = "kvault:";

ChunkKey KeyFor(const std::string& name) { return kvault::Sha256(name); }

int64_t MillisSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

std::string Head(const ChunkKey& key) { return RedisHeadKey(kPrefix, key); }
uint16_t SlotOf(const ChunkKey& key) { return RedisCluster::KeySlot(Head(key)); }

// A chunk record as the store writes it to T3: header (key, namespace, layout, checksum) and
// the payload of a full chunk of `layout`, derived from the key.
Bytes MakeRecord(const ChunkKey& key, const KvLayout& layout) {
  const Namespace ns = MakeNamespace(layout);
  const Bytes payload = PayloadFor(key, layout.chunk_bytes(layout.chunk_tokens));
  kvault::RecordHeader h;
  h.key = key;
  h.parent = ns.id();
  h.ns_id = ns.id();
  h.layout = layout;
  h.tokens = layout.chunk_tokens;
  h.payload_bytes = payload.size();
  h.payload_checksum = kvault::Checksum(payload);
  const std::span<const std::byte> pieces[] = {payload};
  return kvault::EncodeRemoteRecord(h, pieces);
}

// An opaque value of exactly `bytes` bytes, derived from the key.
Bytes MakeValue(const ChunkKey& key, size_t bytes) { return PayloadFor(key, bytes); }

// A key whose head key falls in `slot` (about 16k tries).
ChunkKey KeyInSlot(uint16_t slot, const std::string& tag) {
  for (uint64_t i = 0;; ++i) {
    const ChunkKey key = KeyFor(tag + std::to_string(i));
    if (SlotOf(key) == slot) return key;
  }
}

class RedisTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    cluster_ = LocalRedisCluster::Start({}, &error);
    ASSERT_TRUE(cluster_) << "cannot start a Redis Cluster: " << error;
  }

  std::unique_ptr<RemoteTier> Open(RedisTierOptions options = {}) {
    options.seeds = cluster_->Seeds();
    auto tier = OpenRedisTier(options);
    EXPECT_TRUE(tier.ok()) << tier.status().ToString();
    return tier.ok() ? std::move(tier.value()) : nullptr;
  }

  // A plain client for looking at the servers behind the tier's back.
  std::unique_ptr<RedisCluster> Client() {
    kvault::RedisClusterOptions options;
    options.seeds = cluster_->Seeds();
    options.command_timeout_ms = 2000;
    auto client = RedisCluster::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client.value()) : nullptr;
  }

  // How many of `keys` (all in the slot of the first) exist.
  int64_t CountExisting(RedisCluster& client, const std::vector<std::string>& keys) {
    kvault::RedisArgs args = {"EXISTS"};
    for (const std::string& k : keys) args.push_back(k);
    auto reply = client.Command(keys[0], args);
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? reply->integer : -1;
  }

  bool Admin(int node, const std::vector<std::string>& args, LocalRedisReply* reply = nullptr) {
    LocalRedisReply ignored;
    std::string error;
    const bool ok = cluster_->Command(node, args, reply != nullptr ? reply : &ignored, &error);
    EXPECT_TRUE(ok) << args[0] << " " << (args.size() > 1 ? args[1] : "") << ": " << error;
    return ok;
  }

  // Moves every key of `slot` from node `from` to node `to`; with `finish`, hands the slot
  // over too (CLUSTER SETSLOT NODE on every node), else leaves it MIGRATING / IMPORTING.
  void MigrateSlot(int slot, int from, int to, bool finish) {
    const std::string s = std::to_string(slot);
    const std::string from_id = cluster_->NodeId(from), to_id = cluster_->NodeId(to);
    ASSERT_TRUE(Admin(to, {"CLUSTER", "SETSLOT", s, "IMPORTING", from_id}));
    ASSERT_TRUE(Admin(from, {"CLUSTER", "SETSLOT", s, "MIGRATING", to_id}));
    LocalRedisReply keys;
    ASSERT_TRUE(Admin(from, {"CLUSTER", "GETKEYSINSLOT", s, "1000"}, &keys));
    if (!keys.elements.empty()) {
      std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", std::to_string(cluster_->port(to)), "", "0", "5000",
                                          "KEYS"};
      migrate.insert(migrate.end(), keys.elements.begin(), keys.elements.end());
      LocalRedisReply reply;
      ASSERT_TRUE(Admin(from, migrate, &reply));
      ASSERT_EQ(reply.text, "OK");
    }
    if (!finish) return;
    for (int i : {to, from}) ASSERT_TRUE(Admin(i, {"CLUSTER", "SETSLOT", s, "NODE", to_id}));
    for (int i = 0; i < cluster_->size(); ++i) {
      if (i != to && i != from) {
        ASSERT_TRUE(Admin(i, {"CLUSTER", "SETSLOT", s, "NODE", to_id}));
      }
    }
  }

  void ExpectValue(RemoteTier& tier, const ChunkKey& key, const Bytes& want) {
    auto got = tier.Get(key);
    ASSERT_TRUE(got.ok()) << key.ShortHex() << ": " << got.status().ToString();
    ASSERT_EQ(got->size(), want.size()) << key.ShortHex();
    EXPECT_TRUE(*got == want) << key.ShortHex() << ": bytes differ";
  }

  std::unique_ptr<LocalRedisCluster> cluster_;
};

// The client's slot function agrees with the server's on plain keys, hash tags and their edge
// cases, and binary keys.
TEST_F(RedisTierTest, KeySlotMatchesServer) {
  std::vector<std::string> keys = {"",        "foo",          "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap",
                                   "foo{bar}{zap}", "{}",     "{",                    "}{a}",       "a{b",
                                   std::string("bin\0ary{\xff\x01}", 11), Head(KeyFor("x"))};
  for (int i = 0; i < 200; ++i) keys.push_back("key-" + std::to_string(i * 7919));
  for (const std::string& key : keys) {
    LocalRedisReply reply;
    ASSERT_TRUE(Admin(0, {"CLUSTER", "KEYSLOT", key}, &reply));
    EXPECT_EQ(RedisCluster::KeySlot(key), reply.integer) << "key '" << key << "'";
  }
}

// Whole and split values come back byte for byte: chunk records of 16 KiB, 1 MiB and 64 MiB
// payloads (they decode as the records put) and opaque values at the 8 MiB split boundary.
// Contains and the counters follow.
TEST_F(RedisTierTest, RoundTripOfSeveralSizes) {
  auto tier = Open();
  ASSERT_TRUE(tier);
  // bf16, K and V: 2 x 2 bytes x layers x heads x dims x tokens.
  const KvLayout layouts[] = {MakeLayout(kvault::DType::kBF16, 4, 2, 32, 16),      // 16 KiB
                              MakeLayout(kvault::DType::kBF16, 32, 8, 128, 8),     // 1 MiB
                              MakeLayout(kvault::DType::kBF16, 32, 8, 128, 512)};  // 64 MiB: 8 parts + 168 bytes
  std::vector<ChunkKey> keys;
  std::vector<Bytes> values;
  std::vector<bool> is_record;
  for (const KvLayout& layout : layouts) {
    keys.push_back(KeyFor("record-" + layout.ToString()));
    values.push_back(MakeRecord(keys.back(), layout));
    is_record.push_back(true);
  }
  for (size_t size : {size_t{8} << 20, (size_t{8} << 20) + 1}) {
    keys.push_back(KeyFor("opaque-" + std::to_string(size)));
    values.push_back(MakeValue(keys.back(), size));
    is_record.push_back(false);
  }
  uint64_t total = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(tier->Put(keys[i], values[i]).ok()) << values[i].size();
    total += values[i].size();
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    auto got = tier->Get(keys[i]);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(*got == values[i]) << i << ": bytes differ";
    if (!is_record[i]) continue;
    kvault::RecordHeader h;
    std::span<const std::byte> payload;
    kvault::Status st = kvault::DecodeRemoteRecord(*got, keys[i], &h, &payload);
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(payload.size() + kvault::kHeaderBytes, values[i].size());
  }
  // Split values have their parts under the same hash tag; whole values have none.
  auto client = Client();
  ASSERT_TRUE(client);
  auto head_and_parts = [&](const ChunkKey& k, uint32_t parts) {
    std::vector<std::string> names = {Head(k)};
    for (uint32_t p = 1; p <= parts; ++p) names.push_back(RedisPartKey(kPrefix, k, p));
    return names;
  };
  EXPECT_EQ(CountExisting(*client, head_and_parts(keys[1], 1)), 1);   // 1 MiB: whole
  EXPECT_EQ(CountExisting(*client, head_and_parts(keys[2], 10)), 10);  // 64 MiB + 168: head + 9 parts
  EXPECT_EQ(CountExisting(*client, head_and_parts(keys[3], 1)), 1);   // exactly 8 MiB: whole
  EXPECT_EQ(CountExisting(*client, head_and_parts(keys[4], 3)), 3);   // 8 MiB + 1: head + 2 parts

  std::vector<ChunkKey> asked = keys;
  asked.push_back(KeyFor("absent"));
  const std::vector<bool> present = tier->Contains(asked);
  ASSERT_EQ(present.size(), asked.size());
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(present[i]) << i;
  EXPECT_FALSE(present.back());
  EXPECT_EQ(tier->Get(KeyFor("absent")).status().code(), Code::kNotFound);

  const kvault::RemoteTierStats s = tier->Stats();
  EXPECT_EQ(s.puts, keys.size());
  EXPECT_EQ(s.bytes_put, total);
  EXPECT_EQ(s.gets, keys.size() + 1);
  EXPECT_EQ(s.get_hits, keys.size());
  EXPECT_EQ(s.bytes_got, total);
  EXPECT_EQ(s.contains_queries, asked.size());
  EXPECT_EQ(s.errors, 0u);
  EXPECT_EQ(s.used_bytes, total);
  EXPECT_EQ(tier->name(), "redis");
}

// Small parts: sizes around part boundaries, and a value that looks like a manifest.
TEST_F(RedisTierTest, SplitBoundariesAndManifestLookalike) {
  RedisTierOptions options;
  options.part_bytes = 4096;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  for (size_t size : {size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{3 * 4096}, size_t{100003}}) {
    const ChunkKey key = KeyFor("boundary-" + std::to_string(size));
    const Bytes value = MakeValue(key, size);
    ASSERT_TRUE(tier->Put(key, value).ok()) << size;
    ExpectValue(*tier, key, value);
  }
  kvault::RedisManifest m;
  m.total_bytes = 1 << 20;
  m.part_bytes = 4096;
  m.parts = 256;
  const Bytes lookalike = m.Encode();
  ASSERT_TRUE(kvault::RedisManifest::LooksLikeManifest(lookalike));
  const ChunkKey key = KeyFor("lookalike");
  ASSERT_TRUE(tier->Put(key, lookalike).ok());
  ExpectValue(*tier, key, lookalike);
}

// Values land on every master, where the client's slot map says they are.
TEST_F(RedisTierTest, KeysSpreadOverAllMasters) {
  auto tier = Open();
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  ASSERT_EQ(client->Masters().size(), 3u);
  const int kValues = 60;
  for (int i = 0; i < kValues; ++i) {
    const ChunkKey key = KeyFor("spread-" + std::to_string(i));
    ASSERT_TRUE(tier->Put(key, MakeValue(key, 16 << 10)).ok());
    const int node = cluster_->NodeOfSlot(SlotOf(key));
    ASSERT_GE(node, 0);
    EXPECT_EQ(client->NodeForKey(Head(key)), cluster_->address(node));
  }
  long long sum = 0;
  for (int i = 0; i < cluster_->size(); ++i) {
    LocalRedisReply dbsize;
    ASSERT_TRUE(Admin(i, {"DBSIZE"}, &dbsize));
    EXPECT_GT(dbsize.integer, 0) << "node " << i << " holds nothing";
    sum += dbsize.integer;
  }
  EXPECT_EQ(sum, kValues);
}

// A slot handed over to another node: the tier, whose map is stale, follows MOVED; the client
// then points the slot at the new owner.
TEST_F(RedisTierTest, FollowsMovedAfterSlotMigration) {
  RedisTierOptions options;
  options.part_bytes = 256 << 10;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  const ChunkKey whole = KeyFor("moved-whole"), split = KeyFor("moved-split");
  const Bytes whole_value = MakeValue(whole, 200 << 10), split_value = MakeValue(split, 1 << 20);
  ASSERT_TRUE(tier->Put(whole, whole_value).ok());
  ASSERT_TRUE(tier->Put(split, split_value).ok());
  for (const ChunkKey& key : {whole, split}) {
    const int from = cluster_->NodeOfSlot(SlotOf(key));
    ASSERT_GE(from, 0);
    const int to = (from + 1) % cluster_->size();
    MigrateSlot(SlotOf(key), from, to, /*finish=*/true);
    ASSERT_EQ(cluster_->NodeOfSlot(SlotOf(key), to), to);
  }
  ExpectValue(*tier, whole, whole_value);
  ExpectValue(*tier, split, split_value);
  EXPECT_EQ(tier->Stats().errors, 0u);

  const uint64_t moved_before = client->Stats().moved;
  auto reply = client->Command(Head(whole), {"GET", Head(whole)});
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_TRUE(reply->bytes == whole_value);
  EXPECT_EQ(client->Stats().moved, moved_before + 1);
  EXPECT_EQ(client->NodeForKey(Head(whole)), cluster_->address(cluster_->NodeOfSlot(SlotOf(whole))));
  // Writes follow too.
  ASSERT_TRUE(tier->Put(split, split_value).ok());
  ExpectValue(*tier, split, split_value);
}

// A slot in migration (MIGRATING on its owner, IMPORTING on the target) whose keys already
// moved: reads follow ASK without changing the map; new keys of that slot, whole and split,
// are written and read; once the slot is handed over everything is still there.
TEST_F(RedisTierTest, FollowsAskWhileSlotMigrates) {
  RedisTierOptions options;
  options.part_bytes = 64 << 10;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  const ChunkKey old_key = KeyFor("ask-old");
  const uint16_t slot = SlotOf(old_key);
  const Bytes old_value = MakeValue(old_key, 50 << 10);
  ASSERT_TRUE(tier->Put(old_key, old_value).ok());
  const int from = cluster_->NodeOfSlot(slot);
  ASSERT_GE(from, 0);
  const int to = (from + 2) % cluster_->size();
  MigrateSlot(slot, from, to, /*finish=*/false);

  auto reply = client->Command(Head(old_key), {"GET", Head(old_key)});
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_TRUE(reply->bytes == old_value);
  EXPECT_GE(client->Stats().ask, 1u);
  EXPECT_EQ(client->Stats().moved, 0u);
  EXPECT_EQ(client->NodeForKey(Head(old_key)), cluster_->address(from)) << "ASK must not change the map";

  ExpectValue(*tier, old_key, old_value);
  const ChunkKey new_whole = KeyInSlot(slot, "ask-whole-"), new_split = KeyInSlot(slot, "ask-split-");
  const Bytes whole_value = MakeValue(new_whole, 60 << 10), split_value = MakeValue(new_split, 200 << 10);
  ASSERT_TRUE(tier->Put(new_whole, whole_value).ok());
  kvault::Status st = tier->Put(new_split, split_value);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectValue(*tier, new_whole, whole_value);
  ExpectValue(*tier, new_split, split_value);
  const std::vector<ChunkKey> asked = {old_key, new_whole, new_split, KeyInSlot(slot, "ask-absent-")};
  EXPECT_EQ(tier->Contains(asked), (std::vector<bool>{true, true, true, false}));

  MigrateSlot(slot, from, to, /*finish=*/true);
  ExpectValue(*tier, old_key, old_value);
  ExpectValue(*tier, new_whole, whole_value);
  ExpectValue(*tier, new_split, split_value);
  EXPECT_EQ(tier->Stats().errors, 0u);
}

// Every key of a value carries the TTL; after it the value is gone.
TEST_F(RedisTierTest, ValuesExpireAfterTtl) {
  RedisTierOptions options;
  options.ttl_seconds = 1;
  options.part_bytes = 64 << 10;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  const ChunkKey whole = KeyFor("ttl-whole"), split = KeyFor("ttl-split");
  ASSERT_TRUE(tier->Put(whole, MakeValue(whole, 20 << 10)).ok());
  ASSERT_TRUE(tier->Put(split, MakeValue(split, 150 << 10)).ok());
  for (const std::string& k : {Head(whole), Head(split), RedisPartKey(kPrefix, split, 1), RedisPartKey(kPrefix, split, 3)}) {
    auto pttl = client->Command(k, {"PTTL", k});
    ASSERT_TRUE(pttl.ok());
    EXPECT_GT(pttl->integer, 0) << k;
    EXPECT_LE(pttl->integer, 1000) << k;
  }
  EXPECT_TRUE(tier->Get(whole).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  EXPECT_EQ(tier->Get(whole).status().code(), Code::kNotFound);
  EXPECT_EQ(tier->Get(split).status().code(), Code::kNotFound);
  const std::vector<ChunkKey> keys = {whole, split};
  EXPECT_EQ(tier->Contains(keys), (std::vector<bool>{false, false}));
  EXPECT_EQ(CountExisting(*client, {Head(split), RedisPartKey(kPrefix, split, 1), RedisPartKey(kPrefix, split, 2)}), 0);
}

// With a budget of three values the tier deletes its least recently used ones (head and
// parts) and never holds more than the budget.
TEST_F(RedisTierTest, BudgetEvictsLeastRecentlyUsed) {
  constexpr size_t kValue = 100 << 10;
  RedisTierOptions options;
  options.budget_bytes = 3 * kValue + 1000;
  options.part_bytes = 64 << 10;  // two parts per value
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  std::vector<ChunkKey> keys;
  for (int i = 0; i < 6; ++i) keys.push_back(KeyFor("budget-" + std::to_string(i)));
  auto all_keys_of = [&](const ChunkKey& k) {
    return std::vector<std::string>{Head(k), RedisPartKey(kPrefix, k, 1), RedisPartKey(kPrefix, k, 2)};
  };
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(tier->Put(keys[i], MakeValue(keys[i], kValue)).ok());
    EXPECT_LE(tier->Stats().used_bytes, options.budget_bytes);
  }
  kvault::RemoteTierStats s = tier->Stats();
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.used_bytes, 3 * kValue);
  EXPECT_EQ(s.capacity_bytes, options.budget_bytes);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(CountExisting(*client, all_keys_of(keys[i])), 0) << i;
  for (int i = 2; i < 5; ++i) EXPECT_EQ(CountExisting(*client, all_keys_of(keys[i])), 3) << i;

  // A hit makes keys[2] the newest: the next Put evicts keys[3].
  ASSERT_TRUE(tier->Get(keys[2]).ok());
  ASSERT_TRUE(tier->Put(keys[5], MakeValue(keys[5], kValue)).ok());
  EXPECT_EQ(tier->Stats().evictions, 3u);
  EXPECT_EQ(CountExisting(*client, all_keys_of(keys[3])), 0);
  EXPECT_EQ(CountExisting(*client, all_keys_of(keys[2])), 3);
  EXPECT_EQ(tier->Get(keys[3]).status().code(), Code::kNotFound);

  // Replacing a value does not count it twice; a value over the whole budget is refused.
  ASSERT_TRUE(tier->Put(keys[5], MakeValue(keys[5], kValue)).ok());
  EXPECT_EQ(tier->Stats().used_bytes, 3 * kValue);
  EXPECT_EQ(tier->Put(keys[0], MakeValue(keys[0], 4 * kValue)).code(), Code::kNoSpace);
  EXPECT_EQ(tier->Stats().evictions, 3u);
}

// A split value with a part missing, short, long, or a damaged manifest is a miss, never a
// short or wrong value.
TEST_F(RedisTierTest, DamagedSplitValueIsAMiss) {
  RedisTierOptions options;
  options.part_bytes = 64 << 10;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto client = Client();
  ASSERT_TRUE(client);
  const ChunkKey key = KeyFor("damaged");
  const Bytes value = MakeValue(key, 200 << 10);  // parts of 64, 64, 64 and 8 KiB
  const std::string head = Head(key);
  auto damage_and_check = [&](const kvault::RedisArgs& damage, const char* what) {
    ASSERT_TRUE(tier->Put(key, value).ok());
    ExpectValue(*tier, key, value);
    auto reply = client->Command(head, damage);
    ASSERT_TRUE(reply.ok() && !reply->IsError()) << what;
    auto got = tier->Get(key);
    EXPECT_EQ(got.status().code(), Code::kNotFound) << what << ": " << (got.ok() ? "served a value" : got.status().ToString());
  };
  const std::string part2 = RedisPartKey(kPrefix, key, 2), part3 = RedisPartKey(kPrefix, key, 3),
                    part4 = RedisPartKey(kPrefix, key, 4);
  damage_and_check({"DEL", part2}, "missing part");
  const std::string short_part(63 << 10, 'x'), long_part((8 << 10) + 1, 'y');
  damage_and_check({"SET", part3, short_part}, "short part");
  damage_and_check({"SET", part4, long_part}, "long last part");
  kvault::RedisManifest bad;
  bad.total_bytes = 200 << 10;
  bad.part_bytes = 64 << 10;
  bad.parts = 3;  // inconsistent with the sizes
  const Bytes bad_bytes = bad.Encode();
  damage_and_check({"SET", head, kvault::AsStringView(bad_bytes)}, "inconsistent manifest");
  EXPECT_EQ(tier->Stats().get_hits, 4u);  // only the checks before each damage
}

// One master killed: calls for its slots fail quickly (counted), the other masters keep
// serving; once it is back (empty: no persistence) its slots work again.
TEST_F(RedisTierTest, KilledNodeFailsFastOthersKeepServing) {
  RedisTierOptions options;
  options.timeout_ms = 200;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  const int kValues = 30;
  std::vector<ChunkKey> keys;
  std::vector<int> node_of;
  for (int i = 0; i < kValues; ++i) {
    keys.push_back(KeyFor("kill-" + std::to_string(i)));
    ASSERT_TRUE(tier->Put(keys[i], MakeValue(keys[i], 64 << 10)).ok());
    node_of.push_back(cluster_->NodeOfSlot(SlotOf(keys[i])));
  }
  const int victim = 1;
  const int on_victim = static_cast<int>(std::count(node_of.begin(), node_of.end(), victim));
  ASSERT_GT(on_victim, 0);
  cluster_->KillNode(victim);

  for (int round = 0; round < 2; ++round) {  // the second round hits the reconnect backoff
    for (int i = 0; i < kValues; ++i) {
      const Clock::time_point start = Clock::now();
      auto got = tier->Get(keys[i]);
      EXPECT_LT(MillisSince(start), 1000) << "Get hung";
      if (node_of[i] == victim) {
        EXPECT_FALSE(got.ok());
        EXPECT_NE(got.status().code(), Code::kOk);
      } else {
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        EXPECT_TRUE(*got == MakeValue(keys[i], 64 << 10));
      }
    }
  }
  const Clock::time_point start = Clock::now();
  const std::vector<bool> present = tier->Contains(keys);
  EXPECT_LT(MillisSince(start), 1000) << "Contains hung";
  for (int i = 0; i < kValues; ++i) EXPECT_EQ(present[i], node_of[i] != victim) << i;
  const ChunkKey dead_key = KeyInSlot(SlotOf(keys[std::find(node_of.begin(), node_of.end(), victim) - node_of.begin()]), "dead-");
  EXPECT_FALSE(tier->Put(dead_key, MakeValue(dead_key, 16 << 10)).ok());
  const kvault::RemoteTierStats s = tier->Stats();
  EXPECT_GE(s.errors, static_cast<uint64_t>(2 * on_victim + 1));
  EXPECT_EQ(s.get_hits, static_cast<uint64_t>(2 * (kValues - on_victim)));

  std::string error;
  ASSERT_TRUE(cluster_->RestartNode(victim, &error)) << error;
  // Within the reconnect backoff the node's slots serve again (its data is gone).
  const Clock::time_point restarted = Clock::now();
  kvault::Status put = kvault::Status::Unavailable("not tried");
  while (!put.ok() && MillisSince(restarted) < 5000) {
    put = tier->Put(dead_key, MakeValue(dead_key, 16 << 10));
    if (!put.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(put.ok()) << put.ToString();
  ExpectValue(*tier, dead_key, MakeValue(dead_key, 16 << 10));
  for (int i = 0; i < kValues; ++i) {
    auto got = tier->Get(keys[i]);
    if (node_of[i] == victim) {
      EXPECT_EQ(got.status().code(), Code::kNotFound);
    } else {
      EXPECT_TRUE(got.ok());
    }
  }
}

// A master that stops answering (SIGSTOP): calls for its slots time out after about the
// timeout, counted as timeouts; the others are served; after SIGCONT it serves again.
TEST_F(RedisTierTest, StalledNodeTimesOut) {
  RedisTierOptions options;
  options.timeout_ms = 200;
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  std::vector<ChunkKey> keys;
  std::vector<int> node_of;
  for (int i = 0; i < 12; ++i) {
    keys.push_back(KeyFor("stall-" + std::to_string(i)));
    ASSERT_TRUE(tier->Put(keys[i], MakeValue(keys[i], 32 << 10)).ok());
    node_of.push_back(cluster_->NodeOfSlot(SlotOf(keys[i])));
  }
  const int stalled = 2;
  const auto first = std::find(node_of.begin(), node_of.end(), stalled);
  ASSERT_NE(first, node_of.end());
  const ChunkKey stalled_key = keys[first - node_of.begin()];
  cluster_->PauseNode(stalled);
  Clock::time_point start = Clock::now();
  auto got = tier->Get(stalled_key);
  const int64_t get_ms = MillisSince(start);
  EXPECT_FALSE(got.ok());
  EXPECT_GE(get_ms, 150);
  EXPECT_LT(get_ms, 1000);
  const ChunkKey big = KeyInSlot(SlotOf(stalled_key), "stall-big-");
  const Bytes big_value = MakeValue(big, 32 << 20);  // more than the socket buffers take
  start = Clock::now();
  EXPECT_FALSE(tier->Put(big, big_value).ok());
  EXPECT_LT(MillisSince(start), 1500);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (node_of[i] != stalled) {
      EXPECT_TRUE(tier->Get(keys[i]).ok()) << i;
    }
  }
  EXPECT_GE(tier->Stats().timeouts, 1u);
  EXPECT_GE(tier->Stats().errors, tier->Stats().timeouts);
  cluster_->ResumeNode(stalled);
  const Clock::time_point resumed = Clock::now();
  auto again = tier->Get(stalled_key);
  while (!again.ok() && MillisSince(resumed) < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    again = tier->Get(stalled_key);
  }
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(*again == MakeValue(stalled_key, 32 << 10));
}

// Eight threads put, get and ask about shared and own keys, whole and split: every value read
// is the one put for its key.
TEST_F(RedisTierTest, ConcurrentThreads) {
  RedisTierOptions options;
  options.part_bytes = 64 << 10;
  options.connections_per_node = 2;  // fewer connections than threads: they are shared
  auto tier = Open(options);
  ASSERT_TRUE(tier);
  auto size_of = [](const ChunkKey& k) { return size_t{16 << 10} + (k.bytes[0] * 997u) % (200u << 10); };
  constexpr int kThreads = 8, kRounds = 30, kShared = 10;
  std::vector<ChunkKey> shared;
  for (int i = 0; i < kShared; ++i) shared.push_back(KeyFor("shared-" + std::to_string(i)));
  std::atomic<int> bad{0}, puts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        const ChunkKey own = KeyFor("own-" + std::to_string(t) + "-" + std::to_string(r));
        const ChunkKey& common = shared[(t + r) % kShared];
        for (const ChunkKey* k : {&own, &common}) {
          if (!tier->Put(*k, MakeValue(*k, size_of(*k))).ok()) ++bad;
          ++puts;
          auto got = tier->Get(*k);
          if (!got.ok() || *got != MakeValue(*k, size_of(*k))) ++bad;
        }
        const std::vector<ChunkKey> asked = {own, common, KeyFor("never-" + std::to_string(r))};
        if (tier->Contains(asked) != std::vector<bool>{true, true, false}) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  const kvault::RemoteTierStats s = tier->Stats();
  EXPECT_EQ(s.puts, static_cast<uint64_t>(puts.load()));
  EXPECT_EQ(s.get_hits, static_cast<uint64_t>(puts.load()));
  EXPECT_EQ(s.errors, 0u);
  uint64_t want_used = 0;
  for (const ChunkKey& k : shared) want_used += size_of(k);
  for (int t = 0; t < kThreads; ++t)
    for (int r = 0; r < kRounds; ++r) want_used += size_of(KeyFor("own-" + std::to_string(t) + "-" + std::to_string(r)));
  EXPECT_EQ(s.used_bytes, want_used);
}

// A cluster that wants a password: without one the tier does not open, and says why.
TEST(RedisTierAuth, PasswordIsSentOnEveryConnection) {
  LocalRedisClusterOptions fo;
  fo.password = "s3cret pass";
  std::string error;
  auto cluster = LocalRedisCluster::Start(fo, &error);
  ASSERT_TRUE(cluster) << error;
  RedisTierOptions options;
  options.seeds = cluster->Seeds();
  auto refused = OpenRedisTier(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("NOAUTH"), std::string::npos) << refused.status().ToString();
  options.password = fo.password;
  auto tier = OpenRedisTier(options);
  ASSERT_TRUE(tier.ok()) << tier.status().ToString();
  for (int i = 0; i < 10; ++i) {
    const ChunkKey key = KeyFor("auth-" + std::to_string(i));
    const Bytes value = MakeValue(key, 20 << 10);
    ASSERT_TRUE((*tier)->Put(key, value).ok());
    auto got = (*tier)->Get(key);
    ASSERT_TRUE(got.ok());
    EXPECT_TRUE(*got == value);
  }
}

// No cluster behind the seeds: a clear error, quickly; malformed options are refused.
TEST(RedisTierOpen, FailsClearlyWithoutCluster) {
  RedisTierOptions options;
  options.seeds = {"127.0.0.1:1", "127.0.0.1:2"};
  const Clock::time_point start = Clock::now();
  auto tier = OpenRedisTier(options);
  EXPECT_LT(MillisSince(start), 2000);
  ASSERT_FALSE(tier.ok());
  EXPECT_EQ(tier.status().code(), Code::kUnavailable);
  EXPECT_NE(tier.status().message().find("CLUSTER SLOTS"), std::string::npos) << tier.status().ToString();
  options.seeds = {"no-port"};
  EXPECT_EQ(OpenRedisTier(options).status().code(), Code::kInvalidArgument);
  options.seeds = {};
  EXPECT_EQ(OpenRedisTier(options).status().code(), Code::kInvalidArgument);
  options.seeds = {"127.0.0.1:1"};
  options.key_prefix = "bad{";
  EXPECT_EQ(OpenRedisTier(options).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kvtest

// Eviction policies (src/store/eviction_policy.h): each policy's victim order on hand-made
// cases, the AccessWindow diff, MakePolicy's errors, and every policy under random operations
// checked against a reference model of what it holds (and, where the order is fully defined,
// of which victim it must pick).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <gtest/gtest.h>

#include "store/aware_policy.h"
#include "store/entry.h"
#include "store/eviction_policy.h"
#include "store/fifo_policy.h"
#include "store/opt_policy.h"
#include "store/s3fifo_policy.h"

namespace kvtest {
namespace {

using kvault::AccessWindow;
using kvault::AwarePolicy;
using kvault::ChunkKey;
using kvault::DigestHash;
using kvault::Entry;
using kvault::EvictionPolicy;
using kvault::FifoPolicy;
using kvault::LruPolicy;
using kvault::OptPolicy;
using kvault::S3FifoPolicy;
using kvault::WindowRank;

using Eligible = std::function<bool(const Entry*)>;
const Eligible kAll = [](const Entry*) { return true; };
const Eligible kNone = [](const Entry*) { return false; };

// A key with distinct bytes for each n (never the zero digest).
ChunkKey MakeKey(uint32_t n) {
  ChunkKey k;
  std::memcpy(k.bytes.data(), &n, sizeof n);
  k.bytes[31] = 0xA5;
  return k;
}

// Owns hand-made entries; their addresses never change. An entry's tokens field holds its
// id, so tests can index tables by it.
class Entries {
 public:
  Entry* Add(uint32_t id, const ChunkKey& parent = ChunkKey{}, uint64_t bytes = 100) {
    Entry& e = entries_.emplace_back();
    e.key = MakeKey(id);
    e.parent = parent;
    e.tokens = id;
    e.bytes = bytes;
    return &e;
  }
  // A chain of n entries with ids first_id.., head first (the head's parent is the zero key).
  std::vector<Entry*> Chain(uint32_t first_id, uint32_t n) {
    std::vector<Entry*> chain;
    ChunkKey parent{};
    for (uint32_t i = 0; i < n; ++i) {
      chain.push_back(Add(first_id + i, parent));
      parent = chain.back()->key;
    }
    return chain;
  }

 private:
  std::deque<Entry> entries_;
};

// Picks and removes victims until none is left; returns them in order.
std::vector<Entry*> Drain(EvictionPolicy& p) {
  std::vector<Entry*> out;
  while (Entry* v = p.PickVictim(kAll)) {
    out.push_back(v);
    p.Remove(v);
    if (out.size() > 100000) break;  // a policy that never empties
  }
  return out;
}

// A future known in advance: the set of times each key is used.
class FakeOracle final : public kvault::FutureOracle {
 public:
  uint64_t Now() const override { return now; }
  uint64_t NextUse(const ChunkKey& key) const override {
    auto it = uses_.find(key);
    if (it == uses_.end()) return UINT64_MAX;
    auto t = it->second.lower_bound(now);
    return t == it->second.end() ? UINT64_MAX : *t;
  }
  void Use(const ChunkKey& key, uint64_t t) { uses_[key].insert(t); }

  uint64_t now = 0;

 private:
  std::unordered_map<ChunkKey, std::set<uint64_t>, DigestHash> uses_;
};

std::set<std::string> Hexes(const std::vector<ChunkKey>& keys) {
  std::set<std::string> out;
  for (const ChunkKey& k : keys) out.insert(k.Hex());
  return out;
}

// ---------------------------------------------------------------------------------------
// AccessWindow

TEST(AccessWindowTest, RanksAreFirstNeedAndSetReturnsTheDifference) {
  const ChunkKey a = MakeKey(1), b = MakeKey(2), c = MakeKey(3), d = MakeKey(4);
  AccessWindow w;
  EXPECT_EQ(Hexes(w.Set({{a, b, c}, {a, d}})), Hexes({a, b, c, d}));
  EXPECT_EQ(w.size(), 4u);
  auto rank = [&](const ChunkKey& k) {
    const WindowRank* r = w.Find(k);
    return r == nullptr ? std::pair<int, int>{-1, -1} : std::pair<int, int>(r->request, r->chunk);
  };
  EXPECT_EQ(rank(a), std::make_pair(0, 0));  // the first request that needs it counts
  EXPECT_EQ(rank(c), std::make_pair(0, 2));
  EXPECT_EQ(rank(d), std::make_pair(1, 1));
  EXPECT_FALSE(w.Contains(MakeKey(5)));

  // a keeps its rank; b moves; c leaves; d moves.
  EXPECT_EQ(Hexes(w.Set({{a, d}, {b}})), Hexes({b, c, d}));
  EXPECT_EQ(rank(a), std::make_pair(0, 0));
  EXPECT_EQ(rank(b), std::make_pair(1, 0));
  EXPECT_EQ(rank(c), std::make_pair(-1, -1));
  EXPECT_EQ(rank(d), std::make_pair(0, 1));

  EXPECT_TRUE(w.Set({{a, d}, {b}}).empty());  // same window: nothing changed
  EXPECT_EQ(Hexes(w.Set({})), Hexes({a, b, d}));
  EXPECT_EQ(w.size(), 0u);

  w.Set({{a, a, b}});  // a repeated within a request: its first index counts
  EXPECT_EQ(rank(a), std::make_pair(0, 0));
  EXPECT_EQ(rank(b), std::make_pair(0, 2));
}

// ---------------------------------------------------------------------------------------
// MakePolicy

TEST(MakePolicyTest, NamesAndErrors) {
  EXPECT_EQ(kvault::PolicyNames(), (std::vector<std::string>{"lru", "fifo", "s3fifo", "aware", "opt", "aware-oracle"}));
  AccessWindow window;
  FakeOracle oracle;
  for (const std::string& name : kvault::PolicyNames()) {
    auto p = kvault::MakePolicy(name, {&window, &oracle});
    ASSERT_TRUE(p.ok()) << name << ": " << p.status().ToString();
    EXPECT_EQ((*p)->name(), name);
  }
  EXPECT_TRUE(kvault::MakePolicy("lru").ok());    // what the store calls
  EXPECT_TRUE(kvault::MakePolicy("aware").ok());  // no window = an empty one

  auto unknown = kvault::MakePolicy("lfu");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), kvault::Code::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("lfu"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("lru, fifo, s3fifo, aware, opt"), std::string::npos)
      << unknown.status().message();

  for (const char* replay_only : {"opt", "aware-oracle"}) {
    auto p = kvault::MakePolicy(replay_only, {&window, nullptr});
    ASSERT_FALSE(p.ok()) << replay_only;
    EXPECT_EQ(p.status().code(), kvault::Code::kInvalidArgument);
  }
}

// ---------------------------------------------------------------------------------------
// lru, fifo

TEST(LruPolicyTest, LeastRecentlyUsedFirst) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3);
  LruPolicy p;
  p.Insert(a);
  p.Insert(b);
  p.Insert(c);
  p.Touch(a);
  p.Insert(b);  // present: a use
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{c, a, b}));
}

TEST(FifoPolicyTest, InsertionOrderWhateverTheUse) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3);
  FifoPolicy p;
  p.Insert(a);
  p.Insert(b);
  p.Insert(c);
  p.Touch(a);
  p.Insert(a);  // present: keeps its place
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{a, b, c}));
}

// ---------------------------------------------------------------------------------------
// s3fifo

TEST(S3FifoPolicyTest, OneHitEntriesLeaveBeforeAReusedOne) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3), *d = es.Add(4);
  S3FifoPolicy p;
  p.Insert(a);
  p.Touch(a);
  p.Touch(a);
  p.Insert(b);
  p.Insert(c);
  p.Insert(d);
  // lru and fifo would both evict a first: it is the oldest and was last used before b.
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{b, c, d, a}));
}

TEST(S3FifoPolicyTest, GhostHitGoesToMain) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2);
  std::vector<Entry*> xs = {es.Add(10), es.Add(11), es.Add(12), es.Add(13)};
  S3FifoPolicy p;
  p.Insert(a);
  p.Insert(b);
  ASSERT_EQ(p.PickVictim(kAll), a);
  p.Remove(a);  // a's key is now a ghost
  p.Insert(a);  // wanted again: into M, not S
  for (Entry* x : xs) p.Insert(x);
  // Had a gone back to S, it would be the second victim (S holds b, a, x...).
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{b, xs[0], xs[1], xs[2], xs[3], a}));
}

TEST(S3FifoPolicyTest, MainReinsertsEntriesWithUsesLeft) {
  Entries es;
  Entry *a = es.Add(1, {}, 10000), *b = es.Add(2, {}, 10000);
  std::vector<Entry*> fs = {es.Add(10, {}, 1), es.Add(11, {}, 1), es.Add(12, {}, 1)};
  S3FifoPolicy p;
  p.Insert(a);
  p.Insert(b);
  for (Entry* f : fs) p.Insert(f);
  ASSERT_EQ(p.PickVictim(kAll), a);
  p.Remove(a);
  ASSERT_EQ(p.PickVictim(kAll), b);
  p.Remove(b);
  p.Insert(a);  // both ghosts: into M, a at the tail
  p.Insert(b);
  p.Touch(a);
  // S (3 bytes of 20003) is within its share, so victims come from M: a has a use left and
  // goes back to M's head with it spent; b is the victim, then a.
  ASSERT_EQ(p.PickVictim(kAll), b);
  p.Remove(b);
  ASSERT_EQ(p.PickVictim(kAll), a);
}

TEST(S3FifoPolicyTest, GhostHoldsNoMoreKeysThanEntriesHeld) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2);
  S3FifoPolicy p;
  p.Insert(a);
  p.Insert(b);
  p.Remove(a);  // ghost: a
  p.Remove(b);  // nothing held: one ghost key, b; a is forgotten
  p.Insert(b);  // ghost hit: M
  p.Insert(a);  // no ghost: S
  EXPECT_EQ(p.PickVictim(kAll), a);  // S is over its share (had a gone to M, b would go)
}

// ---------------------------------------------------------------------------------------
// aware

TEST(AwarePolicyTest, WindowEntryNeverPickedWhileAnOutOfWindowOneIsEligible) {
  Entries es;
  Entry *w = es.Add(1), *x = es.Add(2);
  AccessWindow window;
  window.Set({{w->key}});
  AwarePolicy p(&window);
  p.Insert(w);  // least recently used, but needed soon
  p.Insert(x);
  EXPECT_EQ(p.PickVictim(kAll), x);
  EXPECT_EQ(p.PickVictim([&](const Entry* e) { return e != x; }), w);
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{x, w}));
}

TEST(AwarePolicyTest, LeavesBeforeTheirParents) {
  Entries es;
  std::vector<Entry*> chain = es.Chain(1, 3);  // a -> b -> c
  AwarePolicy aware(nullptr);
  LruPolicy lru;
  for (EvictionPolicy* p : {static_cast<EvictionPolicy*>(&aware), static_cast<EvictionPolicy*>(&lru)}) {
    for (Entry* e : chain) p->Insert(e);
    for (Entry* e : chain) p->Touch(e);  // head to tail, as a lookup reads them
  }
  EXPECT_EQ(Drain(aware), (std::vector<Entry*>{chain[2], chain[1], chain[0]}));
  EXPECT_EQ(Drain(lru), (std::vector<Entry*>{chain[0], chain[1], chain[2]}));
}

TEST(AwarePolicyTest, ParentBecomesALeafWithItsOwnLastUse) {
  Entries es;
  Entry* parent = es.Add(1);
  Entry* child = es.Add(2, parent->key);
  Entry* other = es.Add(3);
  AwarePolicy p(nullptr);
  p.Insert(parent);
  p.Insert(child);
  p.Insert(other);
  ASSERT_EQ(p.PickVictim(kAll), child);  // parent is older but not a leaf
  p.Remove(child);
  EXPECT_EQ(p.PickVictim(kAll), parent);  // now a leaf, older than other
  // A parent that arrives after its child is not a leaf either.
  Entry* orphan = es.Add(4, other->key);
  AwarePolicy q(nullptr);
  q.Insert(other);
  q.Insert(orphan);
  q.Insert(parent);
  EXPECT_EQ(q.PickVictim(kAll), orphan);  // other is older but not a leaf
  q.Remove(orphan);
  EXPECT_EQ(q.PickVictim(kAll), other);
}

TEST(AwarePolicyTest, InnerEntriesOnlyWhenNoLeafIsEligible) {
  Entries es;
  std::vector<Entry*> chain = es.Chain(1, 2);  // a -> b
  Entry* x = es.Add(3);
  Entry* w = es.Add(4);
  AccessWindow window;
  window.Set({{w->key}});
  AwarePolicy p(&window);
  p.Insert(w);
  p.Insert(chain[0]);
  p.Insert(chain[1]);
  p.Insert(x);
  EXPECT_EQ(p.PickVictim(kAll), chain[1]);
  // The older inner a waits while the leaf x is eligible; the window entry waits for both.
  EXPECT_EQ(p.PickVictim([&](const Entry* e) { return e != chain[1]; }), x);
  EXPECT_EQ(p.PickVictim([&](const Entry* e) { return e != chain[1] && e != x; }), chain[0]);
  EXPECT_EQ(p.PickVictim([&](const Entry* e) { return e == w; }), w);
}

TEST(AwarePolicyTest, WindowEntriesNeededLatestGoFirst) {
  Entries es;
  std::vector<Entry*> chain = es.Chain(1, 3);  // k1 -> k2 -> k3
  Entry* k4 = es.Add(4);
  AccessWindow window;
  window.Set({{chain[0]->key, chain[1]->key, chain[2]->key}, {chain[0]->key, k4->key}});
  AwarePolicy p(&window);
  p.Insert(k4);  // oldest, but needed by the second request: after all of the first
  for (Entry* e : chain) p.Insert(e);
  p.Touch(chain[2]);
  // The second request's chunk first, then the first request's from its tail to its head.
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{k4, chain[2], chain[1], chain[0]}));
}

// Frequency does not matter out of the window: recency (and leaves first) does.
TEST(AwarePolicyTest, OutOfWindowOrderIsRecencyNotFrequency) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2);
  AwarePolicy p(nullptr);
  p.Insert(a);
  for (int i = 0; i < 10; ++i) p.Touch(a);  // a is used often, but longer ago
  p.Insert(b);
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{a, b}));
}

// aware-oracle: out of the window, entries never read again go first.
TEST(AwarePolicyTest, OracleEvictsWhatIsNeverReadAgainFirst) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3);
  FakeOracle oracle;
  oracle.Use(a->key, 3);  // read once more, at 3; b and c never again
  AwarePolicy p(nullptr, &oracle);
  EXPECT_STREQ(p.name(), "aware-oracle");
  p.Insert(a);  // the oldest: plain aware would pick it first
  p.Insert(b);
  p.Insert(c);
  EXPECT_EQ(p.PickVictim(kAll), b);
  EXPECT_EQ(p.PickVictim([&](const Entry* x) { return x != b; }), c);
  oracle.now = 3;  // a's use is now: still protected
  EXPECT_EQ(p.PickVictim([&](const Entry* x) { return x != b; }), c);
  oracle.now = 4;  // past it: a is never read again, and the oldest
  EXPECT_EQ(p.PickVictim(kAll), a);
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{a, b, c}));
}

TEST(AwarePolicyTest, WindowChangedMovesEntriesOutOfAndIntoProtection) {
  Entries es;
  Entry *x = es.Add(1), *y = es.Add(2), *z = es.Add(3);
  AccessWindow window;
  window.Set({{y->key}});
  AwarePolicy p(&window);
  p.Insert(x);
  p.Insert(y);
  p.Insert(z);
  ASSERT_EQ(p.PickVictim(kAll), x);
  std::unordered_map<std::string, Entry*> held = {{x->key.Hex(), x}, {y->key.Hex(), y}, {z->key.Hex(), z}};
  for (const ChunkKey& k : window.Set({{x->key}})) p.WindowChanged(held.at(k.Hex()));
  // x is protected now; y is out of the window and keeps its last use (older than z).
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{y, z, x}));
}

// ---------------------------------------------------------------------------------------
// opt

TEST(OptPolicyTest, FarthestNextUseFirstNeverUsedAgainBeforeAll) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3), *d = es.Add(4), *e = es.Add(5);
  FakeOracle oracle;
  oracle.Use(a->key, 5);
  oracle.Use(b->key, 2);
  oracle.Use(d->key, 9);  // c and e: never again
  OptPolicy p(&oracle);
  for (Entry* x : {a, b, c, d, e}) p.Insert(x);
  // c and e tie (never used again): the one inserted first goes first.
  EXPECT_EQ(Drain(p), (std::vector<Entry*>{c, e, d, a, b}));
}

TEST(OptPolicyTest, StaleNextUsesAreRefreshedAsTimeAdvances) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2);
  FakeOracle oracle;
  oracle.Use(a->key, 1);
  oracle.Use(a->key, 10);
  oracle.Use(b->key, 5);
  OptPolicy p(&oracle);
  p.Insert(a);  // next use 1
  p.Insert(b);  // next use 5
  EXPECT_EQ(p.PickVictim(kAll), b);
  oracle.now = 2;  // a's use at 1 is consumed: its next is 10, b's still 5
  EXPECT_EQ(p.PickVictim(kAll), a);
  oracle.now = 6;  // b: never again
  EXPECT_EQ(p.PickVictim(kAll), b);
}

// Belady with two slots on a trace whose optimal victims are known:
//   time  0 1 2 3 4 5 6 7
//   key   a b c a b d a c
// t2: a (next 3) stays, b (next 4) goes. t4: a (6) stays, c (7) goes. t5: b (never) goes.
// t7: a and d are both never used again: a, inserted first, goes. Hits: t3 and t6.
TEST(OptPolicyTest, BeladyOnAShortTrace) {
  Entries es;
  Entry *a = es.Add(1), *b = es.Add(2), *c = es.Add(3), *d = es.Add(4);
  const std::vector<Entry*> trace = {a, b, c, a, b, d, a, c};
  FakeOracle oracle;
  for (uint64_t t = 0; t < trace.size(); ++t) oracle.Use(trace[t]->key, t);
  OptPolicy p(&oracle);
  std::set<Entry*> cache;
  std::vector<Entry*> victims;
  int hits = 0;
  for (uint64_t t = 0; t < trace.size(); ++t) {
    oracle.now = t;
    Entry* e = trace[t];
    if (cache.count(e)) {
      ++hits;
      p.Touch(e);
      continue;
    }
    if (cache.size() == 2) {
      Entry* v = p.PickVictim(kAll);
      ASSERT_NE(v, nullptr);
      victims.push_back(v);
      cache.erase(v);
      p.Remove(v);
    }
    cache.insert(e);
    p.Insert(e);
  }
  EXPECT_EQ(victims, (std::vector<Entry*>{b, c, b, a}));
  EXPECT_EQ(hits, 2);
}

// ---------------------------------------------------------------------------------------
// Every policy

class EveryPolicyTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<EvictionPolicy> Make() {
    auto p = kvault::MakePolicy(GetParam(), {&window_, &oracle_});
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : nullptr;
  }

  AccessWindow window_;
  FakeOracle oracle_;
  Entries entries_;
};

TEST_P(EveryPolicyTest, EligibleFilterIsRespected) {
  auto p = Make();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->PickVictim(kAll), nullptr);  // empty
  std::vector<Entry*> es;
  for (uint32_t i = 0; i < 6; ++i) es.push_back(entries_.Add(i + 1));
  for (Entry* e : es) p->Insert(e);
  for (Entry* e : es) p->Touch(e);
  EXPECT_EQ(p->PickVictim(kNone), nullptr);
  for (Entry* only : es) EXPECT_EQ(p->PickVictim([&](const Entry* e) { return e == only; }), only);
  for (Entry* but : es) {
    Entry* v = p->PickVictim([&](const Entry* e) { return e != but; });
    EXPECT_NE(v, nullptr);
    EXPECT_NE(v, but);
  }
  EXPECT_EQ(Drain(*p).size(), es.size());
}

// max_scan bounds the search: with k candidates looked at, a victim further down the order
// is not found.
TEST_P(EveryPolicyTest, MaxScanBoundsTheSearch) {
  auto p = Make();
  ASSERT_NE(p, nullptr);
  std::vector<Entry*> es;
  for (uint32_t i = 0; i < 8; ++i) es.push_back(entries_.Add(i + 1));
  for (Entry* e : es) p->Insert(e);
  const std::vector<Entry*> order = Drain(*p);  // the full victim order (empties the policy)
  ASSERT_EQ(order.size(), es.size());
  for (Entry* e : order) p->Insert(e);          // same order again for lru/fifo/aware/opt
  const std::vector<Entry*> order2 = Drain(*p);
  for (Entry* e : order2) p->Insert(e);
  Entry* fifth = order2[4];
  auto only_fifth = [&](const Entry* e) { return e == fifth; };
  EXPECT_EQ(p->PickVictim(only_fifth, 8), fifth);
  EXPECT_EQ(p->PickVictim(only_fifth, 5), fifth);
  EXPECT_EQ(p->PickVictim(only_fifth, 4), nullptr);
  EXPECT_EQ(p->PickVictim(only_fifth, 0), nullptr);
}

TEST_P(EveryPolicyTest, RemoveOfAnAbsentEntryIsANoOp) {
  auto p = Make();
  ASSERT_NE(p, nullptr);
  Entry *a = entries_.Add(1), *b = entries_.Add(2), *never = entries_.Add(3);
  p->Remove(never);
  p->Touch(never);
  p->Insert(a);
  p->Insert(b);
  p->Remove(a);
  p->Remove(a);
  p->Remove(never);
  EXPECT_EQ(Drain(*p), (std::vector<Entry*>{b}));
  p->Remove(b);
  EXPECT_EQ(p->PickVictim(kAll), nullptr);
}

// Random inserts, uses, removals, window changes and time steps over chained entries. After
// every pick: the victim is held and eligible, or nothing held is eligible; for lru, fifo,
// aware, opt and aware-oracle it is also the one their order defines. At the end the policy holds exactly
// the entries the model holds.
TEST_P(EveryPolicyTest, RandomOperationsAgainstAModel) {
  const std::string name = GetParam();
  auto p = Make();
  ASSERT_NE(p, nullptr);
  std::mt19937_64 rng(12345);
  constexpr uint32_t kChains = 20, kChainLength = 10, kOps = 10000;
  std::vector<std::vector<Entry*>> chains;
  std::vector<Entry*> all;
  for (uint32_t c = 0; c < kChains; ++c) {
    chains.push_back(entries_.Chain(c * kChainLength, kChainLength));
    for (Entry* e : chains.back()) {
      e->bytes = 1 + rng() % 5000;
      all.push_back(e);  // all[e->tokens] == e
      // 0-5 uses each: some entries are never read (aware-oracle's first groups), and others
      // run out of uses along the way.
      for (int u = rng() % 6; u > 0; --u) oracle_.Use(e->key, rng() % kOps);
    }
  }

  std::unordered_map<Entry*, uint64_t> last_use, inserted;  // the model: held entries
  auto remove = [&](Entry* e) {
    last_use.erase(e);
    inserted.erase(e);
    p->Remove(e);
  };
  uint64_t clock = 0;
  std::vector<bool> ok(all.size());
  const Eligible eligible = [&](const Entry* e) { return bool(ok[e->tokens]); };

  auto rank_of = [&](const Entry* e) {
    const WindowRank* r = window_.Find(e->key);
    return std::make_pair(r->request, r->chunk);
  };

  auto check_victim = [&](Entry* v) {
    std::vector<Entry*> candidates;
    for (const auto& [e, t] : last_use) {
      if (ok[e->tokens]) candidates.push_back(e);
    }
    if (v == nullptr) {
      EXPECT_TRUE(candidates.empty()) << name << ": nullptr with " << candidates.size() << " eligible";
      return;
    }
    ASSERT_TRUE(last_use.count(v)) << name << ": victim not held";
    ASSERT_TRUE(ok[v->tokens]) << name << ": victim not eligible";
    // Victim order classes of `aware`: out of the window 0 = never read again and a leaf, 1 =
    // never read again and inner (both aware-oracle only), 2 = leaf, 3 = inner; 4 = in the window.
    std::unordered_set<ChunkKey, DigestHash> parents;
    for (const auto& [f, t] : last_use) parents.insert(f->parent);
    auto aware_class = [&](const Entry* x) {
      if (window_.Contains(x->key)) return 4;
      const bool dead = name == "aware-oracle" && oracle_.NextUse(x->key) == UINT64_MAX;
      return (dead ? 0 : 2) + (parents.count(x->key) ? 1 : 0);
    };
    for (Entry* e : candidates) {
      if (name == "lru") {
        EXPECT_LE(last_use[v], last_use[e]);
      } else if (name == "fifo") {
        EXPECT_LE(inserted[v], inserted[e]);
      } else if (name == "opt") {
        EXPECT_GE(oracle_.NextUse(v->key), oracle_.NextUse(e->key));
      } else if (name == "aware" || name == "aware-oracle") {
        const int cv = aware_class(v), ce = aware_class(e);
        EXPECT_LE(cv, ce);
        if (cv == ce && cv < 4) {
          EXPECT_LE(last_use[v], last_use[e]);
        } else if (cv == ce) {
          EXPECT_GE(rank_of(v), rank_of(e));
        }
      }
    }
  };

  for (uint32_t op = 0; op < kOps && !HasFatalFailure(); ++op) {
    oracle_.now = op;
    Entry* e = all[rng() % all.size()];
    const unsigned kind = rng() % 100;
    if (kind < 35) {
      ++clock;
      if (!last_use.count(e)) {
        inserted[e] = clock;
        last_use[e] = clock;
      } else if (name != "fifo") {
        last_use[e] = clock;
      }
      p->Insert(e);
    } else if (kind < 55) {
      ++clock;
      if (last_use.count(e)) {  // Touch of an absent entry: nothing
        last_use[e] = clock;
      }
      p->Touch(e);
    } else if (kind < 65) {
      remove(e);
    } else if (kind < 95) {
      const unsigned mode = rng() % 4;  // all, none, or a random share
      const unsigned share = rng() % 100;
      for (size_t i = 0; i < ok.size(); ++i) ok[i] = mode == 0 || (mode > 1 && rng() % 100 < share);
      Entry* v = p->PickVictim(eligible);
      check_victim(v);
      if (v != nullptr && rng() % 2 == 0) remove(v);
    } else {
      // A new window: up to three queued requests, each a prefix of a chain.
      std::vector<std::vector<ChunkKey>> requests(rng() % 4);
      for (auto& r : requests) {
        const auto& chain = chains[rng() % kChains];
        const size_t n = 1 + rng() % kChainLength;
        for (size_t i = 0; i < n; ++i) r.push_back(chain[i]->key);
      }
      for (const ChunkKey& k : window_.Set(requests)) {
        uint32_t id;
        std::memcpy(&id, k.bytes.data(), sizeof id);
        if (last_use.count(all[id])) p->WindowChanged(all[id]);
      }
    }
  }

  // Exactly the held entries come out, each once.
  std::set<Entry*> drained;
  for (Entry* v : Drain(*p)) {
    EXPECT_TRUE(last_use.count(v)) << name << ": drained an entry not held";
    EXPECT_TRUE(drained.insert(v).second) << name << ": drained an entry twice";
  }
  EXPECT_EQ(drained.size(), last_use.size());
}

INSTANTIATE_TEST_SUITE_P(Policies, EveryPolicyTest, ::testing::ValuesIn(kvault::PolicyNames()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;  // test names take no '-'
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace kvtest

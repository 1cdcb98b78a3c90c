// TierCore on its own (no payloads, no I/O): T1 page accounting, the T1 victim preferences
// (a clean entry with a T2 copy first, then one not waiting for the write-behind, then any;
// never a pinned, uncommitted, promoting or in-flight one), partial chunks found longest
// first and superseded, T2 record accounting, and the listener calls the store relies on.
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "store/tier_core.h"

namespace kvault {
namespace {

constexpr uint32_t kPage = 4096;

// Counts what the core asks of its owner.
struct Recorder final : TierCoreListener {
  uint64_t reserved_pages = 0, released = 0, evicted = 0, t2_dropped = 0, erased = 0;
  void OnT1Reserved(Entry*, uint32_t pages) override { reserved_pages += pages; }
  void OnT1Released(Entry*) override { ++released; }
  void OnEvictedFromT1(Entry*) override { ++evicted; }
  void OnT2Dropped(Entry*) override { ++t2_dropped; }
  void OnErase(Entry*) override { ++erased; }
};

class TierCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_.chunk_tokens = 16;
    TierCore::Options o;
    o.t1_pages = 8;
    o.page_bytes = kPage;
    o.t2 = true;
    o.policy = "lru";
    o.context = {&window_, nullptr};
    o.listener = &rec_;
    auto c = TierCore::Create(o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    core_ = std::move(c.value());
  }

  // A committed entry of `pages` T1 pages (payload = pages * 4 KiB) under `parent`.
  Entry* Put(uint8_t id, uint32_t pages, uint32_t tokens = 16, ChunkKey parent = {}) {
    auto e = std::make_unique<Entry>();
    e->key.bytes[0] = id;
    e->parent = parent;
    e->layout = layout_;
    e->tokens = tokens;
    e->bytes = uint64_t{pages} * kPage;
    Status st = core_->ReserveT1(e.get());
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) return nullptr;
    Entry* p = core_->Add(std::move(e));
    core_->EnterT1(p);
    core_->Commit(p, {});
    return p;
  }
  static ChunkKey Key(uint8_t id) {
    ChunkKey k;
    k.bytes[0] = id;
    return k;
  }

  KvLayout layout_;
  AccessWindow window_;
  Recorder rec_;
  std::unique_ptr<TierCore> core_;
};

TEST_F(TierCoreTest, PagesAreCountedAndAChunkLargerThanT1IsNoSpace) {
  Put(1, 3);
  Put(2, 2);
  EXPECT_EQ(core_->free_pages(), 3u);
  EXPECT_EQ(core_->t1_used_bytes(), 5u * kPage);
  EXPECT_EQ(rec_.reserved_pages, 5u);
  Entry big;
  big.bytes = 9ull * kPage;
  EXPECT_EQ(core_->ReserveT1(&big).code(), Code::kNoSpace);
}

TEST_F(TierCoreTest, VictimsPreferACopyOnT2ThenNotDirtyThenAny) {
  Entry* dirty = Put(1, 2);  // least recently used, but waiting for the write-behind
  dirty->dirty = true;
  Put(2, 2);                 // no T2 copy, not dirty (its write failed)
  Entry* clean = Put(3, 2);  // on T2
  core_->AddT2Copy(clean);
  Entry* pinned = Put(4, 2);
  ++pinned->pins;
  // 8 pages used; 2 more are needed: the clean one goes first although it is the newest.
  Entry extra;
  extra.bytes = 2 * kPage;
  ASSERT_TRUE(core_->ReserveT1(&extra).ok());
  EXPECT_FALSE(clean->in_t1);
  EXPECT_TRUE(clean->on_t2);  // still there: only its T1 copy went
  EXPECT_EQ(core_->Find(Key(3)), clean);
  core_->ReleaseT1(&extra);
  // Then the one not waiting for the disk (erased: it is in no tier now)...
  Entry extra2;
  extra2.bytes = 4 * kPage;
  ASSERT_TRUE(core_->ReserveT1(&extra2).ok());
  EXPECT_EQ(core_->Find(Key(2)), nullptr);
  EXPECT_EQ(core_->Find(Key(1)), dirty);
  EXPECT_TRUE(dirty->in_t1);
  // ... then the dirty one, counted as dropped before it reached T2.
  Entry extra3;
  extra3.bytes = 2 * kPage;
  ASSERT_TRUE(core_->ReserveT1(&extra3).ok());
  EXPECT_EQ(core_->Find(Key(1)), nullptr);
  EXPECT_EQ(core_->counters().t1_dropped_unpersisted, 1u);
  EXPECT_EQ(core_->counters().t1_evictions, 2u);
  EXPECT_EQ(rec_.evicted, 3u);
  // The pinned one is never a victim: nothing else is left to evict.
  core_->ReleaseT1(&extra2);
  core_->ReleaseT1(&extra3);
  Entry extra4;
  extra4.bytes = 8 * kPage;
  EXPECT_EQ(core_->ReserveT1(&extra4).code(), Code::kResourceExhausted);
  EXPECT_TRUE(pinned->in_t1);
}

TEST_F(TierCoreTest, LongestPartialIsFoundAndAFullChunkSupersedesIdlePartials) {
  const ChunkKey parent = Key(9);
  Entry* p3 = Put(1, 1, 3, parent);
  Entry* p5 = Put(2, 1, 5, parent);
  Put(3, 1, 7, parent);
  auto all = [](const Entry*) { return true; };
  EXPECT_EQ(core_->LongestPartial(parent, 6, Digest{}, layout_, all), p5);
  EXPECT_EQ(core_->LongestPartial(parent, 4, Digest{}, layout_, all), p3);
  EXPECT_EQ(core_->LongestPartial(parent, 2, Digest{}, layout_, all), nullptr);
  EXPECT_EQ(core_->LongestPartial(parent, 16, Digest{}, layout_, [&](const Entry* e) { return e == p3; }), p3);
  KvLayout other = layout_;
  other.num_layers += 1;
  EXPECT_EQ(core_->LongestPartial(parent, 16, Digest{}, other, all), nullptr);  // another namespace

  ++p5->pins;  // in use: survives the supersede
  const std::vector<ChunkKey> superseded = core_->PartialsExtendedBy(parent, all);
  EXPECT_EQ(superseded.size(), 3u);
  auto full = std::make_unique<Entry>();
  full->key = Key(4);
  full->parent = parent;
  full->layout = layout_;
  full->tokens = 16;
  full->bytes = kPage;
  ASSERT_TRUE(core_->ReserveT1(full.get()).ok());
  Entry* f = core_->Add(std::move(full));
  core_->EnterT1(f);
  EXPECT_EQ(core_->Commit(f, superseded), 2u);
  EXPECT_EQ(core_->counters().partials_superseded, 2u);
  EXPECT_EQ(core_->Find(Key(1)), nullptr);
  EXPECT_EQ(core_->Find(Key(2)), p5);
  EXPECT_EQ(core_->Find(Key(3)), nullptr);
  EXPECT_EQ(core_->LongestPartial(parent, 16, Digest{}, layout_, all), p5);
}

TEST_F(TierCoreTest, T2RecordsAreCountedAndMakeT2RoomErasesWhatIsInNoTier) {
  Entry* a = Put(1, 1);
  Entry* b = Put(2, 1);
  core_->AddT2Copy(a);
  core_->AddT2Copy(b);
  EXPECT_EQ(core_->t2_live_bytes(), 2 * TierCore::RecordBytes(*a));
  core_->ReleaseT1(a);  // a is on T2 only now
  const uint64_t record = TierCore::RecordBytes(*a);
  EXPECT_TRUE(core_->MakeT2Room(record, 2 * record));  // a (least recently inserted) goes
  EXPECT_EQ(core_->Find(Key(1)), nullptr);             // in no tier: erased
  EXPECT_EQ(core_->counters().t2_evictions, 1u);
  EXPECT_EQ(rec_.t2_dropped, 1u);
  EXPECT_EQ(core_->t2_live_bytes(), record);
  ++b->pins;
  EXPECT_FALSE(core_->MakeT2Room(2 * record, 2 * record));  // b is pinned
  EXPECT_TRUE(b->on_t2);
  --b->pins;
  EXPECT_FALSE(core_->MakeT2Room(3 * record, 2 * record));  // larger than T2
}

}  // namespace
}  // namespace kvault

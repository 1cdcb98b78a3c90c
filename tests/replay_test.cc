// kvault replay: trace parsing, the tier core as replay drives it (ReplayTiers) and the simulator.
#include <gtest/gtest.h>

#include <string>

#include "kvault/kv_codec.h"
#include "replay/simulator.h"
#include "replay/replay_tiers.h"
#include "replay/trace.h"

namespace kvault::replay {
namespace {

std::string MooncakeLine(double ts, uint32_t len, const std::vector<int>& ids, uint32_t out = 1) {
  std::string s = "{\"timestamp\": " + std::to_string(ts) + ", \"input_length\": " + std::to_string(len) +
                  ", \"output_length\": " + std::to_string(out) + ", \"hash_ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]}\n";
}

Trace MustParse(const std::string& text, TraceOptions o = {}) {
  auto t = ParseTrace(text, o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t.value()) : Trace{};
}

// A T1-only configuration holding exactly `chunks` chunks of 512 tokens.
ReplayOptions SmallOptions(const std::string& policy, uint64_t chunks) {
  ReplayOptions o;
  o.model.name = "test";
  o.model.layers = 2;
  o.model.q_heads = 2;
  o.model.kv_heads = 1;
  o.model.head_dim = 4;
  o.model.params = 1e6;
  o.model.kv_bytes_per_token_override = 8;  // a 512-token chunk = 4096 B = one page
  o.page_bytes = 4096;
  o.t1_bytes = chunks * 4096;
  o.t2_bytes = 0;
  o.policy = policy;
  o.engines = 1;
  o.window = 0;
  return o;
}

TEST(TraceTest, MooncakeChunksShareKeysExactlyWhenPrefixesAreShared) {
  // Request 2 shares block 1 with request 1 but not block 2; request 3 repeats request 1.
  const std::string text = MooncakeLine(0, 1024, {1, 2}) + MooncakeLine(5, 1000, {1, 3}) + MooncakeLine(9, 1024, {1, 2});
  for (uint32_t chunk : {128u, 256u, 512u}) {
    TraceOptions o;
    o.chunk_tokens = chunk;
    Trace t = MustParse(text, o);
    ASSERT_EQ(t.requests.size(), 3u);
    EXPECT_EQ(t.format, "mooncake");
    const auto& a = t.requests[0].chunks;
    const auto& b = t.requests[1].chunks;
    const auto& c = t.requests[2].chunks;
    ASSERT_EQ(a.size(), 1024 / chunk);
    ASSERT_EQ(b.size(), (1000 + chunk - 1) / chunk);
    const size_t shared = 512 / chunk;  // the chunks inside block 1
    for (size_t k = 0; k < b.size(); ++k) {
      EXPECT_EQ(a[k].key == b[k].key, k < shared) << "chunk " << chunk << " index " << k;
    }
    for (size_t k = 0; k < a.size(); ++k) EXPECT_EQ(a[k].key, c[k].key);
    uint32_t sum = 0;
    for (const auto& ch : b) sum += ch.tokens;
    EXPECT_EQ(sum, 1000u);
    EXPECT_EQ(t.prompt_tokens, 1024u + 1000u + 1024u);
    EXPECT_EQ(t.reusable_tokens, 512u + 1024u);  // request 2 reuses block 1; request 3 everything
    EXPECT_EQ(t.unique_tokens, 1024u + 488u);
  }
}

TEST(TraceTest, ChunksStraddlingBlocksHaveNoTokenStream) {
  TraceOptions o;
  o.chunk_tokens = 384;  // does not divide 512
  Trace t = MustParse(MooncakeLine(0, 1024, {1, 2}), o);
  ASSERT_EQ(t.requests[0].chunks.size(), 3u);
  EXPECT_EQ(t.requests[0].chunks[0].stream_begin, 0);
  EXPECT_LT(t.requests[0].chunks[1].stream_begin, 0);  // tokens 384..767 span blocks 1 and 2
}

TEST(TraceTest, ScaledBlocksKeepTheSharingStructure) {
  TraceOptions o;
  o.chunk_tokens = 16;
  o.scaled_block_tokens = 16;
  Trace t = MustParse(MooncakeLine(0, 1024, {1, 2}) + MooncakeLine(1, 1100, {1, 2, 7}), o);
  EXPECT_EQ(t.requests[0].input_tokens, 32u);
  EXPECT_EQ(t.requests[1].input_tokens, 32u + 3u);  // 76 tokens of the last block -> ceil(76 * 16 / 512)
  EXPECT_EQ(t.requests[0].chunks[1].key, t.requests[1].chunks[1].key);
  EXPECT_EQ(t.requests[1].chunks[2].tokens, 3u);
}

TEST(TraceTest, SessionsReuseTheirHistoryAndSharedPrefix) {
  const std::string text =
      "{\"session\": \"a\", \"timestamp\": 0, \"input_tokens\": 300, \"output_tokens\": 100, \"prefix\": \"sys\", \"prefix_tokens\": 512}\n"
      "{\"session\": \"b\", \"timestamp\": 1, \"input_tokens\": 10, \"output_tokens\": 5, \"prefix\": \"sys\", \"prefix_tokens\": 512}\n"
      "{\"session\": \"a\", \"timestamp\": 2, \"input_tokens\": 200}\n";
  TraceOptions o;
  o.chunk_tokens = 256;
  Trace t = MustParse(text, o);
  EXPECT_EQ(t.format, "sessions");
  const auto& a1 = t.requests[0];
  const auto& b1 = t.requests[1];
  const auto& a2 = t.requests[2];
  EXPECT_EQ(a1.input_tokens, 812u);
  EXPECT_EQ(a2.input_tokens, 812u + 100u + 200u);
  // The system prompt's two chunks are shared by both sessions; then they differ.
  EXPECT_EQ(a1.chunks[0].key, b1.chunks[0].key);
  EXPECT_EQ(a1.chunks[1].key, b1.chunks[1].key);
  EXPECT_NE(a1.chunks[2].key, b1.chunks[2].key);
  // Turn 2 of session a repeats turn 1's whole chunks.
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(a1.chunks[k].key, a2.chunks[k].key);
}

TEST(TraceTest, ErrorsNameTheLine) {
  auto bad = [](const std::string& text) { return ParseTrace(text, {}).status(); };
  Status st = bad(MooncakeLine(0, 1024, {1, 2}) + "{not json\n");
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("line 2"), std::string::npos) << st.message();
  st = bad(MooncakeLine(0, 1024, {1}));  // 1024 tokens need 2 blocks
  EXPECT_NE(st.message().find("hash_ids"), std::string::npos) << st.message();
  EXPECT_EQ(bad("{\"timestamp\": 0, \"input_length\": 5}\n").code(), Code::kInvalidArgument);
  EXPECT_EQ(bad("{\"timestamp\": -1, \"input_length\": 5, \"hash_ids\": [1]}\n").code(), Code::kInvalidArgument);
  EXPECT_EQ(bad(MooncakeLine(0, 10, {1}) + "{\"session\": \"x\", \"timestamp\": 1, \"input_tokens\": 4}\n").code(),
            Code::kInvalidArgument);
  EXPECT_EQ(bad("").code(), Code::kInvalidArgument);
  EXPECT_EQ(LoadTrace("/nonexistent/trace.jsonl", {}).status().code(), Code::kNotFound);
}

TEST(TraceTest, RepeatAddsFreshRequestsAfterTheSpan) {
  TraceOptions o;
  o.repeat = 3;
  Trace t = MustParse(MooncakeLine(0, 512, {1}) + MooncakeLine(100, 512, {1}), o);
  ASSERT_EQ(t.requests.size(), 6u);
  EXPECT_DOUBLE_EQ(t.requests[2].arrival_ms, 200.0);  // span 100 + mean gap 100
  EXPECT_NE(t.requests[0].chunks[0].key, t.requests[2].chunks[0].key);
  EXPECT_EQ(t.reusable_tokens, 3u * 512u);
}

// Cyclic access a b c a b c ... over a cache of two chunks: LRU and FIFO never hit, Belady hits
// one request in three (worked out by hand: after the first three misses, every eviction
// keeps the chunk needed next).
TEST(SimulatorTest, HandMadeTraceWithAKnownOptimum) {
  std::string text;
  const int ids[] = {10, 11, 12};
  for (int i = 0; i < 9; ++i) text += MooncakeLine(i * 1000.0, 512, {ids[i % 3]});
  Trace t = MustParse(text);
  auto hits = [&](const std::string& policy) {
    ReplayOptions o = SmallOptions(policy, 2);  // window 0: no look-ahead
    auto r = RunReplay(t, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->hit_tokens_t1 + r->hit_tokens_t2 : 0;
  };
  EXPECT_EQ(hits("lru"), 0u);
  EXPECT_EQ(hits("fifo"), 0u);
  EXPECT_EQ(hits("opt"), 3u * 512u);
}

// Requests a, b, c, a over a cache of two chunks, no window: at c, "aware" and lru evict the
// older a and miss it next; "aware-oracle" knows b is never read again.
TEST(SimulatorTest, AwareOracleKnowsWhichChunksAreReadAgain) {
  std::string text;
  const int ids[] = {10, 11, 12, 10};
  for (int i = 0; i < 4; ++i) text += MooncakeLine(i * 1000.0, 512, {ids[i]});
  Trace t = MustParse(text);
  auto hits = [&](const std::string& policy) {
    auto r = RunReplay(t, SmallOptions(policy, 2));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->hit_tokens_t1 + r->hit_tokens_t2 : 0;
  };
  EXPECT_EQ(hits("lru"), 0u);
  EXPECT_EQ(hits("aware"), 0u);
  EXPECT_EQ(hits("aware-oracle"), 512u);
  EXPECT_EQ(hits("opt"), 512u);
}

// With every request queued at once, the window shows the future to "aware": on the cyclic
// trace it then evicts like Belady.
TEST(SimulatorTest, AwareWithAWindowMatchesTheOptimumOnTheCyclicTrace) {
  std::string text;
  const int ids[] = {10, 11, 12};
  for (int i = 0; i < 9; ++i) text += MooncakeLine(0, 512, {ids[i % 3]});
  Trace t = MustParse(text);
  ReplayOptions o = SmallOptions("aware", 2);
  o.window = 4;
  auto aware = RunReplay(t, o);
  ASSERT_TRUE(aware.ok());
  o.policy = "lru";
  auto lru = RunReplay(t, o);
  ASSERT_TRUE(lru.ok());
  EXPECT_EQ(aware->hit_tokens_t1, 3u * 512u);
  EXPECT_EQ(lru->hit_tokens_t1, 0u);
  EXPECT_LE(aware->Percentile(90), lru->Percentile(90));
}

// A trace of conversations and shared prompts, generated deterministically.
Trace SyntheticSessions(int requests) {
  std::string text;
  uint64_t x = 42;
  auto next = [&] { return x = x * 6364136223846793005ull + 1442695040888963407ull, x >> 33; };
  for (int i = 0; i < requests; ++i) {
    const uint64_t session = next() % 40;
    text += "{\"session\": " + std::to_string(session) + ", \"timestamp\": " + std::to_string(i * 50) +
            ", \"input_tokens\": " + std::to_string(100 + next() % 900) + ", \"output_tokens\": 50, \"prefix\": \"p" +
            std::to_string(session % 3) + "\", \"prefix_tokens\": 1024}\n";
  }
  TraceOptions o;
  o.chunk_tokens = 256;
  return MustParse(text, o);
}

TEST(SimulatorTest, InfiniteCacheReachesTheTraceCeilingWithEveryPolicy) {
  Trace t = SyntheticSessions(400);
  ASSERT_GT(t.reusable_tokens, 0u);
  for (const std::string& policy : PolicyNames()) {
    ReplayOptions o = SmallOptions(policy, 1 << 20);
    o.t2_bytes = 1ull << 40;
    auto r = RunReplay(t, o);
    ASSERT_TRUE(r.ok()) << policy;
    EXPECT_EQ(r->hit_tokens_t1 + r->hit_tokens_t2, t.reusable_tokens) << policy;
    EXPECT_EQ(r->t1_evictions, 0u) << policy;
  }
}

TEST(SimulatorTest, OptIsACeilingAndRunsAreDeterministic) {
  Trace t = SyntheticSessions(600);
  uint64_t unique_chunks = t.unique_chunks;
  for (uint64_t cap : {unique_chunks / 20, unique_chunks / 5}) {
    ReplayOptions o = SmallOptions("opt", cap);
    auto opt = RunReplay(t, o);
    ASSERT_TRUE(opt.ok());
    for (const char* policy : {"lru", "fifo", "s3fifo", "aware", "aware-oracle"}) {
      o.policy = policy;
      o.window = 8;
      auto a = RunReplay(t, o);
      auto b = RunReplay(t, o);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_LE(a->token_hit_rate(), opt->token_hit_rate() + 1e-9) << policy << " cap " << cap;
      EXPECT_EQ(a->hit_tokens_t1, b->hit_tokens_t1);
      EXPECT_EQ(a->ttft_ms, b->ttft_ms);
    }
  }
}

// Conversations: the newest turn's chunks have been used once and are what the session's next
// turn reads. `aware` must not lose to lru there (a version that evicted chunks used once
// before reused ones did, by 5-14 points of hit rate on bench/make_session_trace.py traces).
TEST(SimulatorTest, AwareKeepsUpWithLruOnConversations) {
  // 400 chats, a new one every second, each 3-8 turns 15-25 s apart (about 90 under way at
  // a time), one of three system prompts each.
  std::string text;
  uint64_t x = 7;
  auto next = [&] { return x = x * 6364136223846793005ull + 1442695040888963407ull, x >> 33; };
  std::vector<std::pair<uint64_t, std::string>> lines;
  for (int chat = 0; chat < 400; ++chat) {
    uint64_t at = chat * 1000ull;
    const uint64_t turns = 3 + next() % 6;
    for (uint64_t turn = 0; turn < turns; ++turn) {
      lines.emplace_back(at, "{\"session\": " + std::to_string(chat) + ", \"timestamp\": " + std::to_string(at) +
                                 ", \"input_tokens\": " + std::to_string(200 + next() % 400) +
                                 ", \"output_tokens\": " + std::to_string(100 + next() % 200) +
                                 ", \"prefix\": \"p" + std::to_string(chat % 3) + "\", \"prefix_tokens\": 512}\n");
      at += 15000 + next() % 10000;
    }
  }
  std::stable_sort(lines.begin(), lines.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [at, line] : lines) text += line;
  TraceOptions topt;
  topt.chunk_tokens = 256;
  Trace t = MustParse(text, topt);
  for (uint64_t cap : {t.unique_chunks / 20, t.unique_chunks / 10, t.unique_chunks / 5}) {
    for (uint32_t window : {0u, 8u}) {
      ReplayOptions o = SmallOptions("lru", cap);
      o.window = window;
      auto lru = RunReplay(t, o);
      o.policy = "aware";
      auto aware = RunReplay(t, o);
      ASSERT_TRUE(lru.ok() && aware.ok());
      EXPECT_GE(aware->token_hit_rate(), lru->token_hit_rate()) << "cap " << cap << " window " << window;
    }
  }
}

TEST(ReplayTiersTest, CapsAreRespectedAndPinnedEntriesStay) {
  AccessWindow window;
  auto m = ReplayTiers::Create(/*t1=*/3 * 4096, /*t2=*/3 * 8192, 4096, /*kv per token=*/8, /*chunk_tokens=*/512, "lru",
                               {&window, nullptr});
  ASSERT_TRUE(m.ok());
  ReplayTiers& tiers = *m.value();
  std::vector<Entry*> pinned;
  ChunkKey parent;
  for (int i = 0; i < 10; ++i) {
    ChunkKey k;
    k.bytes[0] = static_cast<uint8_t>(i + 1);
    bool created = false;
    Entry* e = tiers.Put(TraceChunk{k, 512}, parent, &created);
    ASSERT_NE(e, nullptr);
    EXPECT_TRUE(created);
    tiers.WriteToT2(e);
    if (i == 0) {
      tiers.Pin(e);
      pinned.push_back(e);
    }
    EXPECT_LE(tiers.t1_used(), tiers.t1_capacity());
    EXPECT_LE(tiers.t2_used(), tiers.t2_capacity());
    parent = k;
  }
  EXPECT_TRUE(pinned[0]->in_t1);  // never a victim while pinned
  tiers.Unpin(pinned[0]);
  // T1 full of pinned entries: a put finds no room.
  std::vector<Entry*> all;
  for (int i = 20; i < 23; ++i) {
    ChunkKey k;
    k.bytes[0] = static_cast<uint8_t>(i);
    bool created = false;
    Entry* e = tiers.Put(TraceChunk{k, 512}, ChunkKey{}, &created);
    ASSERT_NE(e, nullptr);
    tiers.Pin(e);
    all.push_back(e);
  }
  ChunkKey k;
  k.bytes[0] = 99;
  bool created = false;
  EXPECT_EQ(tiers.Put(TraceChunk{k, 512}, ChunkKey{}, &created), nullptr);
  EXPECT_EQ(tiers.counters().t1_put_failures, 1u);
  for (Entry* e : all) tiers.Unpin(e);
}

TEST(SimulatorTest, QueueingShowsInTtftAndMoreEnginesDrainIt) {
  Trace t = SyntheticSessions(300);
  ReplayOptions o = SmallOptions("lru", 64);
  o.cost.prefill_tflops = 1e-4;  // slow engines: the queue builds up
  o.speed = 4;
  auto one = RunReplay(t, o);
  o.engines = 8;
  auto eight = RunReplay(t, o);
  ASSERT_TRUE(one.ok() && eight.ok());
  EXPECT_GT(one->Percentile(90), eight->Percentile(90));
  uint32_t max_queue = 0;
  for (const auto& [time, len] : one->queue) max_queue = std::max(max_queue, len);
  EXPECT_GT(max_queue, 0u);
  for (size_t i = 0; i < one->ttft_ms.size(); ++i) EXPECT_GE(one->ttft_ms[i] + 1e-9, one->service_ms[i]);
}

// A chat's next turn reuses the previous prompt's trailing partial chunk (the store keeps it
// and finds it by the tokens that follow), then its full chunk supersedes the partial one.
TEST(SimulatorTest, NextTurnReusesThePartialChunk) {
  const std::string text =
      "{\"session\": \"a\", \"timestamp\": 0, \"input_tokens\": 600, \"output_tokens\": 100}\n"
      "{\"session\": \"a\", \"timestamp\": 1000, \"input_tokens\": 200}\n"
      "{\"session\": \"a\", \"timestamp\": 2000, \"input_tokens\": 50}\n";
  TraceOptions to;
  to.chunk_tokens = 256;
  Trace t = MustParse(text, to);
  // Turn 1: 600 tokens = 256 + 256 + 88 (partial). Turn 2: 900 = 256 + 256 + 256 + 132: it
  // reuses 512 + the 88-token partial. Turn 3: 950 tokens reuses turn 2's 768 + its 132-token partial.
  EXPECT_EQ(t.reusable_tokens, 600u + 900u);
  ReplayOptions o = SmallOptions("lru", 64);
  auto r = RunReplay(t, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->hit_tokens_t1 + r->hit_tokens_t2, 600u + 900u);
}

// The replay runs the engine's planner with its rates pinned from the cost model: on an idle
// node (no queue on the disk) a request's service time is the planner's prediction for the
// plan it chose, and what is loaded is what the plan loads.
TEST(SimulatorTest, PlansAreTheEnginePlannersAndCostWhatItPredicts) {
  // T1 holds 4 chunks: r1's chunks push r0's out to T2, where r2 finds (part of) its prefix.
  const Trace t = MustParse(MooncakeLine(0, 2048, {1, 2, 3, 4}) + MooncakeLine(100000, 2048, {10, 11, 12, 13}) +
                            MooncakeLine(200000, 2148, {1, 2, 3, 4, 5}));
  std::vector<planner::PlanKind> kinds;
  for (const double disk_gbps : {1e3, 3e-6, 1e-6}) {
    ReplayOptions o = SmallOptions("lru", 4);
    o.t2_bytes = 64 << 20;
    o.cost.prefill_tflops = 1e-3;  // 2 ms per token: recomputing costs as much as a slow read
    o.cost.t2_read_gbps = disk_gbps;
    o.cost.t2_write_gbps = 1e6;  // nothing waits for the write-behind
    auto r = RunReplay(t, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    // Only r2 hits, and only on T2 (how much of r0's chain T2 kept is the store's rules').
    ASSERT_EQ(r->hit_tokens_t1, 0u);
    ASSERT_GE(r->hit_tokens_t2, 1024u);
    ASSERT_EQ(r->hit_tokens_t2 % 512, 0u);
    const size_t n = r->hit_tokens_t2 / 512;
    const uint64_t chunk_bytes = 512 * o.model.kv_bytes_per_token();
    const std::vector<planner::PlanChunk> chunks(n, planner::PlanChunk{Tier::kT2, 512, chunk_bytes});
    const planner::LoadPlanner p(o.cost.PinnedPlannerOptions(o.model, o.planner));
    const planner::LoadPlan plan = p.Plan(chunks, static_cast<int64_t>(2148 - r->hit_tokens_t2));
    EXPECT_NEAR(r->service_ms[2], plan.predicted_ms, plan.predicted_ms * 1e-9) << plan.ToJson();
    EXPECT_EQ(r->reused_tokens, 512u * (n - plan.recompute_chunks)) << plan.ToJson();
    EXPECT_EQ(r->planner_loads + r->planner_recomputes + r->planner_splits, 1u);
    EXPECT_EQ(r->planner_loads, plan.kind == planner::PlanKind::kLoad ? 1u : 0u);
    EXPECT_EQ(r->planner_splits, plan.kind == planner::PlanKind::kSplit ? 1u : 0u);
    kinds.push_back(plan.kind);
  }
  // A fast disk: loaded. Slower ones: a head recomputed while the tail is read, then all
  // of it recomputed.
  EXPECT_EQ(kinds, (std::vector<planner::PlanKind>{planner::PlanKind::kLoad, planner::PlanKind::kSplit,
                                                   planner::PlanKind::kRecompute}));
}

TEST(SimulatorTest, BadOptionsAreErrors) {
  Trace t = SyntheticSessions(10);
  ReplayOptions o = SmallOptions("nope", 4);
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
  o = SmallOptions("lru", 4);
  o.engines = 0;
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
  o = SmallOptions("lru", 4);
  o.cost.pcie_gbps = 0;
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
}

// --- compressed T2 (issue 18) -----------------------------------------------------------

// A model whose layout the codecs take (2 layers, 2 KV heads of 64, bf16: 1 KiB of KV per
// token, a 512-token chunk = 512 KiB = one page), T1 of `t1_chunks` chunks, T2 off.
ReplayOptions CodecOptions(uint64_t t1_chunks) {
  ReplayOptions o;
  o.model.name = "codec-test";
  o.model.layers = 2;
  o.model.q_heads = 2;
  o.model.kv_heads = 2;
  o.model.head_dim = 64;
  o.model.params = 1e6;
  o.page_bytes = 512 << 10;
  o.t1_bytes = t1_chunks * (512 << 10);
  o.t2_bytes = 0;
  o.policy = "lru";
  o.engines = 1;
  o.window = 0;
  o.cost.codec_decode_gbps = 8;
  o.cost.codec_encode_gbps = 4;
  return o;
}

// T2 counts an encoded record at its stored size, as the store does: a 512-token int4 chunk
// is 140,288 payload bytes (a 147,456-byte record against 528,384 raw), so the same T2 holds
// 3.58x the chunks.
TEST(ReplayTiersTest, AnEncodedT2HoldsItsRatioMoreChunks) {
  const KvLayout layout = CodecOptions(1).model.Layout(512);
  ASSERT_EQ(layout.token_bytes(), 1024u);
  const uint64_t raw_record = 4096 + 512 * 1024;
  const uint64_t t2_cap = 10 * raw_record;
  auto on_t2 = [&](KvCodec codec) {
    AccessWindow window;
    auto m = ReplayTiers::Create(/*t1=*/2 * (512 << 10), t2_cap, 512 << 10, 1024, 512, "lru", {&window, nullptr},
                                 T2Encoding{codec, layout});
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    ReplayTiers& tiers = *m.value();
    EXPECT_EQ(tiers.t2_stored_bytes(512), EncodedChunkBytes(codec, layout, 512));
    EXPECT_EQ(tiers.t2_stored_bytes(100), EncodedChunkBytes(codec, layout, 100));  // a partial chunk
    ChunkKey parent;
    for (int i = 0; i < 60; ++i) {
      ChunkKey k;
      k.bytes[0] = static_cast<uint8_t>(i + 1);
      bool created = false;
      Entry* e = tiers.Put(TraceChunk{k, 512}, parent, &created);
      EXPECT_TRUE(e != nullptr && tiers.WriteToT2(e));
      EXPECT_LE(tiers.t2_used(), tiers.t2_capacity());
      parent = k;
    }
    size_t n = 0;
    tiers.core().ForEach([&](const Entry* e) { n += e->on_t2; });
    EXPECT_EQ(tiers.t2_used(), n * (4096 + (EncodedChunkBytes(codec, layout, 512) + 4095) / 4096 * 4096));
    return n;
  };
  EXPECT_EQ(EncodedChunkBytes(KvCodec::kInt4, layout, 512), 140288u);
  EXPECT_EQ(on_t2(KvCodec::kNone), 10u);
  EXPECT_EQ(on_t2(KvCodec::kInt8), 19u);  // 270,336-byte payloads: 274,432-byte records
  EXPECT_EQ(on_t2(KvCodec::kInt4), 35u);  // 147,456-byte records
  // An overridden KV size keeps the layout's ratio.
  AccessWindow window;
  auto scaled = ReplayTiers::Create(512 << 10, t2_cap, 512 << 10, 2048, 512, "lru", {&window, nullptr},
                                    T2Encoding{KvCodec::kInt4, layout});
  ASSERT_TRUE(scaled.ok());
  EXPECT_EQ(scaled.value()->t2_stored_bytes(512), 2 * EncodedChunkBytes(KvCodec::kInt4, layout, 512));
  // A layout the codec cannot take is refused.
  KvLayout odd = layout;
  odd.head_dim = 48;
  EXPECT_EQ(ReplayTiers::Create(512 << 10, t2_cap, 512 << 10, 768, 512, "lru", {&window, nullptr},
                                T2Encoding{KvCodec::kInt4, odd})
                .status()
                .code(),
            Code::kInvalidArgument);
}

// An encoded T2 hit costs its stored bytes at the disk's rate plus its raw bytes at the
// decode rate, and the planner sees exactly that: the service time is its prediction for
// the codec's chunks. Where raw records are recomputed, int4 ones are worth reading (here a
// split: a head recomputed while the rest is read), unless their decode is slow.
TEST(SimulatorTest, AnEncodedT2HitCostsItsReadAndDecodeAsThePlannerPredicts) {
  const Trace t = MustParse(MooncakeLine(0, 2048, {1, 2, 3, 4}) + MooncakeLine(100000, 2048, {10, 11, 12, 13}) +
                            MooncakeLine(200000, 2148, {1, 2, 3, 4, 5}));
  struct Case {
    KvCodec codec;
    double decode_gbps;
    planner::PlanKind kind;
  };
  // 512 KiB chunks at 0.1 GB/s: 5.2 ms per raw chunk, 1.4 ms in int4, against ~1 ms of
  // recompute per chunk; a 0.05 GB/s decode adds 10.5 ms per chunk.
  for (const Case& c : {Case{KvCodec::kNone, 8, planner::PlanKind::kRecompute},
                        Case{KvCodec::kInt4, 1e3, planner::PlanKind::kSplit},
                        Case{KvCodec::kInt4, 0.05, planner::PlanKind::kRecompute}}) {
    ReplayOptions o = CodecOptions(4);
    o.t2_bytes = 64 << 20;
    o.t2_codec = c.codec;
    o.cost.codec_decode_gbps = c.decode_gbps;
    o.cost.prefill_tflops = 1;  // 2 us per token
    o.cost.t2_read_gbps = 0.1;
    o.cost.t2_write_gbps = 1e6;  // nothing waits for the write-behind
    o.cost.codec_encode_gbps = 1e6;
    auto r = RunReplay(t, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->hit_tokens_t1, 0u);
    // How much of r0's chain T2 kept is the store's rules' (as in the test above).
    ASSERT_GE(r->hit_tokens_t2, 1024u);
    ASSERT_EQ(r->hit_tokens_t2 % 512, 0u);
    const size_t n = r->hit_tokens_t2 / 512;
    const KvLayout layout = o.model.Layout(512);
    const std::vector<planner::PlanChunk> chunks(n, planner::StoredPlanChunk(Tier::kT2, layout, 512, c.codec));
    const planner::LoadPlanner p(o.cost.PinnedPlannerOptions(o.model, o.planner));
    const planner::LoadPlan plan = p.Plan(chunks, static_cast<int64_t>(2148 - r->hit_tokens_t2));
    EXPECT_EQ(plan.kind, c.kind) << KvCodecName(c.codec) << " " << plan.ToJson();
    EXPECT_NEAR(r->service_ms[2], plan.predicted_ms, plan.predicted_ms * 1e-9) << plan.ToJson();
    const size_t loaded = n - plan.recompute_chunks;
    EXPECT_EQ(r->reused_tokens, 512u * loaded) << plan.ToJson();
    if (loaded > 0) {  // the formula, by hand
      const double stored = double(EncodedChunkBytes(c.codec, layout, 512)), raw = 512.0 * 1024;
      const double read_s = double(loaded) * (stored / 0.1e9 + raw / (c.decode_gbps * 1e9));
      const double expected = planner::PipelinedPrefillSeconds(
          o.cost.PrefillSeconds(o.model, 512 * plan.recompute_chunks, 0), read_s,
          double(loaded) * raw / (o.cost.pcie_gbps * 1e9), o.cost.PrefillSeconds(o.model, 2148 - r->hit_tokens_t2, r->hit_tokens_t2), 2);
      EXPECT_NEAR(r->service_ms[2], expected * 1e3, expected * 1e-6);
      EXPECT_EQ(r->bytes_t2_to_t1, loaded * EncodedChunkBytes(c.codec, layout, 512));  // stored bytes
    }
  }
}

// On a T2 of the same bytes, int4 keeps more of the conversations than raw records do; codec
// none is the default.
TEST(SimulatorTest, AnInt4T2KeepsMoreOfTheTrace) {
  const Trace t = SyntheticSessions(400);
  ReplayOptions o = CodecOptions(8);
  o.t2_bytes = 16 * (4096 + (256 << 10));  // 16 raw 256-token chunks
  auto raw = RunReplay(t, o);
  o.t2_codec = KvCodec::kNone;
  o.cost.codec_decode_gbps = o.cost.codec_encode_gbps = 0;  // unused with none
  auto none = RunReplay(t, o);
  o = CodecOptions(8);
  o.t2_bytes = 16 * (4096 + (256 << 10));
  o.t2_codec = KvCodec::kInt4;
  auto int4 = RunReplay(t, o);
  ASSERT_TRUE(raw.ok() && none.ok() && int4.ok());
  EXPECT_EQ(raw->ttft_ms, none->ttft_ms);
  EXPECT_GT(int4->hit_tokens_t2, raw->hit_tokens_t2 * 3 / 2);
  EXPECT_GT(int4->token_hit_rate(), raw->token_hit_rate());
  EXPECT_LT(int4->bytes_t1_to_t2, raw->bytes_t1_to_t2);  // stored bytes
}

TEST(SimulatorTest, ACodecNeedsItsRates) {
  const Trace t = SyntheticSessions(10);
  ReplayOptions o = CodecOptions(4);
  o.t2_bytes = 64 << 20;
  o.t2_codec = KvCodec::kInt8;
  o.cost.codec_decode_gbps = 0;
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
  o.cost.codec_decode_gbps = -1;
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
  o = CodecOptions(4);
  o.t2_codec = KvCodec::kInt4;
  o.model.head_dim = 48;  // int4 needs a power of two
  EXPECT_EQ(RunReplay(t, o).status().code(), Code::kInvalidArgument);
}

// The rates come from real encodes and decodes of a chunk of the layout (no figure is
// asserted: speed is the benchmarks' business).
TEST(CostModelTest, MeasuresACodecsRates) {
  const KvLayout layout = CodecOptions(1).model.Layout(64);
  for (KvCodec codec : {KvCodec::kInt8, KvCodec::kInt4}) {
    auto rates = MeasureCodecRates(codec, layout, 64, 0.01);
    ASSERT_TRUE(rates.ok()) << rates.status().ToString();
    EXPECT_GT(rates->decode_gbps, 0);
    EXPECT_GT(rates->encode_gbps, 0);
  }
  EXPECT_EQ(MeasureCodecRates(KvCodec::kNone, layout, 64).status().code(), Code::kInvalidArgument);
  KvLayout odd = layout;
  odd.head_dim = 48;
  EXPECT_EQ(MeasureCodecRates(KvCodec::kInt4, odd, 64).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(layout.dtype, DType::kBF16);
  EXPECT_EQ(layout.token_bytes(), CodecOptions(1).model.kv_bytes_per_token());
}

}  // namespace
}  // namespace kvault::replay

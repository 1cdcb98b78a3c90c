// LoadPlanner: the prefill model it fits, and the load / recompute / split choice.
#include "planner/load_planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

namespace {

using kvault::KvCodec;
using kvault::KvLayout;
using kvault::Tier;
using kvault::planner::LoadPlanner;
using kvault::planner::PlanChunk;
using kvault::planner::PlanKind;

constexpr double kPerToken = 50e-6;  // 50 us per token
constexpr double kPerPair = 2e-9;    // 2 ns per (new, context) token pair
constexpr uint64_t kTokenBytes = 128 << 10;  // Llama-3-8B-shaped KV per token

double TrueSeconds(int64_t n, int64_t cached) {
  return n * (kPerToken + kPerPair * (static_cast<double>(cached) + n / 2.0));
}

// A planner that has seen forward passes of several shapes from the model above.
std::unique_ptr<LoadPlanner> Trained(LoadPlanner::Options o) {
  auto p = std::make_unique<LoadPlanner>(o);
  for (int64_t n : {128, 512, 1024, 4096}) {
    for (int64_t cached : {0, 2048, 16384}) p->ObservePrefill(n, cached, TrueSeconds(n, cached));
  }
  return p;
}

std::vector<PlanChunk> Prefix(int64_t chunks, Tier tier, int64_t chunk_tokens = 512) {
  return std::vector<PlanChunk>(chunks, PlanChunk{tier, chunk_tokens, chunk_tokens * kTokenBytes});
}

LoadPlanner::Options Rates(double t2_gbps, double copy_gbps) {
  LoadPlanner::Options o;
  o.layers = 32;
  o.fixed_t2_read_gbps = t2_gbps;
  o.fixed_copy_gbps = copy_gbps;
  return o;
}

TEST(LoadPlannerTest, LoadsUntilAPrefillIsMeasured) {
  LoadPlanner p(Rates(1.2, 55));
  auto plan = p.Plan(Prefix(8, Tier::kT2), 128);
  EXPECT_EQ(plan.kind, PlanKind::kLoad);
  EXPECT_EQ(plan.recompute_chunks, 0u);
  EXPECT_NE(plan.reason.find("no prefill measured"), std::string::npos);
  EXPECT_EQ(p.Plan({}, 128).reason, "nothing cached");
}

TEST(LoadPlannerTest, FitsThePrefillModelFromObservedPasses) {
  LoadPlanner p(Rates(0, 0));
  auto m = Trained(p.options())->prefill_model();
  EXPECT_NEAR(m.per_token_s, kPerToken, kPerToken * 1e-3);
  EXPECT_NEAR(m.per_pair_s, kPerPair, kPerPair * 1e-3);
  // One shape only: the two terms cannot be told apart; the fit still predicts that shape.
  LoadPlanner q(Rates(0, 0));
  for (int i = 0; i < 5; ++i) q.ObservePrefill(1000, 0, TrueSeconds(1000, 0));
  EXPECT_NEAR(q.prefill_model().Seconds(1000, 0), TrueSeconds(1000, 0), TrueSeconds(1000, 0) * 1e-6);
}

TEST(LoadPlannerTest, RecentPassesWeighMore) {
  LoadPlanner p(Rates(0, 0));
  for (int i = 0; i < 50; ++i) p.ObservePrefill(1000, 0, 1.0);  // an old, slow machine state
  for (int i = 0; i < 50; ++i) p.ObservePrefill(1000, 0, 0.1);  // now fast
  EXPECT_NEAR(p.prefill_model().Seconds(1000, 0), 0.1, 0.01);
}

TEST(LoadPlannerTest, LoadsFromDramOverPcie) {
  // 32k tokens in T1: 4 GiB over 55 GB/s (~78 ms) against ~3.7 s of recompute.
  auto p = Trained(Rates(1.2, 55));
  auto plan = p->Plan(Prefix(64, Tier::kT1), 128);
  EXPECT_EQ(plan.kind, PlanKind::kLoad) << plan.ToJson();
  EXPECT_LT(plan.predicted_ms, plan.recompute_all_ms / 10);
}

TEST(LoadPlannerTest, RecomputesRatherThanReadASlowDisk) {
  // 4k tokens on a 0.05 GB/s disk: 10.7 s to read, well under a second to recompute.
  auto p = Trained(Rates(0.05, 55));
  auto plan = p->Plan(Prefix(8, Tier::kT2), 128);
  EXPECT_EQ(plan.kind, PlanKind::kRecompute) << plan.ToJson();
  EXPECT_EQ(plan.recompute_tokens, 8 * 512);
  EXPECT_DOUBLE_EQ(plan.predicted_ms, plan.recompute_all_ms);
  EXPECT_LT(plan.recompute_all_ms, plan.load_all_ms);
}

TEST(LoadPlannerTest, SplitsWhenReadingAndRecomputingTakeAboutAsLong) {
  // 32k tokens on a 1.2 GB/s disk: ~3.6 s to read, ~3.7 s to recompute. Recomputing the
  // head while the tail reads takes about half of either.
  auto p = Trained(Rates(1.2, 55));
  auto plan = p->Plan(Prefix(64, Tier::kT2), 128);
  EXPECT_EQ(plan.kind, PlanKind::kSplit) << plan.ToJson();
  EXPECT_GT(plan.recompute_chunks, 0u);
  EXPECT_LT(plan.recompute_chunks, 64u);
  EXPECT_LT(plan.predicted_ms, 0.7 * std::min(plan.load_all_ms, plan.recompute_all_ms)) << plan.ToJson();
}

TEST(LoadPlannerTest, ChoosesTheBestSplitPoint) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    LoadPlanner::Options o = Rates(0.2 + (rng() % 100) / 10.0, 1 + rng() % 60);
    o.recompute_slow_tail = false;  // splits only (the tail option has its own tests below)
    auto p = Trained(o);
    std::vector<PlanChunk> chunks;
    const int n = 1 + rng() % 40;
    for (int i = 0; i < n; ++i) {
      const Tier tier = rng() % 3 == 0 ? Tier::kT1 : Tier::kT2;
      const int64_t tokens = i + 1 == n ? 1 + rng() % 512 : 512;
      chunks.push_back({tier, tokens, tokens * kTokenBytes});
    }
    const int64_t fresh = 1 + rng() % 4096;
    auto plan = p->Plan(chunks, fresh);
    // The best split, unless loading all is within min_gain of it.
    double best = plan.load_all_ms;
    for (size_t k = 0; k <= chunks.size(); ++k) best = std::min(best, p->PredictSeconds(chunks, fresh, k) * 1e3);
    if (plan.kind == PlanKind::kLoad) {
      EXPECT_LE(plan.load_all_ms * (1 - p->options().min_gain), best * (1 + 1e-9));
    } else {
      EXPECT_NEAR(plan.predicted_ms, best, best * 1e-9);
      EXPECT_LT(plan.predicted_ms, plan.load_all_ms * (1 - p->options().min_gain));
    }
    // Never more than min_gain above the better of load all and recompute all.
    EXPECT_LE(plan.predicted_ms * (1 - p->options().min_gain),
              std::min(plan.load_all_ms, plan.recompute_all_ms) * (1 + 1e-9));
    EXPECT_EQ(plan.recompute_chunks == chunks.size(), plan.kind == PlanKind::kRecompute);
    EXPECT_EQ(plan.tail_recompute_chunks, 0u);
  }
}

TEST(LoadPlannerTest, ChoosesTheBestPlanWithTheSlowTailOption) {
  std::mt19937_64 rng(11);
  int tails = 0;
  for (int round = 0; round < 200; ++round) {
    LoadPlanner::Options o = Rates(0.2 + (rng() % 100) / 10.0, 1 + rng() % 60);
    o.recompute_slow_tail = true;
    auto p = Trained(o);
    std::vector<PlanChunk> chunks;
    const int n = 1 + rng() % 40;
    const int in_t1 = rng() % (n + 1);  // a T1 head, then T2
    for (int i = 0; i < n; ++i) {
      const int64_t tokens = i + 1 == n ? 1 + rng() % 512 : 512;
      chunks.push_back({i < in_t1 ? Tier::kT1 : Tier::kT2, tokens, tokens * kTokenBytes});
    }
    const int64_t fresh = 1 + rng() % 4096;
    auto plan = p->Plan(chunks, fresh);
    double best = plan.load_all_ms;
    for (size_t k = 0; k <= chunks.size(); ++k) best = std::min(best, p->PredictSeconds(chunks, fresh, k) * 1e3);
    if (in_t1 > 0 && in_t1 < n) {
      for (int k = 0; k < in_t1; ++k) best = std::min(best, p->PredictSeconds(chunks, fresh, k, n - in_t1) * 1e3);
    }
    if (plan.recompute_chunks == 0 && plan.tail_recompute_chunks == 0) {
      EXPECT_LE(plan.load_all_ms * (1 - o.min_gain), best * (1 + 1e-9));
    } else {
      EXPECT_NEAR(plan.predicted_ms, best, best * 1e-9) << plan.ToJson();
    }
    const size_t tail = plan.tail_recompute_chunks;
    EXPECT_TRUE(tail == 0 || (in_t1 > 0 && tail == static_cast<size_t>(n - in_t1))) << plan.ToJson();
    EXPECT_DOUBLE_EQ(plan.predicted_ms, p->PredictSeconds(chunks, fresh, plan.recompute_chunks, tail) * 1e3);
    tails += tail > 0;
  }
  EXPECT_GT(tails, 10);
}

TEST(LoadPlannerTest, PipelineIsBoundByItsSlowerStage) {
  using kvault::planner::PipelinedPrefillSeconds;
  // Compute-bound: the first layer's copy, then all of the compute.
  EXPECT_DOUBLE_EQ(PipelinedPrefillSeconds(0, 0, 0.32, 1.0, 32), 0.01 + 1.0);
  // Copy-bound: all of the copy, then the last layer's compute.
  EXPECT_DOUBLE_EQ(PipelinedPrefillSeconds(0, 0, 3.2, 1.0, 32), 3.2 + 1.0 / 32);
  // The read comes first; a recomputed head overlaps it.
  EXPECT_DOUBLE_EQ(PipelinedPrefillSeconds(0.5, 2.0, 0.32, 1.0, 32), 2.0 + 0.01 + 1.0);
  EXPECT_DOUBLE_EQ(PipelinedPrefillSeconds(5.0, 2.0, 0.32, 1.0, 32), 5.0 + 1.0);
  // Nothing loaded: head and fresh compute back to back.
  EXPECT_DOUBLE_EQ(PipelinedPrefillSeconds(2.0, 0, 0, 1.0, 32), 3.0);
}

TEST(LoadPlannerTest, PinnedRatesAndModelIgnoreMeasurements) {
  LoadPlanner::Options o = Rates(1.2, 55);
  o.fixed_prefill = {kPerToken, kPerPair};
  LoadPlanner p(o);
  const auto chunks = Prefix(64, Tier::kT2);
  const auto before = p.Plan(chunks, 128);
  EXPECT_EQ(before.reason.find("no prefill measured"), std::string::npos);  // pinned: known from the start
  for (int i = 0; i < 20; ++i) {
    p.ObservePrefill(1000, 0, 100.0);  // far slower than pinned
    p.ObserveRead(Tier::kT2, 1'000'000, 100.0);
    p.ObserveCopy(1'000'000, 100.0);
  }
  const auto after = p.Plan(chunks, 128);
  EXPECT_EQ(after.ToJson(), before.ToJson());
  EXPECT_DOUBLE_EQ(after.prefill_per_token_us, kPerToken * 1e6);
  EXPECT_DOUBLE_EQ(after.t2_read_gbps, 1.2);
  // The same choice as a planner that learned the same model.
  EXPECT_EQ(Trained(Rates(1.2, 55))->Plan(chunks, 128).recompute_chunks, after.recompute_chunks);
}

// A prefix whose head is in T1 and whose tail is on a slow disk: loading the head and
// recomputing the tail beats reading it, recomputing all, or any split; the engine's default
// (recompute_slow_tail off) does not weigh it.
TEST(LoadPlannerTest, RecomputesTheSlowTailOnlyWhenAllowed) {
  std::vector<PlanChunk> chunks = Prefix(32, Tier::kT1);
  for (const PlanChunk& c : Prefix(8, Tier::kT2)) chunks.push_back(c);
  LoadPlanner::Options without = Rates(0.05, 55);
  without.recompute_slow_tail = false;
  auto off = Trained(without)->Plan(chunks, 128);
  EXPECT_EQ(off.tail_recompute_chunks, 0u) << off.ToJson();
  LoadPlanner::Options o = Rates(0.05, 55);
  EXPECT_TRUE(o.recompute_slow_tail);  // the default: the engine and replay honour the tail
  auto p = Trained(o);
  auto on = p->Plan(chunks, 128);
  EXPECT_EQ(on.kind, PlanKind::kLoad) << on.ToJson();
  EXPECT_EQ(on.recompute_chunks, 0u);
  EXPECT_EQ(on.tail_recompute_chunks, 8u);
  EXPECT_LT(on.predicted_ms, 0.5 * off.predicted_ms) << off.ToJson() << on.ToJson();
  EXPECT_DOUBLE_EQ(on.predicted_ms, p->PredictSeconds(chunks, 128, 0, 8) * 1e3);
  // Loading the T1 head, then computing the tail's 4096 tokens and the 128 new ones after it.
  const double fresh = TrueSeconds(8 * 512 + 128, 32 * 512);
  const double copy = 32.0 * 512 * kTokenBytes / 55e9;
  EXPECT_NEAR(on.predicted_ms, std::max(copy / 32 + fresh, copy + fresh / 32) * 1e3, 1e-6);
  // A prefix that starts on the disk has no T1 head to keep: recomputing it all is the option.
  std::vector<PlanChunk> cold = Prefix(8, Tier::kT2);
  for (const PlanChunk& c : Prefix(32, Tier::kT1)) cold.push_back(c);
  EXPECT_EQ(p->Plan(cold, 128).tail_recompute_chunks, 0u);
}

// Reads queued on the disk ahead of this prefill delay every plan that reads a T2 chunk, and
// only those: a busy disk turns a load into a recompute.
TEST(LoadPlannerTest, AT2BacklogDelaysThePlansThatRead) {
  auto p = Trained(Rates(24, 55));
  const auto chunks = Prefix(4, Tier::kT2);  // 256 MiB: 11 ms to read, ~0.1 s to recompute
  std::vector<PlanChunk> dram = Prefix(4, Tier::kT1);
  auto idle = p->Plan(chunks, 4096);
  EXPECT_EQ(idle.kind, PlanKind::kLoad) << idle.ToJson();
  auto busy = p->Plan(chunks, 4096, 2.0);
  EXPECT_NEAR(busy.load_all_ms, idle.load_all_ms + 2000, 1e-6) << busy.ToJson();
  EXPECT_DOUBLE_EQ(busy.recompute_all_ms, idle.recompute_all_ms);
  EXPECT_EQ(busy.kind, PlanKind::kRecompute) << busy.ToJson();
  EXPECT_DOUBLE_EQ(busy.t2_backlog_ms, 2000);
  EXPECT_DOUBLE_EQ(p->PredictSeconds(chunks, 4096, 0, 0, 2.0) * 1e3, busy.load_all_ms);
  // A prefix in T1 reads nothing from the disk.
  EXPECT_EQ(p->Plan(dram, 4096, 2.0).ToJson(), [&] {
    auto plan = p->Plan(dram, 4096);
    plan.t2_backlog_ms = 2000;
    return plan.ToJson();
  }());
}

TEST(LoadPlannerTest, MeasuredRatesFeedThePlan) {
  LoadPlanner::Options o;
  o.layers = 32;
  o.recent_weight = 0.5;
  auto p = Trained(o);
  p->ObserveRead(Tier::kT2, 1'000'000'000, 2.0);   // 0.5 GB/s
  p->ObserveRead(Tier::kT2, 1'000'000'000, 1.0);   // 1 GB/s: the average moves halfway
  p->ObserveRead(Tier::kT3, 3'000'000'000, 1.0);
  p->ObserveCopy(10'000'000'000, 1.0);
  auto plan = p->Plan(Prefix(2, Tier::kT2), 16);
  EXPECT_NEAR(plan.t2_read_gbps, 0.75, 1e-9);
  EXPECT_NEAR(plan.t3_read_gbps, 3.0, 1e-9);
  EXPECT_NEAR(plan.copy_gbps, 10.0, 1e-9);
  EXPECT_NEAR(plan.prefill_per_token_us, kPerToken * 1e6, 0.1);
  EXPECT_NE(plan.ToJson().find("\"plan\""), std::string::npos);
}

// Llama-3-8B's KV layout (32 layers, 8 KV heads of 128, bf16): a 512-token chunk is 64 MiB
// raw, 17.4 MB in int4 (3.85x), 34 MB in int8 (1.97x).
KvLayout Llama8bLayout() { return KvLayout{32, 8, 128, kvault::DType::kBF16, 512, kvault::RopeMode::kPreRope}; }

TEST(LoadPlannerTest, StoredPlanChunkCarriesTheTiersStoredSize) {
  const KvLayout l = Llama8bLayout();
  const PlanChunk t2 = kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, KvCodec::kInt4);
  EXPECT_EQ(t2.bytes, 512 * kTokenBytes);
  EXPECT_EQ(t2.stored_bytes, kvault::EncodedChunkBytes(KvCodec::kInt4, l, 512));
  EXPECT_EQ(t2.codec, KvCodec::kInt4);
  const PlanChunk t1 = kvault::planner::StoredPlanChunk(Tier::kT1, l, 100, KvCodec::kInt4);  // T1 is raw
  EXPECT_EQ(t1.bytes, 100 * kTokenBytes);
  EXPECT_EQ(t1.codec, KvCodec::kNone);
  EXPECT_EQ(t1.stored_bytes, 0u);
}

// One 512-token chunk on a 2 GB/s disk, 128 new tokens: reading its 64 MiB raw (34 ms) loses
// to recomputing it (32 ms in all), so the planner recomputes. Stored in int4 the read is
// 8.7 ms plus 3.4 ms of decode at 20 GB/s: loading wins. At a 2 GB/s decode the decode alone
// (34 ms) loses again; int8 (17 ms read + 3.4 ms decode) loads.
TEST(LoadPlannerTest, ACompressedT2MovesTheLoadOrRecomputeLine) {
  const KvLayout l = Llama8bLayout();
  auto chunk = [&](KvCodec codec) { return std::vector<PlanChunk>{kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, codec)}; };
  LoadPlanner::Options fast = Rates(2.0, 55);
  fast.fixed_decode_gbps = 20;
  LoadPlanner::Options slow = fast;
  slow.fixed_decode_gbps = 2;
  auto p = Trained(fast), q = Trained(slow);

  const auto raw = p->Plan(chunk(KvCodec::kNone), 128);
  EXPECT_EQ(raw.kind, PlanKind::kRecompute) << raw.ToJson();
  EXPECT_DOUBLE_EQ(raw.decode_gbps, 0);
  const auto int4 = p->Plan(chunk(KvCodec::kInt4), 128);
  EXPECT_EQ(int4.kind, PlanKind::kLoad) << int4.ToJson();
  EXPECT_DOUBLE_EQ(int4.decode_gbps, 20);
  EXPECT_LT(int4.load_all_ms, raw.load_all_ms / 2);
  EXPECT_DOUBLE_EQ(int4.recompute_all_ms, raw.recompute_all_ms);
  EXPECT_EQ(p->Plan(chunk(KvCodec::kInt8), 128).kind, PlanKind::kLoad);
  const auto int4_slow = q->Plan(chunk(KvCodec::kInt4), 128);
  EXPECT_EQ(int4_slow.kind, PlanKind::kRecompute) << int4_slow.ToJson();
  EXPECT_GT(int4_slow.load_all_ms, raw.load_all_ms);

  // The prediction is the pipeline over read = stored / read rate + raw / decode rate.
  const PlanChunk c = chunk(KvCodec::kInt4)[0];
  const double read = double(c.stored_bytes) / 2e9 + double(c.bytes) / 20e9;
  const double expected = kvault::planner::PipelinedPrefillSeconds(0, read, double(c.bytes) / 55e9,
                                                                    p->prefill_model().Seconds(128, 512), 32);
  EXPECT_NEAR(p->PredictSeconds(chunk(KvCodec::kInt4), 128, 0), expected, 1e-12);
  // A chunk in T1 is raw whatever its codec says.
  std::vector<PlanChunk> dram = chunk(KvCodec::kInt4);
  dram[0].tier = Tier::kT1;
  EXPECT_NEAR(p->PredictSeconds(dram, 128, 0),
              kvault::planner::PipelinedPrefillSeconds(0, 0, double(c.bytes) / 55e9, p->prefill_model().Seconds(128, 512), 32),
              1e-12);
}

// On a longer prefix the codec moves the split point: more of it is worth loading.
TEST(LoadPlannerTest, ACompressedT2LoadsMoreOfALongPrefix) {
  const KvLayout l = Llama8bLayout();
  LoadPlanner::Options o = Rates(1.2, 55);
  o.fixed_decode_gbps = 10;
  auto p = Trained(o);
  auto loaded = [](const kvault::planner::LoadPlan& plan) {
    return plan.cached_chunks - plan.recompute_chunks - plan.tail_recompute_chunks;
  };
  const auto raw = p->Plan(std::vector<PlanChunk>(16, kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, KvCodec::kNone)), 128);
  const auto int4 = p->Plan(std::vector<PlanChunk>(16, kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, KvCodec::kInt4)), 128);
  EXPECT_GT(loaded(int4), loaded(raw)) << raw.ToJson() << "\n" << int4.ToJson();
  EXPECT_LT(int4.predicted_ms, raw.predicted_ms);
}

TEST(LoadPlannerTest, MeasuredDecodeRatesArePerCodec) {
  LoadPlanner::Options o = Rates(1.0, 55);
  o.recent_weight = 0.5;
  auto p = Trained(o);
  const KvLayout l = Llama8bLayout();
  const std::vector<PlanChunk> int4(1, kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, KvCodec::kInt4));
  const std::vector<PlanChunk> int8(1, kvault::planner::StoredPlanChunk(Tier::kT2, l, 512, KvCodec::kInt8));
  const double int4_unmeasured = p->PredictSeconds(int4, 128, 0);  // no decode rate yet: no decode term
  p->ObserveDecode(KvCodec::kInt4, 4'000'000'000, 1.0);  // 4 GB/s
  p->ObserveDecode(KvCodec::kInt4, 2'000'000'000, 1.0);  // 2 GB/s: the average moves halfway
  p->ObserveDecode(KvCodec::kNone, 1'000'000'000, 1.0);  // nothing to decode: ignored
  p->ObserveDecode(KvCodec::kInt4, 0, 1.0);              // ignored
  EXPECT_NEAR(p->Plan(int4, 128).decode_gbps, 3.0, 1e-9);
  EXPECT_DOUBLE_EQ(p->Plan(int8, 128).decode_gbps, 0);
  EXPECT_NEAR(p->PredictSeconds(int4, 128, 0) - int4_unmeasured, double(int4[0].bytes) / 3e9, 1e-9);
  EXPECT_NE(p->Plan(int4, 128).ToJson().find("\"decode_gbps\":3"), std::string::npos);
}

}  // namespace

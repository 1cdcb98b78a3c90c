// LoadPlanner: the prefill model it fits, and the load / recompute / split choice.
#include "planner/load_planner.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

namespace {

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
  auto plan = p.Plan(Prefix(8, Tier::kDisk), 128);
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
  auto plan = p->Plan(Prefix(64, Tier::kHost), 128);
  EXPECT_EQ(plan.kind, PlanKind::kLoad) << plan.ToJson();
  EXPECT_LT(plan.predicted_ms, plan.recompute_all_ms / 10);
}

TEST(LoadPlannerTest, RecomputesRatherThanReadASlowDisk) {
  // 4k tokens on a 0.05 GB/s disk: 10.7 s to read, well under a second to recompute.
  auto p = Trained(Rates(0.05, 55));
  auto plan = p->Plan(Prefix(8, Tier::kDisk), 128);
  EXPECT_EQ(plan.kind, PlanKind::kRecompute) << plan.ToJson();
  EXPECT_EQ(plan.recompute_tokens, 8 * 512);
  EXPECT_DOUBLE_EQ(plan.predicted_ms, plan.recompute_all_ms);
  EXPECT_LT(plan.recompute_all_ms, plan.load_all_ms);
}

TEST(LoadPlannerTest, SplitsWhenReadingAndRecomputingTakeAboutAsLong) {
  // 32k tokens on a 1.2 GB/s disk: ~3.6 s to read, ~3.7 s to recompute. Recomputing the
  // head while the tail reads takes about half of either.
  auto p = Trained(Rates(1.2, 55));
  auto plan = p->Plan(Prefix(64, Tier::kDisk), 128);
  EXPECT_EQ(plan.kind, PlanKind::kSplit) << plan.ToJson();
  EXPECT_GT(plan.recompute_chunks, 0u);
  EXPECT_LT(plan.recompute_chunks, 64u);
  EXPECT_LT(plan.predicted_ms, 0.7 * std::min(plan.load_all_ms, plan.recompute_all_ms)) << plan.ToJson();
}

TEST(LoadPlannerTest, ChoosesTheBestSplitPoint) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    auto p = Trained(Rates(0.2 + (rng() % 100) / 10.0, 1 + rng() % 60));
    std::vector<PlanChunk> chunks;
    const int n = 1 + rng() % 40;
    for (int i = 0; i < n; ++i) {
      const Tier tier = rng() % 3 == 0 ? Tier::kHost : Tier::kDisk;
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
  }
}

TEST(LoadPlannerTest, MeasuredRatesFeedThePlan) {
  LoadPlanner::Options o;
  o.layers = 32;
  o.recent_weight = 0.5;
  auto p = Trained(o);
  p->ObserveRead(Tier::kDisk, 1'000'000'000, 2.0);   // 0.5 GB/s
  p->ObserveRead(Tier::kDisk, 1'000'000'000, 1.0);   // 1 GB/s: the average moves halfway
  p->ObserveRead(Tier::kCluster, 3'000'000'000, 1.0);
  p->ObserveCopy(10'000'000'000, 1.0);
  auto plan = p->Plan(Prefix(2, Tier::kDisk), 16);
  EXPECT_NEAR(plan.t2_read_gbps, 0.75, 1e-9);
  EXPECT_NEAR(plan.t3_read_gbps, 3.0, 1e-9);
  EXPECT_NEAR(plan.copy_gbps, 10.0, 1e-9);
  EXPECT_NEAR(plan.prefill_per_token_us, kPerToken * 1e6, 0.1);
  EXPECT_NE(plan.ToJson().find("\"plan\""), std::string::npos);
}

}  // namespace

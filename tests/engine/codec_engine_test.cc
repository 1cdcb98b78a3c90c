// The engine over a compressed T2 (docs/STORE.md, "Compressed lower tiers"): prompts prefilled
// and saved, the store flushed and restarted (T1 empty, the KV on T2 only, encoded), the same
// prompts again: their prefix loads from T2, decoded, and the prompt's logits stay within what
// the codec's error implies of a full recompute (ForwardNoCache). The tolerance is tight enough
// that KV decoded wrongly (another layer's, another layout's, garbage) fails it by far.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/weights.h"
#include "kvault/kv_codec.h"
#include "small_model.h"

namespace kvault::engine {
namespace {

using testing_model::RandomTokens;
using testing_model::SmallConfig;

// Largest |logit difference| from a full recompute that each codec's KV error may cause on
// this model, set from measurements (max over the prompts, this model and seed):
//   none 3e-6 (the same KV; float summation order), int8 0.016, int4 0.52
// against logits whose standard deviation over the vocabulary is ~1.0. int4 moves them much
// more than int8: 16 levels over head vectors of only 16 dims, in every layer of the prefix.
// Decoding the wrong bytes (each layer given the next layer's encoding, tried by breaking the
// store's decode) moves them by 4.7: each tolerance is about 2-3x its measured difference and
// far below that.
float Tolerance(KvCodec codec) {
  switch (codec) {
    case KvCodec::kNone: return 1e-4f;
    case KvCodec::kInt8: return 0.05f;
    case KvCodec::kInt4: return 1.0f;
  }
  return 0;
}

class CodecEngineTest : public ::testing::TestWithParam<KvCodec> {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    dir_ = std::filesystem::temp_directory_path() /
           ("kvault-codec-engine-" + std::to_string(::getpid()) + "-" + KvCodecName(GetParam()));
    std::filesystem::remove_all(dir_);
    config_ = SmallConfig();
    model_ = std::make_shared<LlamaModel>(config_, RandomWeights(config_, 7, torch::kFloat32), torch::kCPU);
    OpenStore();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void OpenStore() {
    StoreOptions o;
    o.dir = dir_.string();
    o.t1_bytes = 64ull << 20;
    o.t2_bytes = 256ull << 20;
    o.page_bytes = 4096;
    o.segment_bytes = 4ull << 20;
    o.t2_codec = GetParam();
    auto s = Store::Open(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s.value());
  }
  EngineOptions Options() {
    EngineOptions o;
    o.chunk_tokens = 16;
    o.kv_pool_tokens = 4096;
    o.store = store_.get();
    o.hint_window = 0;  // no prefetch racing the lookup: every chunk is read from T2 on demand
    return o;
  }
  SamplingParams Params(bool logits) {
    SamplingParams p;
    p.max_new_tokens = 1;
    p.return_prompt_logits = logits;
    return p;
  }

  std::filesystem::path dir_;
  ModelConfig config_;
  std::shared_ptr<LlamaModel> model_;
  std::unique_ptr<Store> store_;
};

TEST_P(CodecEngineTest, PrefixLoadedFromEncodedT2GivesLogitsWithinTheCodecsBound) {
  const KvCodec codec = GetParam();
  const std::vector<std::vector<uint32_t>> prompts = {RandomTokens(31, 70), RandomTokens(32, 100),
                                                      RandomTokens(33, 48)};
  {
    Engine e(model_, Options());
    for (const auto& p : prompts) ASSERT_TRUE(e.Generate(p, Params(false)).status.ok());
    e.WaitForSaves();
    ASSERT_TRUE(store_->Flush().ok());
  }
  const StoreStats saved = store_->Stats();
  EXPECT_GT(saved.puts, 0u);
  // Every chunk went to T2 encoded, but a short partial one that would take as many disk blocks
  // encoded as raw (kept raw, counted as a fallback).
  EXPECT_EQ(saved.t2_chunks_encoded + saved.codec_fallbacks, codec == KvCodec::kNone ? 0u : saved.puts)
      << saved.ToJson();
  if (codec != KvCodec::kNone) {
    EXPECT_GE(saved.t2_chunks_encoded, saved.puts - 3) << saved.ToJson();
  }
  store_.reset();
  ASSERT_NO_FATAL_FAILURE(OpenStore());  // T1 empty: the prefixes are on T2 only

  Engine e(model_, Options());
  float worst = 0, spread = 0;
  int splits = 0;  // prompts whose head the planner recomputed while the tail loaded
  for (const auto& p : prompts) {
    const RequestResult r = e.Generate(p, Params(true));
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_GT(r.hit_tokens, 0);
    EXPECT_EQ(r.hit_tokens, r.hit_tokens_t2);
    EXPECT_EQ(r.tier, Tier::kT2);
    std::vector<int64_t> ids(p.begin(), p.end());
    const torch::Tensor full = model_->ForwardNoCache(torch::tensor(ids, torch::kInt64));
    // prompt_logits rows: a head the planner recomputed while the tail loaded (a split), then
    // the positions computed after the loaded prefix.
    const int64_t head = r.plan.recompute_tokens;
    splits += head > 0;
    const int64_t rest = r.computed_tokens - head;
    const torch::Tensor rows = torch::cat({full.narrow(0, 0, head), full.narrow(0, r.prompt_tokens - rest, rest)});
    ASSERT_EQ(r.prompt_logits.sizes(), rows.sizes());
    const float diff = (r.prompt_logits.cpu() - rows).abs().max().item<float>();
    worst = std::max(worst, diff);
    spread = std::max(spread, rows.std().item<float>());
    EXPECT_LT(diff, Tolerance(codec)) << "prompt of " << p.size() << " tokens, " << r.hit_tokens << " loaded; plan "
                                      << r.plan.ToJson();
  }
  const StoreStats st = store_->Stats();
  // Every encoded chunk that came back was decoded (a head the planner recomputed is not read).
  if (codec == KvCodec::kNone) {
    EXPECT_EQ(st.t2_chunks_decoded, 0u) << st.ToJson();
  } else {
    EXPECT_GT(st.t2_chunks_decoded, 0u) << st.ToJson();
    EXPECT_LE(st.t2_chunks_decoded, saved.t2_chunks_encoded) << st.ToJson();
    EXPECT_LE(st.t2_chunks_decoded, st.promotions) << st.ToJson();
  }
  EXPECT_GT(st.promotions, 0u);
  std::printf("{\"codec\":\"%s\",\"max_logit_diff\":%.6f,\"tolerance\":%.4f,\"logit_std\":%.3f,\"splits\":%d}\n",
              KvCodecName(codec), worst, Tolerance(codec), spread, splits);
}

INSTANTIATE_TEST_SUITE_P(Codecs, CodecEngineTest, ::testing::Values(KvCodec::kNone, KvCodec::kInt8, KvCodec::kInt4),
                         [](const auto& info) { return std::string(KvCodecName(info.param)); });

}  // namespace
}  // namespace kvault::engine

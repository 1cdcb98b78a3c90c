// Parity with Hugging Face transformers: LlamaModel's logits on the fixtures (made by
// scripts/make_hf_fixtures.py with transformers' eager attention in fp32) match to 1e-4.
// llama3 covers GQA, rope_theta 5e5 and llama3 rope scaling in all three frequency bands;
// qwen2 covers q/k/v bias and tied embeddings; mistral covers an explicit head_dim and a
// sliding window shorter than the input.
#include <gtest/gtest.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/weights.h"

namespace kvault::engine {
namespace {

const std::string kFixtures = KVAULT_ENGINE_FIXTURES;
constexpr double kTolerance = 1e-4;

struct Fixture {
  ModelConfig config;
  torch::Tensor input_ids;  // int64 [T]
  torch::Tensor logits;     // float32 [T, vocab], from transformers
};

Fixture LoadFixture(const std::string& name) {
  Fixture f;
  Result<ModelConfig> c = ModelConfig::FromFile(kFixtures + "/" + name + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (c.ok()) f.config = c.value();
  auto file = SafetensorsFile::Open(kFixtures + "/" + name + "/logits.safetensors");
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  if (!file.ok()) return f;
  f.input_ids = (*file)->Get("input_ids").value().clone();
  f.logits = (*file)->Get("logits").value().clone();
  return f;
}

std::shared_ptr<LlamaModel> MakeModel(const std::string& name, const ModelConfig& config, torch::ScalarType dtype) {
  Result<ModelWeights> w = LoadWeights(config, kFixtures + "/" + name, dtype);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  if (!w.ok()) return nullptr;
  return std::make_shared<LlamaModel>(config, std::move(w.value()), torch::kCPU);
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}

// A KV cache in plain growing tensors, for the split-prefill check.
class VectorKv final : public KvAccess {
 public:
  explicit VectorKv(int64_t layers) : k_(layers), v_(layers) {}
  void Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) override {
    EXPECT_EQ(k_[layer].defined() ? k_[layer].size(0) : 0, start);
    k_[layer] = k_[layer].defined() ? torch::cat({k_[layer], k}) : k.clone();
    v_[layer] = v_[layer].defined() ? torch::cat({v_[layer], v}) : v.clone();
  }
  std::pair<torch::Tensor, torch::Tensor> Gather(int64_t layer, int64_t end) override {
    return {k_[layer].narrow(0, 0, end), v_[layer].narrow(0, 0, end)};
  }

 private:
  std::vector<torch::Tensor> k_, v_;
};

class HfParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParityTest, ForwardNoCacheMatchesTransformers) {
  const std::string name = GetParam();
  Fixture f = LoadFixture(name);
  ASSERT_TRUE(f.logits.defined());
  auto model = MakeModel(name, f.config, torch::kFloat32);
  ASSERT_TRUE(model);
  torch::Tensor logits = model->ForwardNoCache(f.input_ids);
  ASSERT_EQ(logits.sizes(), f.logits.sizes());
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(logits, f.logits), kTolerance) << name;
  // The fixture is not trivially matched: its logits vary.
  EXPECT_GT(f.logits.std().item<double>(), 0.5);
}

TEST_P(HfParityTest, SplitPrefillMatchesTransformers) {
  // Prefill 25 tokens, then the remaining 15 over the cached (pre-RoPE) KV.
  const std::string name = GetParam();
  Fixture f = LoadFixture(name);
  ASSERT_TRUE(f.logits.defined());
  auto model = MakeModel(name, f.config, torch::kFloat32);
  ASSERT_TRUE(model);
  const int64_t t = f.input_ids.size(0), split = 25;
  VectorKv kv(f.config.num_layers);
  torch::Tensor a = model->Forward(f.input_ids.narrow(0, 0, split), 0, kv, /*all_logits=*/true);
  torch::Tensor b = model->Forward(f.input_ids.narrow(0, split, t - split), split, kv, /*all_logits=*/true);
  EXPECT_LT(MaxAbsDiff(torch::cat({a, b}), f.logits), kTolerance) << name;
}

TEST_P(HfParityTest, Bfloat16IsClose) {
  // bf16 weights and activations: the same model, rounded; close but not exact.
  const std::string name = GetParam();
  Fixture f = LoadFixture(name);
  ASSERT_TRUE(f.logits.defined());
  auto model = MakeModel(name, f.config, torch::kBFloat16);
  ASSERT_TRUE(model);
  torch::Tensor logits = model->ForwardNoCache(f.input_ids);
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(logits, f.logits), 0.35) << name;
  const double agree = (logits.argmax(-1) == f.logits.argmax(-1)).to(torch::kFloat32).mean().item<double>();
  EXPECT_GE(agree, 0.85) << name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfParityTest, ::testing::Values("llama3", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

TEST(RandomModelTest, DemoTinyActivationsStayInRange) {
  // RandomWeights' scaling keeps a deep stack's logits O(1): neither exploding nor collapsing.
  const ModelConfig c = ModelConfig::DemoTiny();
  LlamaModel model(c, RandomWeights(c, 0, torch::kFloat32), torch::kCPU);
  torch::Tensor ids = torch::arange(0, 48, torch::kInt64) * 613 % c.vocab_size;
  torch::Tensor logits = model.ForwardNoCache(ids);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{48, c.vocab_size}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  const double std = logits.std().item<double>();
  EXPECT_GT(std, 0.3);
  EXPECT_LT(std, 3.0);
  // Different tokens give different next-token distributions.
  EXPECT_GT(MaxAbsDiff(logits[0], logits[47]), 0.1);
}

}  // namespace
}  // namespace kvault::engine

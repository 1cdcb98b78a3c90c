// Weights: loading the HF fixtures (single file and sharded), errors that name the bad
// tensor, RandomWeights' determinism (with golden values, so a platform or library change that
// alters them is caught), and the save -> load round trip with an unchanged fingerprint.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "engine/safetensors.h"
#include "engine/weights.h"
#include "test_util.h"

namespace kvault::engine {
namespace {

using kvtest::TempDir;
namespace fs = std::filesystem;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

const std::string kFixtures = KVAULT_ENGINE_FIXTURES;

ModelConfig FixtureConfig(const std::string& name) {
  Result<ModelConfig> c = ModelConfig::FromFile(kFixtures + "/" + name + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? c.value() : ModelConfig();
}

// Every tensor of a safetensors file, copied out of the mapping, in offset order.
NamedTensors ReadAll(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [name, info] : (*f)->tensors()) order.emplace_back(info.begin, name);
  std::sort(order.begin(), order.end());
  NamedTensors out;
  for (const auto& [begin, name] : order) out.emplace_back(name, (*f)->Get(name).value().clone());
  return out;
}

// A copy of fixture `name` in `dir` whose tensors went through `edit` first.
void WriteEditedFixture(const std::string& name, const std::string& dir,
                        const std::function<void(NamedTensors&)>& edit) {
  NamedTensors t = ReadAll(kFixtures + "/" + name + "/model.safetensors");
  edit(t);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", t).ok());
}

void ExpectSameTensors(const ModelWeights& a, const ModelWeights& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  EXPECT_TRUE(torch::equal(a.embed, b.embed));
  EXPECT_TRUE(torch::equal(a.final_norm, b.final_norm));
  EXPECT_TRUE(torch::equal(a.lm_head, b.lm_head));
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const LayerWeights &x = a.layers[i], &y = b.layers[i];
    for (auto [p, q] : {std::pair{&x.input_norm, &y.input_norm}, {&x.q_proj, &y.q_proj}, {&x.k_proj, &y.k_proj},
                        {&x.v_proj, &y.v_proj}, {&x.o_proj, &y.o_proj}, {&x.post_norm, &y.post_norm},
                        {&x.gate_proj, &y.gate_proj}, {&x.up_proj, &y.up_proj}, {&x.down_proj, &y.down_proj},
                        {&x.q_bias, &y.q_bias}, {&x.k_bias, &y.k_bias}, {&x.v_bias, &y.v_bias}}) {
      ASSERT_EQ(p->defined(), q->defined()) << "layer " << i;
      if (p->defined()) {
        EXPECT_TRUE(torch::equal(*p, *q)) << "layer " << i;
      }
    }
  }
}

void ExpectLoadError(const ModelConfig& c, const std::string& dir, const std::string& needle) {
  Result<ModelWeights> w = LoadWeights(c, dir, torch::kFloat32);
  ASSERT_FALSE(w.ok()) << "loaded a bad checkpoint from " << dir;
  EXPECT_NE(w.status().message().find(needle), std::string::npos)
      << "message \"" << w.status().message() << "\" lacks \"" << needle << "\"";
}

// A 2-layer model small enough for golden values.
ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000;
  return c;
}

TEST(WeightsTest, LoadsLlama3Fixture) {
  ModelConfig c = FixtureConfig("llama3");
  Result<ModelWeights> w = LoadWeights(c, kFixtures + "/llama3", torch::kFloat32);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->layers.size(), 2u);
  EXPECT_EQ(w->embed.sizes(), (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(w->lm_head.sizes(), (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(w->layers[1].k_proj.sizes(), (std::vector<int64_t>{32, 64}));  // GQA: 2 kv heads x 16
  EXPECT_EQ(w->layers[1].down_proj.sizes(), (std::vector<int64_t>{64, 128}));
  EXPECT_FALSE(w->layers[0].q_bias.defined());
  EXPECT_FALSE(torch::equal(w->lm_head, w->embed));  // untied
  EXPECT_EQ(w->embed.scalar_type(), torch::kFloat32);
  // The values are the file's.
  auto f = SafetensorsFile::Open(kFixtures + "/llama3/model.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(torch::equal(w->layers[1].up_proj, (*f)->Get("model.layers.1.mlp.up_proj.weight").value()));
  EXPECT_TRUE(torch::equal(w->final_norm, (*f)->Get("model.norm.weight").value()));
  EXPECT_FALSE(w->fingerprint.IsZero());
}

TEST(WeightsTest, LoadsQwen2FixtureTiedWithBias) {
  ModelConfig c = FixtureConfig("qwen2");
  ASSERT_TRUE(c.tie_word_embeddings);
  Result<ModelWeights> w = LoadWeights(c, kFixtures + "/qwen2", torch::kFloat32);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(w->lm_head.is_same(w->embed));  // the file has no lm_head.weight
  ASSERT_TRUE(w->layers[0].q_bias.defined());
  EXPECT_EQ(w->layers[0].q_bias.sizes(), (std::vector<int64_t>{64}));
  EXPECT_EQ(w->layers[0].k_bias.sizes(), (std::vector<int64_t>{32}));
  EXPECT_GT(w->layers[0].v_bias.abs().sum().item<float>(), 0.0f);
}

TEST(WeightsTest, LoadsMistralFixtureExplicitHeadDim) {
  ModelConfig c = FixtureConfig("mistral");
  Result<ModelWeights> w = LoadWeights(c, kFixtures + "/mistral", torch::kFloat32);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->layers[0].q_proj.sizes(), (std::vector<int64_t>{128, 64}));  // 4 heads x 32
  EXPECT_EQ(w->layers[0].o_proj.sizes(), (std::vector<int64_t>{64, 128}));
}

TEST(WeightsTest, FingerprintIsStableAndDtypeSpecific) {
  ModelConfig c = FixtureConfig("llama3");
  Result<ModelWeights> a = LoadWeights(c, kFixtures + "/llama3", torch::kFloat32);
  Result<ModelWeights> b = LoadWeights(c, kFixtures + "/llama3", torch::kFloat32);
  Result<ModelWeights> h = LoadWeights(c, kFixtures + "/llama3", torch::kBFloat16);
  ASSERT_TRUE(a.ok() && b.ok() && h.ok());
  EXPECT_EQ(a->fingerprint, b->fingerprint);
  EXPECT_EQ(h->embed.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(h->layers[0].q_proj.scalar_type(), torch::kBFloat16);
  EXPECT_NE(a->fingerprint, h->fingerprint);  // different bytes, different KV
  // Another model, another fingerprint.
  Result<ModelWeights> q = LoadWeights(FixtureConfig("qwen2"), kFixtures + "/qwen2", torch::kFloat32);
  ASSERT_TRUE(q.ok());
  EXPECT_NE(a->fingerprint, q->fingerprint);
}

TEST(WeightsTest, MissingTensorIsNamed) {
  TempDir dir("w");
  WriteEditedFixture("llama3", dir.path(), [](NamedTensors& t) {
    std::erase_if(t, [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  ExpectLoadError(FixtureConfig("llama3"), dir.path(), "missing tensor model.layers.1.mlp.up_proj.weight");
  // An untied config needs lm_head.weight, which the tied qwen2 file lacks.
  ModelConfig untied = FixtureConfig("qwen2");
  untied.tie_word_embeddings = false;
  ExpectLoadError(untied, kFixtures + "/qwen2", "missing tensor lm_head.weight");
  // A Llama config with attention_bias needs biases.
  ModelConfig biased = FixtureConfig("llama3");
  biased.attention_bias = true;
  ExpectLoadError(biased, kFixtures + "/llama3", "missing tensor model.layers.0.self_attn.q_proj.bias");
}

TEST(WeightsTest, WrongShapeIsNamed) {
  TempDir dir("w");
  WriteEditedFixture("llama3", dir.path(), [](NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.layers.0.self_attn.k_proj.weight") tensor = tensor.t().contiguous();
    }
  });
  ExpectLoadError(FixtureConfig("llama3"), dir.path(),
                  "tensor model.layers.0.self_attn.k_proj.weight has shape [64, 32], the config expects [32, 64]");
  // The config disagrees with the file.
  ModelConfig c = FixtureConfig("llama3");
  c.intermediate_size = 96;
  ExpectLoadError(c, kFixtures + "/llama3", "model.layers.0.mlp.gate_proj.weight has shape [128, 64]");
}

TEST(WeightsTest, OtherLoadErrors) {
  TempDir dir("w");
  // No checkpoint at all.
  Result<ModelWeights> w = LoadWeights(FixtureConfig("llama3"), dir.path(), torch::kFloat32);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kNotFound);
  // An integer tensor where a weight belongs.
  WriteEditedFixture("llama3", dir.path(), [](NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.norm.weight") tensor = torch::ones({64}, torch::kInt32);
    }
  });
  ExpectLoadError(FixtureConfig("llama3"), dir.path(), "tensor model.norm.weight has dtype I32");
  // An integer dtype requested.
  w = LoadWeights(FixtureConfig("llama3"), kFixtures + "/llama3", torch::kInt64);
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  // An invalid config.
  ModelConfig bad = FixtureConfig("llama3");
  bad.num_kv_heads = 3;
  w = LoadWeights(bad, kFixtures + "/llama3", torch::kFloat32);
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
}

// Writes the fixture's tensors into two shards; returns the weight_map (name -> shard file).
std::map<std::string, std::string> WriteShards(const std::string& fixture, const std::string& dir) {
  NamedTensors all = ReadAll(kFixtures + "/" + fixture + "/model.safetensors");
  NamedTensors first, second;
  std::map<std::string, std::string> map;
  for (size_t i = 0; i < all.size(); ++i) {
    const bool in_first = i % 2 == 0;  // interleaved, so each shard holds parts of every layer
    (in_first ? first : second).push_back(all[i]);
    map[all[i].first] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  EXPECT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", first).ok());
  EXPECT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", second).ok());
  return map;
}

void WriteIndex(const std::string& dir, const std::string& text) {
  std::ofstream(dir + "/model.safetensors.index.json") << text;
}

std::string IndexJson(const std::map<std::string, std::string>& map) {
  std::string entries;
  for (const auto& [name, file] : map) entries += (entries.empty() ? "\"" : ",\n\"") + name + "\": \"" + file + "\"";
  return "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {" + entries + "}}";
}

TEST(WeightsTest, LoadsShardedCheckpoint) {
  for (const char* fixture : {"llama3", "qwen2"}) {
    TempDir dir("w");
    WriteIndex(dir.path(), IndexJson(WriteShards(fixture, dir.path())));
    ModelConfig c = FixtureConfig(fixture);
    Result<ModelWeights> single = LoadWeights(c, kFixtures + "/" + fixture, torch::kFloat32);
    Result<ModelWeights> sharded = LoadWeights(c, dir.path(), torch::kFloat32);
    ASSERT_TRUE(single.ok() && sharded.ok()) << sharded.status().ToString();
    ExpectSameTensors(single.value(), sharded.value());
    EXPECT_EQ(single->fingerprint, sharded->fingerprint) << fixture;
  }
}

TEST(WeightsTest, BadShardIndex) {
  const ModelConfig c = FixtureConfig("llama3");
  TempDir dir("w");
  const std::map<std::string, std::string> map = WriteShards("llama3", dir.path());
  WriteIndex(dir.path(), "{\"weight_map\": [1, 2]}");
  ExpectLoadError(c, dir.path(), "weight_map");
  WriteIndex(dir.path(), "not json");
  ExpectLoadError(c, dir.path(), "weight_map");
  WriteIndex(dir.path(), R"({"weight_map": {"model.embed_tokens.weight": 7}})");
  ExpectLoadError(c, dir.path(), "not a file name");
  // A shard path that would leave the directory.
  WriteIndex(dir.path(), R"({"weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}})");
  ExpectLoadError(c, dir.path(), "invalid file");
  // The index lists only the embedding.
  WriteIndex(dir.path(), IndexJson({{"model.embed_tokens.weight", map.at("model.embed_tokens.weight")}}));
  ExpectLoadError(c, dir.path(), "missing tensor model.layers.0.input_layernorm.weight");
  // The index names a shard that is not there.
  std::map<std::string, std::string> gone = map;
  gone["model.norm.weight"] = "model-00009-of-00009.safetensors";
  WriteIndex(dir.path(), IndexJson(gone));
  ExpectLoadError(c, dir.path(), "model-00009-of-00009.safetensors");
  // The index points a tensor at the wrong shard.
  std::map<std::string, std::string> wrong = map;
  const std::string& f = wrong["model.norm.weight"];
  wrong["model.norm.weight"] = f == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                         : "model-00001-of-00002.safetensors";
  WriteIndex(dir.path(), IndexJson(wrong));
  ExpectLoadError(c, dir.path(), "missing tensor model.norm.weight in");
  // Repaired, it loads.
  WriteIndex(dir.path(), IndexJson(map));
  EXPECT_TRUE(LoadWeights(c, dir.path(), torch::kFloat32).ok());
}

TEST(WeightsTest, RandomWeightsAreDeterministic) {
  const ModelConfig c = TinyConfig();
  ModelWeights a = RandomWeights(c, 7, torch::kFloat32);
  ModelWeights b = RandomWeights(c, 7, torch::kFloat32);
  ModelWeights other = RandomWeights(c, 8, torch::kFloat32);
  ExpectSameTensors(a, b);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_NE(a.fingerprint, other.fingerprint);
  EXPECT_FALSE(torch::equal(a.layers[0].q_proj, other.layers[0].q_proj));
  // Tensors of one model are not copies of one another.
  EXPECT_FALSE(torch::equal(a.layers[0].gate_proj, a.layers[0].up_proj));
  EXPECT_FALSE(torch::equal(a.layers[0].q_proj, a.layers[1].q_proj));
  // bf16 weights are the fp32 ones rounded.
  ModelWeights h = RandomWeights(c, 7, torch::kBFloat16);
  EXPECT_TRUE(torch::equal(h.layers[1].down_proj, a.layers[1].down_proj.to(torch::kBFloat16)));
  EXPECT_NE(h.fingerprint, a.fingerprint);
  // Tied: one tensor.
  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  ModelWeights t = RandomWeights(tied, 7, torch::kFloat32);
  EXPECT_TRUE(t.lm_head.is_same(t.embed));
  EXPECT_NE(t.fingerprint, a.fingerprint);
}

TEST(WeightsTest, RandomWeightsScale) {
  const ModelConfig c = ModelConfig::DemoTiny();
  ModelWeights w = RandomWeights(c, 0, torch::kFloat32);
  auto std_of = [](const torch::Tensor& t) { return t.std().item<double>(); };
  EXPECT_NEAR(std_of(w.layers[3].q_proj), 1.0 / std::sqrt(512.0), 0.002);
  EXPECT_NEAR(std_of(w.layers[3].down_proj), 1.0 / std::sqrt(1536.0) / 4.0, 0.001);  // / sqrt(2 * 8)
  EXPECT_NEAR(std_of(w.embed), 1.0 / std::sqrt(512.0), 0.001);
  EXPECT_NEAR(w.layers[3].q_proj.mean().item<double>(), 0.0, 0.001);
  EXPECT_TRUE(torch::equal(w.final_norm, torch::ones({512})));
  EXPECT_LE(w.layers[0].k_proj.abs().max().item<double>(), std::sqrt(3.0 / 512.0) * 1.0001);  // uniform bound
}

// Golden values of seed 0: these must not change across machines, compilers and LibTorch
// versions (1.13 CPU here, 2.x CUDA on the GPU machine). A change here changes every random
// model's fingerprint, and with it every cached KV key built on one.
TEST(WeightsTest, RandomWeightsGoldenValues) {
  ModelWeights w = RandomWeights(TinyConfig(), 0, torch::kFloat32);
  // Exact float values, written as hex literals.
  auto at = [](const torch::Tensor& t, int64_t i, int64_t j) { return t[i][j].item<float>(); };
  EXPECT_EQ(at(w.embed, 0, 0), 0x1.f77f9ep-4f);
  EXPECT_EQ(at(w.embed, 63, 31), 0x1.e24bfap-3f);
  EXPECT_EQ(at(w.layers[0].q_proj, 1, 2), -0x1.23a51ap-2f);
  EXPECT_EQ(at(w.layers[1].down_proj, 31, 63), 0x1.619018p-4f);
  EXPECT_EQ(at(w.lm_head, 5, 7), -0x1.a96a24p-3f);
  EXPECT_EQ(w.fingerprint.Hex(), "ddd78e45cb642cd82b88b4dce0716a57c3a4b02eff1bc8849c80bb7f35f56560");
}

TEST(WeightsTest, SaveLoadRoundTrip) {
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (bool tied : {false, true}) {
      ModelConfig c = TinyConfig();
      c.tie_word_embeddings = tied;
      c.attention_bias = tied;  // exercise biases too
      ModelWeights w = RandomWeights(c, 3, dtype);
      TempDir dir("w");
      ASSERT_TRUE(SaveWeights(c, w, dir.path()).ok());
      Result<ModelConfig> saved = ModelConfig::FromFile(dir.Sub("config.json"));
      ASSERT_TRUE(saved.ok()) << saved.status().ToString();
      EXPECT_EQ(saved->torch_dtype, dtype == torch::kFloat32 ? "float32" : "bfloat16");
      Result<ModelWeights> back = LoadWeights(saved.value(), dir.path(), dtype);
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      ExpectSameTensors(w, back.value());
      EXPECT_EQ(w.fingerprint, back->fingerprint);
      // The file has HF's names, and no lm_head when tied.
      auto f = SafetensorsFile::Open(dir.Sub("model.safetensors"));
      ASSERT_TRUE(f.ok());
      EXPECT_EQ((*f)->tensors().count("lm_head.weight"), tied ? 0u : 1u);
      EXPECT_EQ((*f)->tensors().count("model.layers.1.self_attn.v_proj.bias"), tied ? 1u : 0u);
    }
  }
}

TEST(WeightsTest, SavedFixtureKeepsItsFingerprint) {
  // HF checkpoint -> load -> save -> load: the same weights, so the same fingerprint.
  ModelConfig c = FixtureConfig("qwen2");
  Result<ModelWeights> a = LoadWeights(c, kFixtures + "/qwen2", torch::kFloat32);
  ASSERT_TRUE(a.ok());
  TempDir dir("w");
  ASSERT_TRUE(SaveWeights(c, a.value(), dir.path()).ok());
  Result<ModelConfig> c2 = ModelConfig::FromFile(dir.Sub("config.json"));
  ASSERT_TRUE(c2.ok());
  Result<ModelWeights> b = LoadWeights(c2.value(), dir.path(), torch::kFloat32);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ExpectSameTensors(a.value(), b.value());
  EXPECT_EQ(a->fingerprint, b->fingerprint);
}

TEST(WeightsTest, SaveRejectsMismatchedWeights) {
  ModelConfig c = TinyConfig();
  ModelWeights w = RandomWeights(c, 1, torch::kFloat32);
  w.layers[1].gate_proj = torch::zeros({3, 3});
  TempDir dir("w");
  Status s = SaveWeights(c, w, dir.path());
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("model.layers.1.mlp.gate_proj.weight"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace kvault::engine

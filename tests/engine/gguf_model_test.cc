// GGUF models in the engine: config and weights from GGUF files written by the test (llama
// Q/K row permutation undone, biases, tied heads, errors), and the real SmolLM2-135M-Instruct:
// its config, parity with llama.cpp's recorded logits, and cached-vs-recompute answers over a
// multi-turn chat, including after a restart (SSD hit).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/engine.h"
#include "engine/gguf_model.h"
#include "engine/model.h"
#include "engine/weights.h"
#include "gguf/gguf_file.h"
#include "gguf_writer.h"
#include "kvault/store.h"
#include "models/model_loader.h"
#include "smollm2_locator.h"
#include "test_util.h"

namespace kvault::engine {
namespace {

namespace fs = std::filesystem;
using gguf::testing::GgufWriter;

constexpr uint32_t kGgmlF32 = 0;

ModelConfig SmallConfig(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 50000.0;
  c.attention_bias = type == "qwen2";
  c.tie_word_embeddings = false;
  c.torch_dtype = "float32";
  return c;
}

// llama.cpp's converter's row order for a llama Q or K projection, written out element by
// element (independently of the loader's reshape): GGUF row h*D + 2i + j holds Hugging Face
// row h*D + j*D/2 + i.
torch::Tensor PermuteLikeConverter(const torch::Tensor& hf, int64_t heads) {
  const int64_t rows = hf.size(0), d = rows / heads;
  torch::Tensor out = torch::empty_like(hf);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < d / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) out[h * d + 2 * i + j] = hf[h * d + j * (d / 2) + i];
    }
  }
  return out;
}

std::string F32Bytes(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kFloat32).contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()) * 4);
}

// GGUF dims: innermost first.
std::vector<uint64_t> GgufDims(const torch::Tensor& t) {
  std::vector<uint64_t> d;
  for (int64_t i = t.dim() - 1; i >= 0; --i) d.push_back(static_cast<uint64_t>(t.size(i)));
  return d;
}

// A GGUF file of `w` with llama.cpp's names and metadata (F32 tensors), Q/K permuted for llama.
std::string WriteGguf(const ModelConfig& c, const ModelWeights& w, bool skip_output = false,
                      const std::string& skip_tensor = "") {
  const std::string a = c.model_type;
  GgufWriter g;
  g.Str("general.architecture", a)
      .U32(a + ".block_count", static_cast<uint32_t>(c.num_layers))
      .U32(a + ".context_length", static_cast<uint32_t>(c.max_position_embeddings))
      .U32(a + ".embedding_length", static_cast<uint32_t>(c.hidden_size))
      .U32(a + ".feed_forward_length", static_cast<uint32_t>(c.intermediate_size))
      .U32(a + ".attention.head_count", static_cast<uint32_t>(c.num_heads))
      .U32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads))
      .U32(a + ".rope.dimension_count", static_cast<uint32_t>(c.head_dim))
      .F32(a + ".rope.freq_base", static_cast<float>(c.rope_theta))
      .F32(a + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  const bool llama = a == "llama";
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    if (name != skip_tensor) g.Tensor(name, GgufDims(t), kGgmlF32, F32Bytes(t));
  };
  add("token_embd.weight", w.embed);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", lw.input_norm);
    add(p + "attn_q.weight", llama ? PermuteLikeConverter(lw.q_proj, c.num_heads) : lw.q_proj);
    add(p + "attn_k.weight", llama ? PermuteLikeConverter(lw.k_proj, c.num_kv_heads) : lw.k_proj);
    add(p + "attn_v.weight", lw.v_proj);
    if (c.attention_bias) {
      add(p + "attn_q.bias", llama ? PermuteLikeConverter(lw.q_bias, c.num_heads) : lw.q_bias);
      add(p + "attn_k.bias", llama ? PermuteLikeConverter(lw.k_bias, c.num_kv_heads) : lw.k_bias);
      add(p + "attn_v.bias", lw.v_bias);
    }
    add(p + "attn_output.weight", lw.o_proj);
    add(p + "ffn_norm.weight", lw.post_norm);
    add(p + "ffn_gate.weight", lw.gate_proj);
    add(p + "ffn_up.weight", lw.up_proj);
    add(p + "ffn_down.weight", lw.down_proj);
  }
  add("output_norm.weight", w.final_norm);
  if (!c.tie_word_embeddings && !skip_output) add("output.weight", w.lm_head);
  return g.Build();
}

void ExpectSameWeights(const ModelWeights& a, const ModelWeights& b) {
  EXPECT_TRUE(torch::equal(a.embed, b.embed));
  EXPECT_TRUE(torch::equal(a.final_norm, b.final_norm));
  EXPECT_TRUE(torch::equal(a.lm_head, b.lm_head));
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &x = a.layers[l], &y = b.layers[l];
    for (auto [p, q] : {std::pair{&x.q_proj, &y.q_proj}, {&x.k_proj, &y.k_proj}, {&x.v_proj, &y.v_proj},
                        {&x.o_proj, &y.o_proj}, {&x.gate_proj, &y.gate_proj}, {&x.up_proj, &y.up_proj},
                        {&x.down_proj, &y.down_proj}, {&x.input_norm, &y.input_norm},
                        {&x.post_norm, &y.post_norm}}) {
      EXPECT_TRUE(torch::equal(*p, *q)) << "layer " << l;
    }
    EXPECT_EQ(x.q_bias.defined(), y.q_bias.defined());
    if (x.q_bias.defined()) {
      EXPECT_TRUE(torch::equal(x.q_bias, y.q_bias));
      EXPECT_TRUE(torch::equal(x.k_bias, y.k_bias));
      EXPECT_TRUE(torch::equal(x.v_bias, y.v_bias));
    }
  }
}

class GgufRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufRoundTrip, ConfigAndWeightsEqualTheCheckpoint) {
  const ModelConfig c = SmallConfig(GetParam());
  const ModelWeights w = RandomWeights(c, 7, torch::kFloat32);
  auto file = gguf::GgufFile::FromBytes(WriteGguf(c, w));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto config = ModelConfigFromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->ToJson(), c.ToJson());
  auto loaded = LoadGgufWeights(**file, *config, torch::kFloat32, 2);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ExpectSameWeights(*loaded, w);
  // Equal weights, equal fingerprint: the GGUF copy shares the checkpoint's cache.
  EXPECT_EQ(loaded->fingerprint, w.fingerprint);
  // And the same model: equal logits.
  LlamaModel from_gguf(*config, std::move(loaded.value()), torch::kCPU);
  LlamaModel original(c, w, torch::kCPU);
  auto ids = torch::tensor(std::vector<int64_t>{1, 5, 9, 200, 17, 3, 299, 42}, torch::kInt64);
  EXPECT_TRUE(torch::equal(from_gguf.ForwardNoCache(ids), original.ForwardNoCache(ids)));
}

INSTANTIATE_TEST_SUITE_P(Architectures, GgufRoundTrip, ::testing::Values("llama", "qwen2"));

TEST(GgufModel, ALlamaFileReadWithoutUnpermutingWouldDiffer) {
  // The permutation is not the identity for these shapes: reading the rows as stored gives
  // other weights (guards against a loader that forgets to undo it).
  const ModelConfig c = SmallConfig("llama");
  const ModelWeights w = RandomWeights(c, 7, torch::kFloat32);
  EXPECT_FALSE(torch::equal(PermuteLikeConverter(w.layers[0].q_proj, c.num_heads), w.layers[0].q_proj));
}

TEST(GgufModel, TiedOutputWhenOutputWeightIsAbsent) {
  ModelConfig c = SmallConfig("llama");
  c.tie_word_embeddings = true;
  const ModelWeights w = RandomWeights(c, 3, torch::kFloat32);
  auto file = gguf::GgufFile::FromBytes(WriteGguf(c, w));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto config = ModelConfigFromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->tie_word_embeddings);
  auto loaded = LoadGgufWeights(**file, *config, torch::kBFloat16);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(loaded->lm_head.is_same(loaded->embed));
  EXPECT_EQ(loaded->embed.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(loaded->embed, w.embed.to(torch::kBFloat16)));
}

TEST(GgufModel, MissingTensorAndUnsupportedArchitectureAreNamed) {
  const ModelConfig c = SmallConfig("llama");
  const ModelWeights w = RandomWeights(c, 3, torch::kFloat32);
  auto file = gguf::GgufFile::FromBytes(WriteGguf(c, w, false, "blk.1.ffn_up.weight"));
  ASSERT_TRUE(file.ok());
  auto config = ModelConfigFromGguf(**file);
  ASSERT_TRUE(config.ok());
  auto loaded = LoadGgufWeights(**file, *config, torch::kFloat32);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("blk.1.ffn_up.weight"), std::string::npos) << loaded.status().ToString();

  GgufWriter g;
  g.Str("general.architecture", "mamba").U32("mamba.block_count", 2);
  auto other = gguf::GgufFile::FromBytes(g.Build());
  ASSERT_TRUE(other.ok());
  auto bad = ModelConfigFromGguf(**other);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("mamba"), std::string::npos);
}

// --- The real model --------------------------------------------------------------------

TEST(SmolLM2, ConfigFromMetadata) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  auto file = gguf::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto c = ModelConfigFromGguf(**file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->num_layers, 30);
  EXPECT_EQ(c->hidden_size, 576);
  EXPECT_EQ(c->num_heads, 9);
  EXPECT_EQ(c->num_kv_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->intermediate_size, 1536);
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rope_theta, 100000.0);
  EXPECT_NEAR(c->rms_norm_eps, 1e-5, 1e-9);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
}

// One model for the tests below (loading takes about a second).
const models::LoadedModel& SmolLM2() {
  static const models::LoadedModel* model = [] {
    auto m = models::LoadModel("smollm2", torch::kFloat32);
    if (!m.ok()) {
      ADD_FAILURE() << m.status().ToString();
      return static_cast<models::LoadedModel*>(nullptr);
    }
    return new models::LoadedModel(std::move(m.value()));
  }();
  return *model;
}

// Top-1 agreement and logit error of kvault's fp32 forward pass against recorded top-5
// logits (per prompt: ids, and per position its top-5 ids and logits).
struct Agreement {
  int64_t positions = 0, top1_equal = 0, errors = 0;
  double err_sum = 0, err_max = 0;
  double top1() const { return positions ? static_cast<double>(top1_equal) / static_cast<double>(positions) : 0; }
  double err_mean() const { return errors ? err_sum / static_cast<double>(errors) : 0; }
};

nlohmann::json ReadFixture(const std::string& name) {
  const fs::path path = fs::path(KVAULT_ENGINE_FIXTURES).parent_path().parent_path() / "fixtures" / "llamacpp" /
                        "smollm2" / name;
  std::ifstream in(path);
  if (!in) return nullptr;
  return nlohmann::json::parse(in);
}

// SmolLM2's logits at every position of the three prompts of logits.json, computed once.
const std::vector<torch::Tensor>& SmolLM2FixtureLogits(const nlohmann::json& fixture);

Agreement Compare(const nlohmann::json& expected, const nlohmann::json& fixture) {
  const std::vector<torch::Tensor>& logits = SmolLM2FixtureLogits(fixture);
  Agreement a;
  for (size_t p = 0; p < expected["prompts"].size(); ++p) {
    const auto& top_ids = expected["prompts"][p]["top5_ids"];
    const auto& top_logits = expected["prompts"][p]["top5_logits"];
    EXPECT_EQ(static_cast<int64_t>(top_ids.size()), logits[p].size(0));
    for (size_t k = 0; k < top_ids.size() && static_cast<int64_t>(k) < logits[p].size(0); ++k) {
      torch::Tensor row = logits[p][static_cast<int64_t>(k)];
      ++a.positions;
      a.top1_equal += row.argmax().item<int64_t>() == top_ids[k][0].get<int64_t>();
      for (size_t r = 0; r < top_ids[k].size(); ++r) {
        const double err = std::abs(row[top_ids[k][r].get<int64_t>()].item<double>() - top_logits[k][r].get<double>());
        a.err_sum += err;
        a.err_max = std::max(a.err_max, err);
        ++a.errors;
      }
    }
  }
  return a;
}

const std::vector<torch::Tensor>& SmolLM2FixtureLogits(const nlohmann::json& fixture) {
  static const std::vector<torch::Tensor> logits = [&] {
    const models::LoadedModel& m = SmolLM2();
    LlamaModel model(m.config, m.weights, torch::kCPU);
    std::vector<torch::Tensor> out;
    for (const auto& p : fixture["prompts"]) {
      out.push_back(model.ForwardNoCache(torch::tensor(p["ids"].get<std::vector<int64_t>>(), torch::kInt64)));
    }
    return out;
  }();
  return logits;
}

// The exact model (scripts/smollm2_reference_logits.py: the same GGUF weights in float64, no
// activation quantization): kvault's fp32 forward pass must agree with it almost everywhere.
// Top-1 may differ only where the two best logits are within fp32 rounding of each other.
TEST(SmolLM2, LogitsAgreeWithAFloat64Reference) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  const nlohmann::json fixture = ReadFixture("logits.json");
  const nlohmann::json reference = ReadFixture("reference.json");
  if (fixture.is_null() || reference.is_null()) GTEST_SKIP() << "no fixtures under tests/fixtures/llamacpp/smollm2";
  const Agreement a = Compare(reference, fixture);
  std::printf("float64 reference: %lld positions, top-1 agreement %.4f, top-5 logit error mean %.5f max %.5f\n",
              static_cast<long long>(a.positions), a.top1(), a.err_mean(), a.err_max);
  ASSERT_EQ(a.positions, 2566);
  EXPECT_GE(a.top1(), 0.999);
  EXPECT_LT(a.err_mean(), 1e-3);
  EXPECT_LT(a.err_max, 1e-2);
}

// llama.cpp's logits for the same file (scripts/make_llamacpp_fixtures.py). They are not
// bit-equal and cannot be: llama.cpp quantizes the activations to 8 bits inside its Q4_1 and
// Q8_0 matmuls. The exact float64 model agrees with llama.cpp's top-1 at 96.4% of these
// positions (every disagreement a near-tie: 20% of positions have their two best logits
// within 0.3), so kvault, which matches the exact model, is held to that figure and to the
// logit error the exact model shows (mean 0.145, max 1.29), not to the 98%.
TEST(SmolLM2, LogitsAgreeWithLlamaCpp) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  const nlohmann::json fixture = ReadFixture("logits.json");
  if (fixture.is_null()) GTEST_SKIP() << "no llama.cpp fixture under tests/fixtures/llamacpp/smollm2";
  const Agreement a = Compare(fixture, fixture);
  std::printf("llama.cpp parity: %lld positions, top-1 agreement %.4f, top-5 logit error mean %.4f max %.4f\n",
              static_cast<long long>(a.positions), a.top1(), a.err_mean(), a.err_max);
  RecordProperty("top1_agreement", std::to_string(a.top1()));
  EXPECT_GE(a.top1(), 0.96);
  EXPECT_LT(a.err_mean(), 0.16);
  EXPECT_LT(a.err_max, 1.5);
}

// A chat's greedy answers with the store on (turn after turn, and again after a restart, when
// the history comes from the SSD) are identical to a store-off engine's.
TEST(SmolLM2, CachedAnswersEqualRecomputeAcrossTurnsAndRestart) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  const models::LoadedModel& m = SmolLM2();
  ASSERT_TRUE(m.chat_template.has_value());
  auto model = std::make_shared<const LlamaModel>(m.config, m.weights, torch::kCPU);
  std::vector<uint32_t> stop;
  for (const std::string& s : m.chat_template->stop_strings()) {
    if (auto id = m.tokenizer->TokenId(s)) stop.push_back(*id);
  }
  SamplingParams params;
  params.max_new_tokens = 12;
  params.stop_tokens = stop;
  const std::vector<std::string> questions = {
      "The Apache License is a permissive free software license written by the Apache Software Foundation. "
      "It allows users to use the software for any purpose, to distribute it, to modify it, and to distribute "
      "modified versions of the software under the terms of the license, without concern for royalties. "
      "What is the Apache License?",
      "Who wrote it?", "Can I sell software under it?"};
  kvtest::TempDir dir;
  EngineOptions eo;
  eo.chunk_tokens = 32;
  eo.kv_pool_tokens = 4096;
  eo.max_context = 2048;
  eo.hint_window = 0;
  std::vector<tokenizer::ChatMessage> messages;
  std::vector<std::vector<uint32_t>> prompts;
  std::vector<std::vector<uint32_t>> answers;
  {
    Engine recompute(model, eo);
    for (const std::string& q : questions) {
      messages.push_back({"user", q});
      auto text = m.chat_template->Render(messages, true);
      ASSERT_TRUE(text.ok());
      prompts.push_back(m.tokenizer->Encode(*text, false));
      RequestResult r = recompute.Generate(prompts.back(), params);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      answers.push_back(r.output_tokens);
      std::vector<uint32_t> answer = r.output_tokens;
      if (!answer.empty() && answer.back() == stop.front()) answer.pop_back();
      messages.push_back({"assistant", m.tokenizer->Decode(answer, true)});
    }
  }
  StoreOptions so;
  so.dir = dir.path();
  so.t1_bytes = 256ull << 20;
  so.t2_bytes = 1ull << 30;
  {
    auto store = Store::Open(so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EngineOptions cached = eo;
    cached.store = store->get();
    Engine engine(model, cached);
    for (size_t t = 0; t < prompts.size(); ++t) {
      RequestResult r = engine.Generate(prompts[t], params);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      if (t > 0) {
        EXPECT_GT(r.hit_tokens, 0) << "turn " << t + 1;
      }
      EXPECT_EQ(r.output_tokens, answers[t]) << "turn " << t + 1;
      engine.WaitForSaves();
    }
    ASSERT_TRUE((*store)->Flush().ok());
  }
  // Restart: DRAM is empty, the last turn's history comes from the SSD.
  auto store = Store::Open(so);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EngineOptions cached = eo;
  cached.store = store->get();
  Engine engine(model, cached);
  RequestResult r = engine.Generate(prompts.back(), params);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_GT(r.hit_tokens_t2, static_cast<int64_t>(prompts.back().size()) / 2);
  EXPECT_EQ(r.output_tokens, answers.back());
}

}  // namespace
}  // namespace kvault::engine

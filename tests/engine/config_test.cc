// ModelConfig: parsing the fixtures' config.json (transformers 5.x spelling), the 4.x
// spelling, defaults per model_type, and a clear InvalidArgument (never a throw) for bad input.
#include <gtest/gtest.h>

#include <string>

#include "engine/model_config.h"

namespace kvault::engine {
namespace {

const std::string kFixtures = KVAULT_ENGINE_FIXTURES;

// A minimal valid Llama config with `extra` appended: for a duplicate key the parser keeps the
// last value, so `extra` can also override the base keys.
std::string Llama(const std::string& extra = "") {
  std::string s = R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
                      "num_hidden_layers": 2, "num_attention_heads": 4)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

// Expects an InvalidArgument whose message contains `needle`.
void ExpectInvalid(const std::string& text, const std::string& needle) {
  Result<ModelConfig> c = ModelConfig::FromJson(text);
  ASSERT_FALSE(c.ok()) << text;
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
  EXPECT_NE(c.status().message().find(needle), std::string::npos)
      << "message \"" << c.status().message() << "\" lacks \"" << needle << "\"";
}

TEST(ConfigTest, ParsesLlama3Fixture) {
  Result<ModelConfig> r = ModelConfig::FromFile(kFixtures + "/llama3/config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ModelConfig& c = r.value();
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);  // from "rope_parameters"
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.torch_dtype, "float32");  // from "dtype"
}

TEST(ConfigTest, ParsesQwen2Fixture) {
  Result<ModelConfig> r = ModelConfig::FromFile(kFixtures + "/qwen2/config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->model_type, "qwen2");
  EXPECT_TRUE(r->attention_bias);        // implied by qwen2: the key is absent
  EXPECT_TRUE(r->tie_word_embeddings);
  EXPECT_FALSE(r->sliding_window);       // use_sliding_window false
  EXPECT_DOUBLE_EQ(r->rope_theta, 1e6);
  EXPECT_EQ(r->rope_scaling.type, "none");
}

TEST(ConfigTest, ParsesMistralFixture) {
  Result<ModelConfig> r = ModelConfig::FromFile(kFixtures + "/mistral/config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->model_type, "mistral");
  EXPECT_EQ(r->head_dim, 32);  // explicit, != hidden / heads
  ASSERT_TRUE(r->sliding_window.has_value());
  EXPECT_EQ(*r->sliding_window, 16);
  EXPECT_FALSE(r->attention_bias);
}

TEST(ConfigTest, Transformers4Spelling) {
  Result<ModelConfig> r = ModelConfig::FromJson(Llama(R"("rope_theta": 500000.0, "torch_dtype": "bfloat16",
      "rope_scaling": {"type": "llama3", "factor": 32, "low_freq_factor": 1, "high_freq_factor": 4,
                       "original_max_position_embeddings": 8192})"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_DOUBLE_EQ(r->rope_theta, 500000.0);
  EXPECT_EQ(r->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(r->rope_scaling.factor, 32.0);
  EXPECT_EQ(r->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(r->torch_dtype, "bfloat16");

  r = ModelConfig::FromJson(Llama(R"("rope_scaling": {"rope_type": "linear", "factor": 2.0})"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(r->rope_scaling.factor, 2.0);
}

TEST(ConfigTest, Defaults) {
  Result<ModelConfig> r = ModelConfig::FromJson(Llama(R"("rope_scaling": null, "sliding_window": 4096)"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(r->head_dim, 16);     // = hidden / heads
  EXPECT_DOUBLE_EQ(r->rope_theta, 10000.0);
  EXPECT_EQ(r->rope_scaling.type, "none");
  EXPECT_FALSE(r->attention_bias);
  EXPECT_FALSE(r->sliding_window);  // llama ignores it
  EXPECT_EQ(r->torch_dtype, "float32");

  // Qwen2's sliding window counts only when enabled for every layer.
  std::string qwen = R"({"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "sliding_window": 32)";
  r = ModelConfig::FromJson(qwen + R"(, "use_sliding_window": false})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->sliding_window);
  r = ModelConfig::FromJson(qwen + R"(, "use_sliding_window": true, "max_window_layers": 0, "attention_bias": false})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->sliding_window.value_or(0), 32);
  EXPECT_FALSE(r->attention_bias);  // an explicit key beats the qwen2 default
  ExpectInvalid(qwen + R"(, "use_sliding_window": true, "max_window_layers": 1})", "max_window_layers");
}

TEST(ConfigTest, MalformedJson) {
  ExpectInvalid("", "malformed JSON");
  ExpectInvalid("{\"model_type\": \"llama\",", "malformed JSON");
  ExpectInvalid("not json at all", "malformed JSON");
  ExpectInvalid("[1, 2, 3]", "JSON object");
  ExpectInvalid("null", "JSON object");
}

TEST(ConfigTest, MissingKeys) {
  ExpectInvalid(R"({"vocab_size": 1})", "\"model_type\"");
  ExpectInvalid(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4})", "\"vocab_size\"");
  ExpectInvalid(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
                    "num_attention_heads": 4})", "\"num_hidden_layers\"");
  // llama3 scaling needs all of its fields.
  ExpectInvalid(Llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8})"), "low_freq_factor");
}

TEST(ConfigTest, WrongTypes) {
  ExpectInvalid(Llama(R"("num_key_value_heads": "2")"), "\"num_key_value_heads\" must be an integer");
  ExpectInvalid(Llama(R"("head_dim": 16.5)"), "\"head_dim\" must be an integer");
  ExpectInvalid(Llama(R"("rms_norm_eps": "1e-5")"), "\"rms_norm_eps\" must be a number");
  ExpectInvalid(Llama(R"("tie_word_embeddings": 1)"), "\"tie_word_embeddings\" must be true or false");
  ExpectInvalid(Llama(R"("rope_scaling": 8)"), "\"rope_scaling\" must be an object");
  ExpectInvalid(Llama(R"("rope_scaling": {"rope_type": "llama3", "factor": "8"})"), "\"factor\" must be a number");
  ExpectInvalid(R"({"model_type": 7})", "\"model_type\" must be a string");
  ExpectInvalid(Llama(R"("vocab_size": 99999999999999999999)"), "vocab_size");
}

TEST(ConfigTest, InconsistentSizes) {
  ExpectInvalid(Llama(R"("num_key_value_heads": 3)"), "not divisible by num_key_value_heads");
  ExpectInvalid(Llama(R"("num_attention_heads": 5)"), "not divisible by num_attention_heads");  // no head_dim
  ExpectInvalid(Llama(R"("hidden_size": 0, "head_dim": 16)"), "hidden_size must be positive");
  ExpectInvalid(Llama(R"("vocab_size": -1)"), "vocab_size must be positive");
  ExpectInvalid(Llama(R"("head_dim": 15)"), "even");
  ExpectInvalid(Llama(R"("rms_norm_eps": 0)"), "rms_norm_eps");
  ExpectInvalid(Llama(R"("rope_scaling": {"rope_type": "yarn", "factor": 4})"), "unsupported rope type \"yarn\"");
  ExpectInvalid(Llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                          "high_freq_factor": 1, "original_max_position_embeddings": 8192})"), "low_freq_factor");
  ExpectInvalid(Llama(R"("model_type": "gpt2")"), "unsupported model_type \"gpt2\"");
  ExpectInvalid(Llama(R"("torch_dtype": "int8")"), "torch_dtype");
}

TEST(ConfigTest, FromFileMissing) {
  Result<ModelConfig> r = ModelConfig::FromFile(kFixtures + "/does-not-exist/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

TEST(ConfigTest, ToJsonRoundTripsAndIsCanonical) {
  for (const char* name : {"llama3", "qwen2", "mistral"}) {
    Result<ModelConfig> a = ModelConfig::FromFile(kFixtures + "/" + name + "/config.json");
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    const std::string text = a->ToJson();
    Result<ModelConfig> b = ModelConfig::FromJson(text);
    ASSERT_TRUE(b.ok()) << name << ": " << b.status().ToString() << "\n" << text;
    EXPECT_EQ(b->ToJson(), text) << name;
    EXPECT_EQ(b->rope_scaling.type, a->rope_scaling.type);
    EXPECT_EQ(b->sliding_window, a->sliding_window);
    EXPECT_EQ(b->attention_bias, a->attention_bias);
  }
  // Key order in the input does not matter; the output's keys are sorted.
  Result<ModelConfig> x = ModelConfig::FromJson(R"({"num_attention_heads": 4, "num_hidden_layers": 2,
      "intermediate_size": 128, "hidden_size": 64, "vocab_size": 100, "model_type": "llama"})");
  Result<ModelConfig> y = ModelConfig::FromJson(Llama());
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(x->ToJson(), y->ToJson());
  const std::string t = y->ToJson();
  EXPECT_LT(t.find("\"architectures\""), t.find("\"attention_bias\""));
  EXPECT_LT(t.find("\"head_dim\""), t.find("\"vocab_size\""));
}

TEST(ConfigTest, DemoTiny) {
  ModelConfig c = ModelConfig::DemoTiny();
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().ToString();
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  Result<ModelConfig> back = ModelConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToJson(), c.ToJson());
}

}  // namespace
}  // namespace kvault::engine

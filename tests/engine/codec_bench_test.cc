// `kvault bench codec` (bench/codec_bench.h) on the real SmolLM2-135M-Instruct, small (--quick):
// the JSON has every key for every codec; `none` reproduces exact KV bit for bit (ratio 1,
// perplexity equal to exact's as a double, top-1 agreement 1, identical answers); int8 and int4
// really changed the KV (a round-trip error above 0), stay close to exact (sane floors, far below
// the targets, which the full run in docs/BENCHMARKS.md measures) and are smaller.
// Bad arguments fail with a message before the model loads.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "smollm2_locator.h"

namespace {

struct CommandRun {
  int exit_code = -1;
  std::string out;
};

// Runs `kvault ARGS` (a shell command line), capturing stdout (and stderr with `2>&1` in args).
CommandRun Kvault(const std::string& args) {
  CommandRun r;
  FILE* p = ::popen((std::string(KVAULT_BINARY) + " " + args).c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

const nlohmann::json* FindCodec(const nlohmann::json& j, const std::string& name) {
  for (const auto& c : j["codecs"]) {
    if (c["codec"] == name) return &c;
  }
  return nullptr;
}

TEST(CodecBench, QuickRunOnSmolLM2ComparesEveryCodecWithExactKv) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  const CommandRun r = Kvault("bench codec --quick --json --model '" + path + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << "not JSON: " << r.out;

  for (const char* key : {"model", "tokens_evaluated", "codecs", "perplexity_exact", "windows", "pass", "layout"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["model"], "SmolLM2-135M-Instruct");
  EXPECT_TRUE(j["pass"].get<bool>());
  EXPECT_GE(j["tokens_evaluated"].get<int64_t>(), 512);
  ASSERT_EQ(j["codecs"].size(), 3u);
  for (const auto& c : j["codecs"]) {
    for (const char* key : {"codec", "ratio", "encode_gbps", "decode_gbps", "decode_gbps_all_cores", "perplexity_exact",
                            "perplexity", "top1_agreement", "kv_max_abs_error", "logit_max_abs_diff", "answers_identical",
                            "answers_total", "answers_first_diff"}) {
      EXPECT_TRUE(c.contains(key)) << c.value("codec", "?") << ": " << key;
    }
    EXPECT_GT(c.value("encode_gbps", 0.0), 0) << c["codec"];
    EXPECT_GT(c.value("decode_gbps", 0.0), 0) << c["codec"];
    EXPECT_EQ(c["perplexity_exact"].get<double>(), j["perplexity_exact"].get<double>());
    EXPECT_EQ(c["answers_total"].get<int>(), 2);
  }

  const auto* none = FindCodec(j, "none");
  ASSERT_NE(none, nullptr);
  EXPECT_EQ((*none)["ratio"].get<double>(), 1.0);
  EXPECT_EQ((*none)["perplexity"].get<double>(), (*none)["perplexity_exact"].get<double>());  // bit for bit
  EXPECT_EQ((*none)["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ((*none)["kv_max_abs_error"].get<double>(), 0.0);
  EXPECT_EQ((*none)["logit_max_abs_diff"].get<double>(), 0.0);
  EXPECT_EQ((*none)["answers_identical"].get<int>(), 2);

  // The codecs changed the KV (a round trip that was skipped would show 0 here) and stayed near
  // exact: floors a working codec clears by far, a broken one (wrong scale, wrong layout) misses.
  struct Floor {
    const char* name;
    double ratio_min, agreement_min, perplexity_max_pct;
  };
  for (const Floor& f : {Floor{"int8", 1.8, 0.95, 2.0}, Floor{"int4", 3.0, 0.80, 20.0}}) {
    const auto* c = FindCodec(j, f.name);
    ASSERT_NE(c, nullptr) << f.name;
    EXPECT_GT((*c)["kv_max_abs_error"].get<double>(), 0) << f.name;
    EXPECT_GT((*c)["logit_max_abs_diff"].get<double>(), 0) << f.name;
    EXPECT_GE((*c)["ratio"].get<double>(), f.ratio_min) << f.name;
    EXPECT_GE((*c)["top1_agreement"].get<double>(), f.agreement_min) << f.name;
    EXPECT_LE((*c)["top1_agreement"].get<double>(), 1.0) << f.name;
    const double change = ((*c)["perplexity"].get<double>() / (*c)["perplexity_exact"].get<double>() - 1) * 100;
    EXPECT_LE(std::abs(change), f.perplexity_max_pct) << f.name;
  }
}

TEST(CodecBench, BadArgumentsFailWithAMessage) {
  CommandRun r = Kvault("bench codec --codecs none,int9 --json 2>&1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("unknown KV codec 'int9'"), std::string::npos) << r.out;
  r = Kvault("bench codec --model /nonexistent/model.gguf --json 2>&1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("no such file or directory"), std::string::npos) << r.out;
  r = Kvault("bench codec --quick --continuation-tokens -1 2>&1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("must be positive"), std::string::npos) << r.out;
}

}  // namespace

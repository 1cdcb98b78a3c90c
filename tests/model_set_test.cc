// The served-model set's switching policy (src/openai/model_set.h) over real engines and
// random-weight models, with a loader the test counts (and can make fail): at most N models
// resident; a request for another waits in its queue and is answered by its own model (equal to
// a single engine of that model); a busy least-recently-used model drains before it goes; a
// failed load answers kUnavailable and the next request retries; a queued request whose client
// left costs no load; an evicted model's weights buffer goes to the next load. The engine thread
// is the test's own loop over StepAll. No timing assertions.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <algorithm>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/weights.h"
#include "openai/model_set.h"
#include "small_model.h"
#include "tokenizer/byte_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace kvault::openai {
namespace {

using engine::testing_model::SmallConfig;  // tests/engine/small_model.h

engine::EngineOptions SmallEngine() {
  engine::EngineOptions eo;
  eo.max_context = 512;
  eo.chunk_tokens = 16;
  eo.kv_pool_tokens = 2048;
  eo.max_batch = 4;
  return eo;
}

std::vector<uint32_t> Prompt(uint32_t salt) {
  std::vector<uint32_t> p;
  for (uint32_t i = 0; i < 24; ++i) p.push_back((i * 7 + salt * 13) % 120 + 3);
  return p;
}

// Model i has seed 100 + i. Counts loads; can fail the next ones; hands out (and records) the
// weights buffers it is given back.
class CountingLoader {
 public:
  Result<ModelLoad> Load(size_t index, torch::Tensor reuse) {
    std::shared_future<void> gate;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (gated_ && *gated_ == index) gate = gate_;
    }
    if (gate.valid()) gate.wait();  // a slow load, until the test opens the gate
    std::lock_guard<std::mutex> lock(mu_);
    ++loads_;
    loads_by_model_[index]++;
    reused_.push_back(reuse.defined() ? reuse.data_ptr() : nullptr);
    if (fail_next_ > 0) {
      --fail_next_;
      return Status::IOError("the source is unreadable (test)");
    }
    ModelLoad out;
    out.model = std::make_shared<engine::LlamaModel>(SmallConfig(), engine::RandomWeights(SmallConfig(), 100 + index, torch::kFloat32),
                                                     torch::kCPU);
    out.arena = reuse.defined() ? reuse : torch::empty({4096}, torch::kUInt8);
    handed_.push_back(out.arena.data_ptr());
    out.tokenizer = tokenizer::MakeByteTokenizer();
    out.chat = tokenizer::ChatTemplate::ForFamily(tokenizer::ChatFamily::kChatML);
    out.fingerprint = out.model->weights().fingerprint.Hex();
    out.weights_from = "generated";
    out.in_store = true;
    return out;
  }
  int loads() {
    std::lock_guard<std::mutex> lock(mu_);
    return loads_;
  }
  int loads_of(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return loads_by_model_[i];
  }
  void FailNext(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_next_ = n;
  }
  // Loads of model `index` wait until the returned promise is set.
  std::promise<void> Gate(size_t index) {
    std::promise<void> open;
    std::lock_guard<std::mutex> lock(mu_);
    gated_ = index;
    gate_ = open.get_future().share();
    return open;
  }
  std::vector<void*> reused() {
    std::lock_guard<std::mutex> lock(mu_);
    return reused_;
  }
  std::vector<void*> handed() {
    std::lock_guard<std::mutex> lock(mu_);
    return handed_;
  }

 private:
  std::mutex mu_;
  int loads_ = 0;
  int fail_next_ = 0;
  std::map<size_t, int> loads_by_model_;
  std::optional<size_t> gated_;
  std::shared_future<void> gate_;
  std::vector<void*> reused_, handed_;
};

// What a single engine of model i answers (greedy).
std::vector<uint32_t> Reference(size_t i, const std::vector<uint32_t>& prompt, int64_t max_new) {
  auto model = std::make_shared<engine::LlamaModel>(SmallConfig(), engine::RandomWeights(SmallConfig(), 100 + i, torch::kFloat32),
                                                    torch::kCPU);
  engine::Engine e(model, SmallEngine());
  engine::SamplingParams p;
  p.max_new_tokens = max_new;
  return e.Generate(prompt, p).output_tokens;
}

// Guards against a hang (a broken switcher): generous bounds, never a speed assertion.
template <typename Pred>
bool Eventually(Pred pred) {
  for (int i = 0; i < 60000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pred();
}
engine::RequestResult Get(std::future<engine::RequestResult>& f) {
  if (f.wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
    ADD_FAILURE() << "a request never ended";
    engine::RequestResult r;
    r.status = Status::Unavailable("never ended (test)");
    return r;
  }
  return f.get();
}
engine::RequestResult Get(std::future<engine::RequestResult>&& f) { return Get(f); }

// A ModelSet with `n` models and its engine loop.
class Harness {
 public:
  Harness(size_t n, size_t max_loaded) {
    std::vector<ServedModel> models;
    for (size_t i = 0; i < n; ++i) models.push_back({"m" + std::to_string(i), "random:test:" + std::to_string(i)});
    ModelSetOptions o;
    o.max_loaded = max_loaded;
    o.engine = SmallEngine();
    set = std::make_unique<ModelSet>(models, [this](size_t i, torch::Tensor r) { return loader.Load(i, std::move(r)); }, o);
    const Status st = set->LoadAll([](const std::string&) {});
    EXPECT_TRUE(st.ok()) << st.ToString();
    loop = std::thread([this] {
      torch::NoGradGuard no_grad;
      while (!stop.load()) {
        if (paused.load() || !set->StepAll()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  ~Harness() {
    set->Stop();
    stop = true;
    loop.join();
    set.reset();
  }

  // Submits; the future gets the result.
  std::future<engine::RequestResult> Submit(size_t i, std::vector<uint32_t> prompt, int64_t max_new,
                                            std::shared_ptr<std::atomic<bool>> cancel = nullptr) {
    auto promise = std::make_shared<std::promise<engine::RequestResult>>();
    auto fut = promise->get_future();
    ModelRequest r;
    r.prompt = std::move(prompt);
    r.params.max_new_tokens = max_new;
    r.params.cancel = cancel;
    r.done = [promise](engine::RequestResult res) { promise->set_value(std::move(res)); };
    set->Submit(i, std::move(r));
    return fut;
  }

  ModelState State(size_t i) { return set->Snapshot()[i].state; }

  CountingLoader loader;
  std::unique_ptr<ModelSet> set;
  std::atomic<bool> stop{false};
  std::atomic<bool> paused{false};  // the engine loop steps nothing while set
  std::thread loop;
};

TEST(ModelSetTest, StartupLoadsEveryModelOnceAndKeepsTheFirstN) {
  Harness h(3, 1);
  EXPECT_EQ(h.loader.loads(), 3);
  EXPECT_EQ(h.set->resident(), 1u);
  EXPECT_EQ(h.State(0), ModelState::kLoaded);
  EXPECT_EQ(h.State(1), ModelState::kStored);
  EXPECT_EQ(h.State(2), ModelState::kStored);
  EXPECT_EQ(h.set->Find("m2"), std::optional<size_t>(2));
  EXPECT_FALSE(h.set->Find("nope").has_value());
  for (size_t i = 0; i < 3; ++i) EXPECT_NE(h.set->text(i).tokenizer, nullptr);  // every text side is known
}

TEST(ModelSetTest, InterleavedRequestsGetTheirOwnModelsAnswers) {
  const auto p = Prompt(1);
  const auto want0 = Reference(0, p, 12), want1 = Reference(1, p, 12);
  ASSERT_NE(want0, want1);  // two seeds, two models
  for (size_t max_loaded : {1u, 2u, 0u}) {
    Harness h(2, max_loaded);
    std::vector<std::future<engine::RequestResult>> futs;
    for (int round = 0; round < 3; ++round) {
      futs.push_back(h.Submit(0, p, 12));
      futs.push_back(h.Submit(1, p, 12));
    }
    for (size_t k = 0; k < futs.size(); ++k) {
      const engine::RequestResult r = Get(futs[k]);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      EXPECT_EQ(r.output_tokens, k % 2 == 0 ? want0 : want1) << "max_loaded " << max_loaded << " request " << k;
    }
    EXPECT_LE(h.set->resident(), max_loaded == 0 ? 2u : max_loaded);
    if (max_loaded == 1) {
      EXPECT_GE(h.loader.loads_of(1), 2);  // m1 was switched in
    } else {
      EXPECT_EQ(h.loader.loads(), 2);      // both stayed: no switch
    }
  }
}

TEST(ModelSetTest, ABusyModelFinishesItsRequestsBeforeItIsSwitchedOut) {
  Harness h(2, 1);
  const auto p = Prompt(2);
  h.paused = true;  // m0's request stays in flight until the engine loop goes on
  auto long_a = h.Submit(0, p, 96);
  auto b = h.Submit(1, p, 4);  // m0 must drain first
  ASSERT_TRUE(Eventually([&] { return h.set->Snapshot()[0].draining; })) << "m0 never stopped admitting";
  EXPECT_EQ(h.State(1), ModelState::kQueued);
  auto late_a = h.Submit(0, Prompt(3), 4);  // m0 admits nothing new: this one queues behind m1
  EXPECT_EQ(h.set->Snapshot()[0].queued, 1u);
  h.paused = false;
  const engine::RequestResult ra = Get(long_a);
  ASSERT_TRUE(ra.status.ok());
  EXPECT_EQ(ra.output_tokens, Reference(0, p, 96));  // whole, not cut by the switch
  const engine::RequestResult rb = Get(b);
  ASSERT_TRUE(rb.status.ok());
  EXPECT_EQ(rb.output_tokens, Reference(1, p, 4));
  const engine::RequestResult rla = Get(late_a);
  ASSERT_TRUE(rla.status.ok());
  EXPECT_EQ(rla.output_tokens, Reference(0, Prompt(3), 4));
  EXPECT_EQ(h.loader.loads_of(0), 2);  // startup, and back after m1
  EXPECT_EQ(h.loader.loads_of(1), 2);  // startup, and the switch
}

TEST(ModelSetTest, ALoadInProgressBlocksNeitherTheOtherModelsNorItsOwnQueue) {
  Harness h(3, 2);
  std::promise<void> open = h.loader.Gate(2);
  ASSERT_TRUE(Get(h.Submit(0, Prompt(10), 2)).status.ok());  // m0 more recent than m1: m1 goes
  auto c1 = h.Submit(2, Prompt(11), 5);
  auto c2 = h.Submit(2, Prompt(12), 5);
  ASSERT_TRUE(Eventually([&] { return h.State(2) == ModelState::kLoading; })) << "m2 never started loading";
  EXPECT_EQ(h.State(1), ModelState::kStored);
  EXPECT_EQ(h.set->Snapshot()[2].queued, 2u);
  // While m2 loads, m0 answers (the engine loop does not wait for the load).
  const engine::RequestResult a = Get(h.Submit(0, Prompt(13), 6));
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(a.output_tokens, Reference(0, Prompt(13), 6));
  EXPECT_EQ(h.State(2), ModelState::kLoading);
  open.set_value();
  const engine::RequestResult r1 = Get(c1), r2 = Get(c2);
  ASSERT_TRUE(r1.status.ok() && r2.status.ok());
  EXPECT_EQ(r1.output_tokens, Reference(2, Prompt(11), 5));
  EXPECT_EQ(r2.output_tokens, Reference(2, Prompt(12), 5));
  EXPECT_EQ(h.State(2), ModelState::kLoaded);
  EXPECT_EQ(h.State(0), ModelState::kLoaded);
}

TEST(ModelSetTest, AFailedLoadAnswersUnavailableAndTheNextRequestRetries) {
  Harness h(2, 1);
  h.loader.FailNext(1);
  const engine::RequestResult failed = Get(h.Submit(1, Prompt(4), 4));
  EXPECT_EQ(failed.status.code(), Code::kUnavailable);
  EXPECT_NE(failed.status.message().find("unreadable"), std::string::npos) << failed.status.message();
  EXPECT_NE(failed.status.message().find("'m1'"), std::string::npos) << failed.status.message();
  EXPECT_EQ(h.set->Snapshot()[1].load_failures, 1u);
  const engine::RequestResult ok = Get(h.Submit(1, Prompt(4), 4));
  ASSERT_TRUE(ok.status.ok()) << ok.status.ToString();
  EXPECT_EQ(ok.output_tokens, Reference(1, Prompt(4), 4));
  EXPECT_EQ(h.State(1), ModelState::kLoaded);
}

TEST(ModelSetTest, AQueuedRequestWhoseClientLeftCostsNoLoad) {
  Harness h(2, 1);
  h.paused = true;  // m0 stays busy: m1's request waits
  auto busy = h.Submit(0, Prompt(5), 64);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  auto gone = h.Submit(1, Prompt(6), 4, cancel);
  cancel->store(true);
  const engine::RequestResult r = Get(gone);
  h.paused = false;
  EXPECT_TRUE(r.output_tokens.empty());
  ASSERT_TRUE(Get(busy).status.ok());
  EXPECT_EQ(h.loader.loads_of(1), 1);  // startup only
  EXPECT_EQ(h.State(0), ModelState::kLoaded);
  // m0, drained for nothing, admits again.
  const engine::RequestResult again = Get(h.Submit(0, Prompt(9), 3));
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.output_tokens, Reference(0, Prompt(9), 3));
  EXPECT_EQ(h.loader.loads_of(0), 1);
}

TEST(ModelSetTest, AnEvictedModelsBufferGoesToTheNextLoad) {
  Harness h(3, 1);
  auto check_last_reused = [&](const char* what) {
    const std::vector<void*> reused = h.loader.reused(), handed = h.loader.handed();
    ASSERT_FALSE(reused.empty());
    EXPECT_NE(reused.back(), nullptr) << what << ": the load got no buffer to reuse";
    EXPECT_NE(std::find(handed.begin(), handed.end() - 1, reused.back()), handed.end() - 1)
        << what << ": not a buffer of an earlier load";
  };
  check_last_reused("startup of m2 (m1's buffer, m1 not resident)");
  ASSERT_TRUE(Get(h.Submit(1, Prompt(7), 2)).status.ok());  // m0 out, m1 in
  check_last_reused("switch to m1");
  ASSERT_TRUE(Get(h.Submit(2, Prompt(8), 2)).status.ok());  // m1 out, m2 in
  check_last_reused("switch to m2");
  EXPECT_EQ(h.loader.loads(), 5);
}

}  // namespace
}  // namespace kvault::openai

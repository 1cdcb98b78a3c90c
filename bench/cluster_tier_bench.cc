#include "cluster_tier_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>

#include <sys/resource.h>

#include "store/redis_tier.h"

namespace kvault {
namespace {

using Clock = std::chrono::steady_clock;

struct PhaseResult {
  uint64_t ops = 0, bytes = 0, failures = 0;
  double seconds = 0;
  double cpu_seconds = 0;  // of this process (user + system) while the phase ran
  double gbps() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
  double cpu_s_per_gb() const { return bytes > 0 ? cpu_seconds / (static_cast<double>(bytes) / 1e9) : 0; }
};

// User + system CPU seconds of this process (RUSAGE_SELF) or of its reaped children.
double CpuSeconds(int who) {
  rusage u{};
  ::getrusage(who, &u);
  auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
  return secs(u.ru_utime) + secs(u.ru_stime);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Runs `op(thread, i)` (true: success) from `threads` threads until `seconds` have passed.
template <typename Op>
PhaseResult RunPhase(int threads, double seconds, uint64_t value_bytes, const Op& op) {
  std::atomic<uint64_t> ops{0}, failures{0};
  const double cpu_start = CpuSeconds(RUSAGE_SELF);
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (uint64_t i = 0; Clock::now() < deadline; ++i) {
        if (op(t, i)) {
          ops.fetch_add(1, std::memory_order_relaxed);
        } else {
          failures.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  PhaseResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.cpu_seconds = CpuSeconds(RUSAGE_SELF) - cpu_start;
  r.ops = ops.load();
  r.failures = failures.load();
  r.bytes = r.ops * value_bytes;
  return r;
}

nlohmann::json OursJson(const PhaseResult& put, const PhaseResult& get) {
  return {{"put_gbps", put.gbps()},
          {"get_gbps", get.gbps()},
          {"put_ops", put.ops},
          {"get_ops", get.ops},
          {"put_failures", put.failures},
          {"get_failures", get.failures},
          {"client_cpu_s_per_gb", (put.cpu_seconds + get.cpu_seconds) / (static_cast<double>(put.bytes + get.bytes) / 1e9)}};
}

// Runs redis-benchmark in cluster mode and reads its CSV: "test","rps",... per test.
nlohmann::json RunRedisBenchmark(const std::string& seed, uint64_t value_bytes, int threads, uint64_t requests,
                                 const std::string& password) {
  const size_t colon = seed.rfind(':');
  std::ostringstream cmd;
  cmd << "redis-benchmark --cluster -h " << seed.substr(0, colon) << " -p " << seed.substr(colon + 1)
      << " -t set,get -d " << value_bytes << " -c " << threads << " --threads " << threads << " -n " << requests
      << " -P 1 --csv";
  const std::string shown = cmd.str();
  if (!password.empty()) cmd << " -a '" << password << "' --no-auth-warning";
  cmd << " 2>/dev/null";
  nlohmann::json out = {{"command", shown}, {"requests", requests}};
  const double cpu_start = CpuSeconds(RUSAGE_CHILDREN);
  FILE* pipe = ::popen(cmd.str().c_str(), "r");
  if (pipe == nullptr) {
    out["error"] = "cannot run redis-benchmark";
    return out;
  }
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int rc = ::pclose(pipe);
  const double cpu_seconds = CpuSeconds(RUSAGE_CHILDREN) - cpu_start;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // "SET","12345.67",... (the header line's second field is "rps")
    std::vector<std::string> fields;
    std::istringstream cells(line);
    std::string cell;
    while (std::getline(cells, cell, ',')) {
      cell.erase(std::remove(cell.begin(), cell.end(), '"'), cell.end());
      fields.push_back(cell);
    }
    if (fields.size() < 2 || (fields[0] != "SET" && fields[0] != "GET")) continue;
    const double rps = std::strtod(fields[1].c_str(), nullptr);
    const std::string name = fields[0] == "SET" ? "set" : "get";
    out[name + "_rps"] = rps;
    out[name + "_gbps"] = rps * static_cast<double>(value_bytes) / 1e9;
  }
  if (out.contains("set_rps") && out.contains("get_rps")) {
    out["client_cpu_s_per_gb"] = cpu_seconds / (2.0 * static_cast<double>(requests * value_bytes) / 1e9);
  }
  if (!out.contains("set_gbps") || !out.contains("get_gbps")) {
    out["error"] = "no SET/GET lines in redis-benchmark's output (exit " + std::to_string(rc) + "): " + text.substr(0, 500);
  }
  return out;
}

}  // namespace

nlohmann::json RunClusterTierBench(const std::vector<std::string>& seeds, uint64_t value_bytes, double seconds,
                                   int threads, int rounds_count, const std::string& password) {
  nlohmann::json result = {{"value_bytes", value_bytes}, {"threads", threads}, {"seconds", seconds}, {"rounds_count", rounds_count}};
  RedisTierOptions options;
  options.seeds = seeds;
  options.password = password;
  options.timeout_ms = 2000;  // a loaded 2-core machine must not turn slowness into misses
  options.connections_per_node = std::max(2, threads);
  auto opened = OpenRedisTier(options);
  if (!opened.ok()) {
    result["error"] = opened.status().ToString();
    return result;
  }
  RemoteTier& tier = *opened.value();

  // A few keys per thread, overwritten again and again: at most about 512 MiB in the cluster.
  const uint64_t per_thread = std::clamp<uint64_t>((512ull << 20) / (value_bytes * threads), 1, 16);
  std::vector<std::vector<ChunkKey>> keys(threads);
  std::vector<std::vector<std::byte>> values(threads);
  std::mt19937_64 rng(42);
  for (int t = 0; t < threads; ++t) {
    for (uint64_t k = 0; k < per_thread; ++k) keys[t].push_back(Sha256("bench-" + std::to_string(t) + "-" + std::to_string(k)));
    values[t].resize(value_bytes);
    for (auto& b : values[t]) b = static_cast<std::byte>(rng());
  }

  // Rounds alternate ours and redis-benchmark so that both see the same background load; the
  // figures are the medians over rounds.
  std::vector<double> put_gbps, get_gbps, set_gbps, rb_get_gbps;
  nlohmann::json rounds = nlohmann::json::array();
  for (int round = 0; round < rounds_count; ++round) {
    std::fprintf(stderr, "cluster tier bench: round %d: %llu-byte values, %d threads: put, get, redis-benchmark\n",
                 round + 1, static_cast<unsigned long long>(value_bytes), threads);
    const PhaseResult put = RunPhase(threads, seconds, value_bytes, [&](int t, uint64_t i) {
      return tier.Put(keys[t][i % per_thread], values[t]).ok();
    });
    const PhaseResult get = RunPhase(threads, seconds, value_bytes, [&](int t, uint64_t i) {
      auto v = tier.Get(keys[t][i % per_thread]);
      return v.ok() && v->size() == value_bytes;
    });
    // As many requests as ours did in the same time (at least a few per client).
    const uint64_t requests = std::max<uint64_t>(std::max(put.ops, get.ops), 20ull * threads);
    nlohmann::json rb = RunRedisBenchmark(seeds.front(), value_bytes, threads, requests, password);
    if (rb.contains("error")) {
      result["error"] = rb["error"];
      return result;
    }
    put_gbps.push_back(put.gbps());
    get_gbps.push_back(get.gbps());
    set_gbps.push_back(rb["set_gbps"].get<double>());
    rb_get_gbps.push_back(rb["get_gbps"].get<double>());
    rounds.push_back({{"ours", OursJson(put, get)}, {"redis_benchmark", rb}});
  }
  result["rounds"] = rounds;
  result["ours"] = {{"put_gbps", Median(put_gbps)}, {"get_gbps", Median(get_gbps)}, {"tier_errors", tier.Stats().errors}};
  result["redis_benchmark"] = {{"set_gbps", Median(set_gbps)}, {"get_gbps", Median(rb_get_gbps)}};
  if (Median(set_gbps) > 0) result["put_ratio"] = Median(put_gbps) / Median(set_gbps);
  if (Median(rb_get_gbps) > 0) result["get_ratio"] = Median(get_gbps) / Median(rb_get_gbps);
  result["target_ratio"] = 0.8;
  return result;
}

}  // namespace kvault

// cluster_tier_bench: starts a 3-master Redis Cluster on loopback (or uses --seeds) and prints
// the cluster tier benchmark's JSON (bench/cluster_tier_bench.h).
//   cluster_tier_bench [--value-bytes N] [--seconds S] [--threads T] [--rounds R] [--seeds h:p,h:p]
//                      [--password P]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>

#include "cluster_tier_bench.h"
#include "local_cluster/local_redis_cluster.h"

int main(int argc, char** argv) {
  uint64_t value_bytes = 1 << 20;
  double seconds = 5;
  int threads = 4;
  int rounds = 3;
  std::string seeds_arg, password;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (next == nullptr && arg != "--help") {
      std::fprintf(stderr, "%s needs a value\n", arg.c_str());
      return 2;
    }
    if (arg == "--value-bytes") {
      value_bytes = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--seconds") {
      seconds = std::strtod(argv[++i], nullptr);
    } else if (arg == "--threads") {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--rounds") {
      rounds = std::atoi(argv[++i]);
    } else if (arg == "--seeds") {
      seeds_arg = argv[++i];
    } else if (arg == "--password") {
      password = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: cluster_tier_bench [--value-bytes N] [--seconds S] [--threads T] [--rounds R] [--seeds h:p,...] "
                   "[--password P]\n");
      return 2;
    }
  }
  if (value_bytes == 0 || threads <= 0 || seconds <= 0 || rounds <= 0) {
    std::fprintf(stderr, "value bytes, threads, seconds and rounds must be positive\n");
    return 2;
  }
  std::unique_ptr<kvault::local_cluster::LocalRedisCluster> cluster;
  std::vector<std::string> seeds;
  if (seeds_arg.empty()) {
    kvault::local_cluster::LocalRedisClusterOptions options;
    options.password = password;
    std::string error;
    cluster = kvault::local_cluster::LocalRedisCluster::Start(options, &error);
    if (!cluster) {
      std::fprintf(stderr, "cannot start a Redis Cluster: %s\n", error.c_str());
      return 1;
    }
    seeds = cluster->Seeds();
  } else {
    std::istringstream in(seeds_arg);
    std::string s;
    while (std::getline(in, s, ',')) seeds.push_back(s);
  }
  const nlohmann::json result = kvault::RunClusterTierBench(seeds, value_bytes, seconds, threads, rounds, password);
  std::printf("%s\n", result.dump(2).c_str());
  return result.contains("error") ? 1 : 0;
}

// The cluster tier benchmark: the Redis tier's Put and Get bandwidth from several threads, next
// to redis-benchmark's SET and GET against the same cluster with the same value size, measured
// in the same run (target: ours >= 0.8 x redis-benchmark).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvault {

// `rounds` times: our Put for `seconds` from `threads` threads, our Get likewise, then
// redis-benchmark (-c threads --threads threads) with as many requests as we made; progress on
// stderr. `seeds`: "host:port" of cluster nodes. The JSON holds per-round figures ("rounds":
// GB/s, ops, failures, client CPU seconds per GB of each side) and, as medians over rounds,
// "ours" {put_gbps, get_gbps}, "redis_benchmark" {set_gbps, get_gbps}, "put_ratio" and
// "get_ratio" (ours / redis-benchmark); "error" when something failed.
nlohmann::json RunClusterTierBench(const std::vector<std::string>& seeds, uint64_t value_bytes, double seconds,
                                   int threads, int rounds = 3, const std::string& password = "");

}  // namespace kvault

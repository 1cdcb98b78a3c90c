# The Redis Cluster backend of the cluster tier (T3): src/store/redis_cluster.* (the client) and
# src/store/redis_tier.* (RemoteTier on it). Included from the top CMakeLists.txt right after
# kvault_store is defined. Needs hiredis (Debian: libhiredis-dev).
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
target_sources(kvault_store PRIVATE
  ${PROJECT_SOURCE_DIR}/src/store/redis_cluster.cc
  ${PROJECT_SOURCE_DIR}/src/store/redis_connection.cc
  ${PROJECT_SOURCE_DIR}/src/store/redis_tier.cc
)
target_link_libraries(kvault_store PRIVATE PkgConfig::HIREDIS)

# A Redis Cluster of redis-server processes started on loopback (src/local_cluster), for the
# cluster tier's tests and its benchmark.
add_library(kvault_local_cluster STATIC ${PROJECT_SOURCE_DIR}/src/local_cluster/local_redis_cluster.cc)
target_include_directories(kvault_local_cluster PUBLIC ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(kvault_local_cluster PRIVATE PkgConfig::HIREDIS)

# Not a test: `cluster_tier_bench [--value-bytes N] [--seconds S] [--threads T]` starts a
# cluster and prints one JSON object (ours vs redis-benchmark on the same servers).
add_executable(cluster_tier_bench
  ${PROJECT_SOURCE_DIR}/bench/cluster_tier_bench_main.cc
  ${PROJECT_SOURCE_DIR}/bench/cluster_tier_bench.cc
)
target_include_directories(cluster_tier_bench PRIVATE ${PROJECT_SOURCE_DIR}/bench ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(cluster_tier_bench PRIVATE kvault_local_cluster kvault_store nlohmann_json::nlohmann_json)

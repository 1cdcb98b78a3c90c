# Tests of the Redis Cluster tier (src/store/redis_tier.h) against a real 3-master cluster on
# loopback (tests/redis_cluster_fixture.h; needs redis-server and redis-cli), and the cluster
# tier benchmark. Included from tests/CMakeLists.txt.
add_library(kvault_redis_fixture STATIC redis_cluster_fixture.cc)
target_include_directories(kvault_redis_fixture PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(kvault_redis_fixture PUBLIC kvault_test_support PRIVATE PkgConfig::HIREDIS)

add_executable(redis_tier_test redis_tier_test.cc)
target_link_libraries(redis_tier_test PRIVATE kvault_redis_fixture kvault_test_support GTest::gtest_main)
# Each test starts its own cluster; RUN_SERIAL keeps them from competing for the 2 cores.
gtest_discover_tests(redis_tier_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 RUN_SERIAL TRUE)

# Not a test: `cluster_tier_bench [--value-bytes N] [--seconds S] [--threads T]` starts a
# cluster and prints one JSON object (ours vs redis-benchmark on the same servers).
add_executable(cluster_tier_bench
  ${PROJECT_SOURCE_DIR}/bench/cluster_tier_bench_main.cc
  ${PROJECT_SOURCE_DIR}/bench/cluster_tier_bench.cc
)
target_include_directories(cluster_tier_bench PRIVATE ${PROJECT_SOURCE_DIR}/bench ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(cluster_tier_bench PRIVATE kvault_redis_fixture kvault_store nlohmann_json::nlohmann_json)

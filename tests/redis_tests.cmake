# Tests of the Redis Cluster tier (src/store/redis_tier.h) against a real 3-master cluster on
# loopback (src/local_cluster/local_redis_cluster.h; needs redis-server and redis-cli).
# Included from tests/CMakeLists.txt.
add_executable(redis_tier_test redis_tier_test.cc)
target_link_libraries(redis_tier_test PRIVATE kvault_local_cluster kvault_test_support GTest::gtest_main)
# Each test starts its own cluster; RUN_SERIAL keeps them from competing for the 2 cores.
gtest_discover_tests(redis_tier_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 RUN_SERIAL TRUE)

# The store with its cluster tier (T3) on a real 3-master Redis Cluster (tests/redis_store_test.cc).
# Included from tests/CMakeLists.txt after redis_tests.cmake, (the cluster comes from kvault_local_cluster).
if(TARGET kvault_local_cluster)
  add_executable(redis_store_test ${CMAKE_CURRENT_LIST_DIR}/redis_store_test.cc)
  target_link_libraries(redis_store_test PRIVATE kvault_local_cluster kvault_test_support GTest::gtest_main)
  # Starts its own cluster; RUN_SERIAL keeps it from competing with the other Redis tests.
  gtest_discover_tests(redis_store_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 RUN_SERIAL TRUE)
endif()

# Tests of the shared-directory backend of the cluster tier (src/store/shared_dir_tier.h).
# Included from tests/CMakeLists.txt.
add_executable(shared_dir_tier_test ${CMAKE_CURRENT_LIST_DIR}/shared_dir_tier_test.cc)
target_link_libraries(shared_dir_tier_test PRIVATE kvault_test_support GTest::gtest_main)
gtest_discover_tests(shared_dir_tier_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

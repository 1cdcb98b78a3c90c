# The store's compressed lower tiers (docs/STORE.md, "Compressed lower tiers"): T2 and T3
# records encoded with int8/int4, restarts, mixed records, corruption, capacity.
add_executable(tier_codec_test tier_codec_test.cc)
target_link_libraries(tier_codec_test PRIVATE kvault_test_support GTest::gtest_main)
gtest_discover_tests(tier_codec_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

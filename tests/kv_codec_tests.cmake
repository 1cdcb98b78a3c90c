# The KV codecs (include/kvault/kv_codec.h; included from tests/CMakeLists.txt): round trips
# within each codec's error bound, stored scales, sizes, adversarial inputs, threads.
add_executable(kv_codec_test kv_codec_test.cc)
target_include_directories(kv_codec_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(kv_codec_test PRIVATE kvault_store GTest::gtest_main)
gtest_discover_tests(kv_codec_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

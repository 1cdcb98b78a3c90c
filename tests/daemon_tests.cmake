# kvaultd and kvault::Client (no LibTorch).
add_executable(daemon_test daemon_test.cc)
target_link_libraries(daemon_test PRIVATE kvault_daemon kvault_test_support GTest::gtest_main)
gtest_discover_tests(daemon_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

add_executable(protocol_test protocol_test.cc protocol_reencode_test.cc)
target_link_libraries(protocol_test PRIVATE kvault_daemon kvault_test_support GTest::gtest_main)
gtest_discover_tests(protocol_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

# The kvaultd executable as a child process.
add_executable(daemon_process_test daemon_process_test.cc)
target_link_libraries(daemon_process_test PRIVATE kvault_daemon kvault_test_support GTest::gtest_main
  PkgConfig::HTTPLIB nlohmann_json::nlohmann_json)
target_compile_definitions(daemon_process_test PRIVATE KVAULT_DAEMON_BIN="$<TARGET_FILE:kvaultd>")
add_dependencies(daemon_process_test kvaultd)
gtest_discover_tests(daemon_process_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

# kvaultd's memory and time limits against hostile clients.
add_executable(daemon_limits_test daemon_limits_test.cc)
target_link_libraries(daemon_limits_test PRIVATE kvault_daemon kvault_test_support GTest::gtest_main)
gtest_discover_tests(daemon_limits_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

# The kvaultd protocol fuzz target: FuzzOne under a fixed-seed mutator (bounded to ~20 s),
# and mutated frames against a live daemon.
add_library(kvault_daemon_protocol_fuzz STATIC daemon_protocol_fuzz.cc)
target_include_directories(kvault_daemon_protocol_fuzz PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(kvault_daemon_protocol_fuzz PUBLIC kvault_daemon)
add_executable(daemon_protocol_fuzz_test daemon_protocol_fuzz_test.cc)
target_link_libraries(daemon_protocol_fuzz_test PRIVATE kvault_daemon_protocol_fuzz kvault_test_support GTest::gtest_main)
gtest_discover_tests(daemon_protocol_fuzz_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

# libFuzzer entry (clang only): cmake -DKVAULT_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
if(KVAULT_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  add_executable(daemon_protocol_fuzzer daemon_protocol_fuzzer.cc daemon_protocol_fuzz.cc)
  target_include_directories(daemon_protocol_fuzzer PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(daemon_protocol_fuzzer PRIVATE kvault_daemon)
  target_compile_options(daemon_protocol_fuzzer PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(daemon_protocol_fuzzer PRIVATE -fsanitize=fuzzer,address,undefined)
endif()

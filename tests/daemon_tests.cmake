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

# Tests of the metrics text, the latency histogram and the HTTP endpoint (included from
# tests/CMakeLists.txt).
if(TARGET kvault_metrics)
  add_executable(metrics_test metrics_test.cc)
  target_link_libraries(metrics_test PRIVATE kvault_metrics kvault_test_support PkgConfig::HTTPLIB GTest::gtest_main)
  gtest_discover_tests(metrics_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()

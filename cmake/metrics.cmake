# Prometheus metrics and the HTTP endpoint of kvaultd (included from the top CMakeLists.txt
# after kvault_http). The endpoint runs on kvault::http; cpp-httplib (Debian's compiled
# libcpp-httplib-dev) is only the tests' HTTP client, found here for them.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

add_library(kvault_metrics STATIC
  src/metrics/latency_histogram.cc
  src/metrics/prometheus_text.cc
  src/metrics/http_endpoint.cc
)
target_include_directories(kvault_metrics PUBLIC include src)
target_link_libraries(kvault_metrics PUBLIC kvault_store kvault_http Threads::Threads)

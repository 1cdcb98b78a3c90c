# Prometheus metrics and the HTTP endpoint of kvaultd (included from the top CMakeLists.txt
# after kvault_store). cpp-httplib is Debian's compiled library (libcpp-httplib-dev).
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

add_library(kvault_metrics STATIC
  src/metrics/latency_histogram.cc
  src/metrics/prometheus_text.cc
  src/metrics/http_endpoint.cc
)
target_include_directories(kvault_metrics PUBLIC include src)
target_link_libraries(kvault_metrics PUBLIC kvault_store PkgConfig::HTTPLIB Threads::Threads)

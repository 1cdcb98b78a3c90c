# kvaultd and its client (no LibTorch): protocol, sockets, the daemon, kvault::Client.
add_library(kvault_daemon STATIC
  src/daemon/protocol.cc
  src/daemon/socket_io.cc
  src/daemon/daemon.cc
  src/daemon/request_handlers.cc
  src/daemon/client.cc
  src/daemon/client_handles.cc
)
target_include_directories(kvault_daemon PUBLIC include src)
target_link_libraries(kvault_daemon PUBLIC kvault_store kvault_metrics
  PRIVATE OpenSSL::Crypto nlohmann_json::nlohmann_json)

add_library(kvault_daemon_cli STATIC src/apps/kvaultd/daemon_cli.cc)
target_include_directories(kvault_daemon_cli PUBLIC src)
target_link_libraries(kvault_daemon_cli PUBLIC kvault_daemon CLI11::CLI11 PRIVATE nlohmann_json::nlohmann_json)

add_executable(kvaultd src/apps/kvaultd/kvaultd_main.cc)
target_link_libraries(kvaultd PRIVATE kvault_daemon_cli)
set_target_properties(kvaultd PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})

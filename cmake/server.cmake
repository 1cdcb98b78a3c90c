# kvaultd and its client (no LibTorch): protocol, sockets, the daemon, kvault::Client.
add_library(kvault_server STATIC
  src/server/protocol.cc
  src/server/socket_io.cc
  src/server/daemon.cc
  src/server/client.cc
)
target_include_directories(kvault_server PUBLIC include src)
target_link_libraries(kvault_server PUBLIC kvault_store kvault_metrics
  PRIVATE OpenSSL::Crypto nlohmann_json::nlohmann_json)

add_library(kvault_daemon_cli STATIC src/server/daemon_cli.cc)
target_include_directories(kvault_daemon_cli PUBLIC src)
target_link_libraries(kvault_daemon_cli PUBLIC kvault_server CLI11::CLI11 PRIVATE nlohmann_json::nlohmann_json)

add_executable(kvaultd src/server/kvaultd_main.cc)
target_link_libraries(kvaultd PRIVATE kvault_daemon_cli)
set_target_properties(kvaultd PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})

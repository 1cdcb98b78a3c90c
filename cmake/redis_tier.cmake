# The Redis Cluster backend of the cluster tier (T3): src/store/redis_cluster.* (the client) and
# src/store/redis_tier.* (RemoteTier on it). Included from the top CMakeLists.txt right after
# kvault_store is defined. Needs hiredis (Debian: libhiredis-dev).
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
target_sources(kvault_store PRIVATE
  ${PROJECT_SOURCE_DIR}/src/store/redis_cluster.cc
  ${PROJECT_SOURCE_DIR}/src/store/redis_tier.cc
)
target_link_libraries(kvault_store PRIVATE PkgConfig::HIREDIS)

# The shared-directory backend of the cluster tier (T3): a directory on a distributed file
# system (CephFS, 3FS, Lustre, NFS). Included from the top CMakeLists.txt after kvault_store.
target_sources(kvault_store PRIVATE ${PROJECT_SOURCE_DIR}/src/store/shared_dir_tier.cc)

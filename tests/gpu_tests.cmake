# Tests of kvault::gpu, the host<->GPU transfer library (included from tests/CMakeLists.txt).
# They skip, saying why, where no CUDA device is usable; GpuEverywhereTest runs on any machine.
if(TARGET kvault_cuda)
  add_executable(gpu_copy_test gpu_copy_test.cc)
  target_link_libraries(gpu_copy_test PRIVATE kvault_cuda GTest::gtest_main)
  gtest_discover_tests(gpu_copy_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()

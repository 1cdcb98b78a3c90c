# Tests of the tokenizers against fixtures made by the reference implementations
# (scripts/make_tokenizer_fixtures.py; included from tests/CMakeLists.txt).
if(TARGET kvault_tokenizer)
  add_executable(tokenizer_test tokenizer_test.cc)
  target_link_libraries(tokenizer_test PRIVATE kvault_tokenizer GTest::gtest_main)
  target_compile_definitions(tokenizer_test PRIVATE
    KVAULT_TOKENIZER_FIXTURES="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/tokenizers")
  gtest_discover_tests(tokenizer_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()

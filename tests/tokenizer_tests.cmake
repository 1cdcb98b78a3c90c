# Tests of the tokenizers against fixtures made by the reference implementations
# (scripts/make_tokenizer_fixtures.py; included from tests/CMakeLists.txt).
if(TARGET kvault_tokenizer)
  add_executable(tokenizer_test tokenizer_test.cc)
  target_link_libraries(tokenizer_test PRIVATE kvault_tokenizer GTest::gtest_main)
  target_compile_definitions(tokenizer_test PRIVATE
    KVAULT_TOKENIZER_FIXTURES="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/tokenizers")
  gtest_discover_tests(tokenizer_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()

# GGUF tokenizers and chat templates (tokenizer/gguf_tokenizer.h): hand-built vocabularies, GGUF
# files built in memory (gguf_writer.h), and the SmolLM2 GGUF (smollm2_locator.h: skipped
# without it, failed under CI) with llama.cpp's recorded ids when fixtures/llamacpp has them.
if(TARGET kvault_tokenizer AND TARGET kvault_gguf)
  add_executable(gguf_tokenizer_test gguf_tokenizer_test.cc)
  target_include_directories(gguf_tokenizer_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(gguf_tokenizer_test PRIVATE kvault_tokenizer kvault_gguf GTest::gtest_main)
  target_compile_definitions(gguf_tokenizer_test PRIVATE
    KVAULT_LLAMACPP_FIXTURES="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/llamacpp")
  gtest_discover_tests(gguf_tokenizer_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()
# Tests of the chat templates against fixtures rendered by jinja2 (included from
# tests/CMakeLists.txt; regenerate the fixtures with scripts/make_chat_fixtures.py).
if(TARGET kvault_chat)
  add_executable(chat_template_test chat_template_test.cc)
  target_link_libraries(chat_template_test PRIVATE kvault_chat nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(chat_template_test PRIVATE
    KVAULT_CHAT_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/chat")
  gtest_discover_tests(chat_template_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()

# The OpenAI wire format and the prompt's tokens (kvault_openai_api, no LibTorch); included from
# tests/CMakeLists.txt.
if(TARGET kvault_openai_api)
  # The request parser: fields refused unless neutral, unknown fields, types and ranges.
  add_executable(openai_api_test openai_api_test.cc)
  target_link_libraries(openai_api_test PRIVATE kvault_openai_api nlohmann_json::nlohmann_json GTest::gtest_main)
  gtest_discover_tests(openai_api_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

  # The prompt's tokens: message content as plain text, and equal to Encode(Render(...)) when it
  # spells no special token, on the tokenizer fixtures and the SmolLM2 GGUF (smollm2_locator.h).
  if(TARGET kvault_gguf)
    add_executable(openai_prompt_test openai_api_prompt_test.cc)
    target_include_directories(openai_prompt_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(openai_prompt_test PRIVATE kvault_openai_api kvault_tokenizer kvault_gguf
      nlohmann_json::nlohmann_json GTest::gtest_main)
    target_compile_definitions(openai_prompt_test PRIVATE
      KVAULT_TOKENIZER_FIXTURES="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/tokenizers"
      KVAULT_CHAT_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/chat")
    gtest_discover_tests(openai_prompt_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
  endif()

  # The request parser's fuzz target (FuzzOne, openai_api_fuzz.h), run by a test with a fixed
  # seed, a seed corpus and a byte/JSON mutator, bounded to ~20 s (KVAULT_FUZZ_SECONDS and
  # KVAULT_FUZZ_ITERATIONS change the bounds).
  add_library(kvault_openai_api_fuzz STATIC openai_api_fuzz.cc)
  target_include_directories(kvault_openai_api_fuzz PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(kvault_openai_api_fuzz PUBLIC kvault_openai_api PRIVATE kvault_tokenizer nlohmann_json::nlohmann_json)
  add_executable(openai_api_fuzz_test openai_api_fuzz_test.cc)
  target_link_libraries(openai_api_fuzz_test PRIVATE kvault_openai_api_fuzz nlohmann_json::nlohmann_json GTest::gtest_main)
  gtest_discover_tests(openai_api_fuzz_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

  # libFuzzer entry (clang only): cmake -DKVAULT_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ (add
  # -DCMAKE_CXX_FLAGS=-fsanitize=address for ASan), then ./tests/openai_api_fuzzer [corpus dir].
  # The parser, prompt and tokenizer libraries are then built with -fsanitize=fuzzer-no-link.
  if(KVAULT_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    target_compile_options(kvault_openai_api_fuzz PRIVATE -fsanitize=fuzzer-no-link)
    add_executable(openai_api_fuzzer openai_api_fuzzer.cc)
    target_compile_options(openai_api_fuzzer PRIVATE -fsanitize=fuzzer)
    target_link_options(openai_api_fuzzer PRIVATE -fsanitize=fuzzer)
    target_link_libraries(openai_api_fuzzer PRIVATE kvault_openai_api_fuzz)
  endif()
endif()

# Several models per `kvault serve` (engine ON only).
include(${CMAKE_CURRENT_LIST_DIR}/serve_models_tests.cmake)

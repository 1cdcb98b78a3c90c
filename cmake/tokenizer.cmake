# The tokenizer room (src/tokenizer, no LibTorch), included from the top CMakeLists.txt.
# Chat templates of the supported model families:
add_library(kvault_chat STATIC src/tokenizer/chat_template.cc)
target_include_directories(kvault_chat PUBLIC include src)
target_link_libraries(kvault_chat PUBLIC kvault_store PRIVATE nlohmann_json::nlohmann_json)

# Tokenizers for Hugging Face model directories (no LibTorch): tokenizer.json byte-level and
# SentencePiece-style BPE, tokenizer.model (SentencePiece BPE); and for GGUF files (their
# tokenizer.ggml.* metadata and chat template, read through kvault_gguf). Included from the top
# CMakeLists.txt after cmake/gguf.cmake. PCRE2 runs the
# pre-tokenizer regexes (\p{L}, \p{N} with UTF + UCP); ICU (libicu-dev, icu-uc) normalizes to NFC.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(ICU_UC REQUIRED IMPORTED_TARGET icu-uc)

add_library(kvault_tokenizer STATIC
  src/tokenizer/tokenizer.cc
  src/tokenizer/tokenizer_config.cc
  src/tokenizer/utf8.cc
  src/tokenizer/unicode_nfc.cc
  src/tokenizer/special_token_matcher.cc
  src/tokenizer/bpe_merger.cc
  src/tokenizer/regex_splitter.cc
  src/tokenizer/hf_pipeline.cc
  src/tokenizer/hf_bpe_tokenizer.cc
  src/tokenizer/sentencepiece_model.cc
  src/tokenizer/gguf_tokenizer.cc
  src/tokenizer/byte_tokenizer.cc
)
target_include_directories(kvault_tokenizer PUBLIC include src)
target_link_libraries(kvault_tokenizer PUBLIC nlohmann_json::nlohmann_json kvault_gguf kvault_chat
  PRIVATE PkgConfig::PCRE2 PkgConfig::ICU_UC)

# -DKVAULT_FUZZ=ON under clang: coverage for the libFuzzer targets that parse prompts
# (tests/openai_api_tests.cmake).
if(KVAULT_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  target_compile_options(kvault_chat PRIVATE -fsanitize=fuzzer-no-link)
  target_compile_options(kvault_tokenizer PRIVATE -fsanitize=fuzzer-no-link)
endif()

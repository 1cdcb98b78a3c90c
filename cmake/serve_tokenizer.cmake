# Tokenizers for Hugging Face model directories (no LibTorch): tokenizer.json byte-level and
# SentencePiece-style BPE, tokenizer.model (SentencePiece BPE); and for GGUF files (their
# tokenizer.ggml.* metadata and chat template, read through kvault_gguf). Included from the top
# CMakeLists.txt after cmake/gguf.cmake and cmake/serve_chat.cmake. PCRE2 runs the
# pre-tokenizer regexes (\p{L}, \p{N} with UTF + UCP).
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

add_library(kvault_tokenizer STATIC
  src/serve/tokenizer.cc
  src/serve/tokenizer_config.cc
  src/serve/utf8.cc
  src/serve/unicode_nfc.cc
  src/serve/special_token_matcher.cc
  src/serve/bpe_merger.cc
  src/serve/regex_splitter.cc
  src/serve/hf_pipeline.cc
  src/serve/hf_bpe_tokenizer.cc
  src/serve/sentencepiece_model.cc
  src/serve/gguf_tokenizer.cc
)
target_include_directories(kvault_tokenizer PUBLIC include src)
target_link_libraries(kvault_tokenizer PUBLIC nlohmann_json::nlohmann_json kvault_gguf kvault_chat
  PRIVATE PkgConfig::PCRE2)

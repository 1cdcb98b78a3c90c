// libFuzzer entry for the OpenAI request parser (built with -DKVAULT_FUZZ=ON under clang):
//   ./tests/openai_api_fuzzer -max_total_time=600 CORPUS_DIR
#include <cstddef>
#include <cstdint>

#include "openai_api_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvault::openai::fuzz::FuzzOne(data, size);
  return 0;
}

// libFuzzer entry of the kvaultd protocol fuzz target (built with -DKVAULT_FUZZ=ON under
// clang). Seed it with frames from SeedCorpus(): `daemon_protocol_fuzzer -seed_corpus=1 DIR`
// writes them to DIR first when DIR is empty.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "daemon_protocol_fuzz.h"

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Writes the seed corpus into the corpus directory named last on the command line, when
  // -seed_corpus=1 is given and that directory is empty.
  bool seed = false;
  for (int i = 1; i < *argc; ++i) seed = seed || std::strcmp((*argv)[i], "-seed_corpus=1") == 0;
  if (!seed || *argc < 2) return 0;
  const std::filesystem::path dir((*argv)[*argc - 1]);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec) || !std::filesystem::is_empty(dir, ec)) return 0;
  int n = 0;
  for (const auto& frame : kvault::daemon_fuzz::SeedCorpus()) {
    std::ofstream(dir / ("seed-" + std::to_string(n++)), std::ios::binary)
        .write(reinterpret_cast<const char*>(frame.data()), static_cast<std::streamsize>(frame.size()));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvault::daemon_fuzz::FuzzOne(data, size);
  return 0;
}

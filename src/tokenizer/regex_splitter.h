// A PCRE2 pattern (UTF + UCP, so \p{L}, \p{N} and \s are Unicode-aware) that splits text
// into its matches and the gaps between them (Hugging Face Split, behavior "Isolated").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvault/status.h"

namespace kvault::tokenizer {

class RegexSplitter {
 public:
  // `where` names the file and field for errors.
  static Result<std::unique_ptr<RegexSplitter>> Compile(const std::string& pattern, const std::string& where);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends to *pieces the non-empty matches of the pattern in `text` and the non-empty gaps
  // between them, in order; their concatenation is `text`. `text` must be valid UTF-8.
  // Thread-safe.
  void Split(std::string_view text, std::vector<std::string>* pieces) const;

 private:
  explicit RegexSplitter(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, owned
};

}  // namespace kvault::tokenizer

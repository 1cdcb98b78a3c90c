// Finds special (verbatim) tokens in text: leftmost match first, the longest at that position.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvault::tokenizer {

class SpecialTokenMatcher {
 public:
  struct Match {
    size_t begin = 0;  // [begin, end) of the text the token consumes (with stripped spaces)
    size_t end = 0;
    uint32_t id = 0;
  };

  // lstrip/rstrip: the match also consumes the whitespace right before/after the token.
  void Add(std::string text, uint32_t id, bool lstrip, bool rstrip);
  bool empty() const { return count_ == 0; }

  // The matches in `text`, in order, not overlapping.
  std::vector<Match> FindAll(std::string_view text) const;

  // Whether a token whose spelling occupies [begin, end) of the text may be taken there.
  using Accept = std::function<bool(size_t begin, size_t end, uint32_t id)>;
  // The same, taking only tokens `accept` allows: at each position the longest allowed token
  // wins; a refused spelling is text (the scan goes on inside it, one byte further).
  std::vector<Match> FindAll(std::string_view text, const Accept& accept) const;

 private:
  struct Entry {
    std::string text;
    uint32_t id;
    bool lstrip;
    bool rstrip;
  };
  // Entries by first byte, longest first within a bucket. Invariant: no entry is empty.
  std::array<std::vector<Entry>, 256> by_first_byte_;
  size_t count_ = 0;
};

}  // namespace kvault::tokenizer

#include "tokenizer/special_token_matcher.h"

#include <algorithm>

namespace kvault::tokenizer {
namespace {

bool IsAsciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

}  // namespace

void SpecialTokenMatcher::Add(std::string text, uint32_t id, bool lstrip, bool rstrip) {
  if (text.empty()) return;
  auto& bucket = by_first_byte_[static_cast<unsigned char>(text[0])];
  for (auto& e : bucket) {
    if (e.text == text) return;  // the first registration wins
  }
  bucket.push_back(Entry{std::move(text), id, lstrip, rstrip});
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  ++count_;
}

std::vector<SpecialTokenMatcher::Match> SpecialTokenMatcher::FindAll(std::string_view text) const {
  return FindAll(text, nullptr);
}

std::vector<SpecialTokenMatcher::Match> SpecialTokenMatcher::FindAll(std::string_view text,
                                                                     const Accept& accept) const {
  std::vector<Match> matches;
  if (count_ == 0) return matches;
  size_t pos = 0;
  size_t floor = 0;  // end of the previous match: lstrip never reaches before it
  while (pos < text.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[pos])];
    const Entry* hit = nullptr;
    for (const auto& e : bucket) {
      if (text.compare(pos, e.text.size(), e.text) == 0 && (!accept || accept(pos, pos + e.text.size(), e.id))) {
        hit = &e;
        break;  // longest first
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    Match m{pos, pos + hit->text.size(), hit->id};
    if (hit->lstrip) {
      while (m.begin > floor && IsAsciiSpace(text[m.begin - 1])) --m.begin;
    }
    if (hit->rstrip) {
      while (m.end < text.size() && IsAsciiSpace(text[m.end])) ++m.end;
    }
    matches.push_back(m);
    pos = floor = m.end;
  }
  return matches;
}

}  // namespace kvault::tokenizer

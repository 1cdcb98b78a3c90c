#include "serve/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "serve/utf8.h"

namespace kvault::serve {
namespace {

struct CombiningClassRange {
  uint32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  uint32_t cp, first, second;  // second == 0: a singleton decomposition
};
struct Composition {
  uint32_t first, second, composite;
};

#include "serve/unicode_nfc_data.inc"

// Hangul syllables decompose and compose algorithmically.
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr uint32_t kSCount = kLCount * kNCount;

uint8_t CombiningClass(uint32_t cp) {
  auto it = std::upper_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), cp,
                             [](uint32_t v, const CombiningClassRange& r) { return v < r.first; });
  if (it == std::begin(kCombiningClasses)) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

void Decompose(uint32_t cp, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                             [](const Decomposition& d, uint32_t v) { return d.cp < v; });
  if (it == std::end(kDecompositions) || it->cp != cp) {
    out->push_back(cp);
    return;
  }
  Decompose(it->first, out);  // depth is bounded by the data (at most 4 levels)
  if (it->second != 0) Decompose(it->second, out);
}

// The primary composite of (first, second), or 0.
uint32_t Compose(uint32_t first, uint32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::pair(first, second),
                             [](const Composition& c, std::pair<uint32_t, uint32_t> v) {
                               return std::pair(c.first, c.second) < v;
                             });
  return it != std::end(kCompositions) && it->first == first && it->second == second ? it->composite : 0;
}

}  // namespace

std::string NfcNormalize(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return std::string(text);  // ASCII is always in NFC
  }
  // 1. Full canonical decomposition.
  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  int32_t cp;
  for (size_t pos = 0; pos < text.size();) {
    pos += DecodeUtf8(text, pos, &cp);
    Decompose(cp < 0 ? 0xFFFD : static_cast<uint32_t>(cp), &cps);
  }
  // 2. Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClass(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClass(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // 3. Canonical composition. Invariant: `starter` indexes the last starter in `out` (or is
  // npos), and last_ccc is the class of the last character after it (-1: none in between).
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  size_t starter = SIZE_MAX;
  int last_ccc = -1;
  for (uint32_t c : cps) {
    const int ccc = CombiningClass(c);
    const bool blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc >= ccc);
    if (starter != SIZE_MAX && !blocked) {
      if (uint32_t composite = Compose(out[starter], c); composite != 0) {
        out[starter] = composite;
        continue;
      }
    }
    if (ccc == 0) {
      starter = out.size();
      last_ccc = -1;
    } else {
      last_ccc = ccc;
    }
    out.push_back(c);
  }
  std::string result;
  result.reserve(text.size());
  for (uint32_t c : out) AppendUtf8(c, &result);
  return result;
}

}  // namespace kvault::serve

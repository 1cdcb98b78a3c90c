#include "tokenizer/hf_pipeline.h"

#include "tokenizer/unicode_nfc.h"
#include "tokenizer/utf8.h"

namespace kvault::tokenizer {
namespace {

using nlohmann::json;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Status Unsupported(const std::string& what) {
  return Status::InvalidArgument("tokenizer.json: " + what + " is unsupported");
}

std::string TypeOf(const json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string StringField(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool BoolField(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// A Replace/Split "pattern": {"String": "..."} or {"Regex": "..."}.
bool PatternString(const json& j, const char* kind, std::string* out) {
  auto it = j.find("pattern");
  if (it == j.end() || !it->is_object()) return false;
  auto p = it->find(kind);
  if (p == it->end() || !p->is_string()) return false;
  *out = p->get<std::string>();
  return true;
}

// What every component (normalizer, pre_tokenizer, decoder) must be: an object, nested in
// Sequences no deeper than 8.
Status CheckComponent(const json& j, const std::string& kind, int depth) {
  if (depth > 8) return Unsupported("a " + kind + " nested this deep");
  if (!j.is_object()) return Status::InvalidArgument("tokenizer.json: a " + kind + " is not an object");
  return Status::OK();
}

// A Sequence component: `add_child` for each element of its array `children_key`, in order,
// stopping at the first error.
template <typename AddChild>
Status AddSequence(const json& j, const char* children_key, const AddChild& add_child) {
  auto it = j.find(children_key);
  if (it == j.end() || !it->is_array()) {
    return Status::InvalidArgument(std::string("tokenizer.json: Sequence without ") + children_key);
  }
  for (const auto& child : *it) KVAULT_RETURN_IF_ERROR(add_child(child));
  return Status::OK();
}

Status AddNormalizer(const json& j, std::vector<NormalizerStep>* steps, int depth) {
  KVAULT_RETURN_IF_ERROR(CheckComponent(j, "normalizer", depth));
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    return AddSequence(j, "normalizers", [&](const json& n) { return AddNormalizer(n, steps, depth + 1); });
  }
  if (type == "NFC") {
    steps->push_back({NormalizerStep::kNfc, "", ""});
    return Status::OK();
  }
  if (type == "Prepend") {
    steps->push_back({NormalizerStep::kPrepend, StringField(j, "prepend"), ""});
    return Status::OK();
  }
  if (type == "Replace") {
    std::string from;
    if (!PatternString(j, "String", &from) || from.empty()) return Unsupported("normalizer Replace with a regex pattern");
    steps->push_back({NormalizerStep::kReplace, from, StringField(j, "content")});
    return Status::OK();
  }
  return Unsupported("normalizer type '" + type + "'");
}

Status AddPreTokenizer(const json& j, std::vector<PreTokenizerStep>* steps, int depth) {
  KVAULT_RETURN_IF_ERROR(CheckComponent(j, "pre_tokenizer", depth));
  if (!steps->empty() && steps->back().kind == PreTokenizerStep::kByteLevel) {
    return Unsupported("a pre_tokenizer after ByteLevel");
  }
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    return AddSequence(j, "pretokenizers", [&](const json& p) { return AddPreTokenizer(p, steps, depth + 1); });
  }
  PreTokenizerStep step{};
  if (type == "Split") {
    std::string pattern;
    if (!PatternString(j, "Regex", &pattern)) return Unsupported("pre_tokenizer Split without a Regex pattern");
    if (StringField(j, "behavior") != "Isolated" || BoolField(j, "invert", false)) {
      return Unsupported("pre_tokenizer Split behavior '" + StringField(j, "behavior") + "' (or invert)");
    }
    auto regex = RegexSplitter::Compile(pattern, "tokenizer.json pre_tokenizer Split");
    if (!regex.ok()) return regex.status();
    step.kind = PreTokenizerStep::kSplit;
    step.regex = std::move(regex.value());
  } else if (type == "Digits") {
    // Digits splits on char::is_numeric (general categories Nd, Nl, No, i.e. \p{N}) with
    // behavior Isolated (individual_digits: every digit its own piece) or Contiguous (a run of
    // digits one piece). Both are a Split, Isolated, on a digit or a run of digits.
    const bool individual = BoolField(j, "individual_digits", false);
    auto regex = RegexSplitter::Compile(individual ? R"(\p{N})" : R"(\p{N}+)", "tokenizer.json pre_tokenizer Digits");
    if (!regex.ok()) return regex.status();
    step.kind = PreTokenizerStep::kSplit;
    step.regex = std::move(regex.value());
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::kByteLevel;
    step.add_prefix_space = BoolField(j, "add_prefix_space", false);
    if (BoolField(j, "use_regex", true)) {
      auto regex = RegexSplitter::Compile(kGpt2Pattern, "GPT-2 pattern");
      if (!regex.ok()) return regex.status();
      step.regex = std::move(regex.value());
    }
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::kMetaspace;
    step.replacement = StringField(j, "replacement");
    if (step.replacement.empty()) return Status::InvalidArgument("tokenizer.json: Metaspace without replacement");
    const std::string scheme = StringField(j, "prepend_scheme");
    if (scheme == "first") {
      step.prepend = PreTokenizerStep::kFirst;
    } else if (scheme == "never") {
      step.prepend = PreTokenizerStep::kNever;
    } else if (scheme == "always" || (scheme.empty() && BoolField(j, "add_prefix_space", true))) {
      step.prepend = PreTokenizerStep::kAlways;
    }
    step.split = BoolField(j, "split", true);
  } else {
    return Unsupported("pre_tokenizer type '" + type + "'");
  }
  steps->push_back(std::move(step));
  return Status::OK();
}

Status AddDecoder(const json& j, DecoderSpec* spec, int depth) {
  KVAULT_RETURN_IF_ERROR(CheckComponent(j, "decoder", depth));
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    return AddSequence(j, "decoders", [&](const json& d) { return AddDecoder(d, spec, depth + 1); });
  }
  if (type == "ByteLevel") {
    spec->byte_level = true;
  } else if (type == "ByteFallback") {
    spec->byte_fallback = true;
  } else if (type == "Fuse") {
    // Concatenation is what Decode does anyway.
  } else if (type == "Replace") {
    std::string from;
    if (!PatternString(j, "String", &from) || StringField(j, "content") != " ") {
      return Unsupported("decoder Replace other than a literal to ' '");
    }
    spec->space_replacement = from;
  } else if (type == "Strip") {
    auto start = j.find("start");
    auto stop = j.find("stop");
    if (StringField(j, "content") != " " || start == j.end() || !start->is_number_unsigned() ||
        start->get<uint64_t>() > 16 || (stop != j.end() && !(stop->is_number_unsigned() && stop->get<uint64_t>() == 0))) {
      return Unsupported("decoder Strip other than leading spaces");
    }
    spec->strip_leading_spaces = static_cast<int>(start->get<uint64_t>());
  } else if (type == "Metaspace") {
    spec->space_replacement = StringField(j, "replacement");
    const std::string scheme = StringField(j, "prepend_scheme");
    const bool prepends = scheme.empty() ? BoolField(j, "add_prefix_space", true) : scheme != "never";
    if (prepends) spec->strip_leading_spaces = 1;
  } else {
    return Unsupported("decoder type '" + type + "'");
  }
  return Status::OK();
}

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  if (s->find(from) == std::string::npos) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s->find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(*s, pos, hit - pos);
    out.append(to);
  }
  out.append(*s, pos);
  *s = std::move(out);
}

std::string ToByteLevelChars(std::string_view piece) {
  const auto& table = ByteLevelCharOfByte();
  std::string out;
  out.reserve(piece.size() * 2);
  for (char c : piece) out += table[static_cast<unsigned char>(c)];
  return out;
}

// Metaspace's split (MergedWithNext): a new piece starts at every replacement.
void SplitBeforeEach(const std::string& piece, const std::string& mark, std::vector<std::string>* out) {
  size_t start = 0;
  for (size_t hit = piece.find(mark, 1); hit != std::string::npos; hit = piece.find(mark, hit + mark.size())) {
    if (hit > start) out->push_back(piece.substr(start, hit - start));
    start = hit;
  }
  if (start < piece.size()) out->push_back(piece.substr(start));
}

}  // namespace

Result<std::vector<NormalizerStep>> ParseNormalizer(const json& j) {
  std::vector<NormalizerStep> steps;
  if (!j.is_null()) KVAULT_RETURN_IF_ERROR(AddNormalizer(j, &steps, 0));
  return steps;
}

Result<std::vector<PreTokenizerStep>> ParsePreTokenizer(const json& j) {
  std::vector<PreTokenizerStep> steps;
  if (!j.is_null()) KVAULT_RETURN_IF_ERROR(AddPreTokenizer(j, &steps, 0));
  return steps;
}

Result<DecoderSpec> ParseDecoder(const json& j) {
  if (j.is_null()) return Unsupported("a missing decoder (tokens joined by spaces)");
  DecoderSpec spec;
  KVAULT_RETURN_IF_ERROR(AddDecoder(j, &spec, 0));
  return spec;
}

std::string ApplyNormalizer(const std::vector<NormalizerStep>& steps, std::string_view text) {
  std::string s(text);
  for (const auto& step : steps) {
    switch (step.kind) {
      case NormalizerStep::kNfc:
        s = NfcNormalize(s);
        break;
      case NormalizerStep::kPrepend:
        if (!s.empty()) s.insert(0, step.text);
        break;
      case NormalizerStep::kReplace:
        ReplaceAll(&s, step.text, step.replacement);
        break;
    }
  }
  return s;
}

std::vector<std::string> ApplyPreTokenizer(const std::vector<PreTokenizerStep>& steps, std::string text,
                                           bool at_text_start) {
  std::vector<std::string> pieces;
  pieces.push_back(std::move(text));
  for (const auto& step : steps) {
    std::vector<std::string> next;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string& piece = pieces[i];
      switch (step.kind) {
        case PreTokenizerStep::kSplit:
          step.regex->Split(piece, &next);
          break;
        case PreTokenizerStep::kByteLevel: {
          if (step.add_prefix_space && !piece.starts_with(' ')) piece.insert(0, " ");
          std::vector<std::string> words;
          if (step.regex) {
            step.regex->Split(piece, &words);
          } else {
            words.push_back(std::move(piece));
          }
          for (const auto& w : words) next.push_back(ToByteLevelChars(w));
          break;
        }
        case PreTokenizerStep::kMetaspace: {
          ReplaceAll(&piece, " ", step.replacement);
          const bool prepend = step.prepend == PreTokenizerStep::kAlways ||
                               (step.prepend == PreTokenizerStep::kFirst && at_text_start && i == 0);
          if (prepend && !piece.starts_with(step.replacement)) piece.insert(0, step.replacement);
          if (step.split) {
            SplitBeforeEach(piece, step.replacement, &next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
        }
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

const std::array<std::string, 256>& ByteLevelCharOfByte() {
  // Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes
  // take the code points from U+0100 up, in byte order.
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      AppendUtf8(printable ? b : next_extra++, &t[b]);
    }
    return t;
  }();
  return table;
}

int ByteLevelByteOfChar(int32_t cp) {
  static const std::array<int16_t, 512> inverse = [] {
    std::array<int16_t, 512> inv;
    inv.fill(-1);
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      inv[printable ? b : next_extra++] = static_cast<int16_t>(b);
    }
    return inv;
  }();
  return cp >= 0 && cp < 512 ? inverse[cp] : -1;
}

}  // namespace kvault::tokenizer

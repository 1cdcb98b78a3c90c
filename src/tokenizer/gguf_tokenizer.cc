// Tokenizers from GGUF metadata: byte-level BPE ("gpt2") and SentencePiece BPE ("llama"),
// following llama.cpp's tokenizer (see gguf_tokenizer.h), and the chat template.
#include "tokenizer/gguf_tokenizer.h"

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <unordered_map>

#include "gguf/gguf_file.h"
#include "tokenizer/bpe_merger.h"
#include "tokenizer/hf_pipeline.h"
#include "tokenizer/regex_splitter.h"
#include "tokenizer/token_spelling.h"
#include "tokenizer/utf8.h"

namespace kvault::tokenizer {
namespace {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type; 0 is "undefined").
enum TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

constexpr uint32_t kNoToken = std::numeric_limits<uint32_t>::max();

// The pre-tokenizer regexes of llama.cpp's BPE pre types, run by PCRE2 (UTF + UCP). The GPT-2
// pattern ends in "\s+" as Hugging Face's does; llama.cpp's spelling of it lacks that branch,
// but its hand-written matcher for the pattern has it, and splits the same way.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// How one family of pre types splits text: `splits` run first, in order; `byte_level` is the
// pattern of the last step, whose pieces are mapped to byte-level characters.
struct PreTokenizerSpec {
  std::vector<const char*> names;
  std::vector<const char*> splits;
  const char* byte_level;
  bool ignore_merges = false;  // a piece that is a token is that token, merges or not
  bool add_bos = false;        // llama.cpp's add_bos default for these names
};

const std::vector<PreTokenizerSpec>& PreTokenizerSpecs() {
  static const std::vector<PreTokenizerSpec> specs = {
      {{"gpt2", "gpt-2"}, {}, kGpt2Pattern},
      {{"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva-7b"}, {R"(\p{N})"}, kGpt2Pattern},
      {{"llama3", "llama-bpe", "llama-v3"}, {}, kLlama3Pattern, /*ignore_merges=*/true, /*add_bos=*/true},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"}, {}, kQwen2Pattern},
      // llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT (also what it uses when the key is absent).
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Pattern, R"(\p{N}+)"}, "[0-9][0-9][0-9]"},
  };
  return specs;
}

const PreTokenizerSpec* FindPreTokenizer(std::string_view name) {
  for (const auto& spec : PreTokenizerSpecs()) {
    for (const char* n : spec.names) {
      if (name == n) return &spec;
    }
  }
  return nullptr;
}

Status Invalid(std::string_view key, const std::string& what) {
  return Status::InvalidArgument("GGUF " + std::string(key) + ": " + what);
}

std::string Quoted(std::string_view s) {
  constexpr size_t kMax = 40;
  return "'" + std::string(s.substr(0, kMax)) + (s.size() > kMax ? "...'" : "'");
}

// An unordered_map keyed by std::string that is searched with a string_view (no copy).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIndex = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;

// What both models share: the vocabulary, its special tokens and the special ids.
class GgufTokenizer : public Tokenizer {
 protected:
  Status InitVocabulary(const GgufVocab& vocab);

  std::optional<uint32_t> Find(std::string_view text) const {
    auto it = index_.find(text);
    return it == index_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
  int32_t type_of(uint32_t id) const { return id < types_.size() ? types_[id] : kNormal; }
  // Control, unknown and user-defined tokens: matched verbatim, written as spelled.
  bool verbatim(uint32_t id) const {
    const int32_t t = type_of(id);
    return t == kControl || t == kUnknown || t == kUserDefined;
  }

  TokenIndex index_;            // every non-empty token text -> its id (texts are unique)
  std::vector<int32_t> types_;  // id -> token type (all kNormal when the file has none)
};

Status GgufTokenizer::InitVocabulary(const GgufVocab& vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) return Invalid("tokenizer.ggml.tokens", "the vocabulary is empty");
  if (n > (size_t{1} << 26)) return Invalid("tokenizer.ggml.tokens", std::to_string(n) + " tokens is more than 2^26");
  if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
    return Invalid("tokenizer.ggml.token_type", std::to_string(vocab.token_types.size()) + " types for " +
                                                    std::to_string(n) + " tokens");
  }
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return Invalid("tokenizer.ggml.scores", std::to_string(vocab.scores.size()) + " scores for " +
                                                std::to_string(n) + " tokens");
  }
  types_.assign(n, kNormal);
  for (size_t id = 0; id < vocab.token_types.size(); ++id) {
    const int32_t t = vocab.token_types[id];
    if (t < kUndefined || t > kByte) {
      return Invalid("tokenizer.ggml.token_type",
                     "token " + std::to_string(id) + " has unknown type " + std::to_string(t));
    }
    types_[id] = t == kUndefined ? kNormal : t;
  }
  index_.reserve(n);
  for (uint32_t id = 0; id < n; ++id) {
    const std::string& text = vocab.tokens[id];
    const bool special = types_[id] == kControl || types_[id] == kUnknown;
    SetToken(id, text, special);
    if (text.empty()) continue;  // llama.cpp renames these; they can never match
    auto [it, inserted] = index_.emplace(text, id);
    if (!inserted) {
      return Invalid("tokenizer.ggml.tokens", "token " + std::to_string(id) + " " + Quoted(text) +
                                                  " repeats token " + std::to_string(it->second));
    }
    if (verbatim(id)) AddVerbatimToken(id, false, false);
  }
  struct Special {
    const char* key;
    const std::optional<uint32_t>& id;
  };
  for (const Special& s : {Special{"tokenizer.ggml.bos_token_id", vocab.bos_id},
                           Special{"tokenizer.ggml.eos_token_id", vocab.eos_id},
                           Special{"tokenizer.ggml.eot_token_id", vocab.eot_id},
                           Special{"tokenizer.ggml.unknown_token_id", vocab.unk_id},
                           Special{"tokenizer.ggml.padding_token_id", vocab.pad_id}}) {
    if (s.id && *s.id >= n) {
      return Invalid(s.key, "id " + std::to_string(*s.id) + " is outside the vocabulary of " + std::to_string(n));
    }
  }
  set_bos_id(vocab.bos_id);
  set_eos_id(vocab.eos_id);
  return Status::OK();
}

// ---- model "gpt2": byte-level BPE ----

class GgufBpeTokenizer final : public GgufTokenizer {
 public:
  Status Init(const GgufVocab& vocab);
  void AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const override;

 protected:
  void EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const override;

 private:
  void EncodeWord(std::string_view word, std::vector<uint32_t>* out) const;

  struct Merge {
    uint32_t rank;
    uint32_t merged_id;
  };
  std::vector<PreTokenizerStep> pre_;         // splits, then one kByteLevel step
  std::unordered_map<uint64_t, Merge> merges_;  // BpePairKey(left, right) -> merge; the first rank wins
  bool ignore_merges_ = false;
};

Status GgufBpeTokenizer::Init(const GgufVocab& vocab) {
  KVAULT_RETURN_IF_ERROR(InitVocabulary(vocab));
  const PreTokenizerSpec* spec = FindPreTokenizer(vocab.pre);
  if (spec == nullptr) {
    std::string known;
    for (const std::string& name : KnownGgufPreTokenizers()) known += (known.empty() ? "" : ", ") + name;
    return Invalid("tokenizer.ggml.pre",
                   "pre-tokenizer " + Quoted(vocab.pre) + " is unsupported (known: " + known + ")");
  }
  ignore_merges_ = spec->ignore_merges;
  for (const char* pattern : spec->splits) {
    auto regex = RegexSplitter::Compile(pattern, "GGUF tokenizer.ggml.pre '" + vocab.pre + "'");
    if (!regex.ok()) return regex.status();
    PreTokenizerStep step{};
    step.kind = PreTokenizerStep::kSplit;
    step.regex = std::move(regex.value());
    pre_.push_back(std::move(step));
  }
  auto regex = RegexSplitter::Compile(spec->byte_level, "GGUF tokenizer.ggml.pre '" + vocab.pre + "'");
  if (!regex.ok()) return regex.status();
  PreTokenizerStep byte_level{};
  byte_level.kind = PreTokenizerStep::kByteLevel;
  byte_level.regex = std::move(regex.value());
  pre_.push_back(std::move(byte_level));

  if (vocab.merges.empty()) return Invalid("tokenizer.ggml.merges", "a gpt2 (BPE) vocabulary needs merges");
  merges_.reserve(vocab.merges.size());
  for (uint32_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& m = vocab.merges[rank];
    const size_t space = m.find(' ', 1);
    const std::string where = "merge " + std::to_string(rank) + " " + Quoted(m);
    if (space == std::string::npos) return Invalid("tokenizer.ggml.merges", where + " has no space");
    const std::string left = m.substr(0, space), right = m.substr(space + 1), both = left + right;
    const auto l = Find(left), r = Find(right), lr = Find(both);
    if (!l || !r || !lr) {
      return Invalid("tokenizer.ggml.merges",
                     where + " names " + Quoted(!l ? left : !r ? right : both) + ", which is not a token");
    }
    merges_.emplace(BpePairKey(*l, *r), Merge{rank, *lr});
  }
  return Status::OK();
}

void GgufBpeTokenizer::EncodeWord(std::string_view word, std::vector<uint32_t>* out) const {
  if (ignore_merges_) {
    if (auto id = Find(word)) {
      out->push_back(*id);
      return;
    }
  }
  // One symbol per character (a byte-level character); kNoToken for one the vocabulary lacks,
  // which never merges.
  std::vector<BpeSymbol> symbols;
  int32_t cp;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = DecodeUtf8(word, pos, &cp);
    const auto id = Find(word.substr(pos, len));
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + len), id ? *id : kNoToken});
    pos += len;
  }
  auto lookup = [this](const BpeSymbol& l, const BpeSymbol& r, double* priority, uint32_t* merged) {
    if (l.id == kNoToken || r.id == kNoToken) return false;
    auto it = merges_.find(BpePairKey(l.id, r.id));
    if (it == merges_.end()) return false;
    *priority = -static_cast<double>(it->second.rank);
    *merged = it->second.merged_id;
    return true;
  };
  for (const BpeSymbol& s : MergeBpe(std::move(symbols), lookup)) {
    if (s.id != kNoToken) {
      out->push_back(s.id);
      continue;
    }
    // llama.cpp's fallback: the tokens of the character's single bytes, where they exist.
    for (uint32_t i = s.begin; i < s.end; ++i) {
      if (auto id = Find(word.substr(i, 1))) out->push_back(*id);
    }
  }
}

void GgufBpeTokenizer::EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const {
  for (const std::string& word : ApplyPreTokenizer(pre_, std::string(text), at_text_start)) {
    if (!word.empty()) EncodeWord(word, out);
  }
}

void GgufBpeTokenizer::AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const {
  if (id >= vocab_size()) return;
  const std::string& text = token(id);
  if (verbatim(id)) {
    out->append(text);
    return;
  }
  int32_t cp;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = DecodeUtf8(text, pos, &cp);
    const int b = ByteLevelByteOfChar(cp);
    if (b >= 0) {
      out->push_back(static_cast<char>(b));
    } else {
      out->append(text, pos, len);  // not a byte-level character: written as it is
    }
    pos += len;
  }
}

// ---- model "llama": SentencePiece BPE ----

class GgufSpmTokenizer final : public GgufTokenizer {
 public:
  Status Init(const GgufVocab& vocab);
  void AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const override;

 protected:
  void EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const override;

 private:
  std::vector<float> scores_;                         // id -> merge priority
  std::array<std::optional<uint32_t>, 256> byte_token_{};  // byte -> id of "<0xXX>"
  std::vector<int16_t> byte_of_token_;                 // id -> byte of a byte token, else -1
  std::optional<uint32_t> unk_id_;
  bool add_space_prefix_ = true;
};

Status GgufSpmTokenizer::Init(const GgufVocab& vocab) {
  KVAULT_RETURN_IF_ERROR(InitVocabulary(vocab));
  if (vocab.scores.empty()) return Invalid("tokenizer.ggml.scores", "a llama (SentencePiece) vocabulary needs scores");
  for (size_t id = 0; id < vocab.scores.size(); ++id) {
    if (std::isnan(vocab.scores[id])) {  // would break the merge queue's ordering
      return Invalid("tokenizer.ggml.scores", "the score of token " + std::to_string(id) + " is NaN");
    }
  }
  scores_ = vocab.scores;
  byte_of_token_.assign(vocab.tokens.size(), -1);
  for (uint32_t id = 0; id < vocab.tokens.size(); ++id) {
    if (type_of(id) != kByte) continue;
    const int b = ByteTokenValue(vocab.tokens[id]);
    if (b < 0) {
      return Invalid("tokenizer.ggml.tokens",
                     "byte token " + std::to_string(id) + " " + Quoted(vocab.tokens[id]) + " is not <0xXX>");
    }
    if (!byte_token_[b]) byte_token_[b] = id;
    byte_of_token_[id] = static_cast<int16_t>(b);
  }
  unk_id_ = vocab.unk_id;
  add_space_prefix_ = vocab.add_space_prefix;
  return Status::OK();
}

void GgufSpmTokenizer::EncodeSegment(std::string_view text, bool /*at_text_start*/, std::vector<uint32_t>* out) const {
  // Every segment follows the start of the text or a special token: llama.cpp prefixes both.
  std::string normalized;
  normalized.reserve(text.size() + 8);
  if (add_space_prefix_) normalized += kSpaceMark;
  for (char c : text) {
    if (c == ' ') {
      normalized += kSpaceMark;
    } else {
      normalized.push_back(c);
    }
  }
  const std::string_view all(normalized);
  std::vector<BpeSymbol> symbols;
  int32_t cp;
  for (size_t pos = 0; pos < all.size();) {
    const size_t len = DecodeUtf8(all, pos, &cp);
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + len), 0});
    pos += len;
  }
  // Any token may be the result of a merge (as in llama.cpp); its score is the priority.
  auto lookup = [&](const BpeSymbol& l, const BpeSymbol& r, double* priority, uint32_t* merged) {
    auto id = Find(all.substr(l.begin, r.end - l.begin));
    if (!id) return false;
    *priority = scores_[*id];
    *merged = *id;
    return true;
  };
  for (const BpeSymbol& s : MergeBpe(std::move(symbols), lookup)) {
    const std::string_view piece = all.substr(s.begin, s.end - s.begin);
    if (auto id = Find(piece)) {
      out->push_back(*id);
      continue;
    }
    for (size_t i = 0; i < piece.size(); ++i) {  // byte fallback, else the byte as a token, else unknown
      const auto b = static_cast<unsigned char>(piece[i]);
      if (byte_token_[b]) {
        out->push_back(*byte_token_[b]);
      } else if (auto id = Find(piece.substr(i, 1))) {
        out->push_back(*id);
      } else if (unk_id_) {
        out->push_back(*unk_id_);
      }
    }
  }
}

void GgufSpmTokenizer::AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const {
  if (id >= vocab_size()) return;
  if (byte_of_token_[id] >= 0) {
    out->push_back(static_cast<char>(byte_of_token_[id]));
    return;
  }
  std::string_view piece = token(id);
  if (verbatim(id)) {
    out->append(piece);
    return;
  }
  if (at_output_start && add_space_prefix_ && piece.starts_with(kSpaceMark)) piece.remove_prefix(kSpaceMark.size());
  AppendWithSpaces(piece, out);
}

// ---- reading the metadata ----

// A Status of the file's getters, with the file's path in front when it is not there yet.
Status WithPath(const gguf::GgufFile& file, const Status& s) {
  if (s.message().find(file.path()) != std::string::npos) return s;
  return Status(s.code(), file.path() + ": " + s.message());
}

template <typename T>
Result<std::optional<T>> Optional(const gguf::GgufFile& file, Result<T> r) {
  if (r.ok()) return std::optional<T>(std::move(r).value());
  if (r.status().code() == Code::kNotFound) return std::optional<T>();
  return WithPath(file, r.status());
}

Result<std::optional<uint32_t>> OptionalId(const gguf::GgufFile& file, std::string_view key) {
  auto v = Optional(file, file.GetUint(key));
  if (!v.ok()) return v.status();
  if (!v.value()) return std::optional<uint32_t>();
  if (*v.value() > std::numeric_limits<uint32_t>::max()) {
    return WithPath(file, Invalid(key, std::to_string(*v.value()) + " is not a token id"));
  }
  return std::optional<uint32_t>(static_cast<uint32_t>(*v.value()));
}

}  // namespace

const std::vector<std::string>& KnownGgufPreTokenizers() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (const auto& spec : PreTokenizerSpecs()) all.insert(all.end(), spec.names.begin(), spec.names.end());
    return all;
  }();
  return names;
}

Result<GgufVocab> ReadGgufVocab(const gguf::GgufFile& file) {
  GgufVocab v;
  auto model = file.GetString("tokenizer.ggml.model");
  if (!model.ok()) return WithPath(file, model.status());
  v.model = std::move(model).value();
  auto pre = Optional(file, file.GetString("tokenizer.ggml.pre"));
  if (!pre.ok()) return pre.status();
  v.pre = pre.value().value_or("default");
  auto tokens = file.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return WithPath(file, tokens.status());
  v.tokens = std::move(tokens).value();

  auto scores = Optional(file, file.GetFloatArray("tokenizer.ggml.scores"));
  if (!scores.ok()) return scores.status();
  if (scores.value()) v.scores.assign(scores.value()->begin(), scores.value()->end());
  auto types = Optional(file, file.GetIntArray("tokenizer.ggml.token_type"));
  if (!types.ok()) return types.status();
  if (types.value()) {
    for (int64_t t : *types.value()) {
      // A value beyond int32 stays invalid (LoadGgufTokenizer names it).
      const bool fits = t >= std::numeric_limits<int32_t>::min() && t <= std::numeric_limits<int32_t>::max();
      v.token_types.push_back(fits ? static_cast<int32_t>(t) : std::numeric_limits<int32_t>::min());
    }
  }
  auto merges = Optional(file, file.GetStringArray("tokenizer.ggml.merges"));
  if (!merges.ok()) return merges.status();
  if (merges.value()) v.merges = std::move(*merges.value());

  struct IdKey {
    const char* key;
    std::optional<uint32_t>* id;
  };
  for (const IdKey& k : {IdKey{"tokenizer.ggml.bos_token_id", &v.bos_id},
                         IdKey{"tokenizer.ggml.eos_token_id", &v.eos_id},
                         IdKey{"tokenizer.ggml.eot_token_id", &v.eot_id},
                         IdKey{"tokenizer.ggml.unknown_token_id", &v.unk_id},
                         IdKey{"tokenizer.ggml.padding_token_id", &v.pad_id}}) {
    auto id = OptionalId(file, k.key);
    if (!id.ok()) return id.status();
    *k.id = id.value();
  }
  // llama.cpp's defaults per model, then the file's flags.
  if (v.model == "llama") {
    auto fallback = [&](std::optional<uint32_t>* id, uint32_t value) {
      if (!*id && value < v.tokens.size()) *id = value;
    };
    fallback(&v.bos_id, 1);
    fallback(&v.eos_id, 2);
    fallback(&v.unk_id, 0);
    v.add_bos = true;
    v.add_space_prefix = true;
  } else {
    const PreTokenizerSpec* spec = FindPreTokenizer(v.pre);
    v.add_bos = spec != nullptr && spec->add_bos;
    v.add_space_prefix = false;
  }
  v.add_eos = false;
  for (auto [key, flag] : {std::pair{"tokenizer.ggml.add_bos_token", &v.add_bos},
                           std::pair{"tokenizer.ggml.add_eos_token", &v.add_eos},
                           std::pair{"tokenizer.ggml.add_space_prefix", &v.add_space_prefix}}) {
    auto b = Optional(file, file.GetBool(key));
    if (!b.ok()) return b.status();
    if (b.value()) *flag = *b.value();
  }
  return v;
}

Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufVocab& vocab) {
  if (vocab.model == "gpt2") {
    auto t = std::make_unique<GgufBpeTokenizer>();
    KVAULT_RETURN_IF_ERROR(t->Init(vocab));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }
  if (vocab.model == "llama") {
    auto t = std::make_unique<GgufSpmTokenizer>();
    KVAULT_RETURN_IF_ERROR(t->Init(vocab));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }
  return Invalid("tokenizer.ggml.model",
                 "tokenizer model " + Quoted(vocab.model) +
                     " is unsupported (known: gpt2 = byte-level BPE, llama = SentencePiece BPE)");
}

Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const gguf::GgufFile& file) {
  auto vocab = ReadGgufVocab(file);
  if (!vocab.ok()) return vocab.status();
  auto t = LoadGgufTokenizer(vocab.value());
  if (!t.ok()) return WithPath(file, t.status());
  return t;
}

Result<ChatTemplate> LoadGgufChatTemplate(const gguf::GgufFile& file) {
  auto text = file.GetString("tokenizer.chat_template");
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) return Status::NotFound(file.path() + ": no tokenizer.chat_template");
    return WithPath(file, text.status());
  }
  auto vocab = ReadGgufVocab(file);
  if (!vocab.ok()) return vocab.status();
  auto token_text = [&](const std::optional<uint32_t>& id) {
    return id && *id < vocab->tokens.size() ? vocab->tokens[*id] : std::string();
  };
  auto t = ChatTemplate::FromTemplateText(text.value(), token_text(vocab->bos_id), token_text(vocab->eos_id));
  if (!t.ok()) return WithPath(file, t.status());
  return t;
}

std::vector<uint32_t> EncodeLikeLlamaCpp(const Tokenizer& tokenizer, const GgufVocab& vocab, std::string_view text) {
  std::vector<uint32_t> ids = tokenizer.Encode(text, vocab.add_bos);
  if (vocab.add_eos && tokenizer.eos_id()) ids.push_back(*tokenizer.eos_id());
  return ids;
}

}  // namespace kvault::tokenizer

// tokenizer.json with model type BPE: added tokens, the normalizer/pre-tokenizer pipeline of
// hf_pipeline.h, merges by rank, byte fallback and unknown tokens, and the decoder.
#include <unordered_map>

#include "tokenizer/bpe_merger.h"
#include "tokenizer/hf_pipeline.h"
#include "tokenizer/token_spelling.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/utf8.h"

namespace kvault::tokenizer {
namespace {

using nlohmann::json;

Status Invalid(const std::string& what) { return Status::InvalidArgument("tokenizer.json: " + what); }

class HfBpeTokenizer final : public Tokenizer {
 public:
  Status Init(const json& root, const TokenizerConfig& config);
  void AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const override;

 protected:
  void EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const override;

 private:
  Status InitModel(const json& model);
  Status InitAddedTokens(const json& added, const TokenizerConfig& config);
  void EncodeWord(std::string_view word, std::vector<uint32_t>* out) const;

  std::vector<NormalizerStep> normalizer_;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  DecoderSpec decoder_;
  std::unordered_map<std::string, uint32_t> model_vocab_;   // the BPE model's own vocabulary
  struct Merge {
    uint32_t rank;
    uint32_t merged_id;
  };
  std::unordered_map<uint64_t, Merge> merges_;               // BpePairKey(left, right) -> merge
  std::array<std::optional<uint32_t>, 256> byte_token_{};    // byte_fallback: "<0xXX>" ids
  std::vector<int16_t> byte_of_token_;                       // id -> byte of "<0xXX>", else -1
  std::vector<bool> verbatim_;                               // id -> an added token
  std::optional<uint32_t> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

Status HfBpeTokenizer::InitModel(const json& model) {
  if (!model.is_object()) return Invalid("no \"model\" object");
  const auto type = model.find("type");
  if (type == model.end() || !type->is_string() || type->get<std::string>() != "BPE") {
    const std::string name = type != model.end() && type->is_string() ? type->get<std::string>() : "?";
    return Invalid("model type '" + name + "' is unsupported; only BPE is");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
      return Invalid(std::string("model.") + key + " is unsupported");
    }
  }
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() && !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return Invalid("model.dropout is unsupported");
  }
  auto flag = [&](const char* key) {
    auto it = model.find(key);
    return it != model.end() && it->is_boolean() && it->get<bool>();
  };
  byte_fallback_ = flag("byte_fallback");
  fuse_unk_ = flag("fuse_unk");
  ignore_merges_ = flag("ignore_merges");

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object() || vocab->empty()) return Invalid("model.vocab is not a non-empty object");
  for (const auto& [text, id_json] : vocab->items()) {
    auto id = JsonToId(id_json);
    if (!id || *id > (1u << 26)) return Invalid("model.vocab id of '" + text + "' is not an id below 2^26");
    model_vocab_.emplace(text, *id);
    SetToken(*id, text, false);
  }
  auto unk = model.find("unk_token");
  if (unk != model.end() && unk->is_string()) {
    auto it = model_vocab_.find(unk->get<std::string>());
    if (it == model_vocab_.end()) return Invalid("model.unk_token is not in the vocabulary");
    unk_id_ = it->second;
  }
  for (const auto& [text, id] : model_vocab_) {
    const int b = ByteTokenValue(text);
    if (b >= 0) byte_token_[b] = id;
  }

  auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) return Invalid("model.merges is not an array");
  uint32_t rank = 0;
  for (const auto& m : *merges) {
    std::string left, right;
    if (m.is_string()) {  // the older form "left right"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) return Invalid("merge '" + s + "' has no space");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return Invalid("a merge is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto l = model_vocab_.find(left), r = model_vocab_.find(right), lr = model_vocab_.find(left + right);
    if (l == model_vocab_.end() || r == model_vocab_.end() || lr == model_vocab_.end()) {
      return Invalid("merge '" + left + " " + right + "' uses a token missing from the vocabulary");
    }
    merges_.emplace(BpePairKey(l->second, r->second), Merge{rank++, lr->second});  // first wins
  }
  return Status::OK();
}

Status HfBpeTokenizer::InitAddedTokens(const json& added, const TokenizerConfig& config) {
  std::vector<AddedTokenSpec> specs;
  if (!added.is_null()) {
    if (!added.is_array()) return Invalid("added_tokens is not an array");
    for (const auto& a : added) {
      if (!a.is_object()) return Invalid("an added token is not an object");
      auto id_it = a.find("id");
      std::optional<uint32_t> id = id_it == a.end() ? std::nullopt : JsonToId(*id_it);
      if (!id || *id > (1u << 26)) return Invalid("an added token has no valid id");
      auto spec = ParseAddedToken(a, *id, "tokenizer.json added_tokens");
      if (!spec.ok()) return spec.status();
      specs.push_back(std::move(spec.value()));
    }
  }
  for (const auto& c : config.added_tokens) specs.push_back(c);  // tokenizer.json's come first
  for (const auto& s : specs) {
    if (s.id < verbatim_.size() && verbatim_[s.id]) continue;  // tokenizer.json's entry came first
    SetToken(s.id, s.content, s.special);  // the added spelling wins over the model's
    AddVerbatimToken(s.id, s.lstrip, s.rstrip);
    if (verbatim_.size() <= s.id) verbatim_.resize(s.id + 1, false);
    verbatim_[s.id] = true;
  }
  return Status::OK();
}

Status HfBpeTokenizer::Init(const json& root, const TokenizerConfig& config) {
  if (!root.is_object()) return Invalid("not a JSON object");
  auto model = root.find("model");
  if (model == root.end()) return Invalid("no \"model\"");
  KVAULT_RETURN_IF_ERROR(InitModel(*model));
  auto added = root.find("added_tokens");
  KVAULT_RETURN_IF_ERROR(InitAddedTokens(added == root.end() ? json() : *added, config));

  auto normalizer = ParseNormalizer(root.value("normalizer", json()));
  if (!normalizer.ok()) return normalizer.status();
  normalizer_ = std::move(normalizer.value());
  auto pre = ParsePreTokenizer(root.value("pre_tokenizer", json()));
  if (!pre.ok()) return pre.status();
  pre_tokenizer_ = std::move(pre.value());
  auto decoder = ParseDecoder(root.value("decoder", json()));
  if (!decoder.ok()) return decoder.status();
  decoder_ = decoder.value();
  if (verbatim_.size() < vocab_size()) verbatim_.resize(vocab_size(), false);
  byte_of_token_.assign(vocab_size(), -1);
  if (decoder_.byte_fallback) {
    for (const auto& [text, id] : model_vocab_) byte_of_token_[id] = static_cast<int16_t>(ByteTokenValue(text));
  }

  // bos/eos: tokenizer_config.json names them; without it, the first special token of the
  // post-processor's single-sequence template is the bos.
  auto resolve = [&](const std::optional<std::string>& name, const char* what) -> Result<std::optional<uint32_t>> {
    if (!name) return std::optional<uint32_t>();
    auto id = TokenId(*name);
    if (!id) return Status::InvalidArgument(std::string("tokenizer_config.json: ") + what + " '" + *name + "' is not a token");
    return std::optional<uint32_t>(id);
  };
  auto bos = resolve(config.bos_token, "bos_token");
  if (!bos.ok()) return bos.status();
  auto eos = resolve(config.eos_token, "eos_token");
  if (!eos.ok()) return eos.status();
  set_bos_id(bos.value());
  set_eos_id(eos.value());
  if (!config.bos_token) {
    const json post = root.value("post_processor", json());
    if (post.is_object() && post.value("type", "") == "TemplateProcessing") {
      const json single = post.value("single", json());
      if (single.is_array() && !single.empty() && single[0].is_object() && single[0].contains("SpecialToken")) {
        const json& st = single[0]["SpecialToken"];
        if (st.is_object() && st.value("id", json()).is_string()) {
          set_bos_id(TokenId(st["id"].get<std::string>()));
        }
      }
    }
  }
  return Status::OK();
}

void HfBpeTokenizer::EncodeWord(std::string_view word, std::vector<uint32_t>* out) const {
  if (ignore_merges_) {
    auto it = model_vocab_.find(std::string(word));
    if (it != model_vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // One symbol per character; a character outside the vocabulary becomes its byte tokens
  // (byte_fallback) or the unknown token (consecutive ones fused with fuse_unk) or nothing.
  std::vector<BpeSymbol> symbols;
  std::string ch;
  int32_t cp;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = DecodeUtf8(word, pos, &cp);
    ch.assign(word.substr(pos, len));
    const auto begin = static_cast<uint32_t>(pos), end = static_cast<uint32_t>(pos + len);
    pos += len;
    auto it = model_vocab_.find(ch);
    if (it != model_vocab_.end()) {
      symbols.push_back({begin, end, it->second});
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_token_[static_cast<unsigned char>(c)].has_value();
      if (all) {
        for (uint32_t i = 0; i < ch.size(); ++i) {
          symbols.push_back({begin + i, begin + i + 1, *byte_token_[static_cast<unsigned char>(ch[i])]});
        }
        continue;
      }
    }
    if (!unk_id_) continue;
    if (fuse_unk_ && !symbols.empty() && symbols.back().id == *unk_id_) {
      symbols.back().end = end;
    } else {
      symbols.push_back({begin, end, *unk_id_});
    }
  }
  auto lookup = [this](const BpeSymbol& l, const BpeSymbol& r, double* priority, uint32_t* merged) {
    auto it = merges_.find(BpePairKey(l.id, r.id));
    if (it == merges_.end()) return false;
    *priority = -static_cast<double>(it->second.rank);
    *merged = it->second.merged_id;
    return true;
  };
  for (const auto& s : MergeBpe(std::move(symbols), lookup)) out->push_back(s.id);
}

void HfBpeTokenizer::EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const {
  std::string normalized = ApplyNormalizer(normalizer_, text);
  for (const auto& word : ApplyPreTokenizer(pre_tokenizer_, std::move(normalized), at_text_start)) {
    if (!word.empty()) EncodeWord(word, out);
  }
}

void HfBpeTokenizer::AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const {
  if (id >= vocab_size()) return;
  const std::string& text = token(id);
  if (verbatim_[id]) {  // added tokens are written as spelled
    out->append(text);
    return;
  }
  int strip = at_output_start ? decoder_.strip_leading_spaces : 0;
  if (byte_of_token_[id] >= 0) {
    const char b = static_cast<char>(byte_of_token_[id]);
    if (!(b == ' ' && strip > 0)) out->push_back(b);
    return;
  }
  std::string decoded;
  if (decoder_.byte_level) {
    int32_t cp;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = DecodeUtf8(text, pos, &cp);
      const int b = ByteLevelByteOfChar(cp);
      if (b >= 0) {
        decoded.push_back(static_cast<char>(b));
      } else {
        decoded.append(text, pos, len);
      }
      pos += len;
    }
  } else {
    decoded = text;
  }
  if (!decoder_.space_replacement.empty()) {
    std::string replaced;
    const std::string& mark = decoder_.space_replacement;
    for (size_t pos = 0; pos < decoded.size();) {
      if (decoded.compare(pos, mark.size(), mark) == 0) {
        replaced.push_back(' ');
        pos += mark.size();
      } else {
        replaced.push_back(decoded[pos++]);
      }
    }
    decoded = std::move(replaced);
  }
  size_t skip = 0;
  while (strip > 0 && skip < decoded.size() && decoded[skip] == ' ') {
    ++skip;
    --strip;
  }
  out->append(decoded, skip, std::string::npos);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadTokenizerJson(std::string_view tokenizer_json, std::string_view config_json) {
  auto config = ParseTokenizerConfig(config_json);
  if (!config.ok()) return config.status();
  const json root = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid("not valid JSON");
  auto tokenizer = std::make_unique<HfBpeTokenizer>();
  try {
    KVAULT_RETURN_IF_ERROR(tokenizer->Init(root, config.value()));
  } catch (const json::exception& e) {  // a field of an unexpected JSON type
    return Invalid(std::string("unexpected structure: ") + e.what());
  }
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace kvault::tokenizer

// The format-independent half of Tokenizer: the vocabulary, special-token splitting,
// decoding, streaming, and picking a loader for a model directory.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/special_token_matcher.h"

namespace kvault::tokenizer {

Tokenizer::Tokenizer() : verbatim_tokens_(std::make_unique<SpecialTokenMatcher>()) {}
Tokenizer::~Tokenizer() = default;

void Tokenizer::SetToken(uint32_t id, std::string text, bool special) {
  if (id >= id_to_token_.size()) {
    id_to_token_.resize(id + 1);
    is_special_.resize(id + 1, false);
  }
  token_to_id_.emplace(text, id);
  id_to_token_[id] = std::move(text);
  is_special_[id] = special;
}

void Tokenizer::AddVerbatimToken(uint32_t id, bool lstrip, bool rstrip) {
  verbatim_tokens_->Add(id_to_token_[id], id, lstrip, rstrip);
}

std::optional<uint32_t> Tokenizer::TokenId(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

std::string_view Tokenizer::TokenText(uint32_t id) const {
  return id < id_to_token_.size() ? std::string_view(id_to_token_[id]) : std::string_view();
}

std::vector<uint32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  return Encode(text, add_bos, SpecialTokens::kParse);
}

std::vector<uint32_t> Tokenizer::Encode(std::string_view text, bool add_bos, SpecialTokens special_tokens) const {
  const TextPiece piece{text, special_tokens};
  return EncodePieces(std::span<const TextPiece>(&piece, 1), add_bos);
}

std::vector<uint32_t> Tokenizer::EncodePieces(std::span<const TextPiece> pieces, bool add_bos) const {
  // The whole text, and the spans of it where special tokens may be taken: [begin, end) pairs,
  // ascending and disjoint (adjacent kParse pieces merge).
  std::string joined;
  std::vector<std::pair<size_t, size_t>> parse_spans;
  for (const TextPiece& piece : pieces) {
    const size_t begin = joined.size();
    if (IsValidUtf8(piece.text)) {
      joined.append(piece.text);
    } else {
      joined += SanitizeUtf8(piece.text);
    }
    if (piece.special_tokens != SpecialTokens::kParse || joined.size() == begin) continue;
    if (!parse_spans.empty() && parse_spans.back().second == begin) {
      parse_spans.back().second = joined.size();
    } else {
      parse_spans.emplace_back(begin, joined.size());
    }
  }
  // A special token is taken only when its whole spelling lies in one kParse span; verbatim
  // tokens that are not special are vocabulary text and always taken.
  const bool all_parse = parse_spans.size() == 1 && parse_spans[0] == std::pair<size_t, size_t>(0, joined.size());
  SpecialTokenMatcher::Accept accept;
  if (!all_parse) {
    accept = [&](size_t begin, size_t end, uint32_t id) {
      if (!IsSpecial(id)) return true;
      auto it = std::upper_bound(parse_spans.begin(), parse_spans.end(), begin,
                                 [](size_t b, const std::pair<size_t, size_t>& s) { return b < s.first; });
      if (it == parse_spans.begin()) return false;
      --it;  // the last span starting at or before `begin`
      return begin >= it->first && end <= it->second;
    };
  }
  const std::string_view text = joined;
  std::vector<uint32_t> ids;
  if (add_bos && bos_id_) ids.push_back(*bos_id_);
  size_t pos = 0;
  for (const auto& m : verbatim_tokens_->FindAll(text, accept)) {
    if (m.begin > pos) EncodeSegment(text.substr(pos, m.begin - pos), pos == 0, &ids);
    ids.push_back(m.id);
    pos = m.end;
  }
  if (pos < text.size()) EncodeSegment(text.substr(pos), pos == 0, &ids);
  return ids;
}

std::string Tokenizer::Decode(std::span<const uint32_t> ids, bool skip_special) const {
  std::string out;
  bool wrote_any = false;
  for (uint32_t id : ids) {
    if (id >= vocab_size() || (skip_special && IsSpecial(id))) continue;
    AppendTokenBytes(id, !wrote_any, &out);
    wrote_any = true;
  }
  return out;
}

std::string StreamDecoder::Push(uint32_t id) {
  if (id >= tokenizer_.vocab_size() || (skip_special_ && tokenizer_.IsSpecial(id))) return {};
  tokenizer_.AppendTokenBytes(id, !wrote_any_, &pending_);
  wrote_any_ = true;
  const size_t complete = CompleteUtf8PrefixLength(pending_);
  std::string ready = SanitizeUtf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return ready;
}

std::string StreamDecoder::Finish() {
  std::string rest = SanitizeUtf8(pending_);
  pending_.clear();
  return rest;
}

namespace {

Result<std::string> ReadWholeFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError("cannot open " + path.string());
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return Status::IOError("cannot read " + path.string());
  return buf.str();
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  std::error_code ec;
  std::string config;
  if (fs::exists(dir / "tokenizer_config.json", ec)) {
    auto c = ReadWholeFile(dir / "tokenizer_config.json");
    if (!c.ok()) return c.status();
    config = std::move(c.value());
  }
  if (fs::exists(dir / "tokenizer.json", ec)) {
    auto json = ReadWholeFile(dir / "tokenizer.json");
    if (!json.ok()) return json.status();
    return LoadTokenizerJson(json.value(), config);
  }
  if (fs::exists(dir / "tokenizer.model", ec)) {
    auto model = ReadWholeFile(dir / "tokenizer.model");
    if (!model.ok()) return model.status();
    return LoadSentencePieceModel(model.value(), config);
  }
  return Status::NotFound(model_dir + ": neither tokenizer.json nor tokenizer.model");
}

}  // namespace kvault::tokenizer

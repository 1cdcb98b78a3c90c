// tokenizer.model: a SentencePiece ModelProto of model_type BPE, parsed without libprotobuf,
// and the SentencePiece BPE encoder (merges by piece score, byte fallback, '▁' for spaces).
// Not libsentencepiece: Debian's 0.1.97 exposes no ModelProto fields (model type, normalizer,
// dummy prefix), has no per-call dummy-prefix switch, and encoded 3-5x slower than this.
#include <cmath>
#include <unordered_map>

#include "tokenizer/bpe_merger.h"
#include "tokenizer/protobuf_reader.h"
#include "tokenizer/token_spelling.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/utf8.h"

namespace kvault::tokenizer {
namespace {

// ModelProto.SentencePiece.Type
enum class PieceType : uint32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct Piece {
  std::string text;
  float score = 0;
  PieceType type = PieceType::kNormal;
};

// The fields of ModelProto that encoding depends on, with the proto's defaults.
struct ModelProto {
  std::vector<Piece> pieces;                 // field 1
  uint64_t model_type = 1;                   // TrainerSpec.model_type (3): 1 UNIGRAM, 2 BPE
  bool byte_fallback = false;                // TrainerSpec.byte_fallback (35)
  bool treat_whitespace_as_suffix = false;   // TrainerSpec (24)
  int32_t unk_id = 0, bos_id = 1, eos_id = 2;  // TrainerSpec 40, 41, 42
  std::string normalizer_name;               // NormalizerSpec.name (1)
  bool has_charsmap = false;                 // NormalizerSpec.precompiled_charsmap (2) non-empty
  bool add_dummy_prefix = true;              // NormalizerSpec (3)
  bool remove_extra_whitespaces = true;      // NormalizerSpec (4)
  bool escape_whitespaces = true;            // NormalizerSpec (5)
};

Status Malformed(const std::string& what) {
  return Status::InvalidArgument("tokenizer.model: malformed SentencePiece ModelProto (" + what + ")");
}

Status ParsePiece(std::string_view bytes, Piece* piece) {
  ProtobufReader r(bytes);
  while (r.Next()) {
    if (r.field() == 1 && r.wire_type() == ProtobufReader::kBytes) {
      piece->text = std::string(r.bytes());
    } else if (r.field() == 2 && r.wire_type() == ProtobufReader::kFixed32) {
      piece->score = r.fixed32_as_float();
    } else if (r.field() == 3 && r.wire_type() == ProtobufReader::kVarint) {
      if (r.varint() < 1 || r.varint() > 6) return Malformed("piece type " + std::to_string(r.varint()));
      piece->type = static_cast<PieceType>(r.varint());
    }
  }
  if (r.error()) return Malformed("a piece");
  if (!std::isfinite(piece->score)) return Malformed("a piece score is not finite");
  return Status::OK();
}

Status ParseTrainerSpec(std::string_view bytes, ModelProto* m) {
  ProtobufReader r(bytes);
  while (r.Next()) {
    if (r.wire_type() != ProtobufReader::kVarint) continue;
    const auto v = r.varint();
    switch (r.field()) {
      case 3: m->model_type = v; break;
      case 24: m->treat_whitespace_as_suffix = v != 0; break;
      case 35: m->byte_fallback = v != 0; break;
      case 40: m->unk_id = static_cast<int32_t>(v); break;
      case 41: m->bos_id = static_cast<int32_t>(v); break;
      case 42: m->eos_id = static_cast<int32_t>(v); break;
      default: break;
    }
  }
  return r.error() ? Malformed("trainer_spec") : Status::OK();
}

Status ParseNormalizerSpec(std::string_view bytes, ModelProto* m) {
  ProtobufReader r(bytes);
  while (r.Next()) {
    if (r.field() == 1 && r.wire_type() == ProtobufReader::kBytes) m->normalizer_name = std::string(r.bytes());
    if (r.field() == 2 && r.wire_type() == ProtobufReader::kBytes) m->has_charsmap = !r.bytes().empty();
    if (r.wire_type() != ProtobufReader::kVarint) continue;
    if (r.field() == 3) m->add_dummy_prefix = r.varint() != 0;
    if (r.field() == 4) m->remove_extra_whitespaces = r.varint() != 0;
    if (r.field() == 5) m->escape_whitespaces = r.varint() != 0;
  }
  return r.error() ? Malformed("normalizer_spec") : Status::OK();
}

Result<ModelProto> ParseModelProto(std::string_view bytes) {
  ModelProto m;
  ProtobufReader r(bytes);
  while (r.Next()) {
    if (r.wire_type() != ProtobufReader::kBytes) continue;
    if (r.field() == 1) {
      Piece piece;
      KVAULT_RETURN_IF_ERROR(ParsePiece(r.bytes(), &piece));
      m.pieces.push_back(std::move(piece));
    } else if (r.field() == 2) {
      KVAULT_RETURN_IF_ERROR(ParseTrainerSpec(r.bytes(), &m));
    } else if (r.field() == 3) {
      KVAULT_RETURN_IF_ERROR(ParseNormalizerSpec(r.bytes(), &m));
    }
  }
  if (r.error()) return Malformed("top level");
  if (m.pieces.empty()) return Malformed("no pieces");
  return m;
}

class SentencePieceBpeTokenizer final : public Tokenizer {
 public:
  Status Init(ModelProto model, const TokenizerConfig& config);
  void AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const override;

 protected:
  void EncodeSegment(std::string_view text, bool at_text_start, std::vector<uint32_t>* out) const override;

 private:
  // Applies the normalizer spec (identity rules only): extra spaces, '▁', the dummy prefix.
  std::string Normalize(std::string_view text, bool at_text_start) const;

  ModelProto model_;
  // Pieces a merge may produce (NORMAL and USER_DEFINED), by text.
  std::unordered_map<std::string_view, uint32_t> mergeable_;
  std::vector<std::optional<uint32_t>> byte_piece_;  // byte value -> id of "<0xXX>"
  std::vector<int16_t> byte_of_piece_;               // id -> byte value, -1 if not a byte piece
  std::optional<uint32_t> unk_id_;
};

Status SentencePieceBpeTokenizer::Init(ModelProto model, const TokenizerConfig& config) {
  model_ = std::move(model);
  if (model_.model_type != 2) {
    return Status::InvalidArgument("tokenizer.model: model_type " + std::to_string(model_.model_type) +
                                   (model_.model_type == 1 ? " (UNIGRAM)" : "") +
                                   " is unsupported; only BPE (2) is");
  }
  if (model_.has_charsmap) {
    return Status::InvalidArgument("tokenizer.model: normalizer '" + model_.normalizer_name +
                                   "' (a precompiled charsmap) is unsupported; only identity is");
  }
  if (model_.treat_whitespace_as_suffix) {
    return Status::InvalidArgument("tokenizer.model: treat_whitespace_as_suffix is unsupported");
  }
  byte_piece_.assign(256, std::nullopt);
  byte_of_piece_.assign(model_.pieces.size(), -1);
  for (uint32_t id = 0; id < model_.pieces.size(); ++id) {
    const Piece& p = model_.pieces[id];
    const bool special = p.type == PieceType::kControl || p.type == PieceType::kUnknown;
    SetToken(id, p.text, special);
    if (p.type == PieceType::kNormal || p.type == PieceType::kUserDefined) {
      if (p.text.empty()) return Malformed("an empty normal piece");
      mergeable_.emplace(model_.pieces[id].text, id);
    }
    if (p.type == PieceType::kByte) {
      const int value = ByteTokenValue(p.text);
      if (value < 0) return Malformed("byte piece '" + p.text + "'");
      byte_piece_[value] = id;
      byte_of_piece_[id] = static_cast<int16_t>(value);
    }
    if (p.type == PieceType::kUnknown) unk_id_ = id;
    // Control, unknown and user-defined pieces are matched in text verbatim (the Hugging Face
    // convention; SentencePiece itself matches only user-defined ones).
    if ((special || p.type == PieceType::kUserDefined) && !p.text.empty()) AddVerbatimToken(id, false, false);
  }
  if (model_.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (!byte_piece_[b]) return Malformed("byte_fallback without a piece for every byte");
    }
  }
  const auto n = static_cast<int64_t>(model_.pieces.size());
  auto valid = [&](int32_t id) -> std::optional<uint32_t> {
    if (id < 0 || id >= n) return std::nullopt;
    return static_cast<uint32_t>(id);
  };
  set_bos_id(valid(model_.bos_id));
  set_eos_id(valid(model_.eos_id));
  // tokenizer_config.json extends the vocabulary and may rename bos/eos.
  for (const auto& added : config.added_tokens) {
    if (added.id >= model_.pieces.size()) {
      SetToken(added.id, added.content, added.special);
    } else if (model_.pieces[added.id].text != added.content) {
      return Status::InvalidArgument("tokenizer_config.json: added token " + std::to_string(added.id) +
                                     " '" + added.content + "' disagrees with tokenizer.model");
    }
    AddVerbatimToken(added.id, added.lstrip, added.rstrip);
  }
  if (config.bos_token) {
    auto id = TokenId(*config.bos_token);
    if (!id) return Status::InvalidArgument("tokenizer_config.json: bos_token '" + *config.bos_token + "' is not a piece");
    set_bos_id(id);
  }
  if (config.eos_token) {
    auto id = TokenId(*config.eos_token);
    if (!id) return Status::InvalidArgument("tokenizer_config.json: eos_token '" + *config.eos_token + "' is not a piece");
    set_eos_id(id);
  }
  return Status::OK();
}

std::string SentencePieceBpeTokenizer::Normalize(std::string_view text, bool at_text_start) const {
  std::string collapsed;
  if (model_.remove_extra_whitespaces) {
    // Drops leading and trailing spaces and folds runs of spaces into one.
    for (char c : text) {
      if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ')) continue;
      collapsed.push_back(c);
    }
    if (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    text = collapsed;
  }
  std::string out;
  if (text.empty()) return out;
  if (at_text_start && model_.add_dummy_prefix) out += model_.escape_whitespaces ? kSpaceMark : " ";
  for (char c : text) {
    if (c == ' ' && model_.escape_whitespaces) {
      out += kSpaceMark;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void SentencePieceBpeTokenizer::EncodeSegment(std::string_view text, bool at_text_start,
                                              std::vector<uint32_t>* out) const {
  const std::string normalized = Normalize(text, at_text_start);
  std::vector<BpeSymbol> symbols;
  int32_t cp;
  for (size_t pos = 0; pos < normalized.size();) {
    const size_t len = DecodeUtf8(normalized, pos, &cp);
    symbols.push_back(BpeSymbol{static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + len), 0});
    pos += len;
  }
  const std::string_view all(normalized);
  auto lookup = [&](const BpeSymbol& l, const BpeSymbol& r, double* priority, uint32_t* merged) {
    auto it = mergeable_.find(all.substr(l.begin, r.end - l.begin));
    if (it == mergeable_.end()) return false;
    *priority = model_.pieces[it->second].score;
    *merged = it->second;
    return true;
  };
  bool previous_was_unk = false;
  for (const BpeSymbol& s : MergeBpe(std::move(symbols), lookup)) {
    const std::string_view piece = all.substr(s.begin, s.end - s.begin);
    auto it = mergeable_.find(piece);
    if (it != mergeable_.end()) {
      out->push_back(it->second);
      previous_was_unk = false;
    } else if (model_.byte_fallback) {
      for (char c : piece) out->push_back(*byte_piece_[static_cast<unsigned char>(c)]);
      previous_was_unk = false;
    } else if (unk_id_ && !previous_was_unk) {  // consecutive unknowns become one <unk>
      out->push_back(*unk_id_);
      previous_was_unk = true;
    }
  }
}

void SentencePieceBpeTokenizer::AppendTokenBytes(uint32_t id, bool at_output_start, std::string* out) const {
  if (id >= vocab_size()) return;
  if (id < byte_of_piece_.size() && byte_of_piece_[id] >= 0) {
    out->push_back(static_cast<char>(byte_of_piece_[id]));
    return;
  }
  std::string_view piece = token(id);
  if (IsSpecial(id) || id >= model_.pieces.size()) {
    out->append(piece);
    return;
  }
  if (at_output_start && model_.add_dummy_prefix) {
    if (piece.starts_with(kSpaceMark)) {
      piece.remove_prefix(kSpaceMark.size());
    } else if (piece.starts_with(' ')) {
      piece.remove_prefix(1);
    }
  }
  AppendWithSpaces(piece, out);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(std::string_view model_bytes,
                                                          std::string_view config_json) {
  auto config = ParseTokenizerConfig(config_json);
  if (!config.ok()) return config.status();
  auto model = ParseModelProto(model_bytes);
  if (!model.ok()) return model.status();
  auto tokenizer = std::make_unique<SentencePieceBpeTokenizer>();
  KVAULT_RETURN_IF_ERROR(tokenizer->Init(std::move(model.value()), config.value()));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace kvault::tokenizer

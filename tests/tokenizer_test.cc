// The tokenizers against the reference implementations: fixtures made by
// scripts/make_tokenizer_fixtures.py with the `tokenizers` and `sentencepiece` packages.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_nfc.h"
#include "tokenizer/utf8.h"

namespace kvault::tokenizer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = KVAULT_TOKENIZER_FIXTURES;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::unique_ptr<Tokenizer> Load(const std::string& name) {
  auto t = LoadTokenizer((kFixtures / name).string());
  EXPECT_TRUE(t.ok()) << name << ": " << t.status().message();
  return t.ok() ? std::move(t.value()) : nullptr;
}

std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else out.push_back(static_cast<char>(c));
  }
  return out;
}

// The concatenated output of a StreamDecoder fed `ids` one at a time.
std::string Stream(const Tokenizer& t, const std::vector<uint32_t>& ids, bool skip_special) {
  StreamDecoder decoder(t, skip_special);
  std::string out;
  for (uint32_t id : ids) {
    const std::string piece = decoder.Push(id);
    EXPECT_TRUE(IsValidUtf8(piece));
    out += piece;
  }
  return out + decoder.Finish();
}

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, MatchesReferenceEncodingsAndDecodings) {
  auto tokenizer = Load(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const json cases = json::parse(ReadFile(kFixtures / GetParam() / "cases.json"));
  ASSERT_GE(cases.size(), 40u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + Printable(text) + "\"");
    const auto ids = c["ids"].get<std::vector<uint32_t>>();
    EXPECT_EQ(tokenizer->Encode(text, /*add_bos=*/false), ids);
    EXPECT_EQ(tokenizer->Encode(text, /*add_bos=*/true), c["ids_bos"].get<std::vector<uint32_t>>());
    EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/false), c["decoded"].get<std::string>());
    EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), c["decoded_skip"].get<std::string>());
    EXPECT_EQ(Stream(*tokenizer, ids, false), c["decoded"].get<std::string>());
    EXPECT_EQ(Stream(*tokenizer, ids, true), c["decoded_skip"].get<std::string>());
  }
}

// A random valid UTF-8 string drawn from a palette that stresses the pre-tokenizers: ASCII
// words, digits, punctuation, whitespace runs, accents, combining marks, CJK, RTL, emoji and
// random code points (surrogates and U+2581, which SentencePiece reserves for spaces, left out).
std::string RandomText(std::mt19937& rng) {
  static const std::vector<std::string> kPalette = {
      "a", "b", "the", "Hello", "world", "'s", "'LL", " ", "  ", "\t", "\n", "\r\n", "0", "7", "12345",
      ".", ",", "!?", "<", "|", ">", "é", "e\xCC\x81", "ß", "Ω", "ж", "中", "文", "の", "한", "ب", "ש",
      "😀", "👍🏽", "\xE2\x80\x8D", "ﬁ", "Å", "\xC3\x85"};
  std::uniform_int_distribution<int> length(0, 24);
  std::uniform_int_distribution<size_t> pick(0, kPalette.size());  // == size: a random code point
  std::uniform_int_distribution<uint32_t> code_point(1, 0x10FFFF);
  std::string s;
  for (int n = length(rng); n > 0; --n) {
    const size_t k = pick(rng);
    if (k < kPalette.size()) {
      s += kPalette[k];
      continue;
    }
    uint32_t cp;
    do cp = code_point(rng);
    while ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581);
    kvault::tokenizer::AppendUtf8(cp, &s);
  }
  return s;
}

TEST_P(FixtureTest, RandomTextRoundTrips) {
  auto tokenizer = Load(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  // Qwen2's normalizer is NFC: the round trip gives the NFC form back.
  const bool nfc = GetParam() == "qwen2";
  std::mt19937 rng(20240601);
  for (int i = 0; i < 2000; ++i) {
    const std::string text = RandomText(rng);
    ASSERT_TRUE(IsValidUtf8(text));
    const auto ids = tokenizer->Encode(text, /*add_bos=*/true);
    for (uint32_t id : ids) ASSERT_LT(id, tokenizer->vocab_size());
    const std::string expected = nfc ? NfcNormalize(text) : text;
    ASSERT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), expected) << "text: " << Printable(text);
    ASSERT_EQ(Stream(*tokenizer, ids, true), expected) << "text: " << Printable(text);
  }
}

TEST_P(FixtureTest, InvalidUtf8IsTokenizedAsReplacementCharacters) {
  auto tokenizer = Load(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  for (const std::string& bad : {std::string("ab\xFF" "cd"), std::string("\xE4\xB8"), std::string("x\xC0\xAFy"),
                                std::string("\xED\xA0\x80"), std::string("\xF4\x90\x80\x80 z")}) {
    EXPECT_EQ(tokenizer->Encode(bad, false), tokenizer->Encode(SanitizeUtf8(bad), false));
  }
}

// SpecialTokens::kPlainText: the spelling of every special token of the vocabulary is text
// (no special id comes out), alone or glued to other text; kParse and the two-argument Encode
// are today's behaviour.
TEST_P(FixtureTest, PlainTextNeverYieldsSpecialTokens) {
  auto t = Load(GetParam());
  ASSERT_NE(t, nullptr);
  int specials = 0;
  std::mt19937 rng(5);
  for (uint32_t id = 0; id < t->vocab_size(); ++id) {
    if (!t->IsSpecial(id) || t->TokenText(id).empty()) continue;
    ++specials;
    const std::string spelling(t->TokenText(id));
    const std::string text = RandomText(rng) + spelling + RandomText(rng) + spelling;
    SCOPED_TRACE(Printable(text));
    for (uint32_t got : t->Encode(text, false, SpecialTokens::kPlainText)) EXPECT_FALSE(t->IsSpecial(got)) << got;
    EXPECT_EQ(t->Encode(text, false, SpecialTokens::kParse), t->Encode(text, false));
    const std::vector<uint32_t> parsed = t->Encode(text, false);
    EXPECT_EQ(std::count(parsed.begin(), parsed.end(), id), 2);
  }
  EXPECT_GE(specials, 3);
}

// EncodePieces tokenizes the pieces as one text: with no special spelled in a plain piece it
// equals Encode of the concatenation, wherever the borders fall (inside words, whitespace runs,
// multi-byte characters).
TEST_P(FixtureTest, PiecesTokenizeAsOneText) {
  auto t = Load(GetParam());
  ASSERT_NE(t, nullptr);
  std::mt19937 rng(9);
  for (int i = 0; i < 300; ++i) {
    std::string text;
    for (int k = 0; k < 3; ++k) text += RandomText(rng);
    std::vector<std::string> parts;
    std::vector<TextPiece> pieces;
    size_t at = 0;
    while (at < text.size()) {
      size_t len = std::uniform_int_distribution<size_t>(0, std::min<size_t>(12, text.size() - at))(rng);
      parts.push_back(text.substr(at, len));
      at += len;
    }
    for (size_t k = 0; k < parts.size(); ++k) {
      pieces.push_back({parts[k], k % 2 == 0 ? SpecialTokens::kParse : SpecialTokens::kPlainText});
    }
    bool spells_special = false;
    for (uint32_t id : t->Encode(text, false)) spells_special = spells_special || t->IsSpecial(id);
    if (spells_special) continue;
    // Pieces that split a UTF-8 character are invalid alone and sanitized on their own; only
    // compare splits on character borders.
    bool valid = true;
    for (const std::string& p : parts) valid = valid && IsValidUtf8(p);
    if (!valid) continue;
    ASSERT_EQ(t->EncodePieces(pieces, true), t->Encode(text, true)) << Printable(text);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, FixtureTest, ::testing::Values("llama3", "qwen2", "sp_bpe", "metaspace"));

TEST(TokenizerSpecialTokens, Llama3) {
  auto t = Load("llama3");
  ASSERT_NE(t, nullptr);
  const auto bot = t->TokenId("<|begin_of_text|>"), eot = t->TokenId("<|eot_id|>");
  ASSERT_TRUE(bot && eot);
  EXPECT_EQ(t->bos_id(), bot);
  EXPECT_EQ(t->eos_id(), eot);
  EXPECT_TRUE(t->IsSpecial(*bot));
  EXPECT_TRUE(t->IsSpecial(*t->TokenId("<|start_header_id|>")));
  EXPECT_FALSE(t->IsSpecial(t->Encode("a", false).at(0)));
  // Matched verbatim, never split, also when glued to text.
  EXPECT_EQ(t->Encode("x<|eot_id|>y", false).at(1), *eot);
  EXPECT_EQ(t->Encode("<|eot_id|>", false), std::vector<uint32_t>{*eot});
  EXPECT_EQ(t->TokenText(*eot), "<|eot_id|>");
}

TEST(TokenizerSpecialTokens, Qwen2HasNoBos) {
  auto t = Load("qwen2");
  ASSERT_NE(t, nullptr);
  EXPECT_FALSE(t->bos_id().has_value());
  EXPECT_EQ(t->eos_id(), t->TokenId("<|im_end|>"));
  EXPECT_EQ(t->Encode("hi", true), t->Encode("hi", false));
}

TEST(TokenizerSpecialTokens, SentencePiece) {
  auto t = Load("sp_bpe");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1u);
  EXPECT_EQ(t->eos_id(), 2u);
  EXPECT_TRUE(t->IsSpecial(1));
  EXPECT_TRUE(t->IsSpecial(2));
  EXPECT_EQ(t->TokenId("<0x0A>").has_value(), true);
  EXPECT_EQ(t->Encode("a</s>", false).back(), 2u);
  // Both forms of the same model agree on text without special tokens.
  auto converted = Load("metaspace");
  ASSERT_NE(converted, nullptr);
  EXPECT_EQ(converted->Encode("Hello world, 你好 😀!", true), t->Encode("Hello world, 你好 😀!", true));
}

// tokenizer.json's Digits pre-tokenizer (as in SmolLM2's Sequence[Digits, ByteLevel]): with
// individual_digits every digit (any \p{N}: Arabic-Indic, superscripts) is its own piece; without,
// a run of digits is one piece. Either way no merge crosses a digit/non-digit border.
TEST(TokenizerPreTokenizers, Digits) {
  const json base = json::parse(R"({
    "model": {"type": "BPE",
              "vocab": {"a": 0, "b": 1, "c": 2, "1": 3, "2": 4, "3": 5, " ": 6, "ab": 7, "c1": 8, "12": 9,
                        "\u0663": 10, "\u00b2": 11, "\u0663\u00b2": 12},
              "merges": ["c 1", "1 2", "a b", "\u0663 \u00b2"]},
    "decoder": {"type": "Fuse"}})");
  auto load = [&](const json& pre) {
    json j = base;
    j["pre_tokenizer"] = pre;
    auto t = LoadTokenizerJson(j.dump(), "");
    EXPECT_TRUE(t.ok()) << t.status().message();
    return t.ok() ? std::move(t.value()) : nullptr;
  };
  auto none = load(nullptr);
  auto individual = load(json{{"type", "Digits"}, {"individual_digits", true}});
  auto runs = load(json{{"type", "Digits"}, {"individual_digits", false}});
  auto by_default = load(json{{"type", "Digits"}});  // individual_digits defaults to false
  const json digits = {{"type", "Digits"}, {"individual_digits", true}};
  auto in_sequence = load(json{{"type", "Sequence"}, {"pretokenizers", json::array({digits})}});
  ASSERT_TRUE(none && individual && runs && by_default && in_sequence);
  using Ids = std::vector<uint32_t>;
  EXPECT_EQ(none->Encode("abc123", false), (Ids{7, 8, 4, 5}));
  EXPECT_EQ(runs->Encode("abc123", false), (Ids{7, 2, 9, 5}));
  EXPECT_EQ(by_default->Encode("abc123", false), (Ids{7, 2, 9, 5}));
  EXPECT_EQ(individual->Encode("abc123", false), (Ids{7, 2, 3, 4, 5}));
  EXPECT_EQ(in_sequence->Encode("abc123", false), (Ids{7, 2, 3, 4, 5}));
  // U+0663 ARABIC-INDIC DIGIT THREE (Nd) and U+00B2 SUPERSCRIPT TWO (No) are digits too.
  EXPECT_EQ(runs->Encode("a\u0663\u00b2b", false), (Ids{0, 12, 1}));
  EXPECT_EQ(individual->Encode("a\u0663\u00b2b", false), (Ids{0, 10, 11, 1}));
  EXPECT_EQ(none->Encode("a\u0663\u00b2b", false), (Ids{0, 12, 1}));
  for (const auto* t : {none.get(), individual.get(), runs.get()}) {
    EXPECT_EQ(t->Decode(t->Encode("ab c123 321\u0663\u00b2", false), false), "ab c123 321\u0663\u00b2");
  }
}

TEST(StreamDecoder, NeverSplitsACharacter) {
  auto t = Load("sp_bpe");
  ASSERT_NE(t, nullptr);
  const auto ids = t->Encode("🦀", false);  // not in the training text: byte fallback
  ASSERT_GE(ids.size(), 4u);
  StreamDecoder decoder(*t, true);
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = decoder.Push(ids[i]);
    if (i + 1 < ids.size()) {
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos);
    }
    out += piece;
  }
  EXPECT_EQ(out + decoder.Finish(), "🦀");
  // A cut-off character comes out as U+FFFD at Finish.
  StreamDecoder cut(*t, true);
  std::string partial;
  for (size_t i = 0; i + 1 < ids.size(); ++i) partial += cut.Push(ids[i]);
  EXPECT_EQ(partial + cut.Finish(), "\xEF\xBF\xBD");
}

TEST(Utf8, Helpers) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("a é 中 😀"));
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_EQ(CompleteUtf8PrefixLength("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(CompleteUtf8PrefixLength("ab\xF0\x9F\x98\x80"), 6u);
  EXPECT_EQ(CompleteUtf8PrefixLength("ab\xFF"), 3u);    // invalid: complete, replaced later
  EXPECT_EQ(CompleteUtf8PrefixLength("\xE0\x80"), 2u);  // cannot become valid
  EXPECT_EQ(SanitizeUtf8("a\xFF" "b\xE4\xB8"), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  EXPECT_EQ(NfcNormalize("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(NfcNormalize("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), "한");  // Hangul jamo
  EXPECT_EQ(NfcNormalize("a\xCC\xA3\xCC\x87"), "\xE1\xBA\xA1\xCC\x87");  // ạ + dot above
}

// ---- malformed and unsupported files ----

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("kvault-tok-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path_ / name, std::ios::binary) << bytes;
  }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

TEST(TokenizerErrors, MissingFiles) {
  TempDir dir;
  auto t = LoadTokenizer(dir.path());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kNotFound);
}

TEST(TokenizerErrors, UnsupportedFormsAreNamed) {
  const std::string good = ReadFile(kFixtures / "llama3" / "tokenizer.json");
  auto expect_error = [](const std::string& json_text, const std::string& needle) {
    auto t = LoadTokenizerJson(json_text, "");
    ASSERT_FALSE(t.ok()) << needle;
    EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
    EXPECT_NE(t.status().message().find("tokenizer.json"), std::string::npos) << t.status().message();
    EXPECT_NE(t.status().message().find(needle), std::string::npos) << t.status().message();
  };
  expect_error("{not json", "not valid JSON");
  expect_error("[]", "not a JSON object");
  json j = json::parse(good);
  j["model"]["type"] = "WordPiece";
  expect_error(j.dump(), "WordPiece");
  j = json::parse(good);
  j["normalizer"] = json{{"type", "NFKC"}};
  expect_error(j.dump(), "NFKC");
  j = json::parse(good);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(j.dump(), "regex");
  j = json::parse(good);
  j["decoder"] = json{{"type", "WordPiece"}};
  expect_error(j.dump(), "WordPiece");
  j = json::parse(good);
  j["model"]["merges"][0] = json::array({"no-such-token", "x"});
  expect_error(j.dump(), "merge");
  j = json::parse(good);
  j["model"]["vocab"] = 7;
  expect_error(j.dump(), "vocab");
  j = json::parse(good);
  j["added_tokens"][0]["content"] = 5;
  expect_error(j.dump(), "content");

  auto bad_config = LoadTokenizerJson(good, R"({"bos_token": "<|no such token|>"})");
  ASSERT_FALSE(bad_config.ok());
  EXPECT_NE(bad_config.status().message().find("tokenizer_config.json"), std::string::npos);
}

TEST(TokenizerErrors, SentencePieceUnsupportedAndTruncated) {
  const std::string model = ReadFile(kFixtures / "sp_bpe" / "tokenizer.model");
  // Every truncation either loads (a prefix can be a valid proto) or fails cleanly.
  for (size_t len = 0; len < model.size(); len += (len < 64 ? 1 : 97)) {
    auto t = LoadSentencePieceModel(std::string_view(model).substr(0, len), "");
    if (!t.ok()) {
      EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
      EXPECT_NE(t.status().message().find("tokenizer.model"), std::string::npos);
    }
  }
  // A UNIGRAM model: append trainer_spec { model_type: UNIGRAM } (later fields win in protobuf).
  auto unigram = LoadSentencePieceModel(model + std::string("\x12\x02\x18\x01", 4), "");
  ASSERT_FALSE(unigram.ok());
  EXPECT_NE(unigram.status().message().find("UNIGRAM"), std::string::npos);
  // A precompiled normalizer (nmt_nfkc): normalizer_spec { precompiled_charsmap: "xx" }.
  auto nfkc = LoadSentencePieceModel(model + std::string("\x1a\x04\x12\x02xx", 6), "");
  ASSERT_FALSE(nfkc.ok());
  EXPECT_NE(nfkc.status().message().find("normalizer"), std::string::npos);
  // A BYTE piece that is not "<0xHH>" (e.g. "<0x-1>", once an index of -1) is refused: append
  // pieces { piece: "<0x-1>" type: BYTE }.
  for (const std::string text : {"<0x-1>", "<0x+5>", "<0x 5>", "<0xG0>"}) {
    const std::string piece = std::string("\x0a\x06", 2) + text + std::string("\x18\x06", 2);
    auto bad = LoadSentencePieceModel(model + std::string("\x0a", 1) + static_cast<char>(piece.size()) + piece, "");
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << text;
    EXPECT_NE(bad.status().message().find("byte piece"), std::string::npos) << bad.status().message();
  }
  // A well-formed one loads (lower-case hex too).
  const std::string ok_piece = std::string("\x0a\x06", 2) + "<0x0a>" + std::string("\x18\x06", 2);
  EXPECT_TRUE(LoadSentencePieceModel(model + std::string("\x0a", 1) + static_cast<char>(ok_piece.size()) + ok_piece, "").ok());
}

TEST(TokenizerErrors, FuzzedFilesNeverCrash) {
  std::mt19937 rng(7);
  const std::string model = ReadFile(kFixtures / "sp_bpe" / "tokenizer.model");
  const std::string tjson = ReadFile(kFixtures / "metaspace" / "tokenizer.json");
  for (int i = 0; i < 300; ++i) {
    for (const std::string* original : {&model, &tjson}) {
      std::string mutated = *original;
      std::uniform_int_distribution<size_t> where(0, mutated.size() - 1);
      std::uniform_int_distribution<int> byte(0, 255), flips(1, 8);
      for (int f = flips(rng); f > 0; --f) mutated[where(rng)] = static_cast<char>(byte(rng));
      auto t = original == &model ? LoadSentencePieceModel(mutated, "") : LoadTokenizerJson(mutated, "");
      if (t.ok()) {  // a surviving tokenizer must still encode and decode safely
        const auto ids = t.value()->Encode("Hello <s> wörld 😀\n", true);
        (void)t.value()->Decode(ids, false);
      }
    }
  }
}

}  // namespace
}  // namespace kvault::tokenizer

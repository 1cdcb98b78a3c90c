// The text side of a model as JSON for a stored weights manifest (text_extras.h).
#include "models/text_extras.h"

#include <stdlib.h>  // mkdtemp

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gguf/gguf_file.h"
#include "tokenizer/gguf_tokenizer.h"

namespace kvault::models {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool IsUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

// A byte string as JSON: itself when it is UTF-8, else {"hex": "..."}.
json BytesToJson(const std::string& s) {
  if (IsUtf8(s)) return s;
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * s.size());
  for (unsigned char c : s) hex += kHex[c >> 4], hex += kHex[c & 15];
  return json{{"hex", hex}};
}

std::string BytesFromJson(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  const std::string hex = j.at("hex").get<std::string>();
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

json StringsToJson(const std::vector<std::string>& v) {
  json a = json::array();
  for (const std::string& s : v) a.push_back(BytesToJson(s));
  return a;
}

std::vector<std::string> StringsFromJson(const json& a) {
  std::vector<std::string> v;
  v.reserve(a.size());
  for (const json& j : a) v.push_back(BytesFromJson(j));
  return v;
}

json OptionalId(const std::optional<uint32_t>& id) { return id ? json(*id) : json(nullptr); }
std::optional<uint32_t> OptionalIdFrom(const json& j) {
  return j.is_null() ? std::nullopt : std::optional<uint32_t>(j.get<uint32_t>());
}

}  // namespace

Result<json> GgufTextExtras(const gguf::GgufFile& file) {
  auto vocab = tokenizer::ReadGgufVocab(file);
  if (!vocab.ok()) return vocab.status();
  json v = {{"model", vocab->model},
            {"pre", vocab->pre},
            {"tokens", StringsToJson(vocab->tokens)},
            {"scores", vocab->scores},
            {"token_types", vocab->token_types},
            {"merges", StringsToJson(vocab->merges)},
            {"bos_id", OptionalId(vocab->bos_id)},
            {"eos_id", OptionalId(vocab->eos_id)},
            {"eot_id", OptionalId(vocab->eot_id)},
            {"unk_id", OptionalId(vocab->unk_id)},
            {"pad_id", OptionalId(vocab->pad_id)},
            {"add_bos", vocab->add_bos},
            {"add_eos", vocab->add_eos},
            {"add_space_prefix", vocab->add_space_prefix}};
  json text = {{"vocab", std::move(v)}, {"chat_template", nullptr}};
  if (file.Find("tokenizer.chat_template") != nullptr) {
    auto chat = file.GetString("tokenizer.chat_template");
    if (!chat.ok()) return chat.status();
    text["chat_template"] = BytesToJson(*chat);
  }
  return text;
}

Result<ModelText> GgufTextFromExtras(const json& text) {
  const json& v = text.at("vocab");
  tokenizer::GgufVocab vocab;
  vocab.model = v.at("model").get<std::string>();
  vocab.pre = v.at("pre").get<std::string>();
  vocab.tokens = StringsFromJson(v.at("tokens"));
  vocab.scores = v.at("scores").get<std::vector<float>>();
  vocab.token_types = v.at("token_types").get<std::vector<int32_t>>();
  vocab.merges = StringsFromJson(v.at("merges"));
  vocab.bos_id = OptionalIdFrom(v.at("bos_id"));
  vocab.eos_id = OptionalIdFrom(v.at("eos_id"));
  vocab.eot_id = OptionalIdFrom(v.at("eot_id"));
  vocab.unk_id = OptionalIdFrom(v.at("unk_id"));
  vocab.pad_id = OptionalIdFrom(v.at("pad_id"));
  vocab.add_bos = v.at("add_bos").get<bool>();
  vocab.add_eos = v.at("add_eos").get<bool>();
  vocab.add_space_prefix = v.at("add_space_prefix").get<bool>();
  ModelText out;
  auto tok = tokenizer::LoadGgufTokenizer(vocab);
  if (!tok.ok()) return tok.status();
  out.tokenizer = std::move(tok.value());
  out.add_bos = vocab.add_bos;
  if (!text.at("chat_template").is_null()) {
    // As LoadGgufChatTemplate does: the template with the texts of the bos and eos tokens.
    auto token_text = [&](const std::optional<uint32_t>& id) {
      return id && *id < vocab.tokens.size() ? vocab.tokens[*id] : std::string();
    };
    auto chat = tokenizer::ChatTemplate::FromTemplateText(BytesFromJson(text.at("chat_template")),
                                                          token_text(vocab.bos_id), token_text(vocab.eos_id));
    if (!chat.ok()) return chat.status();
    out.chat_template = std::move(chat.value());
  }
  return out;
}

// A Hugging Face directory's text side: every configuration and tokenizer file (not the
// weights), each as text or hex.
Result<json> HuggingFaceTextExtras(const std::string& dir) {
  json files = json::object();
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    if (!e.is_regular_file(ec) || name == "model.safetensors.index.json") continue;
    if (ext != ".json" && ext != ".jinja" && name != "tokenizer.model") continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) return Status::IOError("cannot read " + e.path().string());
    files[name] = BytesToJson(text.str());
  }
  if (ec) return Status::IOError("cannot list " + dir + ": " + ec.message());
  return json{{"files", std::move(files)}};
}

// Writes the files into a fresh temporary directory, loads the text side from it, removes it.
Result<ModelText> HuggingFaceTextFromExtras(const json& text, const TextOfDirectory& load_text) {
  std::error_code ec;
  std::string pattern = (fs::temp_directory_path(ec) / "kvault-model-text-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) return Status::IOError("cannot create a temporary directory");
  const fs::path dir = pattern;
  Result<ModelText> out = Status::Unavailable("unreachable");
  {
    Status written;
    for (const auto& [name, content] : text.at("files").items()) {
      if (name.find('/') != std::string::npos || name == "." || name == "..") continue;
      std::ofstream f(dir / name, std::ios::binary);
      const std::string bytes = BytesFromJson(content);
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!f) written = Status::IOError("cannot write " + (dir / name).string());
    }
    out = written.ok() ? load_text(dir.string()) : Result<ModelText>(written);
  }
  fs::remove_all(dir, ec);
  return out;
}

}  // namespace kvault::models

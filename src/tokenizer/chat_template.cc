// Chat templates: family recognition from the Jinja text and exact C++ renderers.
#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kvault::tokenizer {
namespace {

using json = nlohmann::json;

constexpr char kUnsupported[] = "unsupported chat template (known: Llama 3, ChatML/Qwen2, Mistral)";

// Family defaults, used when tokenizer_config.json does not name the tokens.
constexpr char kLlama3Bos[] = "<|begin_of_text|>";
constexpr char kLlama3EndOfTurn[] = "<|eot_id|>";
constexpr char kChatMLEndOfTurn[] = "<|im_end|>";
constexpr char kMistralBos[] = "<s>";
constexpr char kMistralEos[] = "</s>";
constexpr char kQwen2DefaultSystem[] = "You are a helpful assistant.";

bool Contains(std::string_view text, std::string_view needle) {
  return text.find(needle) != std::string_view::npos;
}

bool ContainsAny(std::string_view text, std::initializer_list<std::string_view> needles) {
  for (std::string_view n : needles) {
    if (Contains(text, n)) return true;
  }
  return false;
}

Status Unsupported(const std::string& why) {
  return Status::InvalidArgument(std::string(kUnsupported) + ": " + why);
}

// Python's str.isspace() for one code point.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 sequence of `len` bytes at `p` (len 1..3 suffices: every Python space is
// below U+10000). Returns U+FFFF (not a space) for anything malformed.
char32_t DecodeUtf8(const unsigned char* p, size_t len) {
  if (len == 1 && p[0] < 0x80) return p[0];
  if (len == 2 && (p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
    return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (len == 3 && (p[0] & 0xF0) == 0xE0 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
    return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  return 0xFFFF;
}

// Length of the UTF-8 sequence whose lead byte is `lead` (1 for a stray byte).
size_t SequenceLength(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// A tokenizer_config.json token: a string, {"content": "..."} (AddedToken) or null/absent ("").
std::string TokenText(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

// The "chat_template" of a config: a string, or the "default" entry of a list of
// {"name", "template"} objects. Empty when there is none.
std::string TemplateText(const json& config) {
  auto it = config.find("chat_template");
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
  }
  return "";
}

// The literal default system message of a ChatML template: the text between
// "<|im_start|>system" + newline (a Jinja "\n" escape or a real newline) and "<|im_end|>"
// when that span is plain text (no quotes, concatenation or expressions), as in Qwen2's
// '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'. "" when there is none.
std::string ChatMLDefaultSystem(std::string_view text) {
  constexpr std::string_view kHeader = "<|im_start|>system";
  constexpr std::string_view kEnd = "<|im_end|>";
  for (size_t pos = text.find(kHeader); pos != std::string_view::npos;
       pos = text.find(kHeader, pos + 1)) {
    size_t start = pos + kHeader.size();
    if (text.substr(start, 2) == "\\n") {
      start += 2;
    } else if (text.substr(start, 1) == "\n") {
      start += 1;
    } else {
      continue;
    }
    size_t end = text.find(kEnd, start);
    if (end == std::string_view::npos) continue;
    std::string_view body = text.substr(start, end - start);
    if (!body.empty() && body.find_first_of("'\"+{}\\\n") == std::string_view::npos) {
      return std::string(body);
    }
  }
  return "";
}

Status ValidateMessages(std::span<const ChatMessage> messages) {
  if (messages.empty()) return Status::InvalidArgument("chat template: the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return Status::InvalidArgument("chat template: message " + std::to_string(i) + " has role '" +
                                     role + "'; only system, user and assistant are supported" +
                                     " (tool messages are not)");
    }
  }
  return Status::OK();
}

Status AlternationError(size_t index, const char* rule) {
  return Status::InvalidArgument("chat template (Mistral): message " + std::to_string(index) +
                                 " breaks the rule: " + rule);
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open (no such file?)");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(path + ": read failed");
  return buffer.str();
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

// Appends `text` from `source` to a segment list, keeping RenderSegments' invariants: empty
// text adds nothing, and text from the same source as the last segment extends it.
void Append(std::vector<PromptSegment>* out, PromptSegment::Source source, std::string_view text) {
  if (text.empty()) return;
  if (!out->empty() && out->back().source == source) {
    out->back().text += text;
  } else {
    out->push_back(PromptSegment{source, std::string(text)});
  }
}
void Template(std::vector<PromptSegment>* out, std::string_view text) {
  Append(out, PromptSegment::Source::kTemplate, text);
}
void Content(std::vector<PromptSegment>* out, std::string_view text) {
  Append(out, PromptSegment::Source::kContent, text);
}

}  // namespace

const char* ChatFamilyName(ChatFamily family) {
  switch (family) {
    case ChatFamily::kLlama3: return "llama3";
    case ChatFamily::kChatML: return "chatml";
    case ChatFamily::kMistral: return "mistral";
  }
  return "unknown";
}

std::string PythonStrip(const std::string& text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  size_t begin = 0;
  size_t end = text.size();
  // Invariant: [begin, end) is the unstripped remainder; both ends sit on sequence borders.
  while (begin < end) {
    size_t len = SequenceLength(bytes[begin]);
    if (len > end - begin || !IsPythonSpace(DecodeUtf8(bytes + begin, len))) break;
    begin += len;
  }
  while (end > begin) {
    size_t lead = end - 1;
    while (lead > begin && (bytes[lead] & 0xC0) == 0x80 && end - lead < 4) --lead;
    size_t len = end - lead;
    if (SequenceLength(bytes[lead]) != len || !IsPythonSpace(DecodeUtf8(bytes + lead, len))) break;
    end = lead;
  }
  return text.substr(begin, end - begin);
}

Result<ChatTemplate> ChatTemplate::FromTokenizerConfig(const std::string& tokenizer_config_json_text) {
  json config = json::parse(tokenizer_config_json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return Status::InvalidArgument("tokenizer_config.json: not a JSON object");
  }
  std::string text = TemplateText(config);
  if (text.empty()) return Status::InvalidArgument("tokenizer_config.json: no chat_template");
  return FromTemplateText(text, TokenText(config, "bos_token"), TokenText(config, "eos_token"));
}

Result<ChatTemplate> ChatTemplate::FromTemplateText(const std::string& text,
                                                    const std::string& bos_token,
                                                    const std::string& eos_token) {
  ChatTemplate result(ChatFamily::kLlama3);  // replaced by the recognized family below
  if (Contains(text, "<|start_header_id|>")) {
    if (ContainsAny(text, {"Cutting Knowledge Date", "tools_in_user_message", "ipython"})) {
      return Unsupported("Llama 3.1+ templates (knowledge-date system header, tools) are not supported");
    }
    if (!Contains(text, "<|eot_id|>")) return Unsupported("Llama-3-like template without <|eot_id|>");
    result = ForFamily(ChatFamily::kLlama3);
  } else if (Contains(text, "<|im_start|>")) {
    if (ContainsAny(text, {"<think>", "enable_thinking", "reasoning_content"})) {
      return Unsupported("ChatML templates with thinking (Qwen3 style) are not supported");
    }
    result = ForFamily(ChatFamily::kChatML);
    result.default_system_prompt_ = ChatMLDefaultSystem(text);
  } else if (Contains(text, "[INST]")) {
    if (Contains(text, "<<SYS>>")) return Unsupported("Llama 2 ([INST] <<SYS>>) is not supported");
    if (ContainsAny(text, {"[AVAILABLE_TOOLS]", "[SYSTEM_PROMPT]", "loop.last and system_message"})) {
      return Unsupported("Mistral v0.3+ templates are not supported (v0.1/v0.2 are)");
    }
    result = ForFamily(ChatFamily::kMistral);
    if (Contains(text, "system_message")) {
      if (!Contains(text, "' [INST] '") || !Contains(text, "loop.first and system_message")) {
        return Unsupported("unrecognized Mistral system-message form");
      }
      result.mistral_style_ = MistralStyle::kSystemOnFirstUser;
    } else {
      if (!Contains(text, "'[INST] '")) return Unsupported("unrecognized Mistral [INST] form");
      result.mistral_style_ = MistralStyle::kNoSystemRole;
      result.mistral_space_after_eos_ = Contains(text, "eos_token + ' '");
    }
  } else {
    return Status::InvalidArgument(kUnsupported);
  }
  if (!bos_token.empty()) result.bos_token_ = bos_token;
  if (!eos_token.empty()) result.eos_token_ = eos_token;
  return result;
}

ChatTemplate ChatTemplate::ForFamily(ChatFamily family) {
  ChatTemplate t(family);
  switch (family) {
    case ChatFamily::kLlama3:
      t.bos_token_ = kLlama3Bos;
      t.eos_token_ = kLlama3EndOfTurn;
      break;
    case ChatFamily::kChatML:
      t.eos_token_ = kChatMLEndOfTurn;
      t.default_system_prompt_ = kQwen2DefaultSystem;
      break;
    case ChatFamily::kMistral:
      t.bos_token_ = kMistralBos;
      t.eos_token_ = kMistralEos;
      t.mistral_style_ = MistralStyle::kSystemOnFirstUser;
      break;
  }
  return t;
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  std::string end_of_turn;
  switch (family_) {
    case ChatFamily::kLlama3: end_of_turn = kLlama3EndOfTurn; break;
    case ChatFamily::kChatML: end_of_turn = kChatMLEndOfTurn; break;
    case ChatFamily::kMistral: end_of_turn = eos_token_; break;
  }
  std::vector<std::string> stops{end_of_turn};
  if (!eos_token_.empty() && eos_token_ != end_of_turn) stops.push_back(eos_token_);
  return stops;
}

Result<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                         bool add_generation_prompt) const {
  auto segments = RenderSegments(messages, add_generation_prompt);
  if (!segments.ok()) return segments.status();
  std::string out;
  for (const PromptSegment& s : *segments) out += s.text;
  return out;
}

Result<std::vector<PromptSegment>> ChatTemplate::RenderSegments(std::span<const ChatMessage> messages,
                                                                bool add_generation_prompt) const {
  KVAULT_RETURN_IF_ERROR(ValidateMessages(messages));
  std::vector<PromptSegment> out;
  switch (family_) {
    case ChatFamily::kLlama3: RenderLlama3(messages, add_generation_prompt, &out); return out;
    case ChatFamily::kChatML: RenderChatML(messages, add_generation_prompt, &out); return out;
    case ChatFamily::kMistral: KVAULT_RETURN_IF_ERROR(RenderMistral(messages, &out)); return out;
  }
  return Status::InvalidArgument(kUnsupported);
}

void ChatTemplate::RenderLlama3(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                std::vector<PromptSegment>* out) const {
  Template(out, bos_token_);  // the template puts BOS before the first message only
  for (const ChatMessage& m : messages) {
    Template(out, "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
    Content(out, PythonStrip(m.content));
    Template(out, kLlama3EndOfTurn);
  }
  if (add_generation_prompt) Template(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

void ChatTemplate::RenderChatML(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                std::vector<PromptSegment>* out) const {
  if (!default_system_prompt_.empty() && messages.front().role != "system") {
    Template(out, "<|im_start|>system\n" + default_system_prompt_ + "<|im_end|>\n");
  }
  for (const ChatMessage& m : messages) {
    Template(out, "<|im_start|>" + m.role + "\n");
    Content(out, m.content);
    Template(out, "<|im_end|>\n");
  }
  if (add_generation_prompt) Template(out, "<|im_start|>assistant\n");
}

// Both styles: after the optional leading system message (kSystemOnFirstUser only), message
// i of the rest is a user message iff i is even. A system message anywhere else is refused.
Status ChatTemplate::RenderMistral(std::span<const ChatMessage> messages, std::vector<PromptSegment>* out) const {
  const bool system_on_first_user = mistral_style_ == MistralStyle::kSystemOnFirstUser;
  const ChatMessage* system = nullptr;
  size_t first = 0;
  if (system_on_first_user && messages.front().role == "system") {
    system = &messages.front();
    first = 1;
  }
  const char* rule = system_on_first_user
      ? "after the optional system message, roles must alternate user/assistant/user/..."
      : "roles must alternate user/assistant/user/... (this template has no system role)";
  const std::string inst_open = system_on_first_user ? " [INST] " : "[INST] ";
  const std::string assistant_prefix = system_on_first_user ? " " : "";
  const std::string assistant_suffix = eos_token_ + (mistral_space_after_eos_ ? " " : "");

  Template(out, bos_token_);
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    if ((m.role == "user") != expect_user || m.role == "system") return AlternationError(i, rule);
    if (m.role == "user") {
      Template(out, inst_open);
      if (system != nullptr && i == first) {
        Content(out, system->content);
        Template(out, "\n\n");
      }
      Content(out, m.content);
      Template(out, " [/INST]");
    } else {
      Template(out, assistant_prefix);
      Content(out, m.content);
      Template(out, assistant_suffix);
    }
  }
  return Status::OK();
}

Result<ChatTemplate> LoadChatTemplate(const std::string& model_dir) {
  const std::string config_path = model_dir + "/tokenizer_config.json";
  Result<std::string> config_text = ReadFile(config_path);
  if (!config_text.ok()) return config_text.status();
  json config = json::parse(config_text.value(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return Status::InvalidArgument(config_path + ": not a JSON object");
  }
  std::string text = TemplateText(config);
  // Newer transformers save the template next to the config instead of inside it.
  if (text.empty() && FileExists(model_dir + "/chat_template.jinja")) {
    Result<std::string> jinja = ReadFile(model_dir + "/chat_template.jinja");
    if (!jinja.ok()) return jinja.status();
    text = jinja.value();
  } else if (text.empty() && FileExists(model_dir + "/chat_template.json")) {
    Result<std::string> wrapped = ReadFile(model_dir + "/chat_template.json");
    if (!wrapped.ok()) return wrapped.status();
    json holder = json::parse(wrapped.value(), nullptr, false);
    if (!holder.is_discarded() && holder.is_object()) text = TemplateText(holder);
  }
  if (text.empty()) {
    return Status::InvalidArgument(config_path + ": no chat_template (and no chat_template.jinja" +
                                   " or chat_template.json beside it)");
  }
  Result<ChatTemplate> t =
      ChatTemplate::FromTemplateText(text, TokenText(config, "bos_token"), TokenText(config, "eos_token"));
  if (!t.ok()) return Status(t.status().code(), config_path + ": " + t.status().message());
  return t;
}

}  // namespace kvault::tokenizer

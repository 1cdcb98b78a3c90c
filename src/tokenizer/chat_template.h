// Chat templates of the supported model families, rendered by C++ code (no Jinja engine).
//
// A Hugging Face model directory carries its prompt format as a Jinja template in
// tokenizer_config.json ("chat_template"). kvault recognizes the few published forms it
// supports from markers in that text and reproduces their output byte for byte (the
// reference is transformers' apply_chat_template(tokenize=False); see
// scripts/make_chat_fixtures.py and tests/fixtures/chat/):
//
//   kLlama3   Meta-Llama-3-*-Instruct: <|begin_of_text|> once, then per message
//             <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>, CONTENT stripped
//             of leading and trailing whitespace (Jinja's `trim`, i.e. Python's str.strip()).
//             Llama 3.1+ templates (knowledge-date system header, tools) are refused.
//   kChatML   Qwen2 / Qwen2.5 and plain ChatML: <|im_start|>ROLE\nCONTENT<|im_end|>\n. A
//             default system message is inserted when the first message is not a system
//             one, if the template has one: Qwen2 "You are a helpful assistant.", Qwen2.5
//             "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", plain
//             ChatML none. No BOS. Qwen3-style (thinking) templates are refused.
//   kMistral  Mistral-7B-Instruct-v0.1/v0.2 style: <s> then " [INST] USER [/INST]" and
//             " ASSISTANT</s>"; an optional leading system message is prepended to the FIRST
//             user message as "SYSTEM\n\nUSER" (the current v0.2 template). After it, roles
//             must alternate user/assistant starting with user. The original v0.2 template
//             (no leading spaces, no system role) is recognized too. v0.3+ templates
//             ([AVAILABLE_TOOLS], system prompt on the last user message) and Llama 2
//             (<<SYS>>) are refused.
//
// The rendered text contains the BOS token where the template emits one, so it must be
// tokenized without adding special tokens again. Roles are system, user and assistant only
// (tool calls are not supported); an empty conversation is refused.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "kvault/status.h"

namespace kvault::tokenizer {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A piece of a rendered prompt: text the template wrote (it spells the control tokens: BOS,
// headers, end-of-turn markers, its default system message) or text copied from a message's
// content (the client's words: tokenize it as plain text, SpecialTokens::kPlainText).
struct PromptSegment {
  enum class Source { kTemplate, kContent };
  Source source = Source::kTemplate;
  std::string text;
};

enum class ChatFamily { kLlama3, kChatML, kMistral };

// "llama3", "chatml" or "mistral".
const char* ChatFamilyName(ChatFamily family);

class ChatTemplate {
 public:
  // Parses the text of a tokenizer_config.json: its "chat_template" (a string, or a list of
  // {name, template} from which "default" is taken) and its bos_token/eos_token (strings or
  // {"content": ...} objects; family defaults when absent or null).
  static Result<ChatTemplate> FromTokenizerConfig(const std::string& tokenizer_config_json_text);

  // Recognizes the family (and variant) of a Jinja chat template's text. Empty tokens take the
  // family defaults. kInvalidArgument "unsupported chat template (known: ...)" otherwise.
  static Result<ChatTemplate> FromTemplateText(const std::string& template_text,
                                               const std::string& bos_token,
                                               const std::string& eos_token);

  // The reference form of each family: Llama 3, Qwen2 ("You are a helpful assistant."),
  // Mistral v0.2 (system prompt on the first user message), with the family's tokens.
  static ChatTemplate ForFamily(ChatFamily family);

  // The prompt text of `messages`. add_generation_prompt appends the assistant header for
  // Llama 3 and ChatML; Mistral's template has none (a prompt ends with [/INST] already).
  // kInvalidArgument for an empty conversation, an unknown role, or (Mistral) roles that
  // do not alternate.
  Result<std::string> Render(std::span<const ChatMessage> messages,
                             bool add_generation_prompt) const;

  // The same prompt as segments telling the template's text from the messages' content.
  // Invariants: the concatenation of the texts equals Render(...) (same errors too); no
  // segment is empty; neighbours differ in source. A content segment holds exactly what the
  // template copies from content (Llama 3: the stripped content).
  Result<std::vector<PromptSegment>> RenderSegments(std::span<const ChatMessage> messages,
                                                    bool add_generation_prompt) const;

  ChatFamily family() const { return family_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // ChatML only: the system message inserted when the conversation has none ("" for none).
  const std::string& default_system_prompt() const { return default_system_prompt_; }
  // Strings that end an assistant turn: the family's end-of-turn marker (<|eot_id|>,
  // <|im_end|>, </s>) and the eos token when it differs. Never empty.
  std::vector<std::string> stop_strings() const;

 private:
  // The variants of Mistral's template that kvault reproduces.
  enum class MistralStyle {
    kSystemOnFirstUser,  // current v0.2: "<s> [INST] S\n\nU [/INST] A</s>"
    kNoSystemRole,       // original v0.1/v0.2: "<s>[INST] U [/INST]A</s>", system refused
  };

  explicit ChatTemplate(ChatFamily family) : family_(family) {}

  // Each appends the conversation's segments to `out` (see RenderSegments).
  void RenderLlama3(std::span<const ChatMessage> messages, bool add_generation_prompt,
                    std::vector<PromptSegment>* out) const;
  void RenderChatML(std::span<const ChatMessage> messages, bool add_generation_prompt,
                    std::vector<PromptSegment>* out) const;
  Status RenderMistral(std::span<const ChatMessage> messages, std::vector<PromptSegment>* out) const;

  ChatFamily family_;
  std::string bos_token_;
  std::string eos_token_;
  std::string default_system_prompt_;                       // kChatML only
  MistralStyle mistral_style_ = MistralStyle::kSystemOnFirstUser;
  bool mistral_space_after_eos_ = false;                    // kNoSystemRole: "</s> " (v0.1)
};

// Reads MODEL_DIR/tokenizer_config.json (or, when it has no chat_template, the newer
// MODEL_DIR/chat_template.jinja or chat_template.json) and recognizes its template.
// kNotFound names the missing file; a config without any chat template is kInvalidArgument
// naming tokenizer_config.json.
Result<ChatTemplate> LoadChatTemplate(const std::string& model_dir);

// Python's str.strip() on UTF-8 text (what Jinja's `trim` filter does): removes leading and
// trailing code points for which str.isspace() is true (ASCII whitespace, U+001C..U+001F,
// U+0085, U+00A0, U+3000, ...). Bytes that are not valid UTF-8 are never stripped.
std::string PythonStrip(const std::string& text);

}  // namespace kvault::tokenizer

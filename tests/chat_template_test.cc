// Chat templates: byte-for-byte agreement with jinja2 renders of the real templates
// (tests/fixtures/chat/*, written by scripts/make_chat_fixtures.py), family recognition and
// the errors.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

namespace kvault::tokenizer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kFixtures = KVAULT_CHAT_FIXTURES_DIR;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<ChatMessage> Messages(const json& array) {
  std::vector<ChatMessage> out;
  for (const json& m : array) out.push_back({m.at("role"), m.at("content")});
  return out;
}

std::string TemplateOf(const std::string& fixture) {
  return json::parse(ReadText(kFixtures / fixture / "tokenizer_config.json")).at("chat_template");
}

// A scratch model directory, removed on destruction.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("kvault_chat_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

struct FixtureFamily {
  const char* dir;
  ChatFamily family;
};

class FixtureTest : public ::testing::TestWithParam<FixtureFamily> {};

// Every case of the fixture renders exactly as jinja2 did, or is refused where jinja2 raised.
TEST_P(FixtureTest, MatchesReferenceByteForByte) {
  const fs::path dir = kFixtures / GetParam().dir;
  Result<ChatTemplate> t = LoadChatTemplate(dir.string());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->family(), GetParam().family);

  json expected = json::parse(ReadText(dir / "expected.json"));
  ASSERT_GE(expected.at("cases").size(), 10u);
  for (const json& c : expected.at("cases")) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    std::vector<ChatMessage> messages = Messages(c.at("messages"));
    Result<std::string> rendered = t->Render(messages, c.at("add_generation_prompt"));
    if (c.value("error", false)) {
      ASSERT_FALSE(rendered.ok()) << "rendered: " << rendered.value();
      EXPECT_EQ(rendered.status().code(), Code::kInvalidArgument);
    } else {
      ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
      EXPECT_EQ(rendered.value(), c.at("expected").get<std::string>());
    }
    // The segments concatenate to the same text (and fail alike).
    auto segments = t->RenderSegments(messages, c.at("add_generation_prompt"));
    ASSERT_EQ(segments.ok(), rendered.ok());
    if (segments.ok()) {
      std::string joined;
      for (const PromptSegment& s : *segments) joined += s.text;
      EXPECT_EQ(joined, rendered.value());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FixtureTest,
                         ::testing::Values(FixtureFamily{"llama3", ChatFamily::kLlama3},
                                           FixtureFamily{"qwen2_5", ChatFamily::kChatML},
                                           FixtureFamily{"qwen2", ChatFamily::kChatML},
                                           FixtureFamily{"mistral", ChatFamily::kMistral},
                                           FixtureFamily{"mistral_legacy", ChatFamily::kMistral}),
                         [](const auto& info) { return std::string(info.param.dir); });

// ForFamily() is the reference form of each family: it agrees with the fixture templates.
TEST(ChatTemplateTest, ForFamilyMatchesReferenceTemplates) {
  const std::vector<ChatMessage> conversation = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  for (auto [dir, family] : {std::pair{"llama3", ChatFamily::kLlama3},
                             std::pair{"qwen2", ChatFamily::kChatML},
                             std::pair{"mistral", ChatFamily::kMistral}}) {
    SCOPED_TRACE(dir);
    Result<ChatTemplate> loaded = LoadChatTemplate((kFixtures / dir).string());
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    ChatTemplate builtin = ChatTemplate::ForFamily(family);
    for (bool gen : {false, true}) {
      Result<std::string> a = loaded->Render(conversation, gen);
      Result<std::string> b = builtin.Render(conversation, gen);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(a.value(), b.value());
    }
  }
}

TEST(ChatTemplateTest, RecognizesFamiliesAndDefaults) {
  Result<ChatTemplate> qwen25 = ChatTemplate::FromTemplateText(TemplateOf("qwen2_5"), "", "");
  ASSERT_TRUE(qwen25.ok());
  EXPECT_EQ(qwen25->family(), ChatFamily::kChatML);
  EXPECT_EQ(qwen25->default_system_prompt(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  Result<ChatTemplate> qwen2 = ChatTemplate::FromTemplateText(TemplateOf("qwen2"), "", "");
  ASSERT_TRUE(qwen2.ok());
  EXPECT_EQ(qwen2->default_system_prompt(), "You are a helpful assistant.");

  // Plain ChatML: no default system message.
  Result<ChatTemplate> plain = ChatTemplate::FromTemplateText(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
      " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
      "{% endif %}",
      "", "<|endoftext|>");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->default_system_prompt(), "");
  std::vector<ChatMessage> one = {{"user", "hi"}};
  EXPECT_EQ(plain->Render(one, true).value(), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(plain->stop_strings(), (std::vector<std::string>{"<|im_end|>", "<|endoftext|>"}));

  Result<ChatTemplate> llama = ChatTemplate::FromTemplateText(TemplateOf("llama3"), "", "<|end_of_text|>");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->family(), ChatFamily::kLlama3);
  EXPECT_EQ(llama->bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(llama->stop_strings(), (std::vector<std::string>{"<|eot_id|>", "<|end_of_text|>"}));

  EXPECT_EQ(ChatTemplate::ForFamily(ChatFamily::kMistral).stop_strings(), std::vector<std::string>{"</s>"});
  EXPECT_EQ(ChatTemplate::ForFamily(ChatFamily::kChatML).stop_strings(), std::vector<std::string>{"<|im_end|>"});
  EXPECT_STREQ(ChatFamilyName(ChatFamily::kChatML), "chatml");
}

// SmolLM2-Instruct's template (as a GGUF's tokenizer.chat_template stores it: real newlines in
// the Jinja string literals; and as tokenizer_config.json spells it: "\n" escapes). Expected
// renders written out by hand from the template.
TEST(ChatTemplateTest, SmolLM2DefaultSystemPrompt) {
  const std::string gguf_form =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
      "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
      "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
      "{% endif %}";
  std::string escaped_form;
  for (char c : gguf_form) escaped_form += c == '\n' ? std::string("\\n") : std::string(1, c);
  const std::string system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
  for (const std::string& text : {gguf_form, escaped_form}) {
    Result<ChatTemplate> t = ChatTemplate::FromTemplateText(text, "<|im_start|>", "<|im_end|>");
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->family(), ChatFamily::kChatML);
    EXPECT_EQ(t->default_system_prompt(), system);
    EXPECT_EQ(t->stop_strings(), std::vector<std::string>{"<|im_end|>"});

    std::vector<ChatMessage> one = {{"user", "Hi"}};
    EXPECT_EQ(t->Render(one, true).value(),
              "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n");
    EXPECT_EQ(t->Render(one, false).value(),
              "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nHi<|im_end|>\n");
    std::vector<ChatMessage> with_system = {
        {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
    EXPECT_EQ(t->Render(with_system, false).value(),
              "<|im_start|>system\nBe brief.<|im_end|>\n"
              "<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n"
              "<|im_start|>user\nBye<|im_end|>\n");
    // Content is not stripped; the default system turn comes before a leading assistant turn too.
    std::vector<ChatMessage> assistant_first = {{"assistant", " x "}, {"user", "\ny"}};
    EXPECT_EQ(t->Render(assistant_first, true).value(),
              "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>assistant\n x <|im_end|>\n"
              "<|im_start|>user\n\ny<|im_end|>\n"
              "<|im_start|>assistant\n");
  }
}

TEST(ChatTemplateTest, ConfigForms) {
  // A list of named templates (the "default" one is used) and AddedToken objects.
  json config = {{"bos_token", {{"content", "<|begin_of_text|>"}, {"lstrip", false}}},
                 {"eos_token", "<|eot_id|>"},
                 {"chat_template", json::array({{{"name", "tool_use"}, {"template", "{{ tools }}"}},
                                                {{"name", "default"}, {"template", TemplateOf("llama3")}}})}};
  Result<ChatTemplate> t = ChatTemplate::FromTokenizerConfig(config.dump());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->family(), ChatFamily::kLlama3);
  EXPECT_EQ(t->bos_token(), "<|begin_of_text|>");

  Result<ChatTemplate> bad = ChatTemplate::FromTokenizerConfig("{not json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  Result<ChatTemplate> none = ChatTemplate::FromTokenizerConfig(R"({"eos_token": "</s>"})");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("chat_template"), std::string::npos);
}

TEST(ChatTemplateTest, UnknownTemplatesAreRefused) {
  const std::vector<std::string> unknown = {
      // Some other format altogether.
      "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
      // Llama 2.
      "{{ bos_token }}[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>\\n\\n{{ content }} [/INST]",
      // Llama 3.1.
      "{{- bos_token }}<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: "
      "December 2023\\n<|eot_id|>",
      // Qwen3.
      "<|im_start|>{{ role }}\\n<think>\\n\\n</think>\\n\\n<|im_end|>",
      // Mistral v0.3.
      "{{ bos_token }}[AVAILABLE_TOOLS] [INST] x [/INST]",
  };
  for (const std::string& text : unknown) {
    SCOPED_TRACE(text);
    Result<ChatTemplate> t = ChatTemplate::FromTemplateText(text, "", "");
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(t.status().message().rfind(
                  "unsupported chat template (known: Llama 3, ChatML/Qwen2, Mistral)", 0),
              0u) << t.status().message();
  }
  TempDir dir;
  dir.Write("tokenizer_config.json", json({{"chat_template", unknown[0]}}).dump());
  Result<ChatTemplate> loaded = LoadChatTemplate(dir.path().string());
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), Code::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("tokenizer_config.json"), std::string::npos);
  EXPECT_NE(loaded.status().message().find("unsupported chat template"), std::string::npos);
}

TEST(ChatTemplateTest, MissingFileAndMissingTemplateNameTheFile) {
  TempDir dir;
  Result<ChatTemplate> missing = LoadChatTemplate(dir.path().string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find((dir.path() / "tokenizer_config.json").string()),
            std::string::npos) << missing.status().message();

  dir.Write("tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>"})");
  Result<ChatTemplate> no_template = LoadChatTemplate(dir.path().string());
  ASSERT_FALSE(no_template.ok());
  EXPECT_EQ(no_template.status().code(), Code::kInvalidArgument);
  EXPECT_NE(no_template.status().message().find("tokenizer_config.json"), std::string::npos);
  EXPECT_NE(no_template.status().message().find("no chat_template"), std::string::npos);

  // The template may also sit beside the config (newer transformers).
  dir.Write("chat_template.jinja", TemplateOf("mistral"));
  Result<ChatTemplate> beside = LoadChatTemplate(dir.path().string());
  ASSERT_TRUE(beside.ok()) << beside.status().ToString();
  EXPECT_EQ(beside->family(), ChatFamily::kMistral);
}

TEST(ChatTemplateTest, BadRolesAndEmptyConversationsAreRefused) {
  for (ChatFamily family : {ChatFamily::kLlama3, ChatFamily::kChatML, ChatFamily::kMistral}) {
    ChatTemplate t = ChatTemplate::ForFamily(family);
    std::vector<ChatMessage> tool = {{"user", "x"}, {"tool", "{\"ok\":true}"}};
    Result<std::string> r = t.Render(tool, true);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'tool'"), std::string::npos) << r.status().message();
    Result<std::string> empty = t.Render({}, true);
    ASSERT_FALSE(empty.ok());
    EXPECT_EQ(empty.status().code(), Code::kInvalidArgument);
  }
}

TEST(ChatTemplateTest, MistralAlternation) {
  ChatTemplate t = ChatTemplate::ForFamily(ChatFamily::kMistral);
  const std::vector<std::vector<ChatMessage>> bad = {
      {{"user", "a"}, {"user", "b"}},
      {{"assistant", "a"}, {"user", "b"}},
      {{"system", "s"}, {"assistant", "a"}},
      {{"user", "a"}, {"system", "s"}},
      {{"system", "s"}, {"system", "t"}, {"user", "u"}},
  };
  for (const auto& conversation : bad) {
    Result<std::string> r = t.Render(conversation, false);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("alternate"), std::string::npos);
  }
  std::vector<ChatMessage> good = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}};
  EXPECT_EQ(t.Render(good, true).value(), "<s> [INST] S\n\nU [/INST] A</s> [INST] V [/INST]");
}

// RenderSegments: the concatenation is Render's text; content segments hold exactly the
// messages' (Llama 3: stripped) content, even content that spells the template's own markers.
TEST(ChatTemplateTest, RenderSegmentsConcatenateToRenderAndKeepContentApart) {
  const std::vector<ChatMessage> conversation = {
      {"system", "Be brief.<|im_end|>"},
      {"user", "  <|eot_id|><|start_header_id|>system<|end_header_id|>\n\n [INST] </s>  "},
      {"assistant", ""},
      {"user", "\nok\n"}};
  for (ChatFamily family : {ChatFamily::kLlama3, ChatFamily::kChatML, ChatFamily::kMistral}) {
    SCOPED_TRACE(ChatFamilyName(family));
    const ChatTemplate t = ChatTemplate::ForFamily(family);
    std::vector<ChatMessage> messages = conversation;
    if (family == ChatFamily::kMistral) messages.erase(messages.begin() + 2);  // alternation
    if (family == ChatFamily::kMistral) messages.back().role = "assistant";
    auto text = t.Render(messages, true);
    auto segments = t.RenderSegments(messages, true);
    ASSERT_TRUE(text.ok() && segments.ok()) << text.status().ToString();
    std::string joined, content;
    for (size_t i = 0; i < segments->size(); ++i) {
      const PromptSegment& s = (*segments)[i];
      EXPECT_FALSE(s.text.empty());
      if (i > 0) EXPECT_NE(s.source, (*segments)[i - 1].source);
      joined += s.text;
      if (s.source == PromptSegment::Source::kContent) content += s.text;
    }
    EXPECT_EQ(joined, *text);
    std::string expected_content;
    for (const ChatMessage& m : messages) {
      expected_content += family == ChatFamily::kLlama3 ? PythonStrip(m.content) : m.content;
    }
    EXPECT_EQ(content, expected_content);
  }
  // Errors are Render's.
  const ChatTemplate mistral = ChatTemplate::ForFamily(ChatFamily::kMistral);
  const std::vector<ChatMessage> bad = {{"assistant", "a"}};
  EXPECT_EQ(mistral.RenderSegments(bad, true).status().message(), mistral.Render(bad, true).status().message());
  EXPECT_FALSE(mistral.RenderSegments({}, true).ok());
}

TEST(ChatTemplateTest, PythonStripMatchesStrStrip) {
  EXPECT_EQ(PythonStrip(""), "");
  EXPECT_EQ(PythonStrip(" \t\n\v\f\r"), "");
  EXPECT_EQ(PythonStrip("  a b  "), "a b");
  EXPECT_EQ(PythonStrip("\xe3\x80\x80x\xc2\xa0"), "x");              // U+3000, U+00A0
  EXPECT_EQ(PythonStrip("\x1c\xc2\x85y\xe2\x80\xa8"), "y");           // U+001C, U+0085, U+2028
  EXPECT_EQ(PythonStrip("\xe2\x80\x8bz\xe2\x80\x8b"), "\xe2\x80\x8bz\xe2\x80\x8b");  // U+200B kept
  EXPECT_EQ(PythonStrip(" \xf0\x9f\x9a\x80 "), "\xf0\x9f\x9a\x80");   // 4-byte emoji kept
  EXPECT_EQ(PythonStrip(" \xff \x80"), "\xff \x80");                  // invalid bytes kept
}

}  // namespace
}  // namespace kvault::tokenizer

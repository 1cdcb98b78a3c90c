#include "apps/demo/demo_plan.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "tokenizer/utf8.h"

namespace kvault::demo {
namespace {

// Deterministic on every machine and standard library (no std:: distributions).
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t Next() { return SplitMix64(state); }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
};

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t s = a ^ (b * 0xD6E8FEB86659FD93ull);
  return SplitMix64(s);
}

std::vector<uint32_t> RandomTokens(Rng& rng, int64_t n, int64_t vocab) {
  std::vector<uint32_t> out(n);
  for (auto& t : out) t = static_cast<uint32_t>(rng.Below(vocab));
  return out;
}


// Debian's license texts: real prose every machine has. Sessions 1 and 3 talk about the
// first, so the cached run also reuses KV across sessions.
const char* const kDocuments[] = {"Apache-2.0", "LGPL-3", "Artistic", "MPL-2.0", "GPL-2", "GFDL-1.3"};
constexpr const char* kDocumentDir = "/usr/share/common-licenses/";

const char* const kQuestions[] = {
    "What is this document, and who published it? Answer in one sentence.",
    "Can I use software under it in a commercial product?",
    "What must I do when I redistribute the software?",
    "What does it say about warranty?",
    "Does it mention patents? Quote the relevant part briefly.",
    "Summarize it in two sentences.",
    "Who is allowed to change the terms?",
    "What happens if I break the conditions?",
};
constexpr int kQuestionCount = sizeof(kQuestions) / sizeof(kQuestions[0]);


// Real model: session s's messages up to its turn t's question, with `answers` (texts) of
// turns < t in between; turn 1's message carries the document.
std::vector<tokenizer::ChatMessage> Conversation(const Plan& p, int s, int t, const std::vector<std::string>& answers) {
  std::vector<tokenizer::ChatMessage> messages;
  for (int i = 0; i <= t; ++i) {
    std::string content = p.questions[s][i];
    if (i == 0) content = "Here is a document:\n\n" + p.documents[s] + "\n\n" + content;
    messages.push_back({"user", std::move(content)});
    if (i < t) messages.push_back({"assistant", answers[i]});
  }
  return messages;
}

}  // namespace

std::string AnswerText(const models::LoadedModel& m, std::vector<uint32_t> ids, const std::vector<uint32_t>& stop) {
  if (!ids.empty() && std::find(stop.begin(), stop.end(), ids.back()) != stop.end()) ids.pop_back();
  return m.tokenizer->Decode(ids, /*skip_special=*/true);
}

std::vector<uint32_t> Prompt(const Plan& p, int s, int t, const std::vector<std::vector<uint32_t>>& answers) {
  if (p.model == nullptr) {
    std::vector<uint32_t> prompt = p.system;
    for (int i = 0; i <= t; ++i) {
      prompt.insert(prompt.end(), p.user[s][i].begin(), p.user[s][i].end());
      if (i < t) prompt.insert(prompt.end(), answers[i].begin(), answers[i].end());
    }
    return prompt;
  }
  std::vector<std::string> answer_texts;
  for (int i = 0; i < t; ++i) answer_texts.push_back(AnswerText(*p.model, answers[i], p.stop_tokens));
  Result<std::string> text = p.model->chat_template->Render(Conversation(p, s, t, answer_texts),
                                                            /*add_generation_prompt=*/true);
  if (!text.ok()) return {};  // MakeRealPlan rendered the same shape of conversation already
  return p.model->tokenizer->Encode(*text, /*add_bos=*/false);  // the template wrote BOS if any
}

Plan MakeRandomPlan(const DemoOptions& o, int64_t vocab) {
  Plan p;
  Rng sys(Mix(o.seed, 0x5157E4));
  p.system = RandomTokens(sys, o.system_tokens, vocab);
  Rng warm(Mix(o.seed, 0x3A53));
  p.warmup = RandomTokens(warm, 384, vocab);
  p.user.resize(o.sessions);
  double total_final = 0;
  for (int s = 0; s < o.sessions; ++s) {
    int64_t history = o.system_tokens;
    for (int t = 0; t < o.turns; ++t) {
      Rng rng(Mix(Mix(o.seed, 1000 + s), 1 + t));
      int64_t len = o.user_min_tokens + static_cast<int64_t>(rng.Below(o.user_max_tokens - o.user_min_tokens + 1));
      p.user[s].push_back(RandomTokens(rng, len, vocab));
      p.max_prompt = std::max(p.max_prompt, history + len);
      history += len + o.max_new_tokens;
    }
    total_final += history;
  }
  p.mean_final_tokens = o.sessions > 0 ? total_final / o.sessions : 0;
  return p;
}

// The first `tokens` tokens of a document, cut back to the last paragraph break.
Result<std::string> ReadDocument(const models::LoadedModel& m, const std::string& name, int tokens) {
  const std::string path = std::string(kDocumentDir) + name;
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  if (!in) return Status::NotFound("cannot read " + path + " (the demo's documents are Debian's license texts)");
  std::string text = buf.str();
  std::vector<uint32_t> ids = m.tokenizer->Encode(text, /*add_bos=*/false);
  if (static_cast<int64_t>(ids.size()) > tokens) {
    ids.resize(tokens);
    text = tokenizer::SanitizeUtf8(m.tokenizer->Decode(ids, /*skip_special=*/false));
    const size_t cut = text.rfind("\n\n");
    if (cut != std::string::npos && cut > text.size() / 2) text.resize(cut);
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

Result<Plan> MakeRealPlan(const DemoOptions& o, const models::LoadedModel& m) {
  Plan p;
  p.model = &m;
  if (auto eos = m.tokenizer->eos_id()) p.stop_tokens.push_back(*eos);
  for (const std::string& stop : m.chat_template->stop_strings()) {
    if (auto id = m.tokenizer->TokenId(stop)) p.stop_tokens.push_back(*id);
  }
  constexpr int kDocumentCount = sizeof(kDocuments) / sizeof(kDocuments[0]);
  std::map<std::string, std::string> cache;
  double total_final = 0;
  for (int s = 0; s < o.sessions; ++s) {
    // Sessions 1 and 3 (and 2 and 4, ...) share a document.
    const std::string name = kDocuments[((s / 4) * 2 + s % 2) % kDocumentCount];
    if (!cache.count(name)) {
      auto doc = ReadDocument(m, name, o.document_tokens);
      if (!doc.ok()) return doc.status();
      cache[name] = *doc;
    }
    p.documents.push_back(cache[name]);
    std::vector<std::string> q;
    for (int t = 0; t < o.turns; ++t) q.push_back(kQuestions[(t + s) % kQuestionCount]);
    p.questions.push_back(std::move(q));
    // The longest prompt: the last turn's, with every answer as long as allowed.
    Result<std::string> text =
        m.chat_template->Render(Conversation(p, s, o.turns - 1, std::vector<std::string>(o.turns)), true);
    if (!text.ok()) return text.status();
    const int64_t longest = static_cast<int64_t>(m.tokenizer->Encode(*text, false).size()) +
                            static_cast<int64_t>(o.turns - 1) * o.max_new_tokens;
    p.max_prompt = std::max(p.max_prompt, longest);
    total_final += static_cast<double>(longest + o.max_new_tokens);
  }
  p.mean_final_tokens = o.sessions > 0 ? total_final / o.sessions : 0;
  // Warm-up: a short unrelated chat (its KV is not reused by the sessions).
  Result<std::string> warm = m.chat_template->Render(
      std::vector<tokenizer::ChatMessage>{{"user", "Say hello in three languages."}}, true);
  if (!warm.ok()) return warm.status();
  p.warmup = m.tokenizer->Encode(*warm, false);
  return p;
}


}  // namespace kvault::demo

// `kvault tokenize --model M`: the token ids of the text on stdin, as the model's tokenizer
// (and llama.cpp's llama-tokenize) produce them: special-token strings in the text become
// their special tokens, and BOS comes first when the model asks for one.
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/cli/commands.h"
#include "models/model_loader.h"
#include "tokenizer/tokenizer.h"

namespace kvault::cli {
namespace {

struct TokenizeFlags {
  std::string model = "smollm2";
  bool json = false;
  bool ids_only = false;
  bool no_bos = false;
};

int RunTokenize(const TokenizeFlags& f) {
  auto text = models::LoadModelText(f.model);
  if (!text.ok()) {
    std::cerr << "kvault tokenize: " << text.status().ToString() << "\n";
    return 2;
  }
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (std::cin.bad()) {
    std::cerr << "kvault tokenize: cannot read stdin\n";
    return 1;
  }
  const tokenizer::Tokenizer& tok = *text->tokenizer;
  const std::vector<uint32_t> ids = tok.Encode(input, text->add_bos && !f.no_bos);
  if (f.json) {
    nlohmann::ordered_json j;
    j["ids"] = ids;
    j["count"] = ids.size();
    std::cout << j.dump() << "\n";
  } else if (f.ids_only) {
    std::cout << "[";
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? ", " : "") << ids[i];
    std::cout << "]\n";
  } else {
    for (uint32_t id : ids) {
      std::string piece;
      tok.AppendTokenBytes(id, /*at_output_start=*/false, &piece);
      std::cout << id << " -> '" << tokenizer::SanitizeUtf8(piece) << "'\n";
    }
  }
  return 0;
}

}  // namespace

void AddTokenizeCommand(CLI::App& app) {
  auto f = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of the text on stdin");
  cmd->description(
      "Reads text on stdin and prints its token ids under the model's tokenizer, one 'ID -> 'piece'' line per "
      "token. Special-token strings in the text (e.g. <|im_start|>) are parsed as special tokens and BOS is "
      "added when the model asks for one, the way llama.cpp's llama-tokenize does; the text is taken as is "
      "(a trailing newline is part of it).");
  cmd->add_option("--model", f->model, "smollm2, a .gguf file, or a Hugging Face model directory")->capture_default_str();
  cmd->add_flag("--json", f->json, "Print {\"ids\": [...], \"count\": N}");
  cmd->add_flag("--ids", f->ids_only, "Print only the ids, as [1, 2, 3]");
  cmd->add_flag("--no-bos", f->no_bos, "Never add BOS");
  cmd->callback([f] { SetExitCode(RunTokenize(*f)); });
}

}  // namespace kvault::cli

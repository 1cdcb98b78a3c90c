#include "apps/cli/commands.h"
#include "codec_bench.h"
#include "gpu_ttft_bench.h"
#include "load_bench.h"
#include "model_bench.h"
#include "serve_load.h"
#include "share_bench.h"
#include "store_bench.h"

namespace kvault::cli {

void AddBenchCommand(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks that print JSON next to the hardware limit");
  bench->require_subcommand(1);
  auto opt = std::make_shared<StoreBenchOptions>();
  CLI::App* store = bench->add_subcommand("store", "T1/T2 bandwidth, lookup rate and index rebuild of the store");
  store->add_option("--dir", opt->dir, "Directory on the disk to measure (T2 and the O_DIRECT probe)")->capture_default_str();
  store->add_flag("--quick", opt->quick, "A run of about 20 s instead of about 2 minutes");
  store->add_flag("--json", opt->json, "Print one JSON object instead of a table");
  store->add_option("--rebuild-entries", opt->rebuild_entries, "Entries for the index-rebuild measurement (default 20k quick, 100k full)");
  store->callback([opt] { SetExitCode(RunStoreBench(*opt)); });

  auto so = std::make_shared<ShareBenchOptions>();
  CLI::App* share = bench->add_subcommand(
      "share", "Two processes share KV through kvaultd: hits, byte identity, shared-memory GB/s vs memcpy, lookup RTT");
  share->add_flag("--json", so->json, "Print one JSON object instead of a table");
  share->add_option("--tokens", so->tokens, "Conversation length (Llama-3-8B-shaped KV: 128 KiB per token)")->capture_default_str();
  share->add_option("--engine-tokens", so->engine_tokens, "Prompt of the tiny engine's request")->capture_default_str();
  share->add_option("--lookups", so->lookups, "Lookup round trips timed")->capture_default_str();
  share->add_option("--dir", so->dir, "Daemon directory (default: a fresh temporary one, removed after)");
  share->add_option("--role", so->role, "Internal: the role of a child process")->group("");
  share->add_option("--socket", so->socket, "Internal: the daemon's socket")->group("");
  share->callback([so] { SetExitCode(RunShareBench(*so)); });

  auto go = std::make_shared<GpuTtftBenchOptions>();
  CLI::App* gpu = bench->add_subcommand(
      "gpu-ttft", "TTFT of a returning conversation: recompute, T1 hit, cold T2 hit, planner, vs the copy peak");
  gpu->add_option("--preset", go->preset, "Model shape with random weights: llama3-8b or tiny")->capture_default_str();
  gpu->add_option("--device", go->device, "cuda or cpu (default: cuda when LibTorch sees a GPU)");
  gpu->add_option("--dtype", go->dtype, "bf16 or fp32 (default: bf16 on cuda, fp32 on cpu)");
  gpu->add_option("--histories", go->histories, "History lengths in tokens")->delimiter(',')->capture_default_str();
  gpu->add_option("--new-tokens", go->new_tokens, "New tokens after the history")->capture_default_str();
  gpu->add_option("--repeats", go->repeats, "Timed runs per measurement (median reported)")->capture_default_str();
  gpu->add_option("--chunk-tokens", go->chunk_tokens, "Store chunk = KV page size")->capture_default_str();
  gpu->add_option("--overlap-new-tokens", go->overlap_new_tokens,
                  "New tokens of the overlap run at the longest history (0: none)")->capture_default_str();
  gpu->add_option("--dir", go->dir, "Store directory (T2; default: a fresh temporary one, removed after)");
  gpu->add_option("--json", go->json, "Also write the JSON (indented) to this file");
  gpu->add_option("--seed", go->seed, "Seed of the weights and tokens")->capture_default_str();
  gpu->callback([go] { SetExitCode(RunGpuTtftBench(*go)); });

  auto mo = std::make_shared<ModelBenchOptions>();
  CLI::App* model = bench->add_subcommand(
      "model", "A real model on this CPU: load, GEMM peer, prefill, decode, returning turn vs its floor (--profile: where the time goes)");
  model->add_option("--model", mo->model, "smollm2, a .gguf file or a Hugging Face model directory")->capture_default_str();
  model->add_option("--threads", mo->threads, "Compute threads (0: every core but one)")->capture_default_str();
  model->add_option("--dtype", mo->dtype, "fp32 or bf16")->capture_default_str();
  model->add_option("--prompt-tokens", mo->prompt_tokens, "Prompt of the prefill and of turn 1")->capture_default_str();
  model->add_option("--decode-tokens", mo->decode_tokens, "Greedy steps timed after the first token")->capture_default_str();
  model->add_option("--new-tokens", mo->new_tokens, "Turn 2's new tokens after turn 1's prompt and answer")->capture_default_str();
  model->add_option("--answer-tokens", mo->answer_tokens, "Turn 1's answer")->capture_default_str();
  model->add_option("--chunk-tokens", mo->chunk_tokens, "Store chunk = KV page size")->capture_default_str();
  model->add_option("--repeats", mo->repeats, "Timed runs per figure (medians reported)")->capture_default_str();
  model->add_option("--text", mo->text, "Text file the prompt is tokenized from (default: a license text)");
  model->add_flag("--profile", mo->profile, "Also break a prefill, a returning turn and a decode step down by category");
  model->add_flag("--json", mo->json, "Print one JSON object instead of a summary");
  model->callback([mo] { SetExitCode(RunModelBench(*mo)); });

  auto co = std::make_shared<CodecBenchOptions>();
  CLI::App* codec = bench->add_subcommand(
      "codec", "KV codecs on a real model: continuation perplexity, top-1 agreement and greedy answers with the "
               "prefix's KV through each codec vs exact, and encode/decode GB/s");
  codec->add_option("--model", co->model, "smollm2, a .gguf file or a Hugging Face model directory")->capture_default_str();
  codec->add_option("--dtype", co->dtype, "The engine's weights and KV: fp32 or bf16")->capture_default_str();
  codec->add_option("--codecs", co->codecs, "Codecs to measure (none, int8, int4)")->delimiter(',')->capture_default_str();
  codec->add_option("--text", co->texts, "Document(s) of real text (default: Debian's license texts)");
  codec->add_option("--tokens", co->tokens, "Continuation tokens to evaluate, at least (default 20480; --quick 512)");
  codec->add_option("--prefix-tokens", co->prefix_tokens, "Per window: tokens whose KV goes through the codec (default 512; --quick 256)");
  codec->add_option("--continuation-tokens", co->continuation_tokens, "Per window: tokens computed over it and evaluated (default 256; --quick 128)");
  codec->add_option("--answers", co->answers, "Demo conversations answered greedily, exact vs codec (default 6; --quick 2; 0: none)");
  codec->add_option("--answer-tokens", co->answer_tokens, "Greedy tokens per answer (default 32; --quick 8)");
  codec->add_option("--document-tokens", co->document_tokens, "Each conversation's document, about (default 1000; --quick 300)");
  codec->add_option("--speed-chunks", co->speed_chunks, "Whole chunks of real KV the speed is timed on (default 8; --quick 2)");
  codec->add_option("--repeats", co->repeats, "Timed passes over them, median reported (default 5; --quick 2)");
  codec->add_option("--chunk-tokens", co->chunk_tokens, "Store chunk = KV page size")->capture_default_str();
  codec->add_option("--threads", co->threads, "Model compute threads (0: every core but one)")->capture_default_str();
  codec->add_flag("--quick", co->quick, "A run of seconds: fewer tokens, answers and timed chunks");
  codec->add_flag("--json", co->json, "Print one JSON object instead of a table");
  codec->callback([co] { SetExitCode(RunCodecBench(*co)); });

  auto ld = std::make_shared<LoadBenchOptions>();
  CLI::App* load = bench->add_subcommand(
      "load", "Model switching: time to first token with the weights from the source file (cold page cache), the "
              "store's T2 and T1, next to memcpy and the O_DIRECT read rate of the same bytes");
  load->add_option("--model", ld->model, "smollm2, a .gguf file or a Hugging Face model directory")->capture_default_str();
  load->add_option("--random", ld->random,
                   "A random-weight model of this shape instead, written once as safetensors in --dir: tinyllama "
                   "(1.1B) or llama3-8b")
      ->check(CLI::IsMember({"tinyllama", "llama3-8b"}));
  load->add_option("--layers", ld->layers, "With --random: this many layers (0: the shape's own)")->capture_default_str();
  load->add_option("--dtype", ld->dtype, "The engine's weights: fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  load->add_option("--dir", ld->dir, "Work directory on the disk to measure (default: a fresh one in /var/tmp, removed after)");
  load->add_option("--read-threads", ld->read_threads, "Store chunks read at once")->check(CLI::PositiveNumber)->capture_default_str();
  load->add_option("--repeats", ld->repeats, "Timed loads per source (median reported)")->check(CLI::PositiveNumber)->capture_default_str();
  load->add_option("--threads", ld->threads, "Compute threads of the first token (0: every core but one)")->capture_default_str();
  load->add_flag("--json", ld->json, "Print one JSON object instead of a table");
  load->callback([ld] { SetExitCode(RunLoadBench(*ld)); });

  auto lo = std::make_shared<ServeLoadOptions>();
  CLI::App* serve = bench->add_subcommand(
      "serve", "Load on any OpenAI-compatible server: multi-turn sessions at a Poisson rate -> TTFT percentiles, goodput under an SLO (--sweep: the highest rate that holds it)");
  serve->add_option("--url", lo->url, "The server's base URL (http:// only; with or without /v1)")->capture_default_str();
  serve->add_option("--model", lo->model, "Model ID of the requests (default: the first of GET /v1/models)");
  serve->add_option("--models", lo->models,
                    "Several models: session n asks model (n / --switch-every) mod M, so requests alternate between "
                    "them (the switching workload of a server holding several models)")
      ->delimiter(',');
  serve->add_option("--urls", lo->urls,
                    "With --models: the server of each model, in order (separately served models: the baseline)")
      ->delimiter(',');
  serve->add_option("--switch-every", lo->switch_every, "With --models: consecutive sessions per model before the next")
      ->capture_default_str();
  serve->add_option("--rate", lo->rate, "Sessions per second, arriving as a Poisson process")->capture_default_str();
  serve->add_option("--duration-s", lo->duration_s, "Seconds during which sessions arrive (then every session runs to its end)")->capture_default_str();
  serve->add_option("--sessions", lo->sessions, "Stop arrivals after this many sessions (0: no cap)")->capture_default_str();
  serve->add_option("--turns", lo->turns, "Requests per session (each sends the whole conversation so far)")->capture_default_str();
  serve->add_option("--think-s", lo->think_s, "Seconds between an answer and the session's next question")->capture_default_str();
  serve->add_option("--documents", lo->documents, "Documents in a session's first message (longer prompts)")->capture_default_str();
  serve->add_option("--max-tokens", lo->max_tokens, "max_tokens of every request")->capture_default_str();
  serve->add_option("--temperature", lo->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  serve->add_option("--answers", lo->answers,
                    "Write every request's answer to this file, one JSON line each (rate, session, turn, ok, "
                    "answer): two runs with the same --seed compare answer by answer");
  serve->add_option("--slo-ttft-ms", lo->slo_ttft_ms, "TTFT SLO: goodput counts requests within it; a rate holds it when its p90 TTFT does")->capture_default_str();
  serve->add_option("--timeout-s", lo->timeout_s, "Per request, from sending to the stream's end (a timeout counts as failed)")->capture_default_str();
  serve->add_option("--seed", lo->seed, "Seed of the arrivals and of each session's document and tag")->capture_default_str();
  serve->add_flag("--sweep", lo->sweep, "Run increasing rates until one breaks the SLO; report max_rate_at_slo");
  serve->add_option("--rates", lo->rates, "The sweep's rates (default: --rate x 1, 2, 4, 8, 16, 32)")->delimiter(',');
  serve->add_flag("--sweep-all", lo->sweep_all, "Run every rate of the sweep, also past the first that breaks the SLO");
  serve->add_option("--max-failed-fraction", lo->max_failed_fraction, "A rate with more failed requests than this does not hold the SLO")->capture_default_str();
  serve->add_option("--chart", lo->chart, "Write an SVG of TTFT p90 against offered load");
  serve->add_option("--chart-with", lo->chart_with, "Other servers' --json outputs (files) drawn on the same chart");
  serve->add_option("--label", lo->label, "This server's name in the JSON and on the chart (default: the model ID)");
  serve->add_option("--progress-s", lo->progress_s, "Seconds between progress lines on stderr (0: none)")->capture_default_str();
  serve->add_flag("--json", lo->json, "Print one JSON object instead of a table");
  serve->callback([lo] { SetExitCode(RunServeLoadBench(*lo)); });
}

}  // namespace kvault::cli

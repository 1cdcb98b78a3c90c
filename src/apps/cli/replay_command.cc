// kvault replay: trace-driven evaluation of eviction policies and prefetch (replay/).
#include <memory>
#include <string>

#include "apps/cli/commands.h"
#include "apps/replay/replay_main.h"
#include "store/eviction_policy.h"

namespace kvault::cli {

void AddReplayCommand(CLI::App& app) {
  auto o = std::make_shared<replay::ReplayCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "replay", "Replay a request trace through a model of the serving system and kvault's tiers: hit rate, TTFT, throughput");
  cmd->description(
      "Discrete-event replay of a request trace (Mooncake JSONL with hash_ids, or kvault's session format) through "
      "--engines prefill engines sharing one FIFO queue in front of kvault's DRAM (T1) and SSD (T2) tiers. The tiers run the "
      "store's own index rules and eviction policies with payload bytes elided; time is charged by a cost model "
      "(prefill FLOPs at an effective rate, PCIe and disk bandwidths; defaults measured on an H100 machine). "
      "Reports prompt-token hit rate per tier, TTFT percentiles, throughput, queue length over time and bytes per "
      "path. See docs/REPLAY.md.");
  cmd->add_option("--trace", o->trace_path, "Trace file (JSONL)")->required();
  std::string presets;
  for (const auto& n : replay::ModelPresetNames()) presets += (presets.empty() ? "" : ", ") + n;
  cmd->add_option("--layout,--model", o->model, "Model preset giving the KV layout and prefill FLOPs: " + presets)
      ->capture_default_str();
  cmd->add_option("--kv-bytes-per-token", o->kv_bytes_per_token, "Explicit KV bytes per token (overrides the preset's)");
  cmd->add_option("--chunk-tokens", o->chunk_tokens, "kvault chunk size in tokens")->capture_default_str();
  cmd->add_option("--t1-gib,--dram-gib", o->t1_gib, "T1 (host DRAM) capacity, GiB")->capture_default_str();
  cmd->add_option("--t2-gib,--ssd-gib", o->t2_gib, "T2 (local SSD) capacity, GiB; 0 disables T2")->capture_default_str();
  cmd->add_option("--cache-fraction", o->cache_fraction,
                  "Size DRAM + SSD as this fraction of the trace's unique KV (overrides --t1-gib/--t2-gib)");
  cmd->add_option("--t1-share,--dram-share", o->t1_share, "With --cache-fraction: DRAM's share of the capacity")->capture_default_str();
  cmd->add_option("--page-kib", o->page_kib, "T1 page size, KiB")->capture_default_str();
  std::string names;
  for (const auto& n : PolicyNames()) names += (names.empty() ? "" : ", ") + n;
  cmd->add_option("--policy", o->policies,
                  "Eviction policy, or a comma-separated list to compare, or 'all': " + names +
                      " (replay only: opt = Belady's offline optimum; aware-oracle = aware told which chunks are "
                      "never read again, a bound)")
      ->capture_default_str();
  cmd->add_option("--engines", o->engines, "Prefill engines (GPUs) of the node, sharing one queue, the store and the disk")
      ->capture_default_str();
  cmd->add_option("--window", o->window, "Look-ahead window: queued requests hinted to the store (0: no hints, no prefetch)")
      ->capture_default_str();
  cmd->add_option("--prefetch-budget-gib", o->prefetch_budget_gib, "Most prefetched bytes in DRAM not yet used by a request (default: a quarter of DRAM)");
  cmd->add_option("--speed", o->speed, "Arrival-rate multiplier (2 = twice as many requests per second)")->capture_default_str();
  cmd->add_option("--repeat", o->repeat, "Replay the trace this many times back to back (fresh requests each time)")
      ->capture_default_str();
  cmd->add_option("--max-requests", o->max_requests, "Use only the first N requests of the file");
  cmd->add_option("--prefill-tflops", o->cost.prefill_tflops, "Effective prefill FLOP rate, TFLOP/s")->capture_default_str();
  cmd->add_option("--attention-tflops", o->cost.attention_tflops, "Effective rate of prefill's attention FLOPs (0: --prefill-tflops)")
      ->capture_default_str();
  cmd->add_option("--pcie-gbps", o->cost.pcie_gbps, "Host DRAM -> GPU bandwidth, GB/s")->capture_default_str();
  cmd->add_option("--t2-read-gbps,--ssd-read-gbps", o->cost.t2_read_gbps, "T2 read bandwidth, GB/s")->capture_default_str();
  cmd->add_option("--t2-write-gbps,--ssd-write-gbps", o->cost.t2_write_gbps, "T2 write bandwidth, GB/s")->capture_default_str();
  cmd->add_option("--decode-ms", o->cost.decode_ms_per_token, "Decode time per output token of a request, ms")
      ->capture_default_str();
  cmd->add_option("--t2-codec", o->t2_codec,
                  "How T2 stores KV: none, int8 or int4 (records of the encoded size; a read decodes, a write encodes)")
      ->capture_default_str();
  cmd->add_option("--t3-codec", o->t3_codec, "How T3 stores KV; replay models no T3, so only none")->capture_default_str();
  cmd->add_option("--decode-gbps", o->decode_gbps,
                  "The T2 codec's decode rate, GB/s of raw KV on the reading thread (0: measured at startup, one thread)")
      ->capture_default_str();
  cmd->add_option("--encode-gbps", o->encode_gbps,
                  "The T2 codec's encode rate, GB/s of raw KV on the write-behind thread (0: measured at startup)")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object (several policies: {\"runs\": [...]})");
  cmd->add_option("--chart", o->chart_path, "Write an SVG chart of queue length over time ('-' or empty: none)");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress on stderr");
  cmd->add_flag("--engine", o->engine,
                "Validate the simulator: run the first requests through the real engine and store, then the simulator "
                "calibrated on that engine, and report simulated vs measured TTFT");
  cmd->add_option("--engine-requests", o->engine_requests, "With --engine: requests to run")->capture_default_str();
  cmd->add_option("--engine-block-tokens", o->engine_block_tokens,
                  "With --engine: tokens per trace block (trace lengths are scaled by this / 512)")
      ->capture_default_str();
  cmd->add_option("--engine-policy", o->engine_policy, "With --engine: the store's policy")->capture_default_str();
  cmd->add_option("--data-dir", o->data_dir, "With --engine: the store's SSD directory (emptied first)")->capture_default_str();
  cmd->add_option("--threads", o->threads, "With --engine: LibTorch threads (0: every core but one)")->capture_default_str();
  cmd->footer(
      "--json keys: token_hit_rate (prompt tokens served from cache / prompt tokens), token_hit_rate_by_tier {t1, t2}, "
      "reused_token_rate (after the planner), ttft_p50_ms, ttft_p90_ms, ttft_p99_ms, ttft_mean_ms, "
      "throughput_tokens_per_s ((prompt + output tokens) / makespan), prefill_throughput_tokens_per_s, queue_length "
      "{max, mean, series_s}, planner, bytes per path, evictions, t2_codec, t3_codec, t2_codec_ratio, decode_gbps, "
      "decode_gbps_source (measured|flag|unused), encode_gbps, encode_gbps_source, trace, config, wall_s.\n"
      "Exit status: 0 ok; 1 failure; 2 bad options or trace.");
  cmd->callback([o] { SetExitCode(replay::ReplayMain(*o)); });
}

}  // namespace kvault::cli

// `kvault replay`: options and entry point (the CLI parses flags into ReplayCliOptions).
#pragma once

#include <cstdint>
#include <string>

#include "replay/cost_model.h"

namespace kvault::replay {

struct ReplayCliOptions {
  std::string trace_path;
  std::string model = "llama3-8b";
  uint64_t kv_bytes_per_token = 0;  // overrides the preset's
  uint32_t chunk_tokens = 512;
  double t1_gib = 64;
  double t2_gib = 512;
  double cache_fraction = 0;  // > 0: DRAM + SSD = this fraction of the trace's unique KV
  double t1_share = 0.2;    // with cache_fraction: DRAM's part of it
  uint32_t page_kib = 256;
  std::string policies = "lru";  // comma-separated: one run each
  uint32_t engines = 4;
  uint32_t window = 32;
  double prefetch_budget_gib = 0;
  double speed = 1;
  uint32_t repeat = 1;
  size_t max_requests = 0;
  CostModel cost;
  // Lower tiers' codecs (none, int8, int4). Replay models T1 and T2: --t3-codec must be none.
  std::string t2_codec = "none";
  std::string t3_codec = "none";
  // The T2 codec's decode / encode rates, GB/s of raw KV; 0: measured at startup
  // (MeasureCodecRates on one thread). Set into cost.codec_decode_gbps / codec_encode_gbps.
  double decode_gbps = 0;
  double encode_gbps = 0;
  bool json = false;
  std::string chart_path;
  bool quiet = false;
  // --engine: validate the simulator against the real engine.
  bool engine = false;
  size_t engine_requests = 200;
  uint32_t engine_block_tokens = 16;  // tokens per trace block for the engine run
  std::string engine_policy = "aware";
  std::string data_dir = "./kvault-replay-data";
  int threads = 0;
};

// Returns the process exit status: 0 ok, 1 failure, 2 bad options.
int ReplayMain(const ReplayCliOptions& options);

}  // namespace kvault::replay

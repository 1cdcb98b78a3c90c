// `kvault bench share`: two processes share KV through kvaultd.
//
// Starts a daemon (this executable's `daemon` subcommand) in a temporary directory; a first
// client process saves a conversation's KV (a Llama-3-8B-shaped layout filled with bytes
// derived from each chunk's key, plus a tiny engine's real prefill); a second process looks
// it up, loads it through shared memory and checks every byte, measures load bandwidth next
// to memcpy in the same process and the lookup round trip, and reruns the engine's request to
// compare its output with a recompute.
#pragma once

#include <cstdint>
#include <string>

namespace kvault {

struct ShareBenchOptions {
  bool json = false;
  uint32_t tokens = 4096;       // conversation length (Llama-3-8B-shaped: 128 KiB per token)
  uint32_t engine_tokens = 600; // the engine part's prompt (DemoTiny model)
  uint32_t lookups = 2000;      // lookup round trips timed
  std::string dir;              // "" = a fresh directory under $TMPDIR
  // Internal: the role of a child process ("save" or "load") and the daemon's socket.
  std::string role;
  std::string socket;
};

int RunShareBench(const ShareBenchOptions& options);

}  // namespace kvault

// Sequence: one request inside the engine, from Submit to its last token.
//
// Thread-safety: a Sequence is written by the thread that submits it until it is queued, then
// only by the engine loop's thread. While it is queued, the engine loop reads `ns` and `keys`
// without the queue's lock (for hints): they do not change after Submit.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/kv_pool.h"
#include "kvault/key.h"

namespace kvault::engine {

using Clock = std::chrono::steady_clock;

inline double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

struct Sequence {
  explicit Sequence(Namespace n) : ns(std::move(n)) {}
  const Namespace ns;  // the store namespace of its tenant
  uint64_t id = 0;
  std::vector<uint32_t> orig;  // the original token stream: prompt, then fed generated tokens
  // The prompt's whole chunks keyed once, at Submit, when the engine has a store: the lookup,
  // the hints and the saves use these keys and never hash the prompt again. keys.tokens views
  // `orig` as submitted, so it is valid until the first decode step appends to orig (only the
  // hints and the prefill read it); keys.full stays valid for the sequence's life.
  KeyedTokens keys;
  SamplingParams params;
  std::function<void(RequestResult)> done;
  Clock::time_point submitted;
  std::mt19937_64 rng;
  // Context overflow: pages [head_chunks, ...) hold original chunks shifted by dropped_chunks.
  int64_t head_chunks = 0, dropped_chunks = 0;
  int64_t prompt_len = 0;  // kept prompt tokens (new positions)
  std::unique_ptr<SequenceKv> kv;
  int64_t length = 0;        // positions whose KV is in the pool
  // A prefill in progress (chunked prefill computes it over several steps): the first new
  // position whose chunk's save has not been begun, and the logits of the passes so far (a
  // recomputed head's, then each piece's; every row only when prompt logits are asked for).
  int64_t saves_from = 0;
  torch::Tensor head_logits;
  std::vector<torch::Tensor> piece_logits;
  uint32_t next_token = 0;   // sampled, not yet fed
  bool stopped = false;
  RequestResult result;

  // The original chunk that page `page` holds.
  int64_t OrigChunk(int64_t page) const { return page < head_chunks ? page : page + dropped_chunks; }
  // The token at new position `pos`, with `c` tokens per chunk.
  uint32_t TokenAt(int64_t pos, int64_t c) const { return orig[OrigChunk(pos / c) * c + pos % c]; }
};

}  // namespace kvault::engine

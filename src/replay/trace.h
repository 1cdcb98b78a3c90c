// Request traces for `kvault replay`: what arrives when, and which cached chunks each prompt
// could reuse.
//
// Two input formats, one JSON object per line, told apart by their fields:
//  * Mooncake (FAST'25 trace release): {"timestamp": ms, "input_length": n,
//    "output_length": m, "hash_ids": [...]} where hash_ids are chained prefix hashes of
//    512-token blocks (equal id at equal position = equal prefix up to that block's end).
//  * Sessions (kvault's own, for ShareGPT-like multi-turn chats):
//    {"session": "s1", "timestamp": ms, "input_tokens": n, "output_tokens": m,
//     "prefix": "system-a", "prefix_tokens": k}   ("prefix*" optional)
//    A turn's prompt is the session's shared prefix, then every earlier turn's input and
//    output, then this turn's input; so a turn can reuse everything its session said before.
//
// Both are mapped onto kvault chunks of `chunk_tokens`: the chunk ending at token e gets a key
// derived from what identifies the prefix [0, e) (the id of the block holding token e-1 and
// e's offset in it; or the session/prefix name and e), so two requests share a chunk exactly
// when the trace says they share that prefix. Keys are synthetic (no tokens exist), chained
// through `parent` like the store's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvault/key.h"
#include "kvault/status.h"

namespace kvault::replay {

struct TraceChunk {
  ChunkKey key;
  uint32_t tokens = 0;  // chunk_tokens, or fewer for a prompt's trailing partial chunk
  // Where concrete token ids come from when a real engine replays the trace: the chunk's
  // tokens are TokenAt(stream, stream_begin + t). stream_begin < 0: the chunk straddles two
  // Mooncake blocks (chunk size not dividing the block size) and has no single stream.
  uint64_t stream = 0;
  int64_t stream_begin = 0;
};

// Deterministic token id of position `pos` of token stream `stream`, in [1, vocab).
uint32_t TokenAt(uint64_t stream, uint64_t pos, uint32_t vocab);

struct TraceRequest {
  double arrival_ms = 0;
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
  std::vector<TraceChunk> chunks;  // the prompt's chain, head first; parent = previous key
  // Keys of earlier requests' trailing partial chunks that this prompt extends (it would
  // reuse the longest one cached): uses that `opt` must know about.
  std::vector<ChunkKey> partials_extended;
};

struct Trace {
  std::string format;  // "mooncake" or "sessions"
  uint32_t chunk_tokens = 0;  // TraceOptions::chunk_tokens: a shorter chunk is a partial one
  std::vector<TraceRequest> requests;  // sorted by arrival (stable)
  uint64_t unique_chunks = 0;
  uint64_t unique_tokens = 0;      // tokens of the unique chunks: the KV an infinite cache holds
  uint64_t prompt_tokens = 0;
  uint64_t reusable_tokens = 0;    // prompt tokens an infinite cache would serve
};

struct TraceOptions {
  uint32_t chunk_tokens = 512;
  uint32_t block_tokens = 512;  // Mooncake hash_id block size
  size_t max_requests = 0;      // 0 = all
  // Mooncake only: scale prompts so that a block holds this many tokens instead of
  // block_tokens (0: no scaling). Lets a small CPU engine replay a long-context trace.
  uint32_t scaled_block_tokens = 0;
  uint32_t repeat = 1;          // concatenate the trace this many times, as fresh requests
                                // (keys salted per copy, arrivals shifted by the span)
};

// Reads a trace file. Errors name the line and what is wrong with it.
Result<Trace> LoadTrace(const std::string& path, const TraceOptions& options);
// The same for text already in memory (tests).
Result<Trace> ParseTrace(const std::string& text, const TraceOptions& options);

}  // namespace kvault::replay

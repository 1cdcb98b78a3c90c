// `kvault bench codec`: what each KV codec (include/kvault/kv_codec.h) costs in accuracy and
// speed on a real model (SmolLM2-135M-Instruct by default), on KV the engine itself computed.
//
// Accuracy. Documents of real text (Debian's license texts by default, or --text files) are
// tokenized and cut into windows of `prefix_tokens` + `continuation_tokens` (+1 target) tokens,
// taken from the documents in turn. For each window the prefix is computed exactly into the
// engine's paged KV pool (pre-RoPE K, a page per store chunk), and its pages are read out as
// the store's chunk payloads (KvLayout of the engine). The continuation is then computed over
// that KV with every position's logits: once exactly, and once per codec after the prefix's
// chunks went through EncodeKvChunk/DecodeKvChunk and back into the same pages, as a load from a
// compressed tier would put them there. Reported per codec against exact: the continuation's
// perplexity, top-1 agreement of each position's argmax, |logit| differences, KL divergence,
// and the KV's own round-trip error. Greedy answers of the first turns of `kvault demo`'s
// conversations (a license text and a question, rendered with the model's chat template)
// compare the same way: the prompt's KV through the codec, then greedy decoding.
//
// Speed. The codec's encode and decode rates on whole chunks of that real KV, one thread and
// every core, in GB/s of decoded KV in the engine's dtype, and again on the same KV in bf16.
//
// Output: a table, or with --json one object (progress on stderr):
//   {"model", "tokens_evaluated", "codecs": [{"codec", "ratio" (vs bf16 KV of the same layout),
//    "encode_gbps", "decode_gbps" (one core), "perplexity_exact", "perplexity",
//    "top1_agreement", ...}], ...}
// The command fails (exit 1, "pass": false) when the `none` codec does not reproduce exact
// KV bit for bit (its perplexity, agreement and answers must equal exact's).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvault {

struct CodecBenchOptions {
  std::string model = "smollm2";  // models::LoadModel spec
  std::string dtype = "fp32";     // the engine's weights and KV: fp32 | bf16
  std::vector<std::string> codecs = {"none", "int8", "int4"};
  std::vector<std::string> texts;  // documents; empty: Debian's license texts
  // 0 = the mode's default (full | --quick).
  int64_t tokens = 0;               // evaluated continuation tokens, at least (20480 | 512)
  int64_t prefix_tokens = 0;        // per window, KV through the codec (512 | 256)
  int64_t continuation_tokens = 0;  // per window, computed over it (256 | 128)
  int answers = -1;                 // demo conversations answered greedily (6 | 2); 0: none
  int answer_tokens = 0;            // greedy tokens per answer (32 | 8)
  int document_tokens = 0;          // each conversation's document, about (1000 | 300)
  int speed_chunks = 0;             // whole chunks of real KV timed (8 | 2)
  int repeats = 0;                  // timed passes over them, median reported (5 | 2)
  int64_t chunk_tokens = 256;       // store chunk = KV page size
  int threads = 0;                  // model compute threads (0: every core but one)
  bool quick = false;
  bool json = false;
};

int RunCodecBench(const CodecBenchOptions& options);

}  // namespace kvault

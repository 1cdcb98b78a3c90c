// A Llama-family model read from a GGUF file: its ModelConfig from the file's metadata and
// its weights dequantized into the engine's dtype.
//
// Supported `general.architecture`s: llama (Llama 2 and 3, SmolLM, Mistral, which llama.cpp
// stores as llama) and qwen2. llama.cpp's converter permutes the rows of the Q and K
// projections of llama-architecture models (it interleaves the two rotary halves of each
// head); the loader undoes that, so the weights equal the Hugging Face checkpoint's.
#pragma once

#include <torch/torch.h>

#include <string>

#include "engine/model_config.h"
#include "engine/weights.h"
#include "gguf/gguf_file.h"
#include "kvault/status.h"

namespace kvault::engine {

// The configuration in `file`'s metadata (ARCH.block_count, ARCH.embedding_length, ...):
// layers, heads, KV heads, head dim, FFN size, norm epsilon, rope base and scaling (linear
// metadata, or the rope_freqs.weight tensor of Llama 3.1+), context length, vocabulary size
// (from the embedding), tied output when output.weight is absent, q/k/v biases when present.
// Unsupported architectures and features (partial rotary, MoE) are InvalidArgument naming them.
Result<ModelConfig> ModelConfigFromGguf(const gguf::GgufFile& file);

// Every tensor of `config` dequantized from `file` into `dtype` (float32, float16, bfloat16),
// Q/K rows un-permuted for the llama architecture; `threads` dequantize (0: every core).
// Errors name the tensor (missing, wrong shape, a ggml type kvault cannot dequantize).
Result<ModelWeights> LoadGgufWeights(const gguf::GgufFile& file, const ModelConfig& config,
                                     torch::ScalarType dtype, int threads = 0);

// The GGUF name of a Hugging Face tensor name ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"); "" for names GGUF does not have.
std::string GgufTensorName(const std::string& hf_name);

}  // namespace kvault::engine

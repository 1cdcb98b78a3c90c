#!/usr/bin/env python3
"""Latency of a normal `kvault serve` request on an idle server vs with N slow or idle
connections open (issue 16's target: within 1.5x). Prints one JSON object.

The slow connections: half send a partial POST and then one byte every 0.5 s, half connect and
send nothing. Measured: a short greedy chat completion and GET /healthz, `--repeats` times each
way, sequentially, in `--rounds` alternating idle and loaded rounds; median and worst reported.

Usage: scripts/slow_clients_bench.py [--binary build/kvault] [--slow 500] [--repeats 40]
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "serve"))
import serve_harness as h  # noqa: E402


def measure(port, repeats, max_tokens):
    """(chat latencies, /healthz latencies) in seconds, sequential."""
    chat, health = [], []
    for _ in range(repeats):
        (status, _), took = h.timed(h.chat, port, "hello there", max_tokens, 120)
        assert status == 200
        chat.append(took)
        status, took = h.timed(h.healthz, port, 60)
        assert status == 200
        health.append(took)
    return chat, health


def _hold(port, n, ready, stop):
    slow = h.SlowClients(port, n, drip_s=0.5)
    ready.set()
    stop.wait()
    slow.close()


class SlowProcess:
    """SlowClients in a child process, so that their dripping does not take the measuring
    process's interpreter lock."""

    def __init__(self, port, n):
        self.stop = multiprocessing.Event()
        ready = multiprocessing.Event()
        self.proc = multiprocessing.Process(target=_hold, args=(port, n, ready, self.stop), daemon=True)
        self.proc.start()
        if not ready.wait(60):
            raise RuntimeError("slow clients did not connect")

    def close(self):
        self.stop.set()
        self.proc.join(30)


def summary(chat, health):
    return {"chat_median_ms": round(1000 * statistics.median(chat), 2), "chat_max_ms": round(1000 * max(chat), 2),
            "healthz_median_ms": round(1000 * statistics.median(health), 3),
            "healthz_max_ms": round(1000 * max(health), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(h.repo_root(), "build", "kvault"))
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="idle and loaded rounds, alternating")
    args = ap.parse_args()
    h.raise_fd_limit(4 * args.slow + 256)
    server = h.Serve(args.binary, ["--max-connections", str(args.slow + 64)])
    # Idle and loaded rounds alternate, so that other load on the machine hits both alike.
    idle, loaded, held = ([], []), ([], []), 0
    try:
        measure(server.port, 3, args.max_tokens)  # warm-up
        per_round = max(1, args.repeats // args.rounds)
        for _ in range(args.rounds):
            for out, part in zip(idle, measure(server.port, per_round, args.max_tokens)):
                out.extend(part)
            slow = SlowProcess(server.port, args.slow)
            try:
                time.sleep(1.0)
                held = max(held, h.metric(server.port, "kvault_serve_open_connections"))
                for out, part in zip(loaded, measure(server.port, per_round, args.max_tokens)):
                    out.extend(part)
            finally:
                slow.close()
            time.sleep(0.5)
    finally:
        server.stop()
    idle, loaded = summary(*idle), summary(*loaded)
    ratio = loaded["chat_median_ms"] / idle["chat_median_ms"]
    print(json.dumps({"bench": "slow_clients", "slow_connections": args.slow, "open_connections_seen": held,
                      "repeats": args.repeats, "rounds": args.rounds, "max_tokens": args.max_tokens, "idle": idle,
                      "with_slow_clients": loaded, "chat_median_ratio": round(ratio, 3),
                      "target_ratio": 1.5, "pass": ratio <= 1.5}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

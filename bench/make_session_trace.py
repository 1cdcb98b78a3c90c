#!/usr/bin/env python3
"""Writes a multi-turn chat trace in kvault's session format (docs/REPLAY.md), deterministic.

Sessions arrive as a Poisson process; each runs a few turns separated by think time; every
session starts with one of a few shared system prompts. Token counts are drawn to look like
ShareGPT conversations scaled down for a CPU engine (use --scale to grow them).

Usage: bench/make_session_trace.py [--sessions 60] [--seed 1] [--scale 1.0] > trace.jsonl
"""
import argparse
import json
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every token count")
    ap.add_argument("--rate", type=float, default=0.5, help="new sessions per second")
    ap.add_argument("--think-s", type=float, default=20.0, help="mean time between a session's turns")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    prefixes = [("system-%d" % i, int(round(rnd.choice([128, 256, 384]) * a.scale / 16)) * 16) for i in range(3)]
    turns = []
    t = 0.0
    for s in range(a.sessions):
        t += rnd.expovariate(a.rate)
        name, ptok = rnd.choice(prefixes)
        at = t
        for k in range(rnd.randint(1, 8)):
            turn = {"session": "s%d" % s, "timestamp": round(at * 1000),
                    "input_tokens": max(1, int(rnd.lognormvariate(4.3, 0.6) * a.scale)),
                    "output_tokens": max(1, int(rnd.lognormvariate(4.0, 0.7) * a.scale))}
            if k == 0:
                turn["prefix"] = name
                turn["prefix_tokens"] = ptok
            turns.append(turn)
            at += rnd.expovariate(1.0 / a.think_s)
    turns.sort(key=lambda x: x["timestamp"])
    for x in turns:
        print(json.dumps(x))


if __name__ == "__main__":
    main()

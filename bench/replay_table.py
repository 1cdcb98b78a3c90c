#!/usr/bin/env python3
"""Runs `kvault replay` over capacities x policies and prints a Markdown table.

Usage: bench/replay_table.py [--kvault build/kvault] [--trace FILE] [--engines N ...] [-- extra replay flags]
Each row: token hit rate (all tiers, T1, T2), TTFT p50/p90/p99, throughput; for `aware` and
the `aware-oracle` bound, the share of the lru -> opt hit-rate gap it closes.
"""
import argparse
import json
import subprocess
import sys


def run(kvault, trace, fraction, policy, engines, window, extra):
    cmd = [kvault, "replay", "--trace", trace, "--policy", policy, "--cache-fraction", str(fraction),
           "--engines", str(engines), "--window", str(window), "--json", "-q"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvault", default="build/kvault")
    ap.add_argument("--trace", default="../shared/traces/synthetic_trace.jsonl")
    ap.add_argument("--fractions", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--policies", default="lru,fifo,s3fifo,aware,aware-oracle,opt")
    ap.add_argument("--engines", default="2,4")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    for engines in a.engines.split(","):
        print(f"\n**{engines} engines**, window {a.window}\n")
        print("| cache (of unique KV) | policy | hit | hit T1 | hit T2 | TTFT p50 ms | p90 ms | p99 ms | tokens/s | gap closed |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for f in a.fractions.split(","):
            rows = {p: run(a.kvault, a.trace, float(f), p, int(engines), a.window, a.extra) for p in a.policies.split(",")}
            for p, j in rows.items():
                gap = ""
                if p in ("aware", "aware-oracle") and "lru" in rows and "opt" in rows:
                    lo, hi = rows["lru"]["token_hit_rate"], rows["opt"]["token_hit_rate"]
                    gap = f"{(j['token_hit_rate'] - lo) / (hi - lo) * 100:.0f}%" if hi > lo else "-"
                t = j["token_hit_rate_by_tier"]
                print(f"| {float(f)*100:.0f}% ({j['config']['dram_gib']:.0f}+{j['config']['ssd_gib']:.0f} GiB) | {p} | "
                      f"{j['token_hit_rate']*100:.1f}% | {t['t1']*100:.1f}% | {t['t2']*100:.1f}% | "
                      f"{j['ttft_p50_ms']:.0f} | {j['ttft_p90_ms']:.0f} | {j['ttft_p99_ms']:.0f} | "
                      f"{j['throughput_tokens_per_s']:.0f} | {gap} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())

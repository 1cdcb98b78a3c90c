#!/usr/bin/env python3
"""A short `kvault bench serve` run against `kvault serve --random-model tiny` with its store.

A few multi-turn sessions for a few seconds. Checks: the JSON has every key the issue names
(and the rest of the documented ones), the counts add up (completed + failed == sent, nothing
failed against a healthy server), the TTFT percentiles are ordered, and from the second turn on
the server reports cached_tokens > 0 (each turn resends the conversation, whose earlier turns
are in the store).

Usage: bench_serve_kvault_test.py KVAULT_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_harness  # noqa: E402

KEYS = ["ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "ttft_mean_ms", "tpot_ms", "tpot_p50_ms", "e2e_p50_ms",
        "e2e_p90_ms", "e2e_p99_ms", "sent", "completed", "failed", "errors", "goodput_rps", "met_slo",
        "throughput_rps", "output_tokens_per_s", "cached_token_fraction", "prompt_tokens", "cached_tokens",
        "completion_tokens", "usage_reported", "slo_ttft_ms", "offered_rate", "offered_request_rps", "sessions",
        "meets_slo", "elapsed_s", "by_turn", "model", "url", "turns_per_session", "think_s", "max_tokens"]


def main():
    binary = sys.argv[1]
    failures = []

    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what, flush=True)
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as store:
        # serve_harness starts `--no-cache`; `--no-cache=false` turns the store back on.
        server = serve_harness.Serve(binary, ["--no-cache=false", "--store", store, "--t1-gib", "0.0625",
                                              "--t2-gib", "0.25"])
        try:
            sessions, turns = 3, 3
            cmd = [binary, "bench", "serve", "--url", f"http://127.0.0.1:{server.port}",
                   "--model", serve_harness.MODEL, "--rate", "4", "--duration-s", "60", "--sessions", str(sessions),
                   "--turns", str(turns), "--think-s", "0.2", "--max-tokens", "8", "--timeout-s", "120", "--json"]
            print("$ " + " ".join(cmd), flush=True)
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=400)
            sys.stderr.write(p.stderr)
            check(p.returncode == 0, f"kvault bench serve exited {p.returncode}")
            out = json.loads(p.stdout)
            print(json.dumps(out, indent=1))
        finally:
            server.stop()

    missing = [k for k in KEYS if k not in out]
    check(not missing, f"every key is in the JSON (missing: {missing})")
    check(out["sent"] == sessions * turns, f"sent {out['sent']} == {sessions * turns}")
    check(out["completed"] + out["failed"] == out["sent"], "completed + failed == sent")
    check(out["failed"] == 0, f"nothing failed ({out['errors']})")
    check(0 < out["ttft_p50_ms"] <= out["ttft_p90_ms"] <= out["ttft_p99_ms"], "TTFT percentiles ordered")
    check(out["e2e_p50_ms"] <= out["e2e_p90_ms"] <= out["e2e_p99_ms"], "e2e percentiles ordered")
    check(out["usage_reported"] == out["completed"], "every completed request reported usage")
    check(out["prompt_tokens"] > 0 and 0 < out["cached_token_fraction"] < 1, "cached_token_fraction in (0, 1)")
    by_turn = out["by_turn"]
    check([t["turn"] for t in by_turn] == list(range(1, turns + 1)), "by_turn has every turn")
    for t in by_turn[1:]:
        check(t["cached_tokens"] > 0, f"turn {t['turn']}: cached_tokens {t['cached_tokens']} > 0")
    check(out["goodput_rps"] <= out["throughput_rps"] + 1e-12, "goodput <= throughput")
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("bench_serve_kvault: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

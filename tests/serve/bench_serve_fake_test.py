#!/usr/bin/env python3
"""`kvault bench serve` against a fake OpenAI server with known delays and errors.

The fake server (Python stdlib, HTTP/1.1 keep-alive, chunked SSE) numbers the chat requests in
the order they arrive. Request i sends its role chunk at once, then its first content token
after TTFTS_MS[i % 7] ms, three more tokens TPOT_MS apart, a finish chunk, a usage chunk
(prompt_tokens and cached_tokens known per request) and [DONE]; every FAIL_EVERY-th request
fails instead, in turn as an HTTP 500, a stream cut off mid-answer, and a hang past the
client's --timeout-s. It also checks that each request carries the whole conversation so far
(alternating user/assistant messages, the assistant turns being exactly what it streamed).

The test then checks the load generator's JSON against the server's own log: sent, completed,
failed and the errors by kind; TTFT percentiles (the same interpolation over the delays the
server applied; measured = applied + a small overhead); goodput under an SLO that splits the
delays; time per output token; prompt and cached token sums; counts per turn. A short --sweep
and --chart run at the end checks max_rate_at_slo and the SVG.

Usage: bench_serve_fake_test.py KVAULT_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTFTS_MS = [100, 300, 700, 150, 1000, 250, 1300]
TPOT_MS = 20
TOKENS = ["w0 ", "w1 ", "w2 ", "w3 "]
ANSWER = "".join(TOKENS)
FAIL_EVERY = 5
FAIL_KINDS = ["http 500", "stream cut", "timeout"]
TIMEOUT_S = 1.5
SLO_MS = 500  # splits the delays: 300 ms and below meet it with 200 ms to spare, 700 and above never
OVERHEAD_MS = 250  # what the client and a busy CI machine may add to an applied delay


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.next_index = 0
        self.entries = []   # dicts: index, outcome, ttft_ms, turn, prompt_tokens, cached_tokens
        self.problems = []  # conversation checks that failed

    def take_index(self):
        with self.lock:
            i = self.next_index
            self.next_index += 1
            return i

    def add(self, entry):
        with self.lock:
            self.entries.append(entry)


LOG = Log()


def outcome_of(i):
    if i % FAIL_EVERY == FAIL_EVERY - 1:
        return FAIL_KINDS[(i // FAIL_EVERY) % len(FAIL_KINDS)]
    return "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj):
        self.chunk(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        i = LOG.take_index()
        msgs = req["messages"]
        turn = sum(1 for m in msgs if m["role"] == "user")
        # The whole conversation so far: user, assistant, user, ..., user; answers as streamed.
        for k, m in enumerate(msgs):
            want = "user" if k % 2 == 0 else "assistant"
            if m["role"] != want or (want == "assistant" and m["content"] != ANSWER):
                LOG.problems.append(f"request {i}: message {k} is {m['role']}: {m['content'][:40]!r}")
        if not req.get("stream") or not req.get("stream_options", {}).get("include_usage"):
            LOG.problems.append(f"request {i}: not a stream with include_usage")
        if req.get("model") != "fake-model" or req.get("max_tokens") != 4 or req.get("temperature") != 0:
            LOG.problems.append(f"request {i}: model/max_tokens/temperature {req.get('model')} "
                                f"{req.get('max_tokens')} {req.get('temperature')}")
        outcome = outcome_of(i)
        ttft_ms = TTFTS_MS[i % len(TTFTS_MS)]
        prompt_tokens = sum(len(m["content"]) for m in msgs) // 4
        cached_tokens = 10 * (turn - 1)
        LOG.add({"index": i, "outcome": outcome, "ttft_ms": ttft_ms, "turn": turn,
                 "prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens})
        if outcome == "http 500":
            body = json.dumps({"error": {"message": "fake failure", "type": "server_error"}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": f"c{i}", "object": "chat.completion.chunk", "created": 0, "model": "fake-model"}
        try:
            self.event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
            if outcome == "timeout":
                time.sleep(TIMEOUT_S + 1.0)
                self.close_connection = True
                return
            time.sleep(ttft_ms / 1000)
            for k, tok in enumerate(TOKENS):
                if k:
                    time.sleep(TPOT_MS / 1000)
                self.event({**base, "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}]})
                if outcome == "stream cut" and k == 1:
                    self.close_connection = True
                    return  # the connection closes without the last chunk
            self.event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            self.event({**base, "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": len(TOKENS),
                "total_tokens": prompt_tokens + len(TOKENS),
                "prompt_tokens_details": {"cached_tokens": cached_tokens}}})
            self.event(b"[DONE]")
            self.chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def percentile(values, p):
    """Linear interpolation between closest ranks (what the load generator documents)."""
    v = sorted(values)
    pos = p / 100 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def check(cond, what, failures):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def run_bench(binary, port, args, slo_ms=SLO_MS):
    cmd = [binary, "bench", "serve", "--url", f"http://127.0.0.1:{port}", "--max-tokens", "4",
           "--timeout-s", str(TIMEOUT_S), "--slo-ttft-ms", str(slo_ms), "--json", "--progress-s", "1"] + args
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"kvault bench serve exited {p.returncode}")
    lines = p.stdout.strip().splitlines()
    if len(lines) != 1:
        raise SystemExit(f"--json printed {len(lines)} lines: {p.stdout[:500]}")
    return json.loads(lines[0])


def main():
    binary = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    failures = []

    sessions, turns = 8, 4
    # No --model: the load generator asks GET /v1/models.
    out = run_bench(binary, port, ["--rate", "20", "--duration-s", "60", "--sessions", str(sessions),
                                   "--turns", str(turns), "--think-s", "0.05", "--seed", "7"])
    print(json.dumps({k: v for k, v in out.items() if k != "by_turn"}, indent=1))
    log = sorted(LOG.entries, key=lambda e: e["index"])
    ok = [e for e in log if e["outcome"] == "ok"]
    failed = [e for e in log if e["outcome"] != "ok"]

    check(out["model"] == "fake-model", "the model came from GET /v1/models", failures)
    check(not LOG.problems, "every request carried the whole conversation so far "
          f"({LOG.problems[:3]})", failures)
    check(out["sessions"] == sessions, f"sessions {out['sessions']} == {sessions}", failures)
    check(out["sent"] == sessions * turns == len(log), f"sent {out['sent']} == {sessions * turns} == server's {len(log)}",
          failures)
    check(out["completed"] == len(ok), f"completed {out['completed']} == server's ok {len(ok)}", failures)
    check(out["failed"] == len(failed), f"failed {out['failed']} == server's failures {len(failed)}", failures)
    check(out["completed"] + out["failed"] == out["sent"], "completed + failed == sent", failures)
    want_errors = {}
    for e in failed:
        want_errors[e["outcome"]] = want_errors.get(e["outcome"], 0) + 1
    check(out["errors"] == want_errors, f"errors {out['errors']} == {want_errors}", failures)
    check(set(want_errors) == set(FAIL_KINDS), f"every kind of failure happened ({sorted(want_errors)})", failures)

    applied = [e["ttft_ms"] for e in ok]
    for p in (50, 90, 99):
        got, want = out[f"ttft_p{p}_ms"], percentile(applied, p)
        check(want <= got <= want + OVERHEAD_MS, f"ttft_p{p}_ms {got:.1f} within [{want:.1f}, +{OVERHEAD_MS}]", failures)
    check(out["ttft_p50_ms"] <= out["ttft_p90_ms"] <= out["ttft_p99_ms"], "TTFT percentiles ordered", failures)
    met = sum(1 for t in applied if t <= SLO_MS)
    check(out["met_slo"] == met, f"met_slo {out['met_slo']} == requests with applied TTFT <= {SLO_MS} ms ({met})",
          failures)
    check(abs(out["goodput_rps"] - met / out["elapsed_s"]) < 1e-9, f"goodput_rps {out['goodput_rps']:.3f} == "
          f"met_slo / elapsed_s", failures)
    check(TPOT_MS * 0.9 <= out["tpot_ms"] <= TPOT_MS + 60, f"tpot_ms {out['tpot_ms']:.1f} ~ {TPOT_MS}", failures)
    want_e2e = [t + 3 * TPOT_MS for t in applied]
    check(percentile(want_e2e, 90) <= out["e2e_p90_ms"] <= percentile(want_e2e, 90) + OVERHEAD_MS + 60,
          f"e2e_p90_ms {out['e2e_p90_ms']:.1f} ~ {percentile(want_e2e, 90):.1f}", failures)
    check(out["prompt_tokens"] == sum(e["prompt_tokens"] for e in ok), "prompt_tokens == server's sum", failures)
    check(out["cached_tokens"] == sum(e["cached_tokens"] for e in ok), "cached_tokens == server's sum", failures)
    check(abs(out["cached_token_fraction"] - out["cached_tokens"] / out["prompt_tokens"]) < 1e-12,
          "cached_token_fraction == cached / prompt", failures)
    check(out["completion_tokens"] == 4 * len(ok), "completion_tokens from usage", failures)
    by_turn = out["by_turn"]
    check([t["sent"] for t in by_turn] == [sessions] * turns, f"each turn sent by every session "
          f"({[t['sent'] for t in by_turn]})", failures)
    # (A failed turn is dropped from the conversation, so the server's count of user messages
    # can be lower than the client's turn; per-turn sums are checked only in total.)
    check(sum(t["completed"] for t in by_turn) == out["completed"], "per turn: completed adds up", failures)
    check(sum(t["cached_tokens"] for t in by_turn) == out["cached_tokens"], "per turn: cached_tokens add up",
          failures)

    # A short sweep and a chart: 20% failures break the SLO at the default 1% ...
    LOG.entries.clear()
    with tempfile.TemporaryDirectory() as tmp:
        chart = os.path.join(tmp, "ttft.svg")
        sweep = run_bench(binary, port, ["--model", "fake-model", "--sweep", "--rates", "4,8", "--duration-s", "60",
                                         "--sessions", "5", "--turns", "1", "--chart", chart], slo_ms=5000)
        check(len(sweep["rates"]) == 1 and sweep["max_rate_at_slo"] == 0,
              f"1% failures allowed: the first rate breaks the SLO, max_rate_at_slo 0 ({sweep['max_rate_at_slo']})",
              failures)
        # ... and hold it when failures are allowed: every rate runs, the highest is the max.
        sweep = run_bench(binary, port, ["--model", "fake-model", "--sweep", "--rates", "8,4", "--duration-s", "60",
                                         "--sessions", "5", "--turns", "1", "--max-failed-fraction", "0.5",
                                         "--chart", chart], slo_ms=5000)
        rates = [r["offered_rate"] for r in sweep["rates"]]
        check(rates == [4, 8] and sweep["max_rate_at_slo"] == 8, f"rates {rates} in order, max_rate_at_slo "
              f"{sweep['max_rate_at_slo']} == 8", failures)
        check(all(r["completed"] + r["failed"] == r["sent"] == 5 for r in sweep["rates"]), "sweep counts add up",
              failures)
        svg = open(chart).read()
        check(svg.startswith("<svg") or "<svg" in svg[:200], "the chart is an SVG", failures)
        check("TTFT p90" in svg and "8/s" in svg and "4/s" in svg, "the chart has its title and both rates", failures)

    server.shutdown()
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("bench_serve_fake: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

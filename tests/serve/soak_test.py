#!/usr/bin/env python3
"""Soak test of `kvault serve` (issue 16): for --seconds, all at once,
  - normal clients (streaming and not) whose greedy answers must equal the reference answers
    taken from the same server while idle, each within --deadline seconds;
  - slow clients (a partial POST dripping one byte at a time) and idle connections, reopened
    as the server's deadlines close them;
  - streams and requests whose client disconnects midway;
  - malformed requests (garbage, bad JSON, unknown methods, oversize bodies and headers);
  - a /healthz probe every 0.5 s that must always answer 200 within 5 s.
Then: no request left running, the server's RSS flat after the warm-up, a clean exit on
SIGTERM. Exits non-zero on any failure.

Usage: soak_test.py KVAULT_BINARY [--seconds 60]
"""
import argparse
import json
import random
import socket
import sys
import threading
import time

import serve_harness as h

PROMPTS = ["hello there", "what is a cache?", "tell me a story about a fox", "2 + 2 =", "list three colours",
           "why is the sky blue?"]
MAX_TOKENS = 12


class Soak:
    def __init__(self, server, seconds, deadline):
        self.server = server
        self.port = server.port
        self.deadline = deadline
        self.stop_at = time.monotonic() + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures = []
        self.counts = {"normal": 0, "stream": 0, "disconnects": 0, "malformed": 0, "health": 0, "slow_opened": 0}
        self.worst = 0.0
        self.reference = {}

    def fail(self, what):
        with self.lock:
            if len(self.failures) < 20:
                self.failures.append(what)

    def bump(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def running(self):
        return time.monotonic() < self.stop_at and not self.stop.is_set()

    # --- clients -----------------------------------------------------------------------------

    def normal_client(self, k):
        rng = random.Random(k)
        while self.running():
            prompt = rng.choice(PROMPTS)
            stream = rng.random() < 0.5
            t = time.monotonic()
            try:
                body = h.chat_body(prompt, MAX_TOKENS, stream=stream)
                status, _, data = h.exchange(self.port, h.request_bytes("POST", "/v1/chat/completions", body),
                                             timeout=self.deadline)
                took = time.monotonic() - t
                if status != 200:
                    self.fail(f"normal request: status {status}: {data[:200]!r}")
                    continue
                if stream:
                    text, done = h.stream_text(data)
                    if not done:
                        self.fail("stream ended without [DONE]")
                else:
                    text = json.loads(data)["choices"][0]["message"]["content"]
                if text != self.reference[prompt]:
                    self.fail(f"wrong answer to {prompt!r}: {text!r} != {self.reference[prompt]!r}")
                with self.lock:
                    self.worst = max(self.worst, took)
                self.bump("stream" if stream else "normal")
            except Exception as e:  # noqa: BLE001 (a timeout, a reset: all failures here)
                self.fail(f"normal request failed after {time.monotonic() - t:.1f} s: {e!r}")

    @staticmethod
    def closed_by_server(s):
        """Whether the server closed `s` (EOF, a reset, or an answer such as its 408 waiting)."""
        timeout = s.gettimeout()
        s.settimeout(0)  # a socket with a timeout would wait for data first
        try:
            s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return True  # b"" (EOF) or an answer (a 408 comes just before the close)
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: still open
        except OSError:
            return True
        finally:
            s.settimeout(timeout)

    def slow_clients(self, n):
        """Keeps n slow or idle connections open, replacing those the server closes (or answers:
        a 408 comes just before the close)."""
        socks = []
        rng = random.Random(7)
        while self.running():
            alive = []
            for s, kind in socks:
                try:
                    if self.closed_by_server(s):
                        raise ConnectionError("closed by the server")
                    if kind == "drip":
                        s.send(b" ")
                    alive.append((s, kind))
                except OSError:
                    s.close()
            socks = alive
            while len(socks) < n:
                try:
                    s = h.connect(self.port, timeout=5)
                    kind = rng.choice(["drip", "idle", "header"])
                    if kind == "drip":
                        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\n{")
                    elif kind == "header":
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    socks.append((s, kind))
                    self.bump("slow_opened")
                except OSError as e:
                    self.fail(f"slow client could not connect: {e!r}")
                    break
            time.sleep(0.5)
        for s, _ in socks:
            s.close()

    def disconnecting_client(self, k):
        rng = random.Random(100 + k)
        while self.running():
            try:
                s = h.connect(self.port, timeout=self.deadline)
                stream = rng.random() < 0.7
                s.sendall(h.request_bytes("POST", "/v1/chat/completions", h.chat_body("a long tale", 400, stream=stream)))
                if stream:
                    s.recv(rng.choice([1, 100, 400]))
                else:
                    time.sleep(rng.random() * 0.3)
                s.close()
                self.bump("disconnects")
            except Exception as e:  # noqa: BLE001
                self.fail(f"disconnecting client: {e!r}")
            time.sleep(0.1)

    def malformed_client(self):
        rng = random.Random(3)
        bad = [
            b"GARBAGE\r\n\r\n",
            b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            h.request_bytes("POST", "/v1/chat/completions", b"{not json"),
            h.request_bytes("POST", "/v1/chat/completions", b'{"model": "kvault-random-tiny"}'),
            h.request_bytes("POST", "/v1/chat/completions", b'{"model": "nope", "messages": []}'),
            h.request_bytes("POST", "/v1/completions", b'{"model": "kvault-random-tiny", "prompt": 5}'),
            b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nX: " + b"b" * 100000 + b"\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 20000000\r\n\r\n" + b"z" * 1000,
            bytes(rng.randrange(256) for _ in range(300)),
            h.request_bytes("GET", "/nowhere"),
        ]
        while self.running():
            raw = rng.choice(bad)
            try:
                status, _, _ = h.exchange(self.port, raw, timeout=self.deadline)
                if status >= 500 and status != 501:  # 501: the unknown method
                    self.fail(f"malformed request {raw[:40]!r} got {status}")
            except (EOFError, ConnectionError):
                pass  # closing on garbage is fine
            except Exception as e:  # noqa: BLE001
                self.fail(f"malformed request {raw[:40]!r}: {e!r}")
            self.bump("malformed")
            time.sleep(0.02)

    def health_probe(self):
        while self.running():
            t = time.monotonic()
            try:
                status = h.healthz(self.port, timeout=5)
                if status != 200:
                    self.fail(f"/healthz: {status}")
            except Exception as e:  # noqa: BLE001
                self.fail(f"/healthz did not answer within 5 s: {e!r} after {time.monotonic() - t:.1f} s")
            self.bump("health")
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--deadline", type=float, default=30, help="seconds a normal request may take")
    ap.add_argument("--normal", type=int, default=8)
    ap.add_argument("--slow", type=int, default=150)
    ap.add_argument("--disconnecting", type=int, default=2)
    args = ap.parse_args()
    h.raise_fd_limit()
    server = h.Serve(args.binary, ["--header-timeout-s", "3", "--body-timeout-s", "3", "--idle-timeout-s", "5",
                                   "--write-timeout-s", "5", "--max-body-mib", "1", "--max-batch", "16"])
    soak = Soak(server, args.seconds, args.deadline)
    # The reference: each prompt answered greedily while the server is idle.
    for p in PROMPTS:
        status, text = h.chat(server.port, p, MAX_TOKENS)
        assert status == 200, text
        soak.reference[p] = text
    threads = [threading.Thread(target=soak.normal_client, args=(k,)) for k in range(args.normal)]
    threads += [threading.Thread(target=soak.slow_clients, args=(args.slow,))]
    threads += [threading.Thread(target=soak.disconnecting_client, args=(k,)) for k in range(args.disconnecting)]
    threads += [threading.Thread(target=soak.malformed_client), threading.Thread(target=soak.health_probe)]
    for t in threads:
        t.start()
    # RSS after a warm-up third, then at the end.
    time.sleep(args.seconds / 3)
    rss_warm = server.rss_kib()
    samples = [rss_warm]
    while time.monotonic() < soak.stop_at:
        time.sleep(1)
        samples.append(server.rss_kib())
    for t in threads:
        t.join()
    rss_end = server.rss_kib()
    # Nothing left running once the clients are gone.
    deadline = time.monotonic() + 30
    active = -1
    while time.monotonic() < deadline:
        active = h.metric(server.port, "kvault_serve_active_requests")
        if active == 0:
            break
        time.sleep(0.2)
    gone = h.metric(server.port, "kvault_serve_cancelled_by_client_total")
    code = server.stop()

    ok = True

    def check(cond, what):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        ok &= bool(cond)

    c = soak.counts
    check(not soak.failures, f"no failures ({len(soak.failures)}): {soak.failures[:5]}")
    check(c["normal"] + c["stream"] >= 10, f"normal requests answered correctly: {c['normal']} + {c['stream']} streamed, "
          f"slowest {soak.worst:.2f} s (deadline {args.deadline} s)")
    # One probe per ~0.5 s would be 2 * seconds; half of that leaves room for a loaded CI machine
    # (each probe that answers late is a failure above anyway).
    check(c["health"] >= args.seconds / 2, f"/healthz answered {c['health']} times")
    check(c["disconnects"] > 0 and gone > 0, f"{c['disconnects']} disconnecting clients, {gone:.0f} requests cancelled")
    check(c["malformed"] > 0, f"{c['malformed']} malformed requests")
    check(c["slow_opened"] >= args.slow, f"{c['slow_opened']} slow or idle connections opened")
    check(active == 0, f"no request left running ({active:.0f})")
    growth = rss_end - rss_warm
    check(growth < max(0.25 * rss_warm, 32 * 1024),
          f"RSS flat after the warm-up: {rss_warm} KiB -> {rss_end} KiB (max {max(samples)} KiB)")
    check(code == 0, f"server exits cleanly on SIGTERM ({code})")
    print(json.dumps({"seconds": args.seconds, "counts": c, "slowest_normal_s": round(soak.worst, 3),
                      "rss_warm_kib": rss_warm, "rss_end_kib": rss_end, "cancelled": gone}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

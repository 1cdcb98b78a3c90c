#!/usr/bin/env python3
"""`kvault serve`'s HTTP layer against careless and hostile clients (issue 16): a port in use
is refused; slow and idle connections never hold up other requests; the connection cap (503),
the body cap (413), header/body/write deadlines (408, close); HTTP/1.0 streams are not
chunked; pipelined requests each get an answer, in order; a client that leaves mid-stream
cancels its request, one that only half-closes (sends its request, then shuts down its sending
side) still gets the whole answer; unknown methods get 501. Exits non-zero on any failure.

Usage: http_limits_test.py KVAULT_BINARY
"""
import argparse
import json
import socket
import subprocess
import sys
import time

import serve_harness as h

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def test_port_in_use(binary):
    first = h.Serve(binary)
    try:
        second = subprocess.Popen([binary, "serve", "--random-model", "tiny", "--no-cache", "--port", str(first.port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it started: the bug
            second.kill()
            out, err = second.communicate()
        check(second.returncode not in (0, -9), f"a second server on port {first.port} exits non-zero "
              f"({second.returncode}; -9: it kept running and was killed)")
        check("in use" in err and str(first.port) in err,
              f"... saying the port is in use: {err.strip()[-200:]!r}")
        check('"ready"' not in out, "... and never says ready")
        check(h.healthz(first.port) == 200, "the first server still answers")
    finally:
        first.stop()


def test_slow_clients(server, n):
    port = server.port
    baseline = h.chat(port, "hello there", 8)
    slow = h.SlowClients(port, n, drip_s=0.5)
    try:
        time.sleep(1.0)
        status, took = h.timed(h.healthz, port, 10)
        check(status == 200 and took < 5, f"/healthz with {n} slow and idle connections open: {status} in {took:.2f} s")
        (status, text), took = h.timed(h.chat, port, "hello there", 8, 10)
        check(status == 200 and took < 5, f"a completion with {n} slow and idle connections open: {status} in {took:.2f} s")
        check(text == baseline[1], "... and the same answer as on an idle server")
        opened = h.metric(port, "kvault_serve_open_connections")
        check(opened >= n, f"the slow connections are all open at once ({opened:.0f} >= {n})")
    finally:
        slow.close()


def test_connection_cap(binary):
    server = h.Serve(binary, ["--max-connections", "8"])
    try:
        idle = [h.connect(server.port) for _ in range(8)]
        time.sleep(0.3)
        status, headers, body = h.exchange(server.port, h.request_bytes("GET", "/healthz"), 10)
        check(status == 503, f"connection 9 of --max-connections 8: {status} {body[:40]!r}")
        check(headers.get("connection") == "close", "... with Connection: close")
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.1)
            status = h.healthz(server.port)
        check(status == 200, "once they close, new connections are served again")
        check(h.metric(server.port, "kvault_serve_rejected_connections_total") >= 1, "rejections are counted in /metrics")
    finally:
        server.stop()


def test_limits(binary):
    args = ["--max-body-mib", "0.01", "--header-timeout-s", "1", "--body-timeout-s", "1", "--idle-timeout-s", "1",
            "--write-timeout-s", "1"]
    server = h.Serve(binary, args)
    port = server.port
    try:
        big = h.chat_body("x" * 20000)
        status, headers, _ = h.exchange(port, h.request_bytes("POST", "/v1/chat/completions", big))
        check(status == 413, f"a 20 KB body with --max-body-mib 0.01: {status}")
        check(headers.get("connection") == "close", "... and the connection closes")
        # Chunked bodies are capped too.
        chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   b"".join(b"1000\r\n" + b"y" * 4096 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n")
        status, _, _ = h.exchange(port, chunked)
        check(status == 413, f"a 20 KB chunked body: {status}")

        # Header deadline: part of a header, then nothing.
        s = h.connect(port, 10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        status, _, _ = h.Reader(s).response()
        check(status == 408, f"a header not finished within --header-timeout-s 1: {status} after {time.monotonic() - t:.1f} s")
        s.close()
        # Body deadline: a header, then a body that drips.
        s = h.connect(port, 10)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        for _ in range(4):
            time.sleep(0.4)
            try:
                s.send(b" ")
            except OSError:
                break
        try:
            status, _, _ = h.Reader(s).response()
        except (EOFError, OSError):
            status = "closed"
        check(status == 408, f"a body dripping past --body-timeout-s 1: {status}")
        s.close()
        # Idle keep-alive: closed silently after the idle deadline (1 s; up to 4 s on a busy machine),
        # not merely when this client's own 10 s timeout gives up.
        s = h.connect(port, 10)
        s.sendall(h.request_bytes("GET", "/healthz"))
        r = h.Reader(s)
        status, _, _ = r.response()
        t = time.monotonic()
        try:
            how = "closed" if s.recv(1) == b"" else "sent data"
        except socket.timeout:  # before OSError: socket.timeout is one
            how = "still open"
        except OSError:
            how = "closed"  # a reset
        took = time.monotonic() - t
        check(status == 200 and how == "closed" and 0.5 <= took <= 4,
              f"an idle keep-alive connection is closed after --idle-timeout-s 1: {how} after {took:.1f} s")
        s.close()

        # A client that does not read its stream: the write deadline closes it and cancels.
        before = h.metric(port, "kvault_serve_cancelled_by_client_total")
        # (With top_logprobs each token's chunk is ~1.4 KB: the 256 KiB send buffer fills fast.)
        s = h.connect(port, 30, rcvbuf=4096)
        body = json.dumps({"model": h.MODEL, "messages": [{"role": "user", "content": "tell me everything"}],
                           "max_tokens": 3000, "temperature": 0, "stream": True, "logprobs": True,
                           "top_logprobs": 20}).encode()
        s.sendall(h.request_bytes("POST", "/v1/chat/completions", body))
        t = time.monotonic()
        deadline = t + 60
        while time.monotonic() < deadline and h.metric(port, "kvault_serve_cancelled_by_client_total") <= before:
            time.sleep(0.2)
        check(h.metric(port, "kvault_serve_cancelled_by_client_total") > before,
              f"a stream its client does not read is closed by --write-timeout-s and cancelled "
              f"({time.monotonic() - t:.1f} s)")
        s.close()
        check(h.healthz(port) == 200, "the server answers after all that")
    finally:
        server.stop()


def test_http10_and_pipelining(server):
    port = server.port
    # HTTP/1.0 stream: no chunked encoding, Connection: close, body until close.
    s = h.connect(port, 60)
    s.sendall(h.request_bytes("POST", "/v1/chat/completions", h.chat_body("hello", 8, stream=True), version="1.0"))
    status, headers, body = h.Reader(s).response()
    s.close()
    check(status == 200 and "transfer-encoding" not in headers,
          f"HTTP/1.0 stream: {status}, not chunked (headers {sorted(headers)})")
    check(headers.get("connection") == "close", "... Connection: close")
    text, done = h.stream_text(body)
    check(done, f"... the whole stream until close ({len(body)} bytes, ends with [DONE])")
    _, want = h.chat(port, "hello", 8)
    check(text == want, "... the same text as a non-streaming answer")
    # HTTP/1.0 non-streaming: Content-Length, then close.
    status, headers, body = h.exchange(port, h.request_bytes("GET", "/healthz", version="1.0"))
    check(status == 200 and headers.get("connection") == "close", "HTTP/1.0 request: answered and closed")

    # Pipelining: three requests in one write; three answers, in order.
    s = h.connect(port, 60)
    s.sendall(h.request_bytes("GET", "/v1/models") +
              h.request_bytes("POST", "/v1/chat/completions", h.chat_body("hello", 8)) +
              h.request_bytes("GET", "/healthz"))
    r = h.Reader(s)
    answers = [r.response() for _ in range(3)]
    s.close()
    check([a[0] for a in answers] == [200, 200, 200], f"pipelined requests: {[a[0] for a in answers]}")
    check(b'"object":"list"' in answers[0][2].replace(b" ", b"") and b"chat.completion" in answers[1][2] and
          answers[2][2] == b"ok\n", "... each answered, in order")
    # Keep-alive: several requests on one connection.
    s = h.connect(port, 60)
    r = h.Reader(s)
    ok = 0
    for _ in range(5):
        s.sendall(h.request_bytes("GET", "/healthz"))
        ok += r.response()[0] == 200
    s.close()
    check(ok == 5, f"keep-alive: 5 requests on one connection ({ok} answered)")


def test_half_close(server):
    """A client that sends its request and then shuts down its sending side (nc -N, some HTTP/1.0
    tools) still reads the whole answer: a half-close is not a departure."""
    port = server.port
    _, want = h.chat(port, "hello", 8)
    for stream in (False, True):
        s = h.connect(port, 60)
        s.sendall(h.request_bytes("POST", "/v1/chat/completions", h.chat_body("hello", 8, stream=stream)))
        s.shutdown(socket.SHUT_WR)
        try:
            status, _, body = h.Reader(s).response()
        except (EOFError, OSError) as e:
            status, body = f"nothing ({e!r})", b""
        s.close()
        if status == 200 and stream:
            text, done = h.stream_text(body)
        elif status == 200:
            text, done = json.loads(body)["choices"][0]["message"]["content"], True
        else:
            text, done = None, False
        check(status == 200 and done and text == want,
              f"a half-closed {'stream' if stream else 'request'} gets the whole answer: {status}")


def test_disconnects(server):
    port = server.port
    before = h.metric(port, "kvault_serve_cancelled_by_client_total")
    # Mid-stream: noticed by the next write (the client's kernel answers it with a reset).
    s = h.connect(port, 60)
    s.sendall(h.request_bytes("POST", "/v1/chat/completions", h.chat_body("a long story", 2000, stream=True)))
    s.recv(200)
    s.close()
    # Mid non-streaming request: indistinguishable from a half-close until the answer is
    # written, so it runs to its end; it must not be left running.
    s = h.connect(port, 60)
    s.sendall(h.request_bytes("POST", "/v1/chat/completions", h.chat_body("another long story", 200)))
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (h.metric(port, "kvault_serve_cancelled_by_client_total") >= before + 1 and
                h.metric(port, "kvault_serve_active_requests") == 0):
            break
        time.sleep(0.2)
    gone = h.metric(port, "kvault_serve_cancelled_by_client_total") - before
    check(gone >= 1, f"a client that leaves mid-stream cancels its request ({gone:.0f})")
    check(h.metric(port, "kvault_serve_active_requests") == 0, "... and nothing is left running")
    # Malformed requests get 400, unknown methods 501, and the server carries on.
    status, _, _ = h.exchange(port, b"GARBAGE\r\n\r\n")
    check(status == 400, f"garbage: {status}")
    status, _, _ = h.exchange(port, b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    check(status == 501, f"unknown method: {status}")
    check(h.healthz(port) == 200, "still healthy")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--slow", type=int, default=200, help="slow and idle connections held open")
    args = ap.parse_args()
    h.raise_fd_limit()
    test_port_in_use(args.binary)
    server = h.Serve(args.binary)
    try:
        test_slow_clients(server, args.slow)
        test_http10_and_pipelining(server)
        test_half_close(server)
        test_disconnects(server)
    finally:
        code = server.stop()
        check(code == 0, f"server exits cleanly on SIGTERM ({code})")
    test_connection_cap(args.binary)
    test_limits(args.binary)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

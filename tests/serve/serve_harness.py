"""Helpers for the `kvault serve` process tests: start a server, raw HTTP over sockets,
slow and idle clients. Python stdlib only."""
import json
import os
import socket
import subprocess
import threading
import time

MODEL = "kvault-random-tiny"
READY_TIMEOUT_S = 120


def read_ready_event(proc, timeout=READY_TIMEOUT_S):
    """A started server's first stdout line, {"event": "ready", "port": N, ...}, as a dict. On a
    missing, late or malformed line the child is killed (never left running) and RuntimeError
    says why."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = box[0] if box else None
    try:
        if line is None:
            raise RuntimeError(f"kvault serve said nothing within {timeout} s")
        if not line:
            raise RuntimeError(f"kvault serve exited before it was ready ({proc.poll()})")
        ready = json.loads(line)
        if not isinstance(ready, dict) or ready.get("event") != "ready" or "port" not in ready:
            raise RuntimeError(f"kvault serve's first line is not the ready event: {line!r}")
        return ready
    except (RuntimeError, ValueError) as e:
        proc.kill()
        proc.wait()
        if isinstance(e, RuntimeError):
            raise
        raise RuntimeError(f"kvault serve's first line is not JSON: {line!r}") from e


def read_ready(proc, timeout=READY_TIMEOUT_S):
    """The port of read_ready_event's line."""
    return int(read_ready_event(proc, timeout)["port"])


class Serve:
    """A `kvault serve --random-model tiny --no-cache` process on a free port (or `port`)."""

    def __init__(self, binary, args=(), port=0):
        self.proc = subprocess.Popen([binary, "serve", "--random-model", "tiny", "--no-cache", "--port", str(port)]
                                     + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Drain stderr so that the server never blocks on a full pipe (and so a failed start can
        # say why).
        self._err = []
        threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True).start()
        try:
            self.port = read_ready(self.proc)
        except RuntimeError as e:
            time.sleep(0.2)  # the stderr reader catches up with the dead child
            raise RuntimeError(f"{e}; stderr: {''.join(self._err)[-2000:]}") from None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def connect(port, timeout=30.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def chat_body(content, max_tokens=8, stream=False, temperature=0):
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}],
                       "max_tokens": max_tokens, "temperature": temperature, "stream": stream}).encode()


def request_bytes(method, path, body=b"", version="1.1", headers=None):
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Reads HTTP/1.x responses off one socket (Content-Length, chunked, or until close)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _until(self, marker):
        while marker not in self.buf:
            if not self._fill():
                raise EOFError("connection closed")
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self):
        """Returns (status, {header-lowercase: value}, body bytes)."""
        head = self._until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if status == 100:
            return self.response()
        if "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                self._exactly(2)
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return status, headers, body


def exchange(port, raw, timeout=30.0):
    """One request on a fresh connection: (status, headers, body)."""
    s = connect(port, timeout)
    try:
        s.sendall(raw)
        return Reader(s).response()
    finally:
        s.close()


def chat(port, content, max_tokens=8, timeout=60.0):
    """A normal non-streaming chat completion: (status, text or error body)."""
    status, _, body = exchange(port, request_bytes("POST", "/v1/chat/completions", chat_body(content, max_tokens)),
                               timeout)
    if status != 200:
        return status, body.decode(errors="replace")
    return status, json.loads(body)["choices"][0]["message"]["content"]


def stream_text(body):
    """The text of an SSE body of chat chunks, and whether it ended with [DONE]."""
    text, done = "", False
    for line in body.decode().split("\n"):
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        for ch in json.loads(data).get("choices", []):
            text += ch.get("delta", {}).get("content") or ""
    return text, done


def healthz(port, timeout=30.0):
    status, _, body = exchange(port, request_bytes("GET", "/healthz"), timeout)
    return status


def metric(port, name):
    """The sum of a metric's samples in /metrics."""
    _, _, body = exchange(port, request_bytes("GET", "/metrics"))
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


class SlowClients:
    """`n` connections that hold the server: half send a partial POST and then one byte every
    `drip_s` seconds, half connect and send nothing (idle). close() ends them."""

    def __init__(self, port, n, drip_s=1.0, idle_share=0.5):
        self.socks = []
        self.partial = []
        self.stop = threading.Event()
        n_idle = int(n * idle_share)
        for i in range(n):
            s = connect(port, timeout=5)
            if i >= n_idle:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{")
                self.partial.append(s)
            self.socks.append(s)
        self.thread = threading.Thread(target=self._drip, args=(drip_s,), daemon=True)
        self.thread.start()

    def _drip(self, drip_s):
        while not self.stop.wait(drip_s):
            for s in self.partial:
                try:
                    s.send(b" ")
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def timed(fn, *args, **kw):
    t = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t


def raise_fd_limit(n=8192):
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, n), hard), hard))
    except (ImportError, ValueError, OSError):
        pass


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

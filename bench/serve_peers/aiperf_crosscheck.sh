#!/usr/bin/env bash
# Single-turn cross-check of `kvault bench serve` against AIPerf (issue 17): both load
# generators run, one after the other, against one `kvault serve --no-cache`, and each run is
# bracketed by the server's own TTFT histogram (/metrics: kvault_serve_ttft_seconds_sum and
# _count), so each tool's mean TTFT is compared with what the server measured for the same
# requests. Never part of CI.
#
#   bench/serve_peers/aiperf_crosscheck.sh [--kvault BIN] [--venv DIR] [--out DIR] [--rate R]
#
# The venv gets `pip install aiperf` when it has no aiperf (about 1 GiB). AIPerf needs a
# Hugging Face tokenizer to count tokens; no model hub is reachable here, so the script trains
# a small byte-level BPE on /usr/share/common-licenses (token counts are AIPerf's own, TTFT
# does not depend on them). Its prompts are ~1,500-character pieces of the GPL-3 text (about
# 380 SmolLM2 tokens, like the first turns of `kvault bench serve`'s corpus).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KVAULT_BIN="${KVAULT:-$ROOT/build/kvault}" VENV=/work/aiperf-venv OUT="" RATE=0.25 PORT=18095 COUNT=21
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kvault) KVAULT_BIN=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "aiperf_crosscheck.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
[[ -x $KVAULT_BIN ]] || { echo "no kvault binary at $KVAULT_BIN (--kvault BIN)" >&2; exit 2; }
[[ -n $OUT ]] || OUT="${TMPDIR:-/tmp}/kvault-aiperf-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
[[ -x $VENV/bin/aiperf ]] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q aiperf; }

"$VENV/bin/python" - "$OUT" <<'PY'
import glob, json, os, sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import PreTrainedTokenizerFast
out = sys.argv[1]
files = [f for f in sorted(glob.glob('/usr/share/common-licenses/*')) if os.path.isfile(f)]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train(files, trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=["<|endoftext|>"]))
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(os.path.join(out, 'tok'))
paras = [p.strip() for p in open('/usr/share/common-licenses/GPL-3').read().split('\n\n') if len(p.strip()) > 40]
pieces, cur = [], ''
for p in paras:
    cur += p + '\n\n'
    if len(cur) > 1400:
        pieces.append(cur)
        cur = ''
with open(os.path.join(out, 'prompts.jsonl'), 'w') as f:
    for i, c in enumerate(pieces):
        f.write(json.dumps({"text": f"Request {i}.\n\nRead the following text and answer my question about it.\n\n"
                                    f"{c}Question: What is this text about?"}) + '\n')
PY

URL="http://127.0.0.1:$PORT"
ttft() { curl -s "$URL/metrics" | awk '/^kvault_serve_ttft_seconds_(sum|count) / {printf "%s ", $2}'; }
"$KVAULT_BIN" serve --port "$PORT" --threads 1 --no-cache >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf -o /dev/null "$URL/v1/models" && break; sleep 0.2; done
read -r s0 c0 <<<"$(ttft)"
"$VENV/bin/aiperf" profile --model SmolLM2-135M-Instruct --tokenizer "$OUT/tok" --endpoint-type chat --streaming \
  --url "$URL" --custom-dataset-type single_turn --input-file "$OUT/prompts.jsonl" --request-rate "$RATE" \
  --request-count "$COUNT" --extra-inputs max_tokens:16 --extra-inputs temperature:0 --random-seed 1 --ui-type none \
  --output-artifact-dir "$OUT/aiperf" >"$OUT/aiperf.log" 2>&1
read -r s1 c1 <<<"$(ttft)"
"$KVAULT_BIN" bench serve --url "$URL" --turns 1 --rate "$RATE" --duration-s "$(python3 -c "print($COUNT / $RATE)")" \
  --max-tokens 16 --seed 3 --timeout-s 60 --json >"$OUT/kvault.json" 2>"$OUT/kvault.log"
read -r s2 c2 <<<"$(ttft)"
python3 - "$OUT" "$s0" "$c0" "$s1" "$c1" "$s2" "$c2" <<'PY'
import json, sys
out = sys.argv[1]
s0, c0, s1, c1, s2, c2 = map(float, sys.argv[2:])
a = json.load(open(f"{out}/aiperf/profile_export_aiperf.json"))["time_to_first_token"]
k = json.load(open(f"{out}/kvault.json"))
rows = [("aiperf", c1 - c0, a["avg"], a["p50"], a["p90"], 1e3 * (s1 - s0) / (c1 - c0)),
        ("kvault bench serve", c2 - c1, k["ttft_mean_ms"], k["ttft_p50_ms"], k["ttft_p90_ms"], 1e3 * (s2 - s1) / (c2 - c1))]
result = [{"client": n, "requests": int(c), "ttft_mean_ms": m, "ttft_p50_ms": p50, "ttft_p90_ms": p90,
           "server_ttft_mean_ms": srv, "client_minus_server_ms": m - srv} for n, c, m, p50, p90, srv in rows]
json.dump(result, open(f"{out}/crosscheck.json", "w"), indent=1)
for r in result:
    print(json.dumps(r))
PY

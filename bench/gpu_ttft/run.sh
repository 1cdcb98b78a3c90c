#!/usr/bin/env bash
# The GPU benchmark in one command, for the GPU machine (H100/H200, PyTorch + CUDA, no network):
#   bench/gpu_ttft/run.sh OUT_DIR [flags for `kvault bench gpu-ttft`]
# 1. unpacks the Debian libraries carried in .gpu-deps (scripts/gpu_deps.sh) into a private
#    prefix, when the machine lacks them;
# 2. builds kvault, the CUDA tests and the engine tests against this machine's LibTorch;
# 3. runs the GPU tests (gpu_copy_test, the engine's CUDA test) — a failure stops here;
# 4. runs `kvault bench gpu-ttft` (Llama-3-8B shape, bf16) and the transformers baseline
#    (hf_baseline.py) on the same GPU, then merges both into OUT_DIR/gpu_ttft.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: bench/gpu_ttft/run.sh OUT_DIR [kvault bench gpu-ttft flags]}"
shift
mkdir -p "$OUT"
HISTORIES="${HISTORIES:-1024,4096,16384,32768}"
NEW_TOKENS="${NEW_TOKENS:-128}"

extra_prefix=""
if [ -d .gpu-deps ] && ! pkg-config --exists liburing 2>/dev/null; then
  deps=/tmp/kvault-deps
  mkdir -p "$deps"
  for f in .gpu-deps/*.deb; do dpkg-deb -x "$f" "$deps"; done
  arch_lib="$deps/usr/lib/x86_64-linux-gnu"
  export PKG_CONFIG_PATH="$arch_lib/pkgconfig:$deps/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$deps"
  export CPATH="$deps/usr/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$arch_lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$arch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPENSSL_ROOT_DIR="$deps/usr"
  extra_prefix=";$deps/usr"
  echo "run.sh: libraries from .gpu-deps in $deps"
fi

torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
echo "run.sh: configuring (LibTorch at $torch_prefix)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$torch_prefix$extra_prefix" \
  > "$OUT/configure.log" 2>&1 || { tail -60 "$OUT/configure.log"; exit 1; }
echo "run.sh: building"
ninja -C build-gpu kvault gpu_copy_test engine_test planner_test > "$OUT/build.log" 2>&1 || { grep -m20 -B2 -A8 "error" "$OUT/build.log" | head -120; exit 1; }

echo "run.sh: GPU tests"
build-gpu/tests/gpu_copy_test > "$OUT/tests.log" 2>&1 || { tail -60 "$OUT/tests.log"; exit 1; }
build-gpu/tests/engine/engine_test >> "$OUT/tests.log" 2>&1 || { tail -60 "$OUT/tests.log"; exit 1; }
build-gpu/tests/planner_test >> "$OUT/tests.log" 2>&1 || { tail -60 "$OUT/tests.log"; exit 1; }
grep -E "PASSED|SKIPPED|FAILED" "$OUT/tests.log" | tail -8 || true

echo "run.sh: kvault bench gpu-ttft"
# The store on the checkout's file system (not /tmp, which may refuse O_DIRECT): the JSON's
# t2_direct_io says whether the cold T2 reads really bypassed the page cache.
rm -rf build-gpu/ttft-store
build-gpu/kvault bench gpu-ttft --histories "$HISTORIES" --new-tokens "$NEW_TOKENS" --dir "$PWD/build-gpu/ttft-store" \
  --json "$OUT/kvault_ttft.json" "$@" \
  2> "$OUT/kvault_ttft.log" > /dev/null || { tail -30 "$OUT/kvault_ttft.log"; exit 1; }
echo "run.sh: transformers baseline"
python3 bench/gpu_ttft/hf_baseline.py --preset llama3-8b --histories "$HISTORIES" --new-tokens "$NEW_TOKENS" \
  --json "$OUT/hf_ttft.json" 2> "$OUT/hf_ttft.log" > /dev/null || { tail -30 "$OUT/hf_ttft.log"; exit 1; }
python3 bench/gpu_ttft/merge.py "$OUT/kvault_ttft.json" "$OUT/hf_ttft.json" > "$OUT/gpu_ttft.json"
python3 bench/gpu_ttft/merge.py --table "$OUT/kvault_ttft.json" "$OUT/hf_ttft.json"

#!/usr/bin/env bash
# The main job: install, build, run `kvault demo`. Pass other
# arguments to run something else, e.g. scripts/demo.sh bench store --quick --json.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
if [ $# -eq 0 ]; then set -- demo; fi
exec ./build/kvault "$@"

#!/usr/bin/env bash
# The main job: install, build, run. For now the store benchmark (quick mode); pass other
# arguments to run something else, e.g. scripts/demo.sh bench store --json.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
if [ $# -eq 0 ]; then set -- bench store --quick; fi
exec ./build/kvault "$@"

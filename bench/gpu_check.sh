#!/usr/bin/env bash
# One call on the GPU machine (see docs/GPU.md): build the engine with CUDA against the image's LibTorch, then run
# the GPU tests (fused RMSNorm kernel vs float64, decoder on CUDA in fp32/bf16 vs transformers) and print timings.
# Needs: Debian 12 .debs of the engine's C++ dependencies in .debs/ (carried; see docs/GPU.md for the list).
# Usage (from the repo root, on the GPU machine): bash bench/gpu_check.sh
set -euo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
fm_configure_gpu || exit 1
fm_build_gpu fm_torch_tests flashmorph-model || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
"$PY" tests/parity/make_models_fixtures.py --out build-gpu/fixtures/models
./build-gpu/tests/fm_torch_tests --gtest_filter='RmsNormKernel.*:*DecoderParity.*' 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) " || true
grep -q "FAILED" "$OUT/gpu_tests.log" && exit 1
grep -q "SKIPPED" "$OUT/gpu_tests.log" && { echo "GPU tests were skipped: no CUDA?"; exit 1; }
echo "gpu_check: OK"

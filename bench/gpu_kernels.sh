#!/usr/bin/env bash
# One call on the GPU machine (docs/GPU.md): build the CUDA kernels and the torch tests against the image's LibTorch,
# run the kernel tests against the float64 references (LinearAttentionCuda.*), then bench/kernel_bench.py: our
# kernels vs flash-linear-attention's Triton kernels (wheels carried in .whl/, never committed) and SDPA.
# Carry: .debs (see docs/GPU.md) and .whl (pip download --no-deps flash-linear-attention fla-core).
# Usage: bash bench/gpu_kernels.sh [kernel_bench.py args...]
set -uo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
fm_configure_gpu || exit 1
fm_build_gpu fm_torch_tests flashmorph_torch_ops || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
status=0
./build-gpu/tests/fm_torch_tests --gtest_filter='LinearAttentionCuda.*:RmsNormKernel.*' >"$OUT/kernel_tests.log" 2>&1 || status=1
grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |^\[(gla|gdn)|Failure|error" "$OUT/kernel_tests.log" | head -80
grep -q "SKIPPED \]" "$OUT/kernel_tests.log" && { echo "kernel tests were skipped: no CUDA?"; status=1; }
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --target /tmp/fla-site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/fla-site
fi
PYTHONUNBUFFERED=1 "$PY" bench/kernel_bench.py --lib build-gpu/kernels/libflashmorph_torch_ops.so \
  --json "$OUT/kernel_bench.json" "$@" 2>&1 | tee "$OUT/kernel_bench.log" | tail -60 || status=1
echo "gpu_kernels: status $status, $(( $(date +%s) - t0 )) s"
exit $status

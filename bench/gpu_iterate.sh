#!/usr/bin/env bash
# One call on the GPU machine for a development iteration (docs/GPU.md): build the torch tests, the torch ops and
# fm_gateopt_bench with CUDA; run the GPU tests against float64; optionally compare SDPA's backends
# (bench/sdpa_backends.py); time the engine's gate step (lightning) once per environment variant in GATE_VARIANTS
# (the first one also profiled); run the kernel bench once per variant in VARIANTS (with fla when FLA=1 and its
# wheels are carried in .whl/). Logs land in $OUT (tests.txt, sdpa.txt, gateopt-<variant>.txt,
# kernels-<variant>.txt); the summary lines come last.
# Knobs: TESTS (gtest filter; "" skips), SDPA (1 runs the backend comparison), GATE_VARIANTS (space-separated;
#        "default" = no variable, else NAME=VALUE; "" skips; default "default"), GATE_BRANCH (default lightning),
#        SEQ (default 8192), VARIANTS (kernel bench; default "default"; "" skips), KINDS (default lightning,gla,gdn),
#        FLA (1: include fla), BUDGET (seconds from the start, default 560).
# Usage (repo root, GPU machine; carry [".debs"] and ".whl" for FLA=1): bash bench/gpu_iterate.sh
set -uo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
DEADLINE=$(( t0 + ${BUDGET:-560} ))
fm_configure_gpu || exit 1
fm_build_gpu fm_torch_tests flashmorph_torch_ops fm_gateopt_bench || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
name_of() { local v=$1; echo "${v//[^A-Za-z0-9]/_}"; }
env_of() { [[ $1 == default ]] || echo "$1"; }
TESTS=${TESTS-LinearAttentionCuda.*:RmsNormKernel.*:FusedOps*:MultiDevice*:*DecoderParity*:HybridDecode*:Morph*:CudaEmulation.*:MultiLinear*}
if [[ -n "$TESTS" ]]; then
  [[ $TESTS == *DecoderParity* ]] && "$PY" tests/parity/make_models_fixtures.py --out build-gpu/fixtures/models >/dev/null
  fm_phase tests 200 ./build-gpu/tests/fm_torch_tests --gtest_filter="$TESTS" >/dev/null
fi
[[ ${SDPA:-0} == 1 ]] && fm_phase sdpa 60 "$PY" bench/sdpa_backends.py >/dev/null
first=1
for v in ${GATE_VARIANTS-default}; do
  fm_phase "gateopt-$(name_of "$v")" 150 env $(env_of "$v") ./build-gpu/bench/fm_gateopt_bench --device cuda \
    --dtype bf16 --shape qwen3-1.7b --seq "${SEQ:-8192}" --branch "${GATE_BRANCH:-lightning}" --stage gates \
    --steps 3 --warmup 1 $( ((first)) && echo --profile) --json "/tmp/gateopt-$(name_of "$v").json" >/dev/null
  first=0
done
fla=--no-fla
if [[ ${FLA:-0} == 1 ]] && ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --target /tmp/fla-site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/fla-site && fla=""
fi
for v in ${VARIANTS-default}; do
  fm_phase "kernels-$(name_of "$v")" 400 env $(env_of "$v") "$PY" bench/kernel_bench.py $fla \
    --lib build-gpu/kernels/libflashmorph_torch_ops.so --kinds "${KINDS:-lightning,gla,gdn}" --reps 10 --warmup 3 \
    --json "/tmp/kernels-$(name_of "$v").json" >/dev/null
done
echo "===== summary ($(( $(date +%s) - t0 )) s)"
[[ -f $OUT/tests.txt ]] && grep -E "^\[ *(FAILED|PASSED) |Failure" "$OUT/tests.txt" | head -20
[[ -f $OUT/sdpa.txt ]] && cat "$OUT/sdpa.txt"
for v in ${GATE_VARIANTS-default}; do
  echo "--- gate step, $v"; grep -E "^gates|profile:" "$OUT/gateopt-$(name_of "$v").txt" | head -4
done
for v in ${VARIANTS-default}; do
  echo "--- kernels, $v"; grep -E "^\s*(lightning|gla|gdn)\s|rel|FAIL" "$OUT/kernels-$(name_of "$v").txt" | head -30
done

#!/usr/bin/env bash
# One call on a two-GPU machine (issue 5 item 4, several GPUs; kind nvidia-h200-x2): build the torch tests and
# fm_gateopt_bench with CUDA against the image's LibTorch, run the multi-device tests on the real GPUs (layers placed
# over CPU + both GPUs, data-parallel gate steps, the layer-parallel calibration pipeline) and the kernel tests, then
# time the same job on one GPU and on two: gate optimisation steps over SAMPLES samples (data parallel), calibration
# over PIPE steps (layer-parallel pipeline), and the gate step on a layer-sharded model (memory per GPU), on a random
# Qwen3-1.7B-shaped model in bf16. Phases have time limits within BUDGET (540 s from the build's start).
# Needs: .debs/ (see docs/GPU.md; unpacked and configured by bench/gpu_env.sh).
# Usage (repo root, GPU machine): bash bench/gpu_multi.sh        (carry: [".debs"], kind nvidia-h200-x2)
#   env: BRANCHES ("lightning gdn"), SEQ (8192,16384), SAMPLES (2), PIPE (8), STEPS (3), WARMUP (1), STAGE (both),
#        TESTS (1; 0 skips the tests)
# Results: $OUT/multi-tests.txt, $OUT/multi-<branch>.{txt,json}, $OUT/summary.txt
set -uo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
ngpu=$(nvidia-smi -L | wc -l)
echo "GPUs: $ngpu"
fm_configure_gpu || exit 1
if [ "${TESTS:-1}" != 0 ]; then fm_build_gpu fm_torch_tests fm_gateopt_bench || exit 1; else fm_build_gpu fm_gateopt_bench || exit 1; fi
echo "build: $(( $(date +%s) - t0 )) s"
DEADLINE=$(( t0 + ${BUDGET:-540} ))
PHASE_MARGIN=5
if [ "${TESTS:-1}" != 0 ]; then
  fm_phase multi-tests 120 ./build-gpu/tests/fm_torch_tests \
    --gtest_filter='MultiDevice*:DevicePlacement*:LinearAttentionCuda.*:RmsNormKernel.*' >/dev/null
  grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure" "$OUT/multi-tests.txt" | tail -30
fi
devs=1; (( ngpu >= 2 )) && devs=1,2
for b in ${BRANCHES:-lightning gdn}; do
  fm_phase "multi-$b" 170 ./build-gpu/bench/fm_gateopt_bench --device cuda --dtype bf16 --shape qwen3-1.7b \
    --seq "${SEQ:-8192,16384}" --branch "$b" --stage "${STAGE:-both}" --devices "$devs" --samples "${SAMPLES:-2}" \
    --pipeline-steps "${PIPE:-8}" --shard-layers --steps "${STEPS:-3}" --warmup "${WARMUP:-1}" --json "$OUT/multi-$b.json"
done
grep -hE "^(gates|calibration)" "$OUT"/multi-*.txt | tee "$OUT/summary.txt"

#!/usr/bin/env bash
# One call on the GPU machine (issue 5 item 5, hybrid speed): build fm_hybrid_bench with CUDA against the image's
# LibTorch, then time prefill (T = 32768 and 131072) and decoding (64 tokens after the prefill) of a random
# Qwen3-1.7B-shaped model in bf16, the original (all softmax attention) against the hybrid that keeps 1/4 of its
# layers softmax attention (evenly spread) and runs linear-attention branches in the rest, with KV-cache / state
# memory. One process per branch kind (BRANCHES, default "gdn gla lightning"), each under its own time limit, all
# within BUDGET (540 s from the build's start), so the call stays within the 10-minute limit and whatever finished
# still comes back (the JSON is rewritten after every row). Anchor: the paper's 2.24x prefill speed-up at 128K.
# Needs: .debs/ (see docs/GPU.md; unpacked and configured by bench/gpu_env.sh).
# Usage (repo root, GPU machine): bash bench/gpu_hybrid.sh        (carry: [".debs"])
#   env: BRANCHES, SEQ (32768,131072), DECODE (64), RATIO (0.25), REPS (2), WARMUP (1), LIMIT (per branch, 200 s)
# Results: $OUT/hybrid-<branch>.{txt,json}, $OUT/summary.txt
set -uo pipefail
source bench/gpu_env.sh
t0=$(date +%s)
fm_configure_gpu || exit 1
fm_build_gpu fm_hybrid_bench || exit 1
echo "build: $(( $(date +%s) - t0 )) s"

DEADLINE=$(( t0 + ${BUDGET:-540} ))
PHASE_MARGIN=5
for b in ${BRANCHES:-gdn gla lightning}; do
  fm_phase "hybrid-$b" "${LIMIT:-200}" ./build-gpu/bench/fm_hybrid_bench --device cuda --dtype bf16 --shape qwen3-1.7b \
    --seq "${SEQ:-32768,131072}" --decode-steps "${DECODE:-64}" --fa-ratio "${RATIO:-0.25}" --branch "$b" \
    --reps "${REPS:-2}" --warmup "${WARMUP:-1}" --json "$OUT/hybrid-$b.json"
done
grep -H "=>" "$OUT"/hybrid-*.txt 2>/dev/null | tee "$OUT/summary.txt"

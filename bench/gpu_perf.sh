#!/usr/bin/env bash
# One call on the GPU machine (issue 5 item 3, engine throughput): build fm_gateopt_bench with CUDA against the
# image's LibTorch, time the engine's gate-optimisation and calibration steps on a random Qwen3-1.7B-shaped model in
# bf16 (T = 8192 and 16384; Lightning and GDN branches), then the plain-PyTorch anchor gateopt_reference.py eager and
# with torch.compile, and print one comparison table (tokens/s ratio, peak memory). Every phase has its own time
# limit, all within BUDGET (480 s from the build's start), so the call stays within ~8 minutes and whatever finished
# still comes back.
# Needs: .debs/ (see docs/GPU.md; unpacked and configured by bench/gpu_env.sh) and the reference script carried as
# .ref/gateopt_reference.py (or REF=path).
# Usage (repo root, GPU machine): bash bench/gpu_perf.sh        (carry: [".debs", ".ref"])
# Results: $OUT/ours-lightning.json, ours-gdn.json, ref-eager/ and ref-compile/gateopt_anchor.json, comparison.{txt,json}
set -uo pipefail
REF=${REF:-.ref/gateopt_reference.py}
STEPS=${STEPS:-3}  # BRANCHES="lightning gdn" (default) picks the branch kinds of our rows
WARMUP=${WARMUP:-1}
if [[ ! -f "$REF" ]]; then echo "missing $REF (copy gateopt_reference.py there and carry it)"; exit 2; fi
source bench/gpu_env.sh
mkdir -p "$OUT/ref-eager" "$OUT/ref-compile"
t0=$(date +%s)
fm_configure_gpu || exit 1
fm_build_gpu fm_gateopt_bench || exit 1
echo "build: $(( $(date +%s) - t0 )) s"

# Every phase runs under its own limit, cut further so that the comparison still runs before BUDGET seconds.
DEADLINE=$(( t0 + ${BUDGET:-480} ))
# Ours: one process per branch kind, so a slow or failing kind leaves the other's numbers intact.
for b in ${BRANCHES:-lightning gdn}; do
  fm_phase "ours-$b" 110 ./build-gpu/bench/fm_gateopt_bench --device cuda --dtype bf16 --shape qwen3-1.7b \
    --seq 8192,16384 --branch "$b" --stage both --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/ours-$b.json"
done
fm_phase ref-eager 90 env OUT="$OUT/ref-eager" "$PY" "$REF"
fm_phase ref-compile 140 env OUT="$OUT/ref-compile" COMPILE=1 "$PY" "$REF"

"$PY" - "$OUT" <<'EOF' | tee "$OUT/comparison.txt"
import json, os, re, sys
out = sys.argv[1]
def load(p):
    try:
        return json.load(open(os.path.join(out, p)))
    except Exception:
        return None
ref = {m: load(f"ref-{m}/gateopt_anchor.json") or {} for m in ("eager", "compile")}
# The reference writes its JSON only at the end: when a time limit stopped it, read its printed lines instead.
line = re.compile(r"^(\S+)\s+T=\s*(\d+) step\s+([\d.]+) ms\s+(\d+) tok/s\s+MFU\s+([\d.]+)%\s+peak\s+([\d.]+) GiB")
for m in ("eager", "compile"):
    try:
        for text in open(os.path.join(out, f"ref-{m}.txt")):
            if (g := line.match(text)) and f"{g[1]} T{g[2]}" not in ref[m]:
                ref[m][f"{g[1]} T{g[2]}"] = dict(step_s=float(g[3]) / 1e3, tokens_per_s=float(g[4]),
                                                  mfu=float(g[5]) / 100, peak_gib=float(g[6]))
    except OSError:
        pass
ours = {}
for b in ("lightning", "gdn"):
    for r in (load(f"ours-{b}.json") or {}).get("results", []):
        ours[(r["stage"], b, r["T"])] = r
def fmt(v, width, prec):
    return f"{'-':>{width}}" if v is None else f"{v:{width}.{prec}f}"
get = lambda r, k: r.get(k) if r else None
print(f"{'T':>6} {'ref eager tok/s':>15} {'ref compile tok/s':>17} {'ours LA tok/s':>13} {'LA/ref':>7} "
      f"{'ours GDN tok/s':>14} {'GDN/ref':>7}   peak GiB: ref eager / ref compile / ours LA / ours GDN")
rows = []
for T in (8192, 16384):
    e, c = ref["eager"].get(f"eager+ckpt T{T}"), ref["compile"].get(f"compile+ckpt T{T}")
    la, gdn = ours.get(("gates", "lightning", T)), ours.get(("gates", "gdn", T))
    base = get(c, "tokens_per_s") or get(e, "tokens_per_s")
    ratio = lambda r: get(r, "tokens_per_s") / base if get(r, "tokens_per_s") and base else None
    print(f"{T:>6} {fmt(get(e, 'tokens_per_s'), 15, 0)} {fmt(get(c, 'tokens_per_s'), 17, 0)} "
          f"{fmt(get(la, 'tokens_per_s'), 13, 0)} {fmt(ratio(la), 7, 2)} {fmt(get(gdn, 'tokens_per_s'), 14, 0)} "
          f"{fmt(ratio(gdn), 7, 2)}   " + " / ".join(fmt(get(r, "peak_gib"), 0, 1) for r in (e, c, la, gdn)))
    rows.append(dict(T=T, ref_eager=e, ref_compile=c, ours_lightning=la, ours_gdn=gdn, ratio_lightning=ratio(la),
                     ratio_gdn=ratio(gdn), ratio_against="compile" if get(c, "tokens_per_s") else "eager"))
print("ratios: our gate step's tokens/s over the compiled reference's (the eager one's where compile did not finish)")
for (stage, b, T), r in sorted(ours.items()):
    if stage == "calibration" and "tokens_per_s" in r:
        mfu = r.get("mfu")
        print(f"calibration {b:9s} T={T:6d}: {r['tokens_per_s']:9.0f} tok/s, {r['tflops']:.2f} TFLOP/s, "
              f"MFU {'-' if mfu is None else format(100 * mfu, '.1f') + '%'}, peak {fmt(r.get('peak_gib'), 0, 1)} GiB")
json.dump(rows, open(os.path.join(out, "comparison.json"), "w"), indent=1)
EOF

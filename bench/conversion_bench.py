"""Selection methods compared on one model, on this machine's CPU: FlashMorph vs uniform vs NLL at several
full-attention budgets. For every (method, budget) it runs `flashmorph convert` (sharing one work directory, so
the branches are calibrated once and the gates / NLL scores computed once per method) and prints a table of the
hybrid's passkey recall and KL(teacher || hybrid), with the wall time of each method's own selection step.

usage: python3 bench/conversion_bench.py --model DIR|FILE.gguf [--budgets 0.25,0.125] [--methods flashmorph,uniform,nll]
       [--flashmorph BUILD/client/cli/flashmorph] [-- extra convert flags]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--budgets", default="0.25,0.125")
    ap.add_argument("--methods", default="flashmorph,uniform,nll")
    ap.add_argument("--flashmorph", default="build/client/cli/flashmorph")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to every convert run (after --)")
    a = ap.parse_args()
    extra = [x for x in a.extra if x != "--"]
    work = a.work or tempfile.mkdtemp(prefix="fm-bench-")
    rows = []
    for method in a.methods.split(","):
        for budget in a.budgets.split(","):
            out = os.path.join(work, f"out-{method}-{budget}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [a.flashmorph, "convert", "--model", a.model, "--out", out, "--work-dir", os.path.join(work, "work"),
                   "--method", method, "--fa-ratio", budget, "--json", "--quiet"] + extra
            t0 = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.time() - t0
            if p.returncode != 0:
                print(p.stderr, file=sys.stderr)
                sys.exit(f"convert failed: {' '.join(cmd)}")
            rec = json.loads(p.stdout)
            ev = rec.get("evaluation", {})
            timings = {t["stage"]: t["seconds"] for t in rec["timings"]}
            lay = rec["layout"]
            rows.append({
                "method": method, "budget": budget, "fa_layers": lay.get("full_attention_layers"),
                "recall": [(n["length"], n["teacher_recall"], n["hybrid_recall"]) for n in ev.get("needle", [])],
                "kl": ev.get("kl_teacher_hybrid"), "ppl": (ev.get("teacher_perplexity"), ev.get("hybrid_perplexity")),
                "selection_s": timings.get("selection", 0.0), "calibration_s": timings.get("calibration", 0.0),
                "wall_s": wall,
            })
            print(f"done {method} {budget}: {lay['summary']} in {wall:.0f}s", file=sys.stderr, flush=True)
    print(f"\nmodel {a.model}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"date {time.strftime('%Y-%m-%d')}; extra flags: {' '.join(extra) or '(defaults)'}")
    lengths = [r[0] for r in rows[0]["recall"]]
    head = "| method | FA ratio | FA layers | " + " | ".join(f"recall@{n} (teacher→hybrid)" for n in lengths)
    print(head + " | KL (nats/tok) | ppl teacher→hybrid | selection s | run wall s |")
    print("|" + "---|" * (6 + len(lengths)))
    for r in rows:
        rec = " | ".join(f"{t:.2f} → {h:.2f}" for _, t, h in r["recall"])
        print(f"| {r['method']} | {r['budget']} | {r['fa_layers']} | {rec} | {r['kl']:.4f} | "
              f"{r['ppl'][0]:.1f} → {r['ppl'][1]:.1f} | {r['selection_s']:.1f} | {r['wall_s']:.0f} |")
    print(f"(branch calibration, shared by every row: {rows[0]['calibration_s']:.1f} s; work dir {work})")


if __name__ == "__main__":
    main()

"""Linear-attention kernel benchmark: FlashMorph's CUDA ops (torch.ops.flashmorph.gla / gdn) against
flash-linear-attention (fla) on the same inputs, plus causal full attention (SDPA) as the cost of the layers kept.

  python3 bench/kernel_bench.py --lib build-gpu/kernels/libflashmorph_torch_ops.so --json $OUT/kernel_bench.json
  python3 bench/kernel_bench.py --quick ...     tiny shapes, few reps (smoke run)
  python3 bench/kernel_bench.py --selftest      the pure-Python helpers on the CPU (no .so, no fla, no GPU)

Rows per shape (B, T) with H = 16, Dk = Dv = 128, bf16:
  lightning  ours gla with g [B,H,T] constant per head (g_h = -2^(-8(h+1)/H))  vs fla chunk_simple_gla(g=[B,T,H])
             (and fla chunk_simple_gla(g_gamma=[H]), fla's constant-decay path, for information)
  gla        ours gla with g [B,H,T,Dk] = logsigmoid(randn)/16                  vs fla chunk_gla
  gdn        ours gdn, g = logsigmoid(randn) [B,H,T], beta = sigmoid(randn), k L2-normalised
                                                                                 vs fla chunk_gated_delta_rule
  sdpa       torch.nn.functional.scaled_dot_product_attention(is_causal=True), [B,H,T,D]
Each library gets its native layout (ours and SDPA [B,H,T,D], fla [B,T,H,D]), made before timing. q is pre-scaled
(randn * Dk^-0.5) and fla is called with scale=1.0, so both compute the same function; fla is asked for the final
state (output_final_state=True) because ours always returns it. g is float32, beta bf16, q/k/v/do bf16.

Timing: CUDA events around each call, median of --reps after --warmup, device synchronised before and after. Forward is
timed under torch.no_grad(); forward+backward = forward with grad, then torch.autograd.grad(o, inputs, do), i.e. the
backward of sum(o * do) with a fixed random do, into q, k, v, g (and beta). Peak memory = max_memory_allocated during
the timed calls minus the allocation before them (inputs already made); statistics reset after each cell's warm-up.
Every cell catches its own exceptions (printed as class + first 80 characters) and the run goes on.
Checks: ours vs fla forward at B=1 T=8192; ours and fla vs the float64 references (gla_reference / gdn_reference on
the GPU) at B=1 T=2048, outputs, final states and gradients. Relative error = ||a - b|| / ||b||.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---------------------------------------------------------------------------------------------------------------------
# Pure-Python helpers (no torch): shapes, peaks, FLOP and byte counts, table. Exercised by --selftest.

SHAPES = [(1, 8192), (1, 32768), (8, 4096)]  # (B, T)
HEADS, HEAD_DIM = 16, 128
QUICK_SHAPES = [(1, 512), (2, 256)]
QUICK_HEADS = 4
KINDS = ("lightning", "gla", "gdn", "sdpa")
LINEAR_KINDS = ("lightning", "gla", "gdn")
CHUNK = 64  # the chunk size the nominal FLOP count assumes
CHECK_T_FLA, CHECK_T_REF = 8192, 2048
QUICK_CHECK_T = 256

FLOP_FORMULA = ("linear attention forward FLOPs = B*H*T*(2*C*Dk + 2*C*Dv + 4*Dk*Dv), C = 64 (intra-chunk QK^T and "
                "AV over full CxC blocks, q.S and the k^T v state update; one nominal count for lightning, gla and "
                "gdn: GDN's WY / triangular-solve work and decay arithmetic are not counted); SDPA forward FLOPs = "
                "2*2*B*H*T*T*D/2 (causal)")
BYTE_FORMULA = ("linear attention bytes = q, k, v read (bf16) + g read (float32; [B,H,T] or [B,H,T,Dk]) + beta read "
                "(bf16, gdn) + o written once (bf16); SDPA bytes = q, k, v read + o written (bf16)")
RATE_NOTE = "TFLOP/s, % peak compute, GB/s and % HBM are from the forward time"


def card_peaks(name):
    """(peak dense bf16 TFLOP/s, peak HBM TB/s) for a card name, or (None, None) when unknown."""
    n = (name or "").upper()
    if "H200" in n:
        return 989.0, 4.8
    if "H100" in n and "PCIE" not in n and "NVL" not in n:  # H100 SXM ("NVIDIA H100 80GB HBM3")
        return 989.0, 3.35
    return None, None


def linear_flops(B, H, T, Dk, Dv, C=CHUNK):
    return B * H * T * (2 * C * Dk + 2 * C * Dv + 4 * Dk * Dv)


def sdpa_flops(B, H, T, D):
    return 2 * 2 * B * H * T * T * D // 2


def linear_bytes(kind, B, H, T, Dk, Dv, qkv_elt=2, g_elt=4, beta_elt=2):
    n = B * H * T
    total = n * (2 * Dk + Dv) * qkv_elt  # q, k, v
    total += n * (Dk if kind == "gla" else 1) * g_elt  # per-channel or per-head log decay
    if kind == "gdn":
        total += n * beta_elt
    total += n * Dv * qkv_elt  # o
    return total


def sdpa_bytes(B, H, T, D, elt=2):
    return 4 * B * H * T * D * elt


def work(kind, B, H, T, D):
    """(forward FLOPs, forward bytes) of one cell."""
    if kind == "sdpa":
        return sdpa_flops(B, H, T, D), sdpa_bytes(B, H, T, D)
    return linear_flops(B, H, T, D, D), linear_bytes(kind, B, H, T, D, D)


def rates(flops, nbytes, ms, peaks):
    """Achieved rates of a forward pass of `ms` milliseconds: dict of tflops, pct_compute, gbps, pct_hbm."""
    out = {"tflops": None, "pct_compute": None, "gbps": None, "pct_hbm": None}
    if ms is None or ms <= 0:
        return out
    s = ms * 1e-3
    out["tflops"] = flops / s / 1e12
    out["gbps"] = nbytes / s / 1e9
    peak_tflops, peak_tbps = peaks
    if peak_tflops:
        out["pct_compute"] = 100.0 * out["tflops"] / peak_tflops
    if peak_tbps:
        out["pct_hbm"] = 100.0 * out["gbps"] / (peak_tbps * 1e3)
    return out


def add_speedups(rows):
    """Sets fwd_speedup / fwdbwd_speedup (fla ms / ours ms) on each 'ours' row that has an 'fla' row beside it."""
    by_key = {(r["kind"], r["B"], r["T"], r["impl"]): r for r in rows}
    for r in rows:
        if r["impl"] != "ours":
            continue
        f = by_key.get((r["kind"], r["B"], r["T"], "fla"))
        for key, out in (("fwd_ms", "fwd_speedup"), ("fwdbwd_ms", "fwdbwd_speedup")):
            a, b = r.get(key), f.get(key) if f else None
            r[out] = b / a if a and b else None
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _cell_ms(row, key):
    if row.get(key) is not None:
        return format(row[key], ".3f")
    err = row.get(key.replace("_ms", "_error"))
    return "error" if err else "-"


TABLE_HEADER = ["kind", "B", "T", "impl", "fwd ms", "fwd+bwd ms", "fwd speed-up ours/fla (fla ms / ours ms)",
                "TFLOP/s", "% peak compute", "GB/s", "% HBM", "peak mem GiB (fwd / fwd+bwd)"]


def format_table(rows):
    """Markdown table of benchmark rows (dicts as made by the benchmark), one line per row."""
    order = {k: i for i, k in enumerate(KINDS)}
    impl_order = {"ours": 0, "fla": 1, "fla g_gamma": 2, "torch": 3}
    shapes = {}
    for r in rows:  # shapes in the order they were run
        shapes.setdefault((r["B"], r["T"]), len(shapes))
    rows = sorted(rows, key=lambda r: (shapes[(r["B"], r["T"])], order.get(r["kind"], 9),
                                       impl_order.get(r["impl"], 9)))
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in rows:
        mem = f"{_fmt(r.get('fwd_peak_gib'), '.2f')} / {_fmt(r.get('fwdbwd_peak_gib'), '.2f')}"
        cells = [r["kind"], str(r["B"]), str(r["T"]), r["impl"], _cell_ms(r, "fwd_ms"), _cell_ms(r, "fwdbwd_ms"),
                 _fmt(r.get("fwd_speedup"), ".2f") + ("x" if r.get("fwd_speedup") is not None else ""),
                 _fmt(r.get("tflops"), ".1f"), _fmt(r.get("pct_compute"), ".1f"), _fmt(r.get("gbps"), ".0f"),
                 _fmt(r.get("pct_hbm"), ".1f"), mem]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_text(e):
    """Exception class and the first 80 characters of its message, on one line."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:80]}"


def alibi_log_decays(H):
    """Lightning-style per-head log decays: g_h = -2^(-8 (h + 1) / H), h = 0..H-1 (all < 0)."""
    return [-(2.0 ** (-8.0 * (h + 1) / H)) for h in range(H)]


def selftest():
    """Checks the helpers above without torch, the .so, fla or a GPU. Exit status 1 on a failure."""
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL", what)

    # Shapes: the three benchmark shapes at H=16, D=128; the quick ones are small.
    check(SHAPES == [(1, 8192), (1, 32768), (8, 4096)] and HEADS == 16 and HEAD_DIM == 128, "benchmark shapes")
    check(all(B * T <= 1024 for B, T in QUICK_SHAPES), "quick shapes are tiny")
    check(CHECK_T_FLA in [T for B, T in SHAPES if B == 1], "fla cross-check shape is a benchmark shape")

    # Linear FLOPs against a chunk-by-chunk count of the matmuls (q k^T, A v, q S, k^T v per chunk).
    for (B, H, T, Dk, Dv) in [(1, 16, 8192, 128, 128), (2, 3, 640, 64, 32), (1, 1, 64, 16, 8)]:
        count = 0
        for _ in range(B * H):
            for start in range(0, T, CHUNK):
                c = min(CHUNK, T - start)
                count += 2 * c * CHUNK * Dk + 2 * c * CHUNK * Dv  # full CxC blocks (nominal)
                count += 2 * c * Dk * Dv + 2 * Dk * c * Dv  # q.S, k^T v
        check(count == linear_flops(B, H, T, Dk, Dv), f"linear_flops{(B, H, T, Dk, Dv)}")
    # SDPA causal FLOPs: row i attends to i + 1 keys (QK^T and PV); the formula counts T*T/2 pairs.
    for (B, H, T, D) in [(1, 2, 4096, 128), (3, 1, 1000, 64)]:
        pairs = sum(i + 1 for i in range(T))
        exact = B * H * pairs * D * 2 * 2
        check(abs(sdpa_flops(B, H, T, D) - exact) / exact <= 1.0 / T, f"sdpa_flops{(B, H, T, D)}")
    # Bytes: element counts of the tensors each op reads and writes.
    B, H, T, D = 2, 3, 100, 16
    n = B * H * T
    check(linear_bytes("lightning", B, H, T, D, D) == 3 * n * D * 2 + n * 4 + n * D * 2, "lightning bytes")
    check(linear_bytes("gla", B, H, T, D, D) == 3 * n * D * 2 + n * D * 4 + n * D * 2, "gla bytes")
    check(linear_bytes("gdn", B, H, T, D, D) == 3 * n * D * 2 + n * 4 + n * 2 + n * D * 2, "gdn bytes")
    check(sdpa_bytes(B, H, T, D) == 4 * n * D * 2, "sdpa bytes")

    # Peaks and rates.
    check(card_peaks("NVIDIA H200") == (989.0, 4.8), "H200 peaks")
    check(card_peaks("NVIDIA H100 80GB HBM3") == (989.0, 3.35), "H100 SXM peaks")
    check(card_peaks("NVIDIA H100 PCIe") == (None, None), "H100 PCIe unknown")
    check(card_peaks("cpu") == (None, None), "unknown card")
    r = rates(989e12 * 1e-3, 4.8e12 * 1e-3, 1.0, (989.0, 4.8))  # a peak-rate millisecond
    check(math.isclose(r["pct_compute"], 100.0) and math.isclose(r["pct_hbm"], 100.0), "rates at peak")
    check(rates(1e9, 1e9, 1.0, (None, None))["pct_compute"] is None, "rates without peaks")
    check(rates(1e9, 1e9, None, (989.0, 4.8))["tflops"] is None, "rates without a time")

    # Log decays: negative, strictly increasing towards 0, last head 2^-8.
    g = alibi_log_decays(16)
    check(all(x < 0 for x in g) and all(a < b for a, b in zip(g, g[1:])) and math.isclose(g[-1], -2.0 ** -8),
          "alibi log decays")

    # Speed-ups and table.
    rows = [
        {"kind": "gla", "B": 1, "T": 8192, "impl": "ours", "fwd_ms": 2.0, "fwdbwd_ms": 5.0},
        {"kind": "gla", "B": 1, "T": 8192, "impl": "fla", "fwd_ms": 3.0, "fwdbwd_ms": None,
         "fwdbwd_error": "CompilationError: x"},
        {"kind": "sdpa", "B": 1, "T": 8192, "impl": "torch", "fwd_ms": None, "fwdbwd_ms": None},
        {"kind": "lightning", "B": 8, "T": 4096, "impl": "ours", "fwd_ms": 1.0, "fwdbwd_ms": 2.0},
    ]
    for row in rows:
        row.update(rates(*work(row["kind"], row["B"], HEADS, row["T"], HEAD_DIM), row["fwd_ms"], (989.0, 4.8)))
    add_speedups(rows)
    check(math.isclose(rows[0]["fwd_speedup"], 1.5) and rows[0]["fwdbwd_speedup"] is None, "speed-up")
    check(rows[3]["fwd_speedup"] is None and "fwd_speedup" not in rows[1], "speed-up only with a pair")
    table = format_table(rows)
    print(table)
    lines = table.splitlines()
    check(len(lines) == 2 + len(rows), "table rows")
    check(all(line.count("|") == len(TABLE_HEADER) + 1 for line in lines), "table columns")
    check("1.50x" in table and "error" in table, "table cells")
    check(lines[2].split("|")[1].strip() == "gla" and lines[-1].split("|")[1].strip() == "lightning",
          "table order (by shape as run, then kind)")
    json.dumps(rows)
    check(error_text(ValueError("a\nb " + "c" * 200)) == "ValueError: a b " + "c" * 76, "error text")

    # Argument parsing.
    a = parse_args(["--reps", "3", "--quick", "--kinds", "gla,sdpa"])
    check(a.reps == 3 and a.warmup == 5 and a.quick and a.kinds == ["gla", "sdpa"], "argument parsing")
    print("selftest:", "FAILED " + ", ".join(failures) if failures else "ok")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark (torch from here on).

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", help="libflashmorph_torch_ops.so (default: the first of build-gpu, build-cuda, build "
                                 "under the repo root that has kernels/libflashmorph_torch_ops.so)")
    p.add_argument("--json", help="write every number here (rewritten after each cell, so a killed run keeps its "
                                  "results)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per cell (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed repetitions before them")
    p.add_argument("--quick", action="store_true", help="tiny shapes (H=4), 3 reps, 1 warm-up: a smoke run")
    p.add_argument("--selftest", action="store_true", help="check the pure-Python helpers on the CPU and exit")
    p.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=list(KINDS),
                   help="comma-separated subset of " + ",".join(KINDS))
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (timed with perf_counter, no memory "
                                                    "figures: for trying the script without a GPU)")
    p.add_argument("--max-seconds", type=float, default=0,
                   help="skip the cells that would start after this many seconds (0: no limit)")
    p.add_argument("--no-fla", action="store_true", help="leave fla out")
    a = p.parse_args(argv)
    bad = [k for k in a.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kinds {bad}; choose from {','.join(KINDS)}")
    return a


def find_lib(arg):
    if arg:
        return arg
    for d in ("build-gpu", "build-cuda", "build"):
        path = os.path.join(ROOT, d, "kernels", "libflashmorph_torch_ops.so")
        if os.path.exists(path):
            return path
    return None


class Bench:
    def __init__(self, args):
        import torch
        self.torch = torch
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.reps = 3 if args.quick else args.reps
        self.warmup = 1 if args.quick else args.warmup
        self.heads = QUICK_HEADS if args.quick else HEADS
        self.shapes = QUICK_SHAPES if args.quick else SHAPES
        self.t_fla = QUICK_CHECK_T if args.quick else CHECK_T_FLA
        self.t_ref = QUICK_CHECK_T if args.quick else CHECK_T_REF
        self.start = time.time()
        self.cuda_broken = None  # the error after which the CUDA context could not synchronise
        self.fla = None
        self.fla_error = None
        self.rows, self.checks = [], []
        self.card = torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or "cpu"
        self.peaks = card_peaks(self.card) if self.cuda else (None, None)
        self.meta = self._meta()

    # -- environment ----------------------------------------------------------------------------------------------

    def _meta(self):
        torch = self.torch
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "card": self.card, "peak_bf16_tflops": self.peaks[0], "peak_hbm_tbps": self.peaks[1],
                "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                "host": platform.node(), "H": self.heads, "D": HEAD_DIM, "reps": self.reps, "warmup": self.warmup,
                "flop_formula": FLOP_FORMULA, "byte_formula": BYTE_FORMULA, "rate_note": RATE_NOTE,
                # which passes our GLA/Lightning kernels ran (docs/KERNELS.md)
                "sequential_scan": os.environ.get("FLASHMORPH_SEQUENTIAL_SCAN", "0") == "1",
                "gla_segments": os.environ.get("FLASHMORPH_GLA_SEGMENTS", "1") != "0",
                "gla_segment_chunks": int(os.environ.get("FLASHMORPH_GLA_SEGMENT_CHUNKS", "0") or 0)}
        try:
            import triton
            meta["triton"] = triton.__version__
        except Exception as e:  # noqa: BLE001
            meta["triton"] = error_text(e)
        try:
            from importlib import metadata
            meta["fla"] = metadata.version("fla-core")
        except Exception:  # noqa: BLE001
            meta["fla"] = None
        return meta

    def load(self):
        torch = self.torch
        lib = find_lib(self.args.lib)
        if lib is None:
            raise SystemExit("no libflashmorph_torch_ops.so found; pass --lib")
        torch.ops.load_library(lib)
        self.meta["lib"] = os.path.abspath(lib)
        if not self.args.no_fla:
            try:
                from fla.ops.gated_delta_rule import chunk_gated_delta_rule
                from fla.ops.gla import chunk_gla
                from fla.ops.simple_gla import chunk_simple_gla
                self.fla = {"simple_gla": chunk_simple_gla, "gla": chunk_gla, "gdn": chunk_gated_delta_rule}
                if self.meta["fla"] is None:
                    import fla
                    self.meta["fla"] = getattr(fla, "__version__", None)
            except Exception as e:  # noqa: BLE001
                self.fla_error = error_text(e)
                print("fla unavailable:", self.fla_error, flush=True)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def over_budget(self):
        return self.args.max_seconds > 0 and time.time() - self.start > self.args.max_seconds

    def after_error(self, e):
        """Frees memory after a failed cell and notes when the CUDA context no longer works."""
        if not self.cuda:
            return
        try:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.empty_cache()
        except Exception as e2:  # noqa: BLE001
            self.cuda_broken = f"after {error_text(e)}: {error_text(e2)}"
            print("CUDA context lost:", self.cuda_broken, flush=True)

    def save(self):
        if not self.args.json:
            return
        doc = {"meta": self.meta, "rows": add_speedups(self.rows), "checks": self.checks}
        tmp = self.args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.args.json)

    # -- inputs ---------------------------------------------------------------------------------------------------

    def inputs(self, kind, B, T, seed):
        """Leaf tensors in [B, H, T, D] layout (q pre-scaled), g float32, beta bf16, and do."""
        torch = self.torch
        F = torch.nn.functional
        H, D, dev, bf = self.heads, HEAD_DIM, self.device, torch.bfloat16
        gen = torch.Generator(device=dev).manual_seed(seed)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32)

        x = {"q": (randn(B, H, T, D) * D ** -0.5).to(bf)}
        k = randn(B, H, T, D)
        x["k"] = (F.normalize(k, dim=-1) if kind == "gdn" else k).to(bf)
        x["v"] = randn(B, H, T, D).to(bf)
        if kind == "lightning":
            gh = torch.tensor(alibi_log_decays(H), device=dev, dtype=torch.float32)
            x["g"] = gh.view(1, H, 1).expand(B, H, T).contiguous()
        elif kind == "gla":
            x["g"] = F.logsigmoid(randn(B, H, T, D)) / 16
        elif kind == "gdn":
            x["g"] = F.logsigmoid(randn(B, H, T))
            x["beta"] = torch.sigmoid(randn(B, H, T)).to(bf)
        do = randn(B, H, T, D).to(bf)
        for t in x.values():
            t.requires_grad_(True)
        return x, do

    @staticmethod
    def to_fla(x, do):
        """The same values in fla's [B, T, H, ...] layout, contiguous, as new leaves."""
        y = {n: t.detach().transpose(1, 2).contiguous().requires_grad_(True) for n, t in x.items()}
        return y, do.transpose(1, 2).contiguous()

    # -- the functions timed ----------------------------------------------------------------------------------------

    def fn_ours(self, kind):
        ops = self.torch.ops.flashmorph
        if kind == "gdn":
            return lambda x: ops.gdn(x["q"], x["k"], x["v"], x["g"], x["beta"])
        return lambda x: ops.gla(x["q"], x["k"], x["v"], x["g"])

    def fn_fla(self, kind, g_gamma=False):
        f = self.fla
        if kind == "lightning" and g_gamma:
            return lambda x: f["simple_gla"](x["q"], x["k"], x["v"], g_gamma=x["g_gamma"], scale=1.0,
                                             output_final_state=True)
        if kind == "lightning":
            return lambda x: f["simple_gla"](x["q"], x["k"], x["v"], g=x["g"], scale=1.0, output_final_state=True)
        if kind == "gla":
            return lambda x: f["gla"](x["q"], x["k"], x["v"], x["g"], scale=1.0, output_final_state=True)
        return lambda x: f["gdn"](x["q"], x["k"], x["v"], x["g"], x["beta"], scale=1.0, output_final_state=True)

    def fn_sdpa(self):
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        return lambda x: (sdpa(x["q"], x["k"], x["v"], is_causal=True), None)

    # -- timing -----------------------------------------------------------------------------------------------------

    def measure(self, fn):
        """(median ms, times, peak GiB) of fn over self.reps calls after self.warmup untimed ones. The peak is
        max_memory_allocated during the timed calls minus the allocation before them; statistics are reset after the
        warm-up, so one-off allocations there (Triton autotuning's buffers) are not counted."""
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        self.sync()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        times = []
        for _ in range(self.reps):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                self.sync()
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        self.sync()
        peak = (torch.cuda.max_memory_allocated(self.device) - base) / 2 ** 30 if self.cuda else None
        return statistics.median(times), times, peak

    def run_cell(self, kind, B, T, impl, fwd, x, do, grad_names):
        """Times forward and forward+backward of one (kind, shape, implementation); records a row."""
        torch = self.torch
        row = {"kind": kind, "B": B, "T": T, "H": self.heads, "D": HEAD_DIM, "impl": impl, "fwd_ms": None,
               "fwdbwd_ms": None, "fwd_peak_gib": None, "fwdbwd_peak_gib": None}
        leaves = [x[n] for n in grad_names]

        def forward():
            with torch.no_grad():
                return fwd(x)

        def forward_backward():
            o = fwd(x)[0]
            return torch.autograd.grad(o, leaves, grad_outputs=do)

        for phase, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
            if self.cuda_broken:
                row[f"{phase}_error"] = "skipped: CUDA context lost " + self.cuda_broken
                continue
            if self.over_budget():
                row[f"{phase}_error"] = f"skipped: past --max-seconds {self.args.max_seconds}"
                continue
            try:
                ms, times, peak = self.measure(fn)
                row[f"{phase}_ms"], row[f"{phase}_times_ms"], row[f"{phase}_peak_gib"] = ms, times, peak
            except Exception as e:  # noqa: BLE001
                row[f"{phase}_error"] = error_text(e)
                self.after_error(e)
        row.update(rates(*work(kind, B, self.heads, T, HEAD_DIM), row["fwd_ms"], self.peaks))
        self.rows.append(row)
        print(f"  {kind:9s} B={B} T={T:<6d} {impl:11s} fwd {_cell_ms(row, 'fwd_ms'):>9s} ms   fwd+bwd "
              f"{_cell_ms(row, 'fwdbwd_ms'):>9s} ms   peak {_fmt(row['fwd_peak_gib'], '.2f')} / "
              f"{_fmt(row['fwdbwd_peak_gib'], '.2f')} GiB", flush=True)
        for phase in ("fwd", "fwdbwd"):
            if row.get(f"{phase}_error"):
                print(f"    {phase} error: {row[phase + '_error']}", flush=True)
        self.save()

    def bench_ours_and_sdpa(self):
        print("== ours and SDPA", flush=True)
        for si, (B, T) in enumerate(self.shapes):
            for kind in self.args.kinds:
                if self.cuda_broken:
                    break
                try:
                    x, do = self.inputs(kind, B, T, seed=1000 * si + KINDS.index(kind))
                except Exception as e:  # noqa: BLE001
                    print(f"  {kind} B={B} T={T}: inputs failed: {error_text(e)}", flush=True)
                    self.after_error(e)
                    continue
                if kind == "sdpa":
                    self.run_cell(kind, B, T, "torch", self.fn_sdpa(), x, do, ["q", "k", "v"])
                else:
                    self.run_cell(kind, B, T, "ours", self.fn_ours(kind), x, do, list(x))
                del x, do

    def bench_fla(self):
        print("== fla", flush=True)
        for si, (B, T) in enumerate(self.shapes):
            for kind in self.args.kinds:
                if kind == "sdpa" or self.cuda_broken:
                    continue
                if self.fla is None:
                    self.rows.append({"kind": kind, "B": B, "T": T, "H": self.heads, "D": HEAD_DIM, "impl": "fla",
                                      "fwd_ms": None, "fwdbwd_ms": None, "fwd_error": self.fla_error,
                                      "fwdbwd_error": self.fla_error})
                    continue
                try:
                    x, do = self.inputs(kind, B, T, seed=1000 * si + KINDS.index(kind))  # same values as ours
                    y, do_t = self.to_fla(x, do)
                    del x, do
                except Exception as e:  # noqa: BLE001
                    print(f"  {kind} B={B} T={T}: inputs failed: {error_text(e)}", flush=True)
                    self.after_error(e)
                    continue
                self.run_cell(kind, B, T, "fla", self.fn_fla(kind), y, do_t, list(y))
                if kind == "lightning":
                    z = {n: y[n] for n in ("q", "k", "v")}
                    z["g_gamma"] = y["g"][0, 0].detach().clone()  # [H]: the per-head constant
                    self.run_cell(kind, B, T, "fla g_gamma", self.fn_fla(kind, g_gamma=True), z, do_t,
                                  ["q", "k", "v"])
                    del z
                del y, do_t
        self.save()

    # -- correctness ------------------------------------------------------------------------------------------------

    @staticmethod
    def rel(a, b):
        a, b = a.detach().double(), b.detach().double()
        return ((a - b).norm() / b.norm()).item()

    def record_check(self, check, kind, B, T, values=None, error=None):
        c = {"check": check, "kind": kind, "B": B, "T": T}
        c.update(values or {})
        if error:
            c["error"] = error
        self.checks.append(c)
        text = "  ".join(f"{n} {v:.2e}" for n, v in (values or {}).items())
        print(f"  {check:28s} {kind:9s} B={B} T={T:<6d} {text}{'  ' + error if error else ''}", flush=True)
        self.save()

    def reference(self, kind, x64):
        ops = self.torch.ops.flashmorph
        if kind == "gdn":
            return ops.gdn_reference(x64["q"], x64["k"], x64["v"], x64["g"], x64["beta"])
        return ops.gla_reference(x64["q"], x64["k"], x64["v"], x64["g"])

    def grads(self, o, x, do):
        names = list(x)
        gs = self.torch.autograd.grad(o, [x[n] for n in names], grad_outputs=do)
        return dict(zip(names, gs))

    def check_against_reference(self, impl):
        """impl ('ours' or 'fla') at B=1, T=t_ref against the float64 reference: o, final state, gradients."""
        T = self.t_ref
        print(f"== {impl} vs float64 reference (B=1, T={T})", flush=True)
        for kind in LINEAR_KINDS:
            if kind not in self.args.kinds or self.cuda_broken:
                continue
            if self.over_budget():
                self.record_check(f"{impl} vs float64 reference", kind, 1, T,
                                  error=f"skipped: past --max-seconds {self.args.max_seconds}")
                continue
            if impl == "fla" and self.fla is None:
                self.record_check("fla vs float64 reference", kind, 1, T, error=self.fla_error)
                continue
            try:
                x, do = self.inputs(kind, 1, T, seed=7 + KINDS.index(kind))
                x64 = {n: t.detach().double().requires_grad_(True) for n, t in x.items()}
                do64 = do.double()
                o_ref, s_ref = self.reference(kind, x64)
                g_ref = self.grads(o_ref, x64, do64)
                if impl == "ours":
                    o, s = self.fn_ours(kind)(x)
                    y, do_y, back = x, do, lambda t: t
                else:
                    y, do_y = self.to_fla(x, do)
                    o, s = self.fn_fla(kind)(y)
                    back = lambda t: t.transpose(1, 2)  # noqa: E731  [B,T,H,..] -> [B,H,T,..]
                vals = {"o_rel": self.rel(back(o), o_ref), "state_rel": self.rel(s, s_ref)}
            except Exception as e:  # noqa: BLE001
                self.record_check(f"{impl} vs float64 reference", kind, 1, T, error=error_text(e))
                self.after_error(e)
                continue
            try:
                g = self.grads(o, y, do_y)
                for n in x:
                    vals[f"d{n}_rel"] = self.rel(back(g[n]), g_ref[n])
                err = None
            except Exception as e:  # noqa: BLE001
                err = "backward: " + error_text(e)
                self.after_error(e)
            self.record_check(f"{impl} vs float64 reference", kind, 1, T, vals, err)
            del x, x64, o_ref, s_ref, g_ref, o, s, y

    def check_ours_vs_fla(self):
        T = self.t_fla
        print(f"== ours vs fla forward (B=1, T={T}, both bf16)", flush=True)
        for kind in LINEAR_KINDS:
            if kind not in self.args.kinds or self.cuda_broken:
                continue
            if self.over_budget():
                self.record_check("ours vs fla", kind, 1, T,
                                  error=f"skipped: past --max-seconds {self.args.max_seconds}")
                continue
            if self.fla is None:
                self.record_check("ours vs fla", kind, 1, T, error=self.fla_error)
                continue
            try:
                x, do = self.inputs(kind, 1, T, seed=KINDS.index(kind))
                y, _ = self.to_fla(x, do)
                with self.torch.no_grad():
                    o, s = self.fn_ours(kind)(x)
                    of, sf = self.fn_fla(kind)(y)
                self.record_check("ours vs fla", kind, 1, T,
                                  {"o_rel": self.rel(o, of.transpose(1, 2)), "state_rel": self.rel(s, sf)})
                del x, y, o, s, of, sf
            except Exception as e:  # noqa: BLE001
                self.record_check("ours vs fla", kind, 1, T, error=error_text(e))
                self.after_error(e)

    # -- run --------------------------------------------------------------------------------------------------------

    def run(self):
        m = self.meta
        print(f"card: {self.card}  peak bf16 {_fmt(self.peaks[0], '.0f')} TFLOP/s, HBM {_fmt(self.peaks[1], '.2f')} "
              f"TB/s | torch {m['torch']} (CUDA {m['cuda']}) triton {m['triton']} fla {m['fla']} | {m['date']}",
              flush=True)
        print(f"H={self.heads} D={HEAD_DIM} bf16, reps {self.reps} (median) after {self.warmup} warm-up; "
              f"shapes {self.shapes}; state pass {'sequential' if m['sequential_scan'] else 'two-phase'}", flush=True)
        # Ours first and fla last, so that a failure in fla that breaks the CUDA context costs none of our numbers.
        self.check_against_reference("ours")
        self.bench_ours_and_sdpa()
        if not self.args.no_fla:
            self.check_ours_vs_fla()  # forward only, before fla's backward is ever tried
            self.bench_fla()
            self.check_against_reference("fla")
        add_speedups(self.rows)
        print()
        print(format_table(self.rows))
        print()
        print("FLOPs:", FLOP_FORMULA)
        print("Bytes:", BYTE_FORMULA)
        print("Note:", RATE_NOTE + "; fwd+bwd = forward with grad + backward into q, k, v, g (, beta); "
              "'fla g_gamma' = chunk_simple_gla with the constant per-head decay as g_gamma [H] (no dg).")
        if any(r.get("fwd_error") or r.get("fwdbwd_error") for r in self.rows):
            print("Errors:")
        for r in self.rows:
            for phase in ("fwd", "fwdbwd"):
                if r.get(f"{phase}_error"):
                    print(f"  {r['kind']} B={r['B']} T={r['T']} {r['impl']} {phase}: {r[phase + '_error']}")
        self.save()
        return 0


def main(argv=None):
    args = parse_args(argv)
    if args.selftest:
        return selftest()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available (use --device cpu to try the script on the CPU)")
    bench = Bench(args)
    bench.load()
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())

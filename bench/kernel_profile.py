"""Per-kernel GPU time of our linear-attention ops (torch.profiler), to see where a forward or backward spends it.

  python3 bench/kernel_profile.py --lib build-gpu/kernels/libflashmorph_torch_ops.so [--T 32768] [--B 1] [--json F]

For each kind (lightning: scalar g constant per head; gla: per-channel g; gdn) at H=16, D=128, bf16: runs forward and
forward+backward a few times under the profiler and prints the CUDA kernels sorted by total time (name, calls, total
ms per iteration, share).
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F


def inputs(kind, B, T, H, D, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    q = (torch.randn(B, H, T, D, device=dev, generator=g) * D ** -0.5).bfloat16().requires_grad_()
    k = torch.randn(B, H, T, D, device=dev, generator=g)
    if kind == "gdn":
        k = F.normalize(k, dim=-1)
    k = k.bfloat16().requires_grad_()
    v = torch.randn(B, H, T, D, device=dev, generator=g).bfloat16().requires_grad_()
    if kind == "lightning":
        slopes = torch.tensor([-(2.0 ** (-8.0 * (h + 1) / H)) for h in range(H)], device=dev)
        gg = slopes.view(1, H, 1).expand(B, H, T).contiguous()
    elif kind == "gla":
        gg = F.logsigmoid(torch.randn(B, H, T, D, device=dev, generator=g)) / 16
    else:
        gg = F.logsigmoid(torch.randn(B, H, T, device=dev, generator=g))
    gg = gg.float().requires_grad_(kind != "lightning")
    beta = torch.sigmoid(torch.randn(B, H, T, device=dev, generator=g)).float().requires_grad_() if kind == "gdn" else None
    return q, k, v, gg, beta


def call(kind, q, k, v, g, beta):
    if kind == "gdn":
        return torch.ops.flashmorph.gdn(q, k, v, g, beta, None)
    return torch.ops.flashmorph.gla(q, k, v, g, None)


def profile(fn, iters):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append((e.key, e.count // iters, t / iters / 1e3))
    rows.sort(key=lambda r: -r[2])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--kinds", default="lightning,gla,gdn")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.ops.load_library(a.lib)
    dev = "cuda"
    out = {"card": torch.cuda.get_device_name(), "B": a.B, "T": a.T, "profiles": {}}
    print(f"# {out['card']}  B={a.B} T={a.T} H=16 D=128 bf16, per iteration")
    for kind in a.kinds.split(","):
        q, k, v, g, beta = inputs(kind, a.B, a.T, 16, 128, dev)
        do = torch.randn(a.B, 16, a.T, 128, device=dev).bfloat16()
        wrt = [t for t in (q, k, v, g, beta) if t is not None and t.requires_grad]

        def fwd():
            with torch.no_grad():
                call(kind, q, k, v, g, beta)

        def fwdbwd():
            o, _ = call(kind, q, k, v, g, beta)
            torch.autograd.grad(o, wrt, do)

        for name, fn in (("fwd", fwd), ("fwd+bwd", fwdbwd)):
            rows = profile(fn, a.iters)
            total = sum(r[2] for r in rows)
            out["profiles"][f"{kind} {name}"] = [dict(kernel=r[0], calls=r[1], ms=r[2]) for r in rows]
            print(f"\n## {kind} {name}: {total:.3f} ms of kernels")
            for key, calls, ms in rows[:12]:
                print(f"  {ms:8.3f} ms {100 * ms / total:5.1f}%  x{calls:<3d} {key[:90]}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())

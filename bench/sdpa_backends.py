"""Causal attention of the kept full-attention layers: PyTorch SDPA's CUDA backends side by side (cuDNN, flash,
memory-efficient) at the engine's shapes, forward and forward+backward, bf16, so that the engine's default can be
the fastest on the card. Qwen3-1.7B heads: 16 query heads, 8 KV heads (GQA), head 128.

  python3 bench/sdpa_backends.py [--seq 8192,16384] [--reps 10]

Prints one table: backend, T, forward ms, forward+backward ms, TFLOP/s of the forward (causal: 2*2*B*H*T*T*D/2).
A backend that refuses the inputs shows its error instead.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def timed(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", default="8192,16384")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}  H={a.heads} Hkv={a.kv_heads} "
          f"D={a.head_dim} B=1 bf16 causal, enable_gqa")
    print(f"{'backend':10s} {'T':>6s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'fwd TFLOP/s':>12s}")
    for T in [int(t) for t in a.seq.split(",")]:
        q = torch.randn(1, a.heads, T, a.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, a.kv_heads, T, a.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, a.kv_heads, T, a.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(1, a.heads, T, a.head_dim, device="cuda", dtype=torch.bfloat16)
        flops = 2 * 2 * a.heads * T * T * a.head_dim / 2
        for name, backend in [("default", None)] + list(BACKENDS.items()):
            def fwd():
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

            def fwd_bwd():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                torch.autograd.grad(o, (q, k, v), do)

            try:
                if backend is None:
                    f, fb = timed(fwd, a.reps), timed(fwd_bwd, a.reps)
                else:
                    with sdpa_kernel(backend):
                        f, fb = timed(fwd, a.reps), timed(fwd_bwd, a.reps)
                print(f"{name:10s} {T:6d} {f:8.3f} {fb:11.3f} {flops / f / 1e9:12.0f}", flush=True)
            except Exception as e:  # a backend may refuse GQA or this card
                print(f"{name:10s} {T:6d} refused: {type(e).__name__}: {str(e)[:100]}", flush=True)


if __name__ == "__main__":
    main()

"""Loads a FlashMorph export with transformers (trust_remote_code) and checks its logits against the engine's.

usage: check_export_parity.py EXPORT_DIR PROBE.safetensors [--dtype float32|bfloat16] [--device cpu|cuda] [--tol X]

PROBE is the engine's `<work_dir>/export_probe.safetensors` (input_ids and the engine's logits for them). The
tolerance is relative to the largest |logit|. Exits 1 on a mismatch and prints one line of figures either way.
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("probe")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    probe = load_file(a.probe)
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.export_dir, trust_remote_code=True, dtype=dtype).to(a.device)
    model.eval()
    with torch.no_grad():
        ids = probe["input_ids"].to(a.device)
        logits = model(ids).logits.float().cpu()
    ref = probe["logits"].float()
    diff = (logits - ref).abs().max().item()
    scale = ref.abs().max().item()
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    ok = diff <= a.tol * max(1.0, scale)
    print(f"export parity: max|diff| {diff:.3e}, max|logit| {scale:.3f}, relative {diff / max(scale, 1e-30):.3e}, "
          f"argmax agreement {agree:.4f}, tolerance {a.tol:g} -> {'OK' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

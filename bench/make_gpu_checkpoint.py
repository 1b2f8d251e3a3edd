"""Writes a randomly initialised Qwen3 checkpoint of a real model's shape, for end-to-end runs of the service.

usage: make_gpu_checkpoint.py --out DIR [--shape tiny|qwen3-0.6b|qwen3-1.7b] [--vocab N] [--tokenizer DIR]
                              [--seed N] [--device auto|cpu|cuda]

The layer shapes are Qwen3-0.6B's / Qwen3-1.7B's (config.json of the Qwen releases); the vocabulary is the bundled
demo model's byte-level BPE (models/demo/qwen3-demo, 2048 tokens), whose tokenizer files are copied beside the
weights so the directory is a complete Hugging Face checkpoint. --vocab N (>= the tokenizer's size) gives the
embedding more rows than the tokenizer has tokens, as Qwen3's own checkpoints do (151936 rows for 151669 tokens), so
the model has its real parameter count (0.60B / 1.72B with 151936; 0.44B / 1.41B with the demo's 2048). Weights
come from transformers' own initialisation (normal(0, initializer_range), norms 1) under a fixed seed, saved as
bfloat16 safetensors by save_pretrained.
`tiny` (4 layers, d 128) is for trying the flow on a CPU. Prints one JSON line: shape, parameters, bytes, seconds.
"""
import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo", "qwen3-demo")

# Layer shapes of the Qwen3 releases (hidden, intermediate, layers, query heads, KV heads, head_dim, max positions,
# RoPE theta); the vocabulary is the tokenizer's.
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rope_theta=10000.0),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def make_config(shape, tokenizer_dir, vocab_rows=0):
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    base = len(tok["model"]["vocab"])
    vocab = base + sum(1 for t in tok.get("added_tokens", []) if t["id"] >= base)
    if vocab_rows:
        if vocab_rows < vocab:
            sys.exit(f"make_gpu_checkpoint: --vocab {vocab_rows} is below the tokenizer's {vocab} tokens")
        vocab = vocab_rows
    s = dict(SHAPES[shape])
    rope_theta = s.pop("rope_theta")
    demo_cfg_path = os.path.join(tokenizer_dir, "config.json")
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if os.path.exists(demo_cfg_path):
        with open(demo_cfg_path, encoding="utf-8") as f:
            demo_cfg = json.load(f)
        special = {k: demo_cfg.get(k, v) for k, v in special.items()}
    return Qwen3Config(vocab_size=vocab, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                       tie_word_embeddings=True, initializer_range=0.02, use_sliding_window=False,
                       rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **special, **s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", default=DEMO, help="directory holding tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--vocab", type=int, default=0, help="embedding rows (default: the tokenizer's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="where the weights are initialised: auto | cpu | cuda")
    a = ap.parse_args()
    t0 = time.time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    config = make_config(a.shape, a.tokenizer, a.vocab)
    torch.manual_seed(a.seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    # Sanity: a forward pass gives finite logits (a broken init would otherwise surface deep in the service).
    with torch.no_grad():
        ids = torch.arange(16, device=device).unsqueeze(0) % config.vocab_size
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        sys.exit(f"make_gpu_checkpoint: non-finite logits from the fresh {a.shape} model")
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    model.save_pretrained(a.out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.out, name))
    if not os.path.exists(os.path.join(a.out, "tokenizer.json")):
        sys.exit(f"make_gpu_checkpoint: no tokenizer.json in {a.tokenizer}")
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(json.dumps({"out": a.out, "shape": a.shape, "parameters": params, "vocab_size": config.vocab_size,
                      "layers": config.num_hidden_layers, "hidden_size": config.hidden_size, "bytes": size,
                      "device": device, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()

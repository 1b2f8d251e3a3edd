"""Tiny random Hugging Face decoders + transformers' own outputs on them, for the C++ forward-pass parity tests.

For each case: a checkpoint directory written by transformers' save_pretrained (float32; the Llama one sharded into
several files with an index) and `reference.safetensors` holding input ids and transformers' float32 logits, per-layer
residual outputs (forward hooks on the decoder layers) and attention-block outputs (hooks on self_attn), plus greedy
continuations from `generate`. Weights are re-drawn with a larger scale than the default init (and norms/biases
perturbed) so that activations are O(1) and a wrong bias, norm or rotary detail moves the logits well beyond 1e-4.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

CASES = {
    # Qwen3: per-head q/k norms, explicit head_dim != hidden/heads, tied embeddings, GQA 4:2.
    "qwen3": ("Qwen3", dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=32, vocab_size=320, tie_word_embeddings=True,
                            max_position_embeddings=256, rope_theta=10000.0)),
    # Qwen2: q/k/v biases, yarn rope scaling, untied head.
    "qwen2": ("Qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, vocab_size=300, tie_word_embeddings=False,
                            max_position_embeddings=512, rope_theta=1e6,
                            rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=128))),
    # Llama: Llama-3 rope scaling, attention + MLP biases, sharded checkpoint.
    "llama": ("Llama", dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6,
                            num_key_value_heads=2, vocab_size=400, tie_word_embeddings=False,
                            attention_bias=True, mlp_bias=True, max_position_embeddings=256, rope_theta=500000.0,
                            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0, original_max_position_embeddings=32))),
    # Mistral: sliding window shorter than the test sequences, MHA-free GQA 4:1.
    "mistral": ("Mistral", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=1, vocab_size=256, sliding_window=7,
                                max_position_embeddings=256, rope_theta=10000.0)),
}
SEQ_LEN = 37
BATCH = 2


def stamp_of(args):
    h = hashlib.sha256(open(__file__, "rb").read())
    h.update(f"{transformers.__version__} {torch.__version__}".encode())
    return h.hexdigest()


def make_case(name, family, kwargs, out_dir):
    torch.manual_seed(sum(map(ord, name)))
    cfg_cls = getattr(transformers, f"{family}Config")
    model_cls = getattr(transformers, f"{family}ForCausalLM")
    rope_scaling = kwargs.pop("rope_scaling", None)
    rope_theta = kwargs.pop("rope_theta")
    config = cfg_cls(**kwargs, bos_token_id=1, eos_token_id=2)
    config.rope_parameters = dict(rope_scaling or {"rope_type": "default"}, rope_theta=rope_theta)
    if family == "Mistral":
        config.sliding_window = kwargs["sliding_window"]
    model = model_cls(config).eval().to(torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5 * (2.0 if "embed" in pname else 1.0))
    ckpt = os.path.join(out_dir, "model")
    shard = "120KB" if family == "Llama" else "1GB"
    model.save_pretrained(ckpt, max_shard_size=shard)

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=g)
    hidden, attn = {}, {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, a, out, i=i: hidden.__setitem__(i, (out[0] if isinstance(out, tuple) else out).detach())))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, a, out, i=i: attn.__setitem__(i, out[0].detach())))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    tensors = {"input_ids": ids.contiguous(), "logits": out.logits.float().contiguous(),
               "embeddings": model.model.embed_tokens(ids).detach().contiguous()}
    for i in range(config.num_hidden_layers):
        tensors[f"hidden.{i}"] = hidden[i].contiguous()
        tensors[f"attn.{i}"] = attn[i].contiguous()

    # Greedy continuation (with transformers' KV cache) of the first 9 tokens of each row.
    with torch.no_grad():
        gen = model.generate(ids[:, :9], max_new_tokens=12, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    tensors["generate_prompt"] = ids[:, :9].contiguous()
    tensors["generate_output"] = gen.contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    files = sorted(os.listdir(ckpt))
    return {"family": family, "files": files, "num_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    stamp = stamp_of(args)
    stamp_file = os.path.join(args.out, "stamp")
    if os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    manifest = {}
    for name, (family, kwargs) in CASES.items():
        case_dir = os.path.join(args.out, name)
        os.makedirs(case_dir)
        manifest[name] = make_case(name, family, dict(kwargs), case_dir)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(stamp_file, "w") as f:
        f.write(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())

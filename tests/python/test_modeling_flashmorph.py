#!/usr/bin/env python3
"""Checks the modeling files shipped in exported FlashMorph checkpoints (worker/engine/export/, docs/ENGINE.md).

Tiny random Qwen3 (q/k norm, GQA, tied embeddings) and Llama (attention + MLP biases, GQA, old-style rope_theta)
teachers are built with transformers; FlashMorph directories are written from them the way the exporter does
(teacher config + §5 fields, safetensors, the two .py files, auto_map) and loaded with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`:
  1. all layers full_attention: logits equal the teacher's;
  2. linear and hybrid layers of each branch kind: logits equal an independent float64 reference written here from
     ENGINE.md (token-by-token recurrence, explicit softmax attention with RoPE);
  3. chunked form equals the recurrent form (kernels with strong decays and initial states; whole models);
  4. generate() with the cache equals greedy decoding by repeated full forwards (also with left padding);
  5. save_pretrained / from_pretrained round trip; tensor names exactly as the checkpoint's.
CPU only, no network. Exits non-zero on failure.
"""

import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time

_TMP = tempfile.mkdtemp(prefix="fm_modeling_test_")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_MODULES_CACHE"] = os.path.join(_TMP, "modules")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT_DIR = os.path.join(REPO, "worker", "engine", "export")
PY_FILES = ("configuration_flashmorph.py", "modeling_flashmorph.py")
KINDS = ("lightning", "gla", "gated_deltanet")

_failures = []
_checks = 0


def check(ok, what):
    global _checks
    _checks += 1
    if not ok:
        _failures.append(what)
        print("FAIL:", what)


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------------------------------------------------
# Teachers and exported directories.


def randomize(model, seed):
    """Random weights everywhere (norm weights around 1), so no term is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)
    return model


def make_teacher(family, seed=0):
    common = dict(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=None,  # greedy decoding never stops early
        attn_implementation="eager",
    )
    if family == "qwen2":  # windows of 5 on layers >= 2
        cfg = Qwen2Config(use_sliding_window=True, sliding_window=5, max_window_layers=2, **common)
        model = Qwen2ForCausalLM(cfg)
    elif family == "mistral":  # windows of 5 on every layer
        cfg = MistralConfig(sliding_window=5, **common)
        model = MistralForCausalLM(cfg)
    elif family == "qwen3":
        cfg = Qwen3Config(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          **common)
        model = Qwen3ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **common)
        model = LlamaForCausalLM(cfg)
    return randomize(model, seed).eval()


def branch_tensors(family, kind, layer, H, D, d, seed):
    """Random §1 branch tensors of one layer (names relative to `model.layers.{l}.linear_attn.`)."""
    g = torch.Generator().manual_seed(1000 * seed + layer)

    def rnd(*shape, std=0.15, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    # Biases where the teacher has them: the Llama teacher has attention_bias=True, Qwen2 q/k/v biases only.
    qkv_bias, o_bias = family in ("llama", "qwen2"), family == "llama"
    t = {}
    for n in ("q", "k", "v"):
        t[f"{n}_proj.weight"] = rnd(H * D, d)
        if qkv_bias:
            t[f"{n}_proj.bias"] = rnd(H * D, std=0.1)
    t["o_proj.weight"] = rnd(d, H * D)
    if o_bias:
        t["o_proj.bias"] = rnd(d, std=0.1)
    if family == "qwen3":
        t["q_norm.weight"] = rnd(D, std=0.2, mean=1.0)
        t["k_norm.weight"] = rnd(D, std=0.2, mean=1.0)
    if kind == "gla":
        t["gk_proj.0.weight"] = rnd(16, d, std=0.3)
        t["gk_proj.1.weight"] = rnd(H * D, 16, std=0.3)
        t["gk_proj.1.bias"] = rnd(H * D, std=1.0, mean=-2.0)  # noticeable per-channel decay
    if kind == "gated_deltanet":
        t["a_proj.weight"] = rnd(H, d, std=0.3)
        t["b_proj.weight"] = rnd(H, d, std=0.3)
        t["A_log"] = torch.empty(H).uniform_(1, 16, generator=g).log()
        t["dt_bias"] = rnd(H, std=0.5, mean=-1.0)
    if kind in ("gla", "gated_deltanet"):
        t["g_proj.weight"] = rnd(H * D, d, std=0.2)
        t["g_proj.bias"] = rnd(H * D, std=0.5)
        t["o_norm.weight"] = rnd(D, std=0.2, mean=1.0)
    return t


def write_export(teacher, layer_types, kind="gla", full_heads=None, chunk_size=4, seed=0):
    """A FlashMorph checkpoint directory per ENGINE.md §5 built from `teacher`; returns its path."""
    tc = teacher.config
    family = tc.model_type
    H, D, d, L = tc.num_attention_heads, tc.head_dim, tc.hidden_size, tc.num_hidden_layers
    cfg = tc.to_dict()
    for key in ("layer_types", "auto_map", "_name_or_path"):
        cfg.pop(key, None)
    if family == "llama":  # exercise the pre-transformers-5 RoPE fields
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
        cfg["rope_scaling"] = None
    cfg.update({
        "model_type": "flashmorph",
        "base_model_type": family,
        "architectures": ["FlashMorphForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_flashmorph.FlashMorphConfig",
            "AutoModelForCausalLM": "modeling_flashmorph.FlashMorphForCausalLM",
        },
        "layer_types": list(layer_types),
        "linear_attention": {"kind": kind, "num_heads": H, "head_dim": D, "chunk_size": chunk_size,
                             "gla_low_rank_dim": 16, "gla_gate_normalizer": 16, "norm_eps": tc.rms_norm_eps},
    })
    if full_heads is not None:
        cfg["full_attention_heads"] = full_heads
    tensors = {}
    for name, value in teacher.state_dict().items():
        if name == "lm_head.weight" and tc.tie_word_embeddings:
            continue
        if ".self_attn." in name and layer_types[int(name.split(".")[2])] == "linear_attention":
            continue
        tensors[name] = value.detach().clone().contiguous()
    for l, t in enumerate(layer_types):
        if t != "full_attention":
            for n, v in branch_tensors(family, kind, l, H, D, d, seed).items():
                tensors[f"model.layers.{l}.linear_attn.{n}"] = v.contiguous()
    out = tempfile.mkdtemp(prefix=f"fm_{family}_{kind}_", dir=_TMP)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for py in PY_FILES:
        shutil.copy(os.path.join(EXPORT_DIR, py), out)
    return out


def load(path, dtype=torch.float64, attn_implementation="eager"):
    model, info = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=dtype,
                                                       attn_implementation=attn_implementation,
                                                       output_loading_info=True)
    return model.eval(), info


# ----------------------------------------------------------------------------------------------------------------------
# Independent float64 reference (ENGINE.md §1, §2, §5 and the teacher's decoder).


def ref_rms(x, w, eps):
    # transformers' RMSNorm normalises in float32 even for float64 models; the teacher is defined by it.
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if w is None else w * y


def ref_rope_tables(T, D, theta):
    # transformers computes RoPE angles and cos/sin in float32 (also for float64 models).
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    ang = torch.arange(T).float()[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().double(), ang.sin().double()


def ref_softmax_attention(h, W, pre, cfg, family):
    """Per-head outputs [T, H, D] of the teacher's attention before o_proj (causal, RoPE, GQA)."""
    T = h.shape[0]
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def proj(n, heads):
        y = h @ W[pre + n + "_proj.weight"].T
        if pre + n + "_proj.bias" in W:
            y = y + W[pre + n + "_proj.bias"]
        return y.view(T, heads, D)

    q, k, v = proj("q", H), proj("k", Hkv), proj("v", Hkv)
    if family == "qwen3":
        q = ref_rms(q, W[pre + "q_norm.weight"], cfg["rms_norm_eps"])
        k = ref_rms(k, W[pre + "k_norm.weight"], cfg["rms_norm_eps"])
    theta = cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"]
    cos, sin = ref_rope_tables(T, D, theta)

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]

    q, k = rope(q), rope(k)
    out = torch.zeros(T, H, D, dtype=h.dtype)
    for hh in range(H):
        kv = hh // (H // Hkv)
        for t in range(T):
            s = (k[: t + 1, kv] @ q[t, hh]) / math.sqrt(D)
            out[t, hh] = torch.softmax(s, dim=0) @ v[: t + 1, kv]
    return out


def ref_branch(h, W, pre, cfg, family, layer):
    """Per-head outputs [T, H, D] of a §1 branch before o_proj, by the token-by-token recurrence."""
    la = cfg["linear_attention"]
    kind, T = la["kind"], h.shape[0]
    H, D, L = cfg["num_attention_heads"], cfg["head_dim"], cfg["num_hidden_layers"]

    def lin(n, x):
        y = x @ W[pre + n + ".weight"].T
        return y + W[pre + n + ".bias"] if pre + n + ".bias" in W else y

    q, k, v = (lin(n + "_proj", h).view(T, H, D) for n in ("q", "k", "v"))
    if family == "qwen3":
        q = ref_rms(q, W[pre + "q_norm.weight"], cfg["rms_norm_eps"])
        k = ref_rms(k, W[pre + "k_norm.weight"], cfg["rms_norm_eps"])
    silu = lambda x: x / (1 + torch.exp(-x))  # noqa: E731
    l2 = lambda x: x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    if kind == "lightning":
        q, k = silu(q), silu(k)
    elif kind == "gated_deltanet":
        q, k = l2(silu(q)), l2(silu(k))
    q = q * D ** -0.5
    beta = None
    if kind == "lightning":
        factor = 1 + 1e-5 if L == 1 else 1 - layer / (L - 1) + 1e-5
        g = torch.tensor([-(2 ** (-8 * (i + 1) / H)) * factor for i in range(H)], dtype=h.dtype)
        g = g.view(1, H, 1).expand(T, H, D)
    elif kind == "gla":
        z = lin("gk_proj.1", lin("gk_proj.0", h))
        g = (-torch.log1p(torch.exp(-z)) / la["gla_gate_normalizer"]).view(T, H, D)  # logsigmoid
    else:
        a = lin("a_proj", h) + W[pre + "dt_bias"]
        g = (-torch.exp(W[pre + "A_log"]) * torch.log1p(torch.exp(a)))[:, :, None].expand(T, H, D)
        beta = 1 / (1 + torch.exp(-lin("b_proj", h)))
    out = torch.zeros(T, H, D, dtype=h.dtype)
    for hh in range(H):
        S = torch.zeros(D, D, dtype=h.dtype)
        for t in range(T):
            if beta is None:
                S = torch.diag(torch.exp(g[t, hh])) @ S + torch.outer(k[t, hh], v[t, hh])
            else:
                Sp = torch.exp(g[t, hh, 0]) * S
                S = Sp + beta[t, hh] * torch.outer(k[t, hh], v[t, hh] - Sp.T @ k[t, hh])
            out[t, hh] = S.T @ q[t, hh]
    out = out / torch.sqrt(out.pow(2).mean(-1, keepdim=True) + la["norm_eps"])
    if kind != "lightning":
        out = out * W[pre + "o_norm.weight"] * silu(lin("g_proj", h)).view(T, H, D)
    return out


def ref_logits(path, ids):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    W = {k: v.double() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    family, eps = cfg["base_model_type"], cfg["rms_norm_eps"]
    H, D, T = cfg["num_attention_heads"], cfg["head_dim"], len(ids)
    x = W["model.embed_tokens.weight"][ids]
    for l, t in enumerate(cfg["layer_types"]):
        pre = f"model.layers.{l}."
        h = ref_rms(x, W[pre + "input_layernorm.weight"], eps)
        if t == "full_attention":
            m = torch.ones(H, dtype=torch.float64)
        elif t == "linear_attention":
            m = torch.zeros(H, dtype=torch.float64)
        else:
            m = torch.tensor([1.0 if i in cfg["full_attention_heads"][l] else 0.0 for i in range(H)],
                             dtype=torch.float64)
        # §2 / §5: attn = W_o (m ⊙ fa) + W_o' ((1 - m) ⊙ la) + mean(m) b_o + (1 - mean(m)) b_o'
        mixed = torch.zeros_like(x)
        for branch, weight in (("self_attn.", m), ("linear_attn.", 1 - m)):
            if t != "hybrid_attention" and weight.sum() == 0:
                continue  # the layer has no such branch
            p = pre + branch
            if branch == "self_attn.":
                heads = ref_softmax_attention(h, W, p, cfg, family)
            else:
                heads = ref_branch(h, W, p, cfg, family, l)
            mixed = mixed + (heads * weight[None, :, None]).reshape(T, H * D) @ W[p + "o_proj.weight"].T
            if p + "o_proj.bias" in W:
                mixed = mixed + weight.mean() * W[p + "o_proj.bias"]
        x = x + mixed
        h = ref_rms(x, W[pre + "post_attention_layernorm.weight"], eps)
        mp = pre + "mlp."

        def mlin(n, y):
            z = y @ W[mp + n + ".weight"].T
            return z + W[mp + n + ".bias"] if mp + n + ".bias" in W else z

        gate = mlin("gate_proj", h)
        x = x + mlin("down_proj", gate / (1 + torch.exp(-gate)) * mlin("up_proj", h))
    x = ref_rms(x, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


# ----------------------------------------------------------------------------------------------------------------------
# Tests.


def layouts(L, H):
    """(layer_types, full_attention_heads) mixing all three layer types."""
    types = ["linear_attention", "full_attention", "hybrid_attention", "linear_attention"][:L]
    heads = [None, None, [0, H - 1], None][:L]
    return types, heads


def test_full_attention_equals_teacher():
    for family in ("qwen3", "llama"):
        teacher = make_teacher(family, seed=1)
        path = write_export(teacher, ["full_attention"] * teacher.config.num_hidden_layers)
        model, info = load(path, dtype=torch.float32)
        ids = torch.randint(0, teacher.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want = teacher(ids).logits
            got = model(ids).logits
        diff = max_diff(got, want)
        check(diff <= 1e-5, f"(1) {family} all-full logits vs teacher: max |diff| {diff:.3g} > 1e-5")
        check(not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")),
              f"(1) {family} loading info not clean: {info}")
        print(f"(1) {family}: all-full FlashMorph vs teacher logits max |diff| = {diff:.2e}")


def test_sliding_window_families():
    """Qwen2 (q/k/v biases, windows on upper layers) and Mistral (window on every layer): the all-full export
    equals the teacher, also through generate() with the cache; a hybrid layout loads with exact tensor names."""
    for family in ("qwen2", "mistral"):
        teacher = make_teacher(family, seed=6)
        L, H = teacher.config.num_hidden_layers, teacher.config.num_attention_heads
        model, _ = load(write_export(teacher, ["full_attention"] * L), dtype=torch.float32)
        ids = torch.randint(1, teacher.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(11))
        with torch.no_grad():
            diff = max_diff(model(ids).logits, teacher(ids).logits)
            got = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
            want = teacher.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        check(diff <= 1e-5, f"(1) {family} (sliding window) all-full logits vs teacher: {diff:.3g}")
        check(torch.equal(got, want), f"(1) {family}: generate differs from the teacher's")
        types, heads = layouts(L, H)
        path = write_export(teacher, types, kind="gla", full_heads=heads)
        hybrid, info = load(path)
        check(not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")),
              f"(1) {family} hybrid loading info not clean: {info}")
        with torch.no_grad():
            seq, _ = greedy_by_full_forwards(hybrid, ids, 4)
            gen = hybrid.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        check(torch.equal(seq, gen), f"(1) {family} hybrid: generate differs from full forwards")
        print(f"(1) {family}: all-full vs teacher logits max |diff| = {diff:.2e}, generate equal; hybrid layout ok")


def test_against_reference():
    for family in ("qwen3", "llama"):
        teacher = make_teacher(family, seed=2)
        types, heads = layouts(teacher.config.num_hidden_layers, teacher.config.num_attention_heads)
        for kind in KINDS:
            path = write_export(teacher, types, kind=kind, full_heads=heads, chunk_size=4, seed=5)
            model, info = load(path)
            check(not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")),
                  f"(2) {family}/{kind} loading info not clean: {info}")
            file_keys = set(load_file(os.path.join(path, "model.safetensors")).keys())
            model_keys = set(model.state_dict().keys()) - ({"lm_head.weight"} if "lm_head.weight" not in file_keys
                                                          else set())
            check(file_keys == model_keys, f"(2) {family}/{kind} tensor names differ: "
                                           f"{sorted(file_keys ^ model_keys)[:6]}")
            check(not any(k.startswith("model.layers.0.self_attn.") for k in model_keys),
                  f"(2) {family}/{kind}: a linear layer has self_attn tensors")
            ids = torch.randint(0, teacher.config.vocab_size, (11,), generator=torch.Generator().manual_seed(4))
            with torch.no_grad():
                got = model(ids[None], use_cache=False).logits[0]
            want = ref_logits(path, ids)
            diff = max_diff(got, want)
            # float32 against float64: a few ulps of the largest logit (the BLAS's summation order differs between
            # processors; 1.01e-6 at max |logit| 3.34 was seen on a 2-core AMD EPYC machine).
            tol = 1e-6 * max(1.0, want.abs().max().item())
            check(diff <= tol, f"(2) {family}/{kind} logits vs float64 reference: max |diff| {diff:.3g} > {tol:.3g}")
            print(f"(2) {family}/{kind}: logits vs float64 reference max |diff| = {diff:.2e} "
                  f"(max |logit| {want.abs().max().item():.2f})")


def load_kernels():
    spec = importlib.util.spec_from_file_location("fm_modeling_kernels", os.path.join(EXPORT_DIR, PY_FILES[1]))
    sys.path.insert(0, EXPORT_DIR)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(EXPORT_DIR)
    return module


def test_chunked_equals_recurrent():
    fm = load_kernels()
    gen = torch.Generator().manual_seed(7)
    B, H, T, D = 2, 3, 37, 8
    worst = 0.0
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        for kind in ("scalar", "vector", "delta"):
            for strong in (False, True):
                q = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64) * D ** -0.5
                k = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
                if kind == "delta":
                    k = k / k.norm(dim=-1, keepdim=True)
                v = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
                width = D if kind == "vector" else 1
                # log-decays down to -30 per step in the strong case: exp(-G) would overflow a naive split.
                g = -torch.rand(B, H, T, width, generator=gen, dtype=torch.float64) * (30.0 if strong else 0.5)
                beta = torch.rand(B, H, T, generator=gen, dtype=torch.float64) if kind == "delta" else None
                s0 = torch.randn(B, H, D, D, generator=gen, dtype=torch.float64)
                args = [t.to(dtype) if t is not None else None for t in (q, k, v, g, beta)]
                o_ref, s_ref = fm.recurrent_linear_attention(*args, initial_state=s0)
                for c in (1, 5, 16, 64):
                    o, s = fm.chunk_linear_attention(*args, initial_state=s0, chunk_size=c)
                    d = max(max_diff(o, o_ref), max_diff(s, s_ref))
                    worst = max(worst, d if dtype == torch.float64 else 0.0)
                    check(torch.isfinite(o).all() and d <= tol * max(1.0, o_ref.abs().max().item()),
                          f"(3) chunk({c}) vs recurrent {kind} strong={strong} {dtype}: {d:.3g}")
                # Prefill (chunked) then one-token steps (recurrent) equals one pass.
                o1, s1 = fm.chunk_linear_attention(*[a[:, :, :20] if a is not None else None for a in args],
                                                   initial_state=s0, chunk_size=8)
                o2, s2 = fm.recurrent_linear_attention(*[a[:, :, 20:] if a is not None else None for a in args],
                                                       initial_state=s1)
                d = max(max_diff(torch.cat([o1, o2], 2), o_ref), max_diff(s2, s_ref))
                check(d <= tol * max(1.0, o_ref.abs().max().item()), f"(3) split prefill/decode {kind}: {d:.3g}")
    # bf16 inputs: float32 work, bf16 output.
    qb = torch.randn(1, 2, 9, 8, generator=gen).bfloat16()
    o, s = fm.chunk_linear_attention(qb, qb, qb, -torch.rand(1, 2, 9, 1, generator=gen).bfloat16(), chunk_size=4)
    check(o.dtype == torch.bfloat16 and s.dtype == torch.float32, "(3) bf16 in -> bf16 out, float32 state")
    print(f"(3) kernels: chunked vs recurrent max |diff| (float64) = {worst:.2e}")

    teacher = make_teacher("qwen3", seed=3)
    types, heads = layouts(teacher.config.num_hidden_layers, teacher.config.num_attention_heads)
    for kind in KINDS:
        model, _ = load(write_export(teacher, types, kind=kind, full_heads=heads, chunk_size=4, seed=6))
        ids = torch.randint(0, teacher.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            model.set_linear_attention_mode("recurrent")
            a = model(ids, use_cache=False).logits
            model.set_linear_attention_mode("chunk")
            b = model(ids, use_cache=False).logits
        diff = max_diff(a, b)
        check(diff <= 1e-10, f"(3) model {kind}: chunked vs recurrent logits {diff:.3g}")
        print(f"(3) model {kind}: chunked vs recurrent logits max |diff| = {diff:.2e}")


def greedy_by_full_forwards(model, ids, steps):
    seq, logits = ids, []
    with torch.no_grad():
        for _ in range(steps):
            last = model(seq, use_cache=False).logits[:, -1]
            logits.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, logits


def test_generate_with_cache():
    for family in ("qwen3", "llama"):
        teacher = make_teacher(family, seed=4)
        types, heads = layouts(teacher.config.num_hidden_layers, teacher.config.num_attention_heads)
        for kind in KINDS:
            path = write_export(teacher, types, kind=kind, full_heads=heads, chunk_size=4, seed=7)
            model, _ = load(path)
            ids = torch.randint(1, teacher.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(9))
            steps = 6
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=True,
                                     output_logits=True, return_dict_in_generate=True, pad_token_id=0)
            want_seq, want_logits = greedy_by_full_forwards(model, ids, steps)
            check(torch.equal(out.sequences, want_seq), f"(4) {family}/{kind}: generate tokens differ")
            diff = max(max_diff(a, b) for a, b in zip(out.logits, want_logits))
            check(diff <= 1e-6, f"(4) {family}/{kind}: cached step logits vs full forwards {diff:.3g}")

            # Left padding: the padded row generates what it generates alone. (sdpa: transformers' eager
            # attention itself gives NaN for left-padded float64 batches, the teacher's included.)
            model, _ = load(path, attn_implementation="sdpa")
            short = ids[1:, 3:]
            padded = torch.cat([torch.zeros(1, 3, dtype=ids.dtype), short], dim=1)
            batch = torch.cat([ids[:1], padded])
            mask = torch.ones_like(batch)
            mask[1, :3] = 0
            with torch.no_grad():
                both = model.generate(batch, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                      pad_token_id=0)
                alone = model.generate(short, max_new_tokens=steps, do_sample=False, pad_token_id=0)
            check(torch.equal(both[1, 3:], alone[0]), f"(4) {family}/{kind}: left-padded row differs")
            print(f"(4) {family}/{kind}: generate(use_cache=True) vs greedy full forwards: step logits max |diff| "
                  f"{diff:.2e}; left-padded batch checked")


def test_round_trip():
    teacher = make_teacher("llama", seed=5)
    types, heads = layouts(teacher.config.num_hidden_layers, teacher.config.num_attention_heads)
    path = write_export(teacher, types, kind="gated_deltanet", full_heads=heads, seed=8)
    model, _ = load(path, dtype=torch.float32)
    saved = tempfile.mkdtemp(prefix="fm_saved_", dir=_TMP)
    model.save_pretrained(saved)
    for py in PY_FILES:
        check(os.path.exists(os.path.join(saved, py)), f"(5) save_pretrained did not write {py}")
    with open(os.path.join(saved, "config.json")) as f:
        cfg = json.load(f)
    for key, want in (("model_type", "flashmorph"), ("base_model_type", "llama"), ("layer_types", types),
                      ("full_attention_heads", heads), ("architectures", ["FlashMorphForCausalLM"])):
        check(cfg.get(key) == want, f"(5) saved config {key} = {cfg.get(key)!r}, want {want!r}")
    check(cfg.get("linear_attention", {}).get("kind") == "gated_deltanet", "(5) saved linear_attention.kind")
    check(set(cfg.get("auto_map", {})) >= {"AutoConfig", "AutoModelForCausalLM"}, "(5) saved auto_map")
    again, info = load(saved, dtype=torch.float32)
    check(not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")),
          f"(5) reload loading info not clean: {info}")
    saved_keys = set(load_file(os.path.join(saved, "model.safetensors")).keys())
    orig_keys = set(load_file(os.path.join(path, "model.safetensors")).keys())
    check(saved_keys == orig_keys, f"(5) saved tensor names differ: {sorted(saved_keys ^ orig_keys)[:6]}")
    ids = torch.randint(0, teacher.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        diff = max_diff(model(ids).logits, again(ids).logits)
    check(diff == 0.0, f"(5) round-trip logits differ by {diff:.3g}")
    # bf16 checkpoints load and run (float32 state inside). A smoke check: bf16 rounding of this random model
    # moves logits by ~2 % for the teacher alone and ~6 % with the branches; a casting bug moves them by O(1).
    half, _ = load(saved, dtype=torch.bfloat16)
    with torch.no_grad():
        lh = half(ids).logits
        gen = half.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    rel = max_diff(lh, again(ids).logits) / again(ids).logits.abs().max().item()
    check(lh.dtype == torch.bfloat16 and torch.isfinite(lh).all() and rel < 0.15 and gen.shape[1] == 13,
          f"(5) bf16 load: dtype {lh.dtype}, relative error {rel:.3g}")
    print(f"(5) save_pretrained/from_pretrained round trip: logits max |diff| = {diff:.1e}, "
          f"{len(saved_keys)} tensors, .py files shipped")


def main():
    tests = (test_full_attention_equals_teacher, test_sliding_window_families, test_against_reference,
             test_chunked_equals_recurrent, test_generate_with_cache, test_round_trip)
    try:
        for test in tests:
            try:
                start = time.time()
                test()
                print(f"   [{test.__name__}: {time.time() - start:.1f} s]")
            except Exception as e:  # a crash is a failure of that test, the others still run
                import traceback
                traceback.print_exc()
                check(False, f"{test.__name__} raised {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
    print(f"test_modeling_flashmorph: {_checks - len(_failures)}/{_checks} checks passed")
    return 1 if _failures else 0


if __name__ == "__main__":
    sys.exit(main())

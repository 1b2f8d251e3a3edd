# Copyright FlashMorph authors.
"""FlashMorph hybrid decoder for `transformers` (docs/ENGINE.md §1, §2, §5).

Ships inside every exported checkpoint; load it with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

Layers are `full_attention` (the teacher's softmax attention, built from the teacher family's own transformers
modules), `linear_attention` (a Lightning / GLA / Gated DeltaNet branch, plain PyTorch) or `hybrid_attention`
(both, mixed per query head). Embeddings, norms, RoPE and MLPs are the teacher family's modules.

Caching: the cache is transformers' `DynamicCache(config=...)`: `full_attention` layers hold KV
(`DynamicLayer`), `linear_attention` layers the recurrent state (`LinearAttentionLayer`), `hybrid_attention`
layers both (`FlashMorphHybridCacheLayer`, registered below for that layer type). Prefill uses the chunked form,
one-token steps the recurrent form; both carry the state through the cache.
"""

import importlib
import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import (
    Cache,
    DynamicCache,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndStaticFullAttentionLayer,
    LinearAttentionCacheLayerMixin,
)
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:
    from .configuration_flashmorph import FlashMorphConfig
except ImportError:  # imported as a top-level module (tests, tools)
    from configuration_flashmorph import FlashMorphConfig


# ----------------------------------------------------------------------------------------------------------------------
# The teacher family's building blocks.

TeacherParts = namedtuple("TeacherParts", "rms_norm mlp attention rotary_embedding")
_FAMILY_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def teacher_parts(base_model_type: str) -> TeacherParts:
    """RMSNorm, MLP, attention and rotary-embedding classes of the teacher's transformers family."""
    if base_model_type not in _FAMILY_PREFIX:
        raise ValueError(f"base_model_type {base_model_type!r} is not one of {sorted(_FAMILY_PREFIX)}")
    module = importlib.import_module(f"transformers.models.{base_model_type}.modeling_{base_model_type}")
    prefix = _FAMILY_PREFIX[base_model_type]
    return TeacherParts(*(getattr(module, prefix + n) for n in ("RMSNorm", "MLP", "Attention", "RotaryEmbedding")))


def teacher_attention_biases(config) -> tuple[bool, bool]:
    """(q/k/v projections have a bias, o projection has a bias) in the teacher's attention."""
    if config.base_model_type == "qwen2":
        return True, False
    if config.base_model_type == "mistral":
        return False, False
    return bool(config.attention_bias), bool(config.attention_bias)


# ----------------------------------------------------------------------------------------------------------------------
# The linear-attention recurrence (§1) in two equal forms. Tensors are [B, H, T, *]; `g` is the log-decay (<= 0),
# [B, H, T, 1] for a per-head scalar or [B, H, T, D] per key channel; `beta` is [B, H, T] for the gated delta rule,
# None for gated linear attention. The state is [B, H, D_k, D_v]. Work happens in float32 (float64 for float64
# inputs); outputs have the input's dtype.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _initial_state(q, v, initial_state, dtype):
    if initial_state is not None:
        return initial_state.to(dtype)
    B, H, _, Dk = q.shape
    return q.new_zeros(B, H, Dk, v.shape[-1], dtype=dtype)


def recurrent_linear_attention(q, k, v, g, beta=None, initial_state=None):
    """Token-by-token definition: returns (o [B,H,T,Dv], final state).

    Gated linear:  S_t = diag(exp g_t) S_{t-1} + k_t v_t^T.
    Delta rule:    S'_t = exp(g_t) S_{t-1};  S_t = S'_t + beta_t k_t (v_t - S'_t^T k_t)^T.
    Both:          o_t = S_t^T q_t.
    """
    cdt = _compute_dtype(q.dtype)
    q, k, v, g = (t.to(cdt) for t in (q, k, v, g))
    beta = beta.to(cdt) if beta is not None else None
    S = _initial_state(q, v, initial_state, cdt)
    out = []
    for t in range(q.shape[2]):
        S = g[:, :, t].exp().unsqueeze(-1) * S
        k_t, v_t = k[:, :, t], v[:, :, t]
        if beta is not None:
            v_t = beta[:, :, t, None] * (v_t - (S * k_t.unsqueeze(-1)).sum(-2))
        S = S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        out.append((S * q[:, :, t].unsqueeze(-1)).sum(-2))
    o = torch.stack(out, dim=2) if out else v.new_zeros(v.shape, dtype=cdt)
    return o.to(v.dtype), S


def _segment_sums(g):
    """[B, H, c, Dg] -> [B, H, t, s, Dg]: sum of g over (s, t] for s <= t, -inf above the diagonal.

    Summed directly rather than as G_t - G_s, which would cancel catastrophically for strong decays in float32.
    """
    c = g.shape[2]
    ones = torch.ones(c, c, dtype=torch.bool, device=g.device)
    terms = g.unsqueeze(3).expand(*g.shape[:3], c, g.shape[-1])  # terms[t, s] = g_t
    terms = terms.masked_fill(~ones.tril(-1)[:, :, None], 0.0)  # keep g_t only where t > s
    return terms.cumsum(2).masked_fill(~ones.tril()[:, :, None], float("-inf"))


def chunk_linear_attention(q, k, v, g, beta=None, initial_state=None, chunk_size=64):
    """Chunked form of `recurrent_linear_attention` (same outputs and final state).

    Within a chunk, with G the inclusive cumulative log-decay, S_0 the incoming state and u_s the value written at
    step s (u = v for gated linear attention):
        S_t = exp(G_t) S_0 + sum_{s<=t} exp(G_t - G_s) k_s u_s^T,   o_t = S_t^T q_t.
    For the delta rule u solves the unit lower-triangular system
        u_t + beta_t sum_{s<t} exp(G_t - G_s) (k_t . k_s) u_s = beta_t (v_t - exp(G_t) S_0^T k_t).
    Every decay factor is exp of a non-positive number (G_t - G_s with s <= t, summed as a segment), so nothing
    overflows and strong decays lose no precision.
    """
    cdt = _compute_dtype(q.dtype)
    S = _initial_state(q, v, initial_state, cdt)
    T = q.shape[2]
    out = []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(start + chunk_size, T))
        qc, kc, vc, gc = (t[:, :, sl].to(cdt) for t in (q, k, v, g))
        c = qc.shape[2]
        G = gc.cumsum(2)  # [B, H, c, Dg]: decay from the chunk start
        segments = _segment_sums(gc)  # [B, H, t, s, Dg]: G_t - G_s
        decay = segments.exp()
        if G.shape[-1] == 1:
            scores = (qc @ kc.transpose(-1, -2)) * decay[..., 0]
        else:
            scores = torch.einsum("bhti,bhsi,bhtsi->bhts", qc, kc, decay)
        if beta is None:
            u = vc
        else:
            bc = beta[:, :, sl].to(cdt)
            kk = ((kc @ kc.transpose(-1, -2)) * decay[..., 0]).tril(-1)
            system = torch.eye(c, dtype=cdt, device=q.device) + bc.unsqueeze(-1) * kk
            rhs = bc.unsqueeze(-1) * (vc - G.exp() * (kc @ S))
            u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        out.append((qc * G.exp()) @ S + scores @ u)
        to_end = decay[:, :, -1]  # [B, H, s, Dg]: exp(G_last - G_s)
        S = G[:, :, -1].exp().unsqueeze(-1) * S + (kc * to_end).transpose(-1, -2) @ u
    o = torch.cat(out, dim=2) if out else v.new_zeros(v.shape, dtype=cdt)
    return o.to(v.dtype), S


# ----------------------------------------------------------------------------------------------------------------------
# Modules.


class HeadMaskedLinear(nn.Linear):
    """Output projection of one branch of a hybrid layer (§2, §5): `W (m ⊙_h x) + mean(m) · b`.

    `head_mask` holds one factor per head (1 / 0 per §5); the weights keep nn.Linear's names.
    """

    def __init__(self, in_features, out_features, bias, head_mask, head_dim):
        super().__init__(in_features, out_features, bias=bias)
        self.head_mask = [float(m) for m in head_mask]
        self.head_dim = head_dim

    def forward(self, x):
        m = torch.tensor(self.head_mask, dtype=x.dtype, device=x.device)
        x = (x.unflatten(-1, (len(self.head_mask), self.head_dim)) * m.unsqueeze(-1)).flatten(-2)
        y = F.linear(x, self.weight)
        return y if self.bias is None else y + m.mean() * self.bias


class HeadRMSNorm(nn.Module):
    """RMSNorm over the last dim (a head's D channels), optional weight shared by heads; keeps the input's dtype."""

    def __init__(self, dim, eps, weight=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight.to(x.dtype)


def _l2_norm(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


class FlashMorphLinearAttention(nn.Module):
    """One linear-attention branch (§1): Lightning, GLA or Gated DeltaNet with H heads of size D."""

    def __init__(self, config, layer_idx, norm_cls, head_mask=None):
        super().__init__()
        la = config.linear_attention
        self.layer_idx = layer_idx
        self.kind = la["kind"]
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.num_layers = config.num_hidden_layers
        self.chunk_size = int(la["chunk_size"])
        self.norm_eps = float(la["norm_eps"])
        self.gate_normalizer = float(la["gla_gate_normalizer"])
        self.mode = "auto"  # "auto": chunked for T > 1, recurrent for T == 1; or "chunk" / "recurrent"
        d, H, D = config.hidden_size, self.num_heads, self.head_dim
        qkv_bias, o_bias = teacher_attention_biases(config)

        self.q_proj = nn.Linear(d, H * D, bias=qkv_bias)
        self.k_proj = nn.Linear(d, H * D, bias=qkv_bias)
        self.v_proj = nn.Linear(d, H * D, bias=qkv_bias)
        if head_mask is None:
            self.o_proj = nn.Linear(H * D, d, bias=o_bias)
        else:
            self.o_proj = HeadMaskedLinear(H * D, d, o_bias, head_mask, D)
        self.qk_norm = config.base_model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = norm_cls(D, eps=config.rms_norm_eps)
            self.k_norm = norm_cls(D, eps=config.rms_norm_eps)
        if self.kind == "gla":
            r = int(la["gla_low_rank_dim"])
            self.gk_proj = nn.Sequential(nn.Linear(d, r, bias=False), nn.Linear(r, H * D, bias=True))
        if self.kind == "gated_deltanet":
            self.a_proj = nn.Linear(d, H, bias=False)
            self.b_proj = nn.Linear(d, H, bias=False)
            self.A_log = nn.Parameter(torch.empty(H))
            self.dt_bias = nn.Parameter(torch.empty(H))
        self.gated = self.kind in ("gla", "gated_deltanet")
        self.o_norm = HeadRMSNorm(D, self.norm_eps, weight=self.gated)  # Lightning: no weight
        if self.gated:
            self.g_proj = nn.Linear(d, H * D, bias=True)

    def lightning_decay(self):
        """Per-head constant log-decay g_h = -s_h (1 - l/(L-1) + 1e-5), s_h = 2^(-8(h+1)/H)."""
        L, l, H = self.num_layers, self.layer_idx, self.num_heads
        factor = 1.0 + 1e-5 if L == 1 else 1.0 - l / (L - 1) + 1e-5
        return [-(2.0 ** (-8.0 * (h + 1) / H)) * factor for h in range(H)]

    def decay_and_beta(self, x, cdt):
        """(g [B,T,H,Dg], beta [B,T,H] or None) in dtype `cdt`."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        if self.kind == "lightning":
            g = torch.tensor(self.lightning_decay(), dtype=cdt, device=x.device)
            return g.view(1, 1, H, 1).expand(B, T, H, 1), None
        if self.kind == "gla":
            g = F.logsigmoid(self.gk_proj(x).to(cdt)) / self.gate_normalizer
            return g.view(B, T, H, D), None
        a = self.a_proj(x).to(cdt) + self.dt_bias.to(cdt)
        g = -self.A_log.to(cdt).exp() * F.softplus(a)
        beta = torch.sigmoid(self.b_proj(x).to(cdt))
        return g.unsqueeze(-1), beta

    def cached_state(self, past_key_values):
        """This layer's recurrent state from the cache (None: no cache or nothing seen yet)."""
        if past_key_values is None:
            return None
        layers = past_key_values.layers
        layer = layers[self.layer_idx] if self.layer_idx < len(layers) else None
        if not isinstance(layer, LinearAttentionCacheLayerMixin):
            raise ValueError("FlashMorph needs a cache built from its config: DynamicCache(config=model.config)")
        return layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None

    def forward(self, x, past_key_values=None, padding_mask=None):
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        cdt = _compute_dtype(x.dtype)
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.to(cdt), k.to(cdt)
        if self.kind == "lightning":
            q, k = F.silu(q), F.silu(k)
        elif self.kind == "gated_deltanet":
            q, k = _l2_norm(F.silu(q)), _l2_norm(F.silu(k))
        q = q * D**-0.5
        g, beta = self.decay_and_beta(x, cdt)
        if padding_mask is not None:  # padded tokens leave the state untouched
            keep = padding_mask[:, -T:].to(cdt).view(B, T, 1, 1)
            k, g = k * keep, g * keep

        state = self.cached_state(past_key_values)
        args = [t.transpose(1, 2) for t in (q, k, v.to(cdt), g)]  # [B, H, T, *]
        args.append(beta.transpose(1, 2) if beta is not None else None)
        if self.mode == "recurrent" or (self.mode == "auto" and T == 1):
            o, state = recurrent_linear_attention(*args, initial_state=state)
        else:
            o, state = chunk_linear_attention(*args, initial_state=state, chunk_size=self.chunk_size)
        if past_key_values is not None:
            past_key_values.update_recurrent_state(state, self.layer_idx)

        o = o.transpose(1, 2)  # [B, T, H, D]
        o = self.o_norm(o)
        if self.gated:
            o = o * F.silu(self.g_proj(x).to(cdt)).view(B, T, H, D)
        return self.o_proj(o.reshape(B, T, H * D).to(x.dtype))


class FlashMorphDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer whose token mixer is softmax attention, a linear branch, or both mixed per head."""

    def __init__(self, config, layer_idx, parts: TeacherParts):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.layer_sliding_window(layer_idx)
        H, D = config.num_attention_heads, config.head_dim
        full_mask = None
        if self.layer_type == "hybrid_attention":
            heads = set(int(h) for h in config.full_attention_heads[layer_idx])
            full_mask = [1.0 if h in heads else 0.0 for h in range(H)]

        self.self_attn = None
        if self.layer_type != "linear_attention":
            self.self_attn = parts.attention(config=config, layer_idx=layer_idx)
            if hasattr(self.self_attn, "sliding_window"):  # Qwen derives it from its own layer_types
                self.self_attn.sliding_window = self.sliding_window
            if full_mask is not None:
                o = self.self_attn.o_proj
                self.self_attn.o_proj = HeadMaskedLinear(H * D, config.hidden_size, o.bias is not None, full_mask, D)
        self.linear_attn = None
        if self.layer_type != "full_attention":
            branch_mask = None if full_mask is None else [1.0 - m for m in full_mask]
            self.linear_attn = FlashMorphLinearAttention(config, layer_idx, parts.rms_norm, branch_mask)
        self.mlp = parts.mlp(config)
        self.input_layernorm = parts.rms_norm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = parts.rms_norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_embeddings=None,
        position_ids=None,
        past_key_values=None,
        padding_mask=None,
        **kwargs,
    ):
        residual = hidden_states
        x = self.input_layernorm(hidden_states)
        mixed = 0
        if self.self_attn is not None:
            mixed, _ = self.self_attn(
                hidden_states=x,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                **kwargs,
            )
        if self.linear_attn is not None:
            mixed = mixed + self.linear_attn(x, past_key_values=past_key_values, padding_mask=padding_mask)
        hidden_states = residual + mixed
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        return residual + self.mlp(hidden_states)


# Cache layer for `hybrid_attention` layers (KV + recurrent state); `_layer_type` registers it with DynamicCache and
# StaticCache, which then build it from `config.layer_types`.
class FlashMorphHybridCacheLayer(LinearAttentionAndFullAttentionLayer):
    _layer_type = "hybrid_attention"


class FlashMorphStaticHybridCacheLayer(LinearAttentionAndStaticFullAttentionLayer):
    _layer_type = "hybrid_attention"


# ----------------------------------------------------------------------------------------------------------------------
# Models.


class FlashMorphPreTrainedModel(PreTrainedModel):
    config_class = FlashMorphConfig
    config: FlashMorphConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FlashMorphDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _is_stateful = True  # the recurrent state cannot be rolled back (no assisted generation)

    @torch.no_grad()
    def _init_weights(self, module):
        """ENGINE.md §1 initialisation of the branch-only parameters (loaded checkpoints overwrite all of it)."""
        super()._init_weights(module)
        if not isinstance(module, FlashMorphLinearAttention):
            return
        if module.kind == "gla":
            init.normal_(module.gk_proj[0].weight, mean=0.0, std=0.02)
            init.normal_(module.gk_proj[1].weight, mean=0.0, std=0.02)
            init.zeros_(module.gk_proj[1].bias)
        if module.kind == "gated_deltanet":
            H = module.num_heads
            init.normal_(module.a_proj.weight, mean=0.0, std=0.02)
            init.normal_(module.b_proj.weight, mean=0.0, std=0.02)
            init.copy_(module.A_log, torch.empty(H, device=module.A_log.device).uniform_(1, 16).log())
            dt = torch.empty(H, device=module.dt_bias.device).uniform_(math.log(1e-3), math.log(1e-1)).exp()
            init.copy_(module.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        if module.gated:
            init.zeros_(module.g_proj.weight)
            init.constant_(module.g_proj.bias, 1.2785)
            init.ones_(module.o_norm.weight)


class FlashMorphModel(FlashMorphPreTrainedModel):
    """Embedding, decoder layers and final norm."""

    def __init__(self, config: FlashMorphConfig):
        super().__init__(config)
        parts = teacher_parts(config.base_model_type)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [FlashMorphDecoderLayer(config, l, parts) for l in range(config.num_hidden_layers)]
        )
        self.norm = parts.rms_norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = parts.rotary_embedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def set_linear_attention_mode(self, mode: str):
        """"auto" (chunked prefill, recurrent single-token steps), "chunk" or "recurrent" for every branch."""
        if mode not in ("auto", "chunk", "recurrent"):
            raise ValueError(f"unknown linear-attention mode {mode!r}")
        for layer in self.layers:
            if layer.linear_attn is not None:
                layer.linear_attn.mode = mode

    def _attention_masks(self, attention_mask, inputs_embeds, past_key_values, position_ids):
        """{"full": mask, "sliding": mask} for the softmax-attention layers (None entries where unused)."""
        if isinstance(attention_mask, dict):  # prepared by the caller
            return {"full": attention_mask.get("full_attention"), "sliding": attention_mask.get("sliding_attention")}
        softmax_layers = [layer for layer in self.layers if layer.self_attn is not None]
        if not softmax_layers:
            return {"full": None, "sliding": None}
        kwargs = dict(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        masks = {"full": None, "sliding": None}
        if any(layer.sliding_window is None for layer in softmax_layers):
            masks["full"] = create_causal_mask(**kwargs)
        if any(layer.sliding_window is not None for layer in softmax_layers):
            masks["sliding"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values: Cache | None = None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if not use_cache:
            past_key_values = None

        T = inputs_embeds.shape[1]
        if position_ids is None:
            has_kv = any(t != "linear_attention" for t in self.config.layer_types)
            past_seen = past_key_values.get_seq_length() if (past_key_values is not None and has_kv) else 0
            position_ids = torch.arange(past_seen, past_seen + T, device=inputs_embeds.device).unsqueeze(0)
        padding_mask = None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            padding_mask = attention_mask
        masks = self._attention_masks(attention_mask, inputs_embeds, past_key_values, position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(
                hidden_states,
                attention_mask=masks["sliding" if layer.sliding_window is not None else "full"],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                padding_mask=padding_mask,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
        )


class FlashMorphForCausalLM(FlashMorphPreTrainedModel, GenerationMixin):
    """FlashMorph decoder with the language-model head (tied to the embedding when configured)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: FlashMorphConfig):
        super().__init__(config)
        self.model = FlashMorphModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def set_linear_attention_mode(self, mode: str):
        self.model.set_linear_attention_mode(mode)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values: Cache | None = None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = ["FlashMorphForCausalLM", "FlashMorphModel", "FlashMorphPreTrainedModel"]

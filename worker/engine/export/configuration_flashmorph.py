# Copyright FlashMorph authors.
"""Configuration of an exported FlashMorph hybrid checkpoint (docs/ENGINE.md §5).

The teacher's config.json fields are kept (Llama / Mistral / Qwen2 / Qwen3 families) and three fields describe the
hybrid layout: `layer_types`, `full_attention_heads` and `linear_attention`. RoPE settings may come in the
transformers-5 form (`rope_parameters`) or the older one (`rope_theta` / `rope_scaling`); the base class normalises
both into `rope_parameters`.
"""

from transformers import PretrainedConfig

BASE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LAYER_TYPES = ("full_attention", "linear_attention", "hybrid_attention")
LINEAR_KINDS = ("lightning", "gla", "gated_deltanet")


class FlashMorphConfig(PretrainedConfig):
    """A teacher config plus the hybrid layout; see docs/ENGINE.md §5 for the meaning of each added field."""

    model_type = "flashmorph"
    keys_to_ignore_at_inference = ["past_key_values"]

    # The hybrid layout.
    base_model_type: str = "llama"
    layer_types: list | None = None
    full_attention_heads: list | None = None
    linear_attention: dict | None = None

    # The teacher's fields (union of the supported families).
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    max_window_layers: int = 28

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        defaults = {
            "kind": "gla",
            "num_heads": self.num_attention_heads,
            "head_dim": self.head_dim,
            "chunk_size": 64,
            "gla_low_rank_dim": 16,
            "gla_gate_normalizer": 16,
            "norm_eps": self.rms_norm_eps,
        }
        self.linear_attention = {**defaults, **(self.linear_attention or {})}
        super().__post_init__(**kwargs)
        self._check_layout()

    def _check_layout(self):
        """Raises ValueError when the hybrid layout contradicts the model's shape."""
        L, H = self.num_hidden_layers, self.num_attention_heads
        if self.base_model_type not in BASE_MODEL_TYPES:
            raise ValueError(f"config.json: base_model_type {self.base_model_type!r} is not one of {BASE_MODEL_TYPES}")
        if len(self.layer_types) != L:
            raise ValueError(f"config.json: layer_types has {len(self.layer_types)} entries, expected {L}")
        for l, t in enumerate(self.layer_types):
            if t not in LAYER_TYPES:
                raise ValueError(f"config.json: layer_types[{l}] = {t!r} is not one of {LAYER_TYPES}")
        la = self.linear_attention
        if la["kind"] not in LINEAR_KINDS:
            raise ValueError(f"config.json: linear_attention.kind {la['kind']!r} is not one of {LINEAR_KINDS}")
        if la["num_heads"] != H or la["head_dim"] != self.head_dim:
            raise ValueError("config.json: linear_attention.num_heads/head_dim must equal the teacher's heads/head_dim")
        if int(la["chunk_size"]) < 1:
            raise ValueError("config.json: linear_attention.chunk_size must be >= 1")
        if "hybrid_attention" in self.layer_types:
            heads = self.full_attention_heads
            if heads is None or len(heads) != L:
                raise ValueError(f"config.json: full_attention_heads must list one entry per layer ({L})")
            for l, t in enumerate(self.layer_types):
                if t == "hybrid_attention":
                    if heads[l] is None or any(not 0 <= int(h) < H for h in heads[l]):
                        raise ValueError(f"config.json: full_attention_heads[{l}] must list query heads in [0, {H})")

    def validate_layer_type(self):
        """Replaces transformers' check, which knows no `hybrid_attention`."""
        self._check_layout()

    def validate(self):
        """Runs this class's `validate_*` checks (the base class bound its own list before this class existed)."""
        for name in sorted(n for n in dir(type(self)) if n.startswith("validate_") and n != "validate"):
            getattr(self, name)()

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The teacher's sliding window for softmax attention in `layer_idx` (None: unbounded).

        Mistral applies `sliding_window` to every layer; Qwen2/Qwen3 only when `use_sliding_window`, to layers
        >= `max_window_layers`; Llama has none.
        """
        if self.sliding_window is None or self.base_model_type == "llama":
            return None
        if self.base_model_type in ("qwen2", "qwen3"):
            if not self.use_sliding_window or layer_idx < self.max_window_layers:
                return None
        return self.sliding_window


__all__ = ["FlashMorphConfig"]

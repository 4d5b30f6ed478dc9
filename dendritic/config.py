"""`DendriticConfig`: a `BertConfig` plus the settings of the attention policy, validated on construction.

Named presets live in ``PRESETS`` and load through :meth:`DendriticConfig.from_preset`:

* ``smoke`` — a tiny random BERT (2 layers, hidden 64) for tests; runs every phase in minutes on 2 cores.
* ``small`` — MiniLM-L6 shapes (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, FFN 1536); the offline default.
* ``paper`` — bert-base-uncased shapes (12 layers, hidden 768, 12 heads); for users with a GPU and the hub.
"""

from __future__ import annotations

from transformers import BertConfig

# Shapes of the checkpoints the presets stand for (from their config.json files).
_MINILM_L6 = dict(
    vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
    max_position_embeddings=512, type_vocab_size=2,
)
_BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, type_vocab_size=2,
)

PRESETS: dict[str, dict] = {
    "smoke": dict(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=512, type_vocab_size=2, block_size=4, scorer_rank=8,
    ),
    # GLUE inputs are short (SST-2 ~15 tokens, RTE ~70): 4-token blocks make >= 50 % block sparsity reachable
    # under the safety floor (DESIGN.md, "Granularity").  Speed experiments override block_size to 32-64.
    "small": dict(**_MINILM_L6, block_size=4, scorer_rank=16),
    "paper": dict(**_BERT_BASE, block_size=8, scorer_rank=16),
}

ATTENTION_BACKENDS = ("auto", "reference", "cpu", "cupy", "flex", "masked_sdpa")


class DendriticConfig(BertConfig):
    r"""Configuration of a DendriticBERT model: what the model *is*, read once when it is built.

    ``target_sparsity``/``head_budgets``, ``attention_backend``, ``policy`` and ``gumbel_temperature`` are the
    *initial* values of controls that live on the model afterwards (``model.set_head_budgets(...)``,
    ``set_attention_backend``, ``set_policy``, ``set_temperature``, or per call: ``model(..., attention_backend=...)``);
    the model never writes into its config.  The budgets are a buffer saved with the weights.

    Args (beyond :class:`transformers.BertConfig`'s):
        dendritic (`bool`, default True): False gives plain BERT attention (the dense baseline, same weights).
        block_size (`int`, default 4): tokens per query/key block.
        target_sparsity (`float` in [0, 1), default 0.5, or the mean of ``head_budgets`` when those are given):
            average fraction of valid blocks to skip.  Given together with ``head_budgets``, it must equal their
            mean (one would otherwise be ignored).
        scorer_rank (`int`, default 16): rank of the per-head low-rank block scorer.
        attention_backend (`str`, default "auto"): kernel used when masks are hard (inference): one of
            ``ATTENTION_BACKENDS``; "auto" picks per call between the device's block-sparse kernel and masked dense
            SDPA from a fitted cost model (``dendritic.kernels.dispatch``) — the same function either way; the path
            that ran is in the output (``attention_path``).  Where the safety floor alone keeps every block pair
            (one block, or two with ``dense_cls_row``) "auto" runs no policy and plain dense SDPA ("sdpa").
            "reference" is the dense masked specification.
        dense_cls_row (`bool`, default True): keep the [CLS] query row dense (part of the safety floor).
        gating (`bool`, default True): per-input threshold shift from the gating controller.
        gating_max_shift (`float`, default 2.0): bound on the gate's shift of the threshold (in log-mass units).
        gumbel (`bool`, default True): Gumbel (logistic) noise in the relaxed mask during training.
        gumbel_temperature (`float`, default 1.0): Gumbel-sigmoid temperature; the trainer anneals it soft -> hard.
        hard_masks_in_training (`bool`, default True): straight-through hard masks in the forward pass while
            training (soft gradients); False trains on the soft relaxation.
        head_budgets (`list[list[float]]` or None): per-layer, per-head target sparsities from the budget
            allocator; None means every head gets ``target_sparsity``.
        policy (`str`, default "learned"): "learned", or an ablation baseline: "random", "static" (local window +
            global [CLS]), "training_free" (pooled-QK top-k, no learned scorer).
        static_window (`int`, default 1): blocks on each side of the diagonal kept by the "static" policy.
        extended_positions_from (`int` or None): set by ``from_bert(..., max_position_embeddings=N)`` when the
            checkpoint's learned positions were extended to N by copying (Longformer's recipe): how many it had.
        classifier_pooling (`str`, default "cls"): what the sequence classifier reads — "cls": BERT's pooler
            (dense + tanh on the [CLS] token); "mean": the mean of the last layer over the valid tokens, the pooling
            all-MiniLM-L6-v2 was trained with as a sentence encoder (a long-document recipe candidate).
    """

    model_type = "dendritic_bert"

    def __init__(
        self,
        dendritic: bool = True,
        block_size: int = 4,
        target_sparsity: float | None = None,
        scorer_rank: int = 16,
        attention_backend: str = "auto",
        dense_cls_row: bool = True,
        gating: bool = True,
        gating_max_shift: float = 2.0,
        gumbel: bool = True,
        gumbel_temperature: float = 1.0,
        hard_masks_in_training: bool = True,
        head_budgets: list[list[float]] | None = None,
        policy: str = "learned",
        static_window: int = 1,
        extended_positions_from: int | None = None,
        classifier_pooling: str = "cls",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dendritic = bool(dendritic)
        self.block_size = block_size
        self.target_sparsity = _resolve_target(target_sparsity, head_budgets)
        self.scorer_rank = scorer_rank
        self.attention_backend = attention_backend
        self.dense_cls_row = bool(dense_cls_row)
        self.gating = bool(gating)
        self.gating_max_shift = gating_max_shift
        self.gumbel = bool(gumbel)
        self.gumbel_temperature = gumbel_temperature
        self.hard_masks_in_training = bool(hard_masks_in_training)
        self.head_budgets = head_budgets
        self.policy = policy
        self.static_window = static_window
        self.extended_positions_from = extended_positions_from
        self.classifier_pooling = classifier_pooling
        self.validate_dendritic()

    def validate_dendritic(self) -> None:
        """Raise ``ValueError`` naming the field and its allowed range for any invalid setting."""
        for name in ("block_size", "scorer_rank", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "vocab_size", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if not isinstance(self.target_sparsity, (int, float)) or not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be a float in [0, 1), got {self.target_sparsity!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {self.attention_backend!r}")
        if not (isinstance(self.gumbel_temperature, (int, float)) and self.gumbel_temperature > 0):
            raise ValueError(f"gumbel_temperature must be a positive float, got {self.gumbel_temperature!r}")
        if not (isinstance(self.gating_max_shift, (int, float)) and self.gating_max_shift >= 0):
            raise ValueError(f"gating_max_shift must be a float >= 0, got {self.gating_max_shift!r}")
        if self.classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {self.classifier_pooling!r}")
        if self.policy not in ("learned", "random", "static", "training_free"):
            raise ValueError(f"policy must be one of ['learned', 'random', 'static', 'training_free'], got {self.policy!r}")
        if not isinstance(self.static_window, int) or self.static_window < 0:
            raise ValueError(f"static_window must be an int >= 0, got {self.static_window!r}")
        if self.head_budgets is not None:
            shape = (self.num_hidden_layers, self.num_attention_heads)
            rows = self.head_budgets
            if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
                raise ValueError(f"head_budgets must have shape (num_hidden_layers, num_attention_heads) = {shape}")
            if any(not 0.0 <= float(x) < 1.0 for r in rows for x in r):
                raise ValueError("head_budgets entries are target sparsities and must lie in [0, 1)")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DendriticConfig":
        """A config from a named preset (``smoke``, ``small``, ``paper``) with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _resolve_target(target_sparsity, head_budgets) -> float:
    """The global target: given, or the mean of the head budgets; both given must agree."""
    if head_budgets is None:
        return 0.5 if target_sparsity is None else target_sparsity
    try:
        values = [float(x) for row in head_budgets for x in row]
    except (TypeError, ValueError):
        return target_sparsity if target_sparsity is not None else 0.5  # validate_dendritic names the bad field
    mean = sum(values) / max(len(values), 1)
    if target_sparsity is not None and isinstance(target_sparsity, (int, float)) and abs(target_sparsity - mean) > 1e-3:
        raise ValueError(f"target_sparsity ({target_sparsity}) must equal the mean of head_budgets ({mean:.4f}) when "
                         "both are given; pass one of them")
    return round(mean, 6) if target_sparsity is None else target_sparsity

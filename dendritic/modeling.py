"""DendriticBERT models: `BertModel`, `BertForMaskedLM` and `BertForSequenceClassification` with
`DendriticSelfAttention` in every layer, registered with the Auto classes.

Parameter names are BERT's (``bert.encoder.layer.N.attention.self.query.weight`` …), so BERT checkpoints load
unchanged and the policy's parameters (``…attention.self.scorer/gate/perforation…``) sit beside them.
The config describes the model and is read once, at construction.  What may change between calls lives on the
model and is set through methods: ``set_head_budgets`` / ``set_target_sparsity`` (the ``head_budgets`` buffer,
saved with the weights), ``set_temperature``, ``set_attention_backend`` and ``set_policy``; ``attention_backend=`` and
``policy=`` (and ``head_budgets=``) can also be given to a single ``forward`` call.

Every output carries the achieved sparsity of the forward pass it comes from:

* ``block_sparsity`` (num_layers, B): fraction of real block pairs skipped (the blocks the kernel never computes);
* ``pair_sparsity``  (num_layers, B): the same as a fraction of real query–key *token pairs*;
* ``keep_fraction``  (num_layers, B, H): relaxed keep fraction (differentiable; the sparsity loss uses it);
* ``keep_target``    (num_layers, B, H): the keep fraction each head's budget asks for;
* ``block_masks``    per-layer bool (B, H, nb, nb), only with ``output_block_masks=True``;
* ``policy_impl``    per layer, which implementation of the policy decided ("fused" C++ inference, "python", or
  "floor": ``"auto"`` found that the safety floor alone keeps every block pair — one block, or two with the dense
  [CLS] row, e.g. n = 128 with 64-token blocks — and ran no policy);
* ``attention_path`` per layer, the attention that ran: a kernel backend ("cpu", "cupy", "masked_sdpa", ...; what
  ``"auto"`` chose), "sdpa" (dense, after a "floor" policy) or "relaxed" (training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

from .attention import DendriticSelfAttention, PolicyCall
from .config import ATTENTION_BACKENDS, DendriticConfig
from .masks import token_level_sparsity
from .policies import POLICIES


@dataclass
class DendriticOutputMixin:
    block_sparsity: torch.Tensor | None = None
    pair_sparsity: torch.Tensor | None = None
    keep_fraction: torch.Tensor | None = None
    keep_target: torch.Tensor | None = None
    block_masks: tuple[torch.Tensor, ...] | None = None
    policy_impl: tuple[str, ...] | None = None  # per layer: "fused", "python" or "floor" (which decided)
    attention_path: tuple[str, ...] | None = None  # per layer: the attention that ran ("cpu", "masked_sdpa", "sdpa", ...)


@dataclass
class DendriticModelOutput(BaseModelOutputWithPoolingAndCrossAttentions, DendriticOutputMixin):
    pass


@dataclass
class DendriticMaskedLMOutput(MaskedLMOutput, DendriticOutputMixin):
    pass


@dataclass
class DendriticSequenceClassifierOutput(SequenceClassifierOutput, DendriticOutputMixin):
    pass


def _check_values(condition: torch.Tensor, error: type[Exception], message: str) -> None:
    """Raise ``error(message)`` unless the 0-d bool tensor ``condition`` holds — checked with ``torch._assert_async``,
    which never reads the value on the host: on the CPU it raises at once (turned into ``error`` here), on a GPU it
    is a device-side assert that fires without synchronising the stream.  The forward pass stays sync-free."""
    try:
        torch._assert_async(condition, message)
    except RuntimeError as err:
        raise error(message) from err


def _validate_inputs(config, input_ids, attention_mask, inputs_embeds, token_type_ids=None) -> None:
    """One clear error, naming the argument, for inputs BERT would otherwise fail on deep inside (value checks
    through :func:`_check_values`: no host synchronisation)."""
    x = input_ids if input_ids is not None else inputs_embeds
    if x is None:
        raise ValueError("pass input_ids (B, n) or inputs_embeds (B, n, hidden_size)")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel():
            _check_values(((input_ids >= 0) & (input_ids < config.vocab_size)).all(), ValueError,
                          f"input_ids must lie in [0, {config.vocab_size - 1}] (vocab_size)")
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {config.hidden_size}), got {tuple(inputs_embeds.shape)}")
        _check_values(torch.isfinite(inputs_embeds).all(), ValueError, "inputs_embeds contains NaN or Inf")
    B, n = x.shape[:2]
    if B == 0 or n == 0:
        raise ValueError(f"the batch must hold at least one sequence of at least one token, got shape {tuple(x.shape[:2])}")
    if n > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {n} exceeds max_position_embeddings={config.max_position_embeddings}; "
            "truncate the input (tokenizer(..., truncation=True)) or use a config with more positions"
        )
    if attention_mask is not None:
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, n):
            raise ValueError(f"attention_mask must have shape (batch, seq_len) = {(B, n)}, got {tuple(attention_mask.shape)}")
        if config.dendritic:
            _check_values(attention_mask[:, 0].bool().all(), ValueError,
                          "attention_mask must keep the first token ([CLS]) of every sequence (left padding is not supported)")
    if token_type_ids is not None:
        if tuple(token_type_ids.shape) != (B, n):
            raise ValueError(
                f"token_type_ids must have shape (batch, seq_len) = {(B, n)}, got {tuple(token_type_ids.shape)}"
            )
        _check_values(((token_type_ids >= 0) & (token_type_ids < config.type_vocab_size)).all(), ValueError,
                      f"token_type_ids must lie in [0, {config.type_vocab_size - 1}] (type_vocab_size)")


# Config fields that fix weight shapes: a checkpoint loads only into a config that agrees with it on all of them.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "scorer_rank")


def _shape_field_diff(checkpoint, kwargs: dict) -> str:
    """'hidden_size: checkpoint 64, requested 32; ...' for a local checkpoint, or '' when it cannot be told."""
    try:
        saved = PretrainedConfig.get_config_dict(checkpoint)[0]
    except Exception:  # noqa: BLE001 - only used to word an error message
        return ""
    requested = kwargs.get("config")
    diffs = []
    for name in _SHAPE_FIELDS:
        want = getattr(requested, name, None) if requested is not None else kwargs.get(name)
        if want is not None and name in saved and saved[name] != want:
            diffs.append(f"{name}: checkpoint {saved[name]}, requested {want}")
    return "; ".join(diffs)


class _ClearCheckpointErrors:
    """``from_pretrained`` with one clear error for the two ways a checkpoint that exists fails to load:
    a truncated or corrupt ``model.safetensors`` (safetensors' message names neither the file nor the cause) and
    weights whose shapes do not fit the requested config (transformers' message only points at a logged report)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(
                f"cannot read the weights of checkpoint {pretrained_model_name_or_path} ({err}): its model.safetensors "
                "is truncated or corrupt (an interrupted save or copy?); save or download it again"
            ) from err
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            diff = _shape_field_diff(pretrained_model_name_or_path, kwargs) or "weight shapes differ"
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not fit the requested {cls.__name__} config "
                f"({diff}); load it with its own config, or pass ignore_mismatched_sizes=True to re-initialise those "
                "weights"
            ) from err


class DendriticBertModel(_ClearCheckpointErrors, BertModel):
    """``BertModel`` with dendritic self-attention (see the module docstring for the extra outputs and controls)."""

    config_class = DendriticConfig

    def __init__(self, config: DendriticConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        for i, layer in enumerate(self.encoder.layer):
            layer.attention.self = DendriticSelfAttention(config, layer_idx=i)
        # Per-head target sparsities (L, H): the config's values seed it; a checkpoint's saved buffer replaces them.
        self.register_buffer("head_budgets", _initial_budgets(config), persistent=True)
        self._host_budgets: tuple[int, list[list[float]]] | None = None  # (buffer version, values) for "auto"
        self.attention_backend = config.attention_backend
        self.policy = config.policy
        self.temperature = float(config.gumbel_temperature)
        self.fused_policy = True  # the learned policy's one-call C++ inference path where it applies
        self.post_init()
        self.init_policy_from_attention()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # a checkpoint without the buffer (converted or older): the config's budgets
            self.head_budgets.copy_(_initial_budgets(self.config))

    def _create_attention_masks(self, attention_mask, encoder_attention_mask, *args, **kwargs):
        """Dendritic layers read the 2-D key padding mask as it is; transformers' 4-D mask builder would also look at
        its values on the host (to drop an all-ones mask), a synchronisation the forward pass does not need.
        Arguments pass through as given: the builder's signature changes between transformers releases (5.25 added
        ``position_ids``)."""
        encoder_hidden_states = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if self.config.dendritic and not self.config.is_decoder and encoder_hidden_states is None:
            return attention_mask, encoder_attention_mask
        return super()._create_attention_masks(attention_mask, encoder_attention_mask, *args, **kwargs)

    # -- per-call controls ---------------------------------------------------------------------------------------
    def dendritic_layers(self) -> list[DendriticSelfAttention]:
        return [layer.attention.self for layer in self.encoder.layer]

    def set_temperature(self, temperature: float) -> None:
        """Gumbel-sigmoid temperature of the relaxed masks (training; the trainer anneals it)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    @torch.no_grad()
    def set_head_budgets(self, budgets) -> None:
        """Install per-layer, per-head target sparsities ((L, H), each in [0, 1)); saved with the weights."""
        b = torch.as_tensor(budgets, dtype=torch.float32)
        if tuple(b.shape) != tuple(self.head_budgets.shape):
            raise ValueError(f"head budgets must have shape (num_hidden_layers, num_attention_heads) = "
                             f"{tuple(self.head_budgets.shape)}, got {tuple(b.shape)}")
        if not bool(((b >= 0) & (b < 1)).all()):
            raise ValueError("head budgets are target sparsities and must lie in [0, 1)")
        self.head_budgets.copy_(b)

    def set_target_sparsity(self, target_sparsity: float) -> None:
        """Every head gets the same target sparsity."""
        if not 0.0 <= float(target_sparsity) < 1.0:
            raise ValueError(f"target_sparsity must be a float in [0, 1), got {target_sparsity!r}")
        self.set_head_budgets(torch.full_like(self.head_budgets, float(target_sparsity)))

    def set_attention_backend(self, backend: str) -> None:
        """Kernel used for hard masks (inference): one of ``ATTENTION_BACKENDS``."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}")
        self.attention_backend = backend

    def set_policy(self, policy: str) -> None:
        """Mask policy by name: one of ``dendritic.policies.POLICIES``."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        self.policy = policy

    def prepare_backends(self, device_type: str = "cpu") -> None:
        """Load now what a forward pass on ``device_type`` may call — the attention backend (for "auto": the dense path
        and the device's block-sparse kernel) and the fused policy's extension — instead of on first use.  Needed
        before ``torch.compile(model, fullgraph=True)``: a first-use import cannot be traced."""
        from .kernels import get_backend
        from .kernels.dispatch import SPARSE_BACKEND, machine_kernel_path

        backend = self.attention_backend
        names = {"masked_sdpa", SPARSE_BACKEND.get(device_type, "masked_sdpa")} if backend == "auto" else {backend}
        for name in names:
            get_backend(name)
        if backend == "auto":
            machine_kernel_path(device_type)  # whether the stored fit applies here: found now, not inside a trace
        if self.fused_policy and device_type == "cpu":
            from .fused_policy import _extension

            _extension()
        self.host_budgets()

    def set_fused_policy(self, enabled: bool) -> None:
        """Use (default) or not the fused C++ inference path of the learned policy (:mod:`dendritic.fused_policy`):
        the same masks, fewer dispatches; off, the Python modules decide (the specification)."""
        self.fused_policy = bool(enabled)

    def policy_call(self, *, attention_backend: str | None = None, policy: str | None = None,
                    head_budgets: torch.Tensor | None = None) -> PolicyCall:
        """The controls of one forward pass: the model's current ones, or the given overrides (``head_budgets``:
        (L, H) target sparsities for this call only, e.g. a benchmark sweeping sparsity on one model)."""
        backend = self.attention_backend if attention_backend is None else attention_backend
        policy = self.policy if policy is None else policy
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        budgets, host = self.head_budgets, None
        if head_budgets is not None:
            if tuple(head_budgets.shape) != tuple(budgets.shape):
                raise ValueError(f"head_budgets must have shape {tuple(budgets.shape)}, got {tuple(head_budgets.shape)}")
            budgets = head_budgets.to(device=budgets.device, dtype=budgets.dtype)
            host = budgets.tolist() if backend == "auto" else None  # a per-call override is read once, here
        elif backend == "auto":
            host = self.host_budgets()
        return PolicyCall(budgets=budgets, temperature=self.temperature, backend=backend, policy=policy,
                          fused_policy=self.fused_policy, host_budgets=host)

    def host_budgets(self) -> list[list[float]]:
        """The head budgets as Python floats, read from the buffer once per change of the buffer (its version
        counter moves with every in-place write: setters, checkpoint loading) — not once per forward pass."""
        if torch.compiler.is_compiling():  # traced: the values read before compiling (prepare_backends) are used
            if self._host_budgets is None:
                raise RuntimeError("call model.prepare_backends() before torch.compile: 'auto' reads the budgets "
                                   "on the host once, outside the compiled graph")
            return self._host_budgets[1]
        version = self.head_budgets._version
        if self._host_budgets is None or self._host_budgets[0] != version:
            self._host_budgets = (version, self.head_budgets.tolist())
        return self._host_budgets[1]

    # -- policy helpers -----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_policy_from_attention(self) -> None:
        """Start each scorer at the rank-r approximation of its layer's pooled-QK score; zero the gates."""
        for attn in self.dendritic_layers():
            attn.scorer.init_from_attention(attn.query, attn.key)
            attn.gate.reset_output()
            attn.perforation.offset.zero_()

    def policy_parameters(self) -> list[torch.nn.Parameter]:
        """Scorer, gate and threshold parameters (they get their own learning rate and clipping)."""
        return [p for attn in self.dendritic_layers() for m in (attn.scorer, attn.gate, attn.perforation) for p in m.parameters()]

    def _policy_outputs(self, call: PolicyCall, attention_mask: torch.Tensor | None, n: int, record_masks: bool) -> dict:
        """Stack what each layer's policy decided in this forward pass into output fields."""
        trace = call.trace
        B = trace[0].hard.shape[0]
        key_padding = attention_mask.bool() if attention_mask is not None else torch.ones(B, n, dtype=torch.bool, device=trace[0].hard.device)
        return dict(
            block_sparsity=torch.stack([p.block_sparsity for p in trace]),  # (L, B)
            pair_sparsity=torch.stack([p.pair_sparsity if p.pair_sparsity is not None
                                       else token_level_sparsity(p.hard, key_padding, self.config.block_size).mean(-1)
                                       for p in trace]),
            keep_fraction=torch.stack([p.keep_fraction for p in trace]),  # (L, B, H)
            keep_target=torch.stack([p.target_keep for p in trace]),  # (L, B, H)
            block_masks=tuple(p.hard for p in trace) if record_masks else None,
            policy_impl=tuple(p.impl for p in trace),
            attention_path=tuple(call.paths),
        )

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_block_masks: bool = False, attention_backend: str | None = None, policy: str | None = None,
                head_budgets: torch.Tensor | None = None, **kwargs):
        _validate_inputs(self.config, input_ids, attention_mask, inputs_embeds, token_type_ids)
        call = self.policy_call(attention_backend=attention_backend, policy=policy,
                                head_budgets=head_budgets) if self.config.dendritic else None
        if call is not None:
            kwargs["policy_call"] = call
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        try:
            _check_values(torch.isfinite(out.last_hidden_state).all(), FloatingPointError, "non-finite hidden states")
        except FloatingPointError:  # only after the fact: name the weights that went non-finite
            bad = [name for name, p in self.named_parameters() if not torch.isfinite(p).all()]
            raise FloatingPointError(
                "non-finite hidden states" + (f"; non-finite weights in {bad[:5]}" if bad else " (weights are finite)")
            ) from None
        n = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if call is not None:
            policy_out = self._policy_outputs(call, attention_mask, n, output_block_masks)
        else:  # dense attention: nothing skipped
            B = out.last_hidden_state.shape[0]
            zeros = out.last_hidden_state.new_zeros(self.config.num_hidden_layers, B)
            policy_out = dict(block_sparsity=zeros, pair_sparsity=zeros)
        return DendriticModelOutput(**out, **policy_out)


def base_model(model) -> DendriticBertModel:
    """The DendriticBertModel inside a task model (or a DDP wrapper of one)."""
    model = getattr(model, "module", model)  # DDP
    return model if isinstance(model, DendriticBertModel) else model.bert


def _initial_budgets(config: DendriticConfig) -> torch.Tensor:
    """(L, H) float32 from ``config.head_budgets``, or ``config.target_sparsity`` for every head."""
    L, H = config.num_hidden_layers, config.num_attention_heads
    if config.head_budgets is not None:
        return torch.tensor(config.head_budgets, dtype=torch.float32)
    return torch.full((L, H), float(config.target_sparsity), dtype=torch.float32)


def _policy_fields(out: DendriticModelOutput) -> dict:
    return {f: getattr(out, f) for f in ("block_sparsity", "pair_sparsity", "keep_fraction", "keep_target", "block_masks",
                                         "policy_impl", "attention_path")}


class DendriticBertForMaskedLM(_ClearCheckpointErrors, BertForMaskedLM):
    config_class = DendriticConfig

    def __init__(self, config: DendriticConfig):
        super().__init__(config)
        self.bert = DendriticBertModel(config, add_pooling_layer=False)
        self.post_init()
        self.bert.init_policy_from_attention()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_block_masks: bool = False, attention_backend: str | None = None,
                policy: str | None = None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_block_masks=output_block_masks, attention_backend=attention_backend,
                            policy=policy, **kwargs)
        logits = self.cls(outputs.last_hidden_state)  # (B, n, vocab)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return DendriticMaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions, **_policy_fields(outputs))


class DendriticBertForSequenceClassification(_ClearCheckpointErrors, BertForSequenceClassification):
    config_class = DendriticConfig

    def __init__(self, config: DendriticConfig):
        super().__init__(config)
        self.bert = DendriticBertModel(config)
        self.post_init()
        self.bert.init_policy_from_attention()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_block_masks: bool = False, attention_backend: str | None = None,
                policy: str | None = None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_block_masks=output_block_masks, attention_backend=attention_backend,
                            policy=policy, **kwargs)
        if self.config.classifier_pooling == "mean":  # mean of the last layer over valid tokens (sentence-BERT)
            hidden = outputs.last_hidden_state  # (B, n, H)
            valid = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
                     else attention_mask.to(hidden.dtype)).unsqueeze(-1)  # (B, n, 1)
            pooled = (hidden * valid).sum(1) / valid.sum(1).clamp_min(1.0)  # (B, H)
        else:
            pooled = outputs.pooler_output  # (B, H): dense + tanh on [CLS]
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:  # regression (STS-B)
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels.long())
        return DendriticSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                                 attentions=outputs.attentions, **_policy_fields(outputs))


AutoConfig.register(DendriticConfig.model_type, DendriticConfig)
AutoModel.register(DendriticConfig, DendriticBertModel)
AutoModelForMaskedLM.register(DendriticConfig, DendriticBertForMaskedLM)
AutoModelForSequenceClassification.register(DendriticConfig, DendriticBertForSequenceClassification)

# BERT class -> the dendritic class it becomes; and the state-dict prefix of its encoder.
_MATCHING = {
    BertModel: DendriticBertModel,
    BertForMaskedLM: DendriticBertForMaskedLM,
    BertForSequenceClassification: DendriticBertForSequenceClassification,
}
_HEADS = {"base": DendriticBertModel, "mlm": DendriticBertForMaskedLM, "sequence_classification": DendriticBertForSequenceClassification}


def from_bert(bert: str | Path | PreTrainedModel, *, head: str | None = None, **config_overrides) -> PreTrainedModel:
    """Convert a BERT checkpoint into DendriticBERT, copying every BERT weight and initialising the policy fresh.

    Args:
        bert: a local folder, a hub id (e.g. ``"bert-base-uncased"``; needs the hub), or a ``Bert*`` model instance.
        head: ``"base"``, ``"mlm"`` or ``"sequence_classification"``; default: the class matching ``bert``
            (a base checkpoint given ``head="mlm"`` gets a fresh MLM head, tied to the word embeddings).
        **config_overrides: any :class:`DendriticConfig` field (``block_size``, ``target_sparsity``, ``num_labels`` …).
            ``max_position_embeddings=N`` beyond the checkpoint's own P learned positions extends them to N by
            copying — position i starts as position i mod P (Longformer's recipe, Beltagy et al. 2020) — and
            records ``extended_positions_from = P`` in the config; fewer than P is refused.  A checkpoint loaded
            with its own P positions is unchanged.
    """
    if isinstance(bert, (str, Path)):
        source_config = AutoConfig.from_pretrained(bert)
        arch = (source_config.architectures or ["BertModel"])[0]
        source_cls = {"BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification,
                      "BertForPreTraining": BertForMaskedLM}.get(arch, BertModel)
        bert = source_cls.from_pretrained(bert, attn_implementation="eager")
    if not isinstance(bert, tuple(_MATCHING)):
        raise TypeError(f"bert must be a path, a hub id or one of {[c.__name__ for c in _MATCHING]}; got {type(bert).__name__}")
    if head is not None and head not in _HEADS:
        raise ValueError(f"head must be one of {list(_HEADS)}, got {head!r}")
    target_cls = _HEADS[head] if head else _MATCHING[type(bert)]
    fields = bert.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map"):
        fields.pop(key, None)
    own_positions = bert.config.max_position_embeddings
    positions = config_overrides.get("max_position_embeddings", own_positions)
    if positions < own_positions:
        raise ValueError(f"max_position_embeddings={positions} is fewer than the checkpoint's {own_positions} learned "
                         "positions; truncating them is not supported (inputs are truncated by the tokenizer instead)")
    if positions > own_positions:
        config_overrides = {**config_overrides, "extended_positions_from": own_positions}
    config = DendriticConfig(**{**fields, **config_overrides})
    model = target_cls(config)

    source = bert.state_dict()
    if isinstance(bert, BertModel) and target_cls is not DendriticBertModel:
        source = {f"bert.{k}": v for k, v in source.items()}
    elif not isinstance(bert, BertModel) and target_cls is DendriticBertModel:
        source = {k[len("bert."):]: v for k, v in source.items() if k.startswith("bert.")}
    target = model.state_dict()
    if positions > own_positions:  # copy-initialise the new positions: position i starts as i mod P
        key = next(k for k in source if k.endswith("embeddings.position_embeddings.weight"))
        learned = source[key]  # (P, d)
        source = {**source, key: learned.repeat(-(-positions // own_positions), 1)[:positions].clone()}  # (N, d)
    # An MLM model has no pooler (as in BERT): the pooler of a base checkpoint is the one weight left behind.
    source = {k: v for k, v in source.items() if k in target or "pooler." not in k}
    unused = sorted(k for k in source if k not in target)
    if unused:
        raise ValueError(f"weights of {type(bert).__name__} with no place in {target_cls.__name__}: {unused[:5]}")
    mismatched = [k for k in source if source[k].shape != target[k].shape]
    if mismatched:
        raise ValueError(f"shape mismatch for {mismatched[:5]} (config overrides changed the architecture?)")
    model.load_state_dict(source, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    base = model if isinstance(model, DendriticBertModel) else model.bert
    base.init_policy_from_attention()
    return model

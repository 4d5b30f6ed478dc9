"""`DendriticSelfAttention`: BERT self-attention that decides, per input, which query–key blocks to compute.

It subclasses ``BertSelfAttention`` and keeps its parameter names (``query``, ``key``, ``value``) so any BERT
checkpoint loads unchanged; the policy adds ``scorer``, ``gate`` and ``perforation``.  Data flow::

    X ─ query/key/value ─────────────────────────────────────────────┐
      ├─ policy (by name, dendritic.policies): scorer → ℓ (B, H, nb, nb), gate → shift (B, H),
      │    perforation: θ = anchor(budget) + shift; mask = [ℓ > θ] ∪ floor
      └─ training: dense logits, probabilities × relaxed mask (gradients reach the policy)
         inference: hard mask → BlockMask → block_sparse_attention(backend) (skipped blocks never computed)

What one forward pass asks of the layer — the head budgets, the temperature, the backend and the policy — comes in
a :class:`PolicyCall` made by the model for that call (the config is read only at construction), and the layer
appends what it decided to ``PolicyCall.trace``.  With ``config.dendritic = False`` it is exactly
``BertSelfAttention`` (the dense baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.models.bert.modeling_bert import BertSelfAttention

from .fused_policy import fused_learned_policy, fused_policy_available
from .gating import GatingController
from .kernels import block_sparse_attention
from .kernels.dispatch import choose_backend, expected_keep
from .kernels.layout import dense_to_block_mask, num_blocks
from .kernels.masked_sdpa import masked_sdpa_attention
from .masks import block_token_counts, safety_floor
from .perforation import PerforationOutput, PerforationUnit
from .policies import PolicyContext, get_policy
from .scoring import ImportanceScorer


@dataclass
class PolicyCall:
    """Per-forward controls shared by every layer, and the trace the layers write back (one entry per layer)."""

    budgets: torch.Tensor  # (L, H) target sparsity per layer and head
    temperature: float
    backend: str  # a kernel backend, or "auto" (dendritic.kernels.dispatch chooses per layer and call)
    policy: str
    fused_policy: bool = True  # the learned policy's one-call C++ inference path where it applies (CPU fp32)
    host_budgets: list[list[float]] | None = None  # the budgets as host floats ("auto" decides without a sync)
    trace: list[PerforationOutput] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # per layer: the attention path that ran
    key_padding: tuple | None = None  # (BertModel's mask, the bool (B, n) key padding made from it by the first layer)


def key_padding_from_attention_mask(attention_mask: torch.Tensor | None, batch: int, n: int, device) -> torch.Tensor:
    """Bool (B, n), True = real token, from the mask BertModel hands its layers (None, 2-D, or the 4-D boolean /
    additive masks built for the sdpa / eager implementations — bidirectional, so every query row is the same)."""
    if attention_mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"DendriticSelfAttention needs a tensor attention mask, got {type(attention_mask).__name__}; "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    m = attention_mask
    if m.dim() == 4:  # built by BertModel: bool (True = attend) or additive float (0 = attend, very negative = not)
        m = m[:, 0, -1, :]  # (B, n): the last query row (any row: the mask is bidirectional)
        return (m if m.dtype == torch.bool else m == 0).expand(batch, n)
    return (m != 0).expand(batch, n)  # a 2-D user mask: 1 = real token, 0 = padding (any dtype)


def _floor_covers_all(nb: int, dense_cls_row: bool) -> bool:
    """The safety floor alone keeps every block pair (one block; or two with the dense [CLS] row): no policy can
    skip anything, e.g. n = 128 with 64-token blocks."""
    return nb == 1 or (nb == 2 and dense_cls_row)


def _floor_only(key_padding: torch.Tensor, block_size: int, num_heads: int) -> PerforationOutput:
    """The policy's output when the floor covers every pair: all real block pairs kept, nothing skipped, built
    without running a policy (``impl = "floor"``; :meth:`DendriticSelfAttention.forward` then runs dense SDPA)."""
    real = block_token_counts(key_padding, block_size) > 0  # (B, nb)
    B, nb = real.shape
    hard = (real[:, :, None] & real[:, None, :])[:, None].expand(B, num_heads, nb, nb)
    ones = key_padding.new_ones((B, num_heads), dtype=torch.float32)
    zeros = ones.new_zeros(B)
    return PerforationOutput(None, hard, ones, ones, zeros, impl="floor", pair_sparsity=zeros)


class DendriticSelfAttention(BertSelfAttention):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, is_causal=False, layer_idx=layer_idx)
        H, dh = self.num_attention_heads, self.attention_head_size
        # Read once, here (like every config field the layer uses): a transformers config attribute read goes
        # through its __getattribute__ override, and the policy runs per layer and forward pass.
        self.block_size, self.gating, self.dense_cls_row = config.block_size, config.gating, config.dense_cls_row
        self.scorer = ImportanceScorer(config.hidden_size, H, config.scorer_rank, dh)
        self.gate = GatingController(config.hidden_size, H, config.gating_max_shift)
        self.perforation = PerforationUnit(H)

    # -- the policy: which blocks to keep ------------------------------------------------------------------------
    def block_policy(self, hidden_states: torch.Tensor, q: torch.Tensor, k: torch.Tensor, key_padding: torch.Tensor,
                     call: PolicyCall) -> PerforationOutput:
        """Decide the block mask for this input with ``call.policy``.  hidden_states (B, n, d); q, k (B, H, n, dh)."""
        nb = num_blocks(q.shape[2], self.block_size)
        if call.backend == "auto" and not self.training and _floor_covers_all(nb, self.dense_cls_row):
            return _floor_only(key_padding, self.block_size, q.shape[1])  # nothing to decide: no policy, dense SDPA
        # Inference with the learned policy: one C++ call (it derives counts, floor and real pairs itself).
        if call.fused_policy and call.policy == "learned" and not self.training and fused_policy_available(hidden_states):
            return fused_learned_policy(self, hidden_states, key_padding, call.budgets[self.layer_idx], call.temperature)
        counts = block_token_counts(key_padding, self.block_size)  # (B, nb)
        block_real = counts > 0
        ctx = PolicyContext(
            hidden_states=hidden_states, q=q, k=k, key_padding=key_padding, counts=counts,
            pair_real=(block_real[:, :, None] & block_real[:, None, :])[:, None],  # (B, 1, nb, nb)
            floor=safety_floor(nb, dense_cls_row=self.dense_cls_row, device=q.device),
            budgets=call.budgets[self.layer_idx], temperature=call.temperature, training=self.training,
        )
        return get_policy(call.policy)(self, ctx)

    # -- attention with the mask -------------------------------------------------------------------------------
    def _relaxed_attention(self, q, k, v, mask: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """Dense attention whose probabilities are multiplied by the (relaxed) block mask and renormalised:
        P ∝ exp(S)·m.  With a straight-through mask the forward values equal hard masking exactly, and the
        gradient reaches the policy through m.  q, k, v (B, H, n, dh); mask (B, H, nb, nb).

        The scores are viewed as (B, H, nb, b, nb, b) blocks and the block mask broadcast over them, so no n × n
        copy of the mask is made (at n = 2048, 64-token blocks: ~30 % less time than expanding it, same values)."""
        B, H, n, _ = q.shape
        b, nb = self.block_size, mask.shape[-1]
        pad = nb * b - n  # the last block's missing tokens: padded, and masked as padding
        logits = (q @ k.transpose(-1, -2)) * self.scaling  # (B, H, n, n)
        kp = key_padding.to(logits.dtype)
        if pad:
            logits, kp = F.pad(logits, (0, pad, 0, pad)), F.pad(kp, (0, pad))
        logits = logits.view(B, H, nb, b, nb, b)
        m = mask[:, :, :, None, :, None] * kp.view(B, 1, 1, 1, nb, b)  # broadcasts over the block's tokens
        row_max = logits.detach().masked_fill(m.detach() <= 0, float("-inf")).amax(dim=(-2, -1), keepdim=True)
        row_max = torch.nan_to_num(row_max, neginf=0.0)
        w = (torch.exp((logits - row_max).clamp(max=0.0)) * m).view(B, H, nb * b, nb * b)[:, :, :n, :n]
        probs = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-30)  # kept entries have logits <= row_max
        probs = self.dropout(probs)
        return probs @ v  # (B, H, n, dh)

    def forward(self, hidden_states, attention_mask=None, cache=None, policy_call: PolicyCall | None = None, **kwargs):
        if not self.config.dendritic:
            return super().forward(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        if policy_call is None:
            raise ValueError("a dendritic attention layer needs the model's PolicyCall (call it through "
                             "DendriticBertModel, or pass policy_call=model.policy_call())")
        B, n, _ = hidden_states.shape
        shape = (B, n, -1, self.attention_head_size)
        q = self.query(hidden_states).view(shape).transpose(1, 2)  # (B, H, n, dh)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        # (B, n) bool; every layer of a forward pass gets the same mask object from BertModel: made once per call
        cached = policy_call.key_padding
        if cached is not None and cached[0] is attention_mask and cached[1].shape == (B, n):
            key_padding = cached[1]
        else:
            key_padding = key_padding_from_attention_mask(attention_mask, B, n, hidden_states.device)
            policy_call.key_padding = (attention_mask, key_padding)

        policy = self.block_policy(hidden_states, q, k, key_padding, policy_call)
        policy_call.trace.append(policy)
        if policy.impl == "floor":  # every block is kept: the dense kernel, padded keys masked
            policy_call.paths.append("sdpa")
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding[:, None, None, :], scale=self.scaling)
        elif self.training:
            policy_call.paths.append("relaxed")
            out = self._relaxed_attention(q, k, v, policy.mask, key_padding)
        else:
            backend = policy_call.backend
            if backend == "auto":  # decided from shapes and host-side budgets: no device synchronisation
                keep = expected_keep(policy_call.host_budgets[self.layer_idx], n, self.block_size, self.dense_cls_row)
                backend = choose_backend(q.device.type, B, q.shape[1], n, q.shape[-1], self.block_size, keep,
                                         needs_grad=torch.is_grad_enabled() and q.requires_grad)
            policy_call.paths.append(backend)
            if backend == "masked_sdpa" and policy.hard is not None:  # the dense mask is at hand: no compact layout
                out = masked_sdpa_attention(q, k, v, None, None, block_size=self.block_size,
                                            key_padding_mask=key_padding, scale=self.scaling, block_mask=policy.hard)
                return out.transpose(1, 2).reshape(B, n, -1), None
            kv_num_blocks, kv_indices = policy.kv_num_blocks, policy.kv_indices
            if kv_num_blocks is None:
                kv_num_blocks, kv_indices = dense_to_block_mask(policy.hard)  # (B, H, nb), (B, H, nb, nb)
            out = block_sparse_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), kv_num_blocks, kv_indices,
                block_size=self.block_size, key_padding_mask=key_padding,
                backend=backend, scale=self.scaling, check_values=False,  # the policy's masks: valid by construction
            )
        return out.transpose(1, 2).reshape(B, n, -1), None

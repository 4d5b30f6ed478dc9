"""`DendriticSelfAttention`: BERT self-attention that decides, per input, which query–key blocks to compute.

It subclasses ``BertSelfAttention`` and keeps its parameter names (``query``, ``key``, ``value``) so any BERT
checkpoint loads unchanged; the policy adds ``scorer``, ``gate`` and ``perforation``.  Data flow::

    X ─ query/key/value ─────────────────────────────────────────────┐
      ├─ scorer (low-rank, block-pooled) → ℓ (B, H, nb, nb)           │
      ├─ gate (complexity features) → threshold shift (B, H)          │
      ├─ perforation: θ = anchor(budget) + shift; mask = [ℓ > θ] ∪ floor
      └─ training: dense logits, probabilities × relaxed mask (gradients reach the policy)
         inference: hard mask → BlockMask → block_sparse_attention(backend) (skipped blocks never computed)

With ``config.dendritic = False`` it is exactly ``BertSelfAttention`` (the dense baseline).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertSelfAttention

from .gating import GatingController
from .kernels import block_sparse_attention
from .masks import block_token_counts, dense_to_block_mask, num_blocks, safety_floor
from .perforation import PerforationOutput, PerforationUnit
from .scoring import ImportanceScorer, block_log_mass, pool_blocks


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
    if m.dim() == 4:
        m = m[:, 0, -1, :]  # (B, n): the last query row (any row: the mask is bidirectional)
    if m.dtype == torch.bool:
        return m.expand(batch, n)
    if m.is_floating_point() and (m <= 0).all():  # additive mask: 0 = attend, large negative = masked
        return (m == 0).expand(batch, n)
    return (m != 0).expand(batch, n)  # 0/1 integer or float mask


class DendriticSelfAttention(BertSelfAttention):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, is_causal=False, layer_idx=layer_idx)
        H, dh = self.num_attention_heads, self.attention_head_size
        self.block_size = config.block_size
        self.scorer = ImportanceScorer(config.hidden_size, H, config.scorer_rank, dh)
        self.gate = GatingController(config.hidden_size, H, config.gating_max_shift)
        self.perforation = PerforationUnit(H)
        self._target_cache: tuple | None = None
        self.temperature = float(config.gumbel_temperature)
        self.record_masks = False
        self.last_policy: PerforationOutput | None = None  # read by DendriticBertModel after each forward

    def target_sparsity(self, device) -> torch.Tensor:
        """This layer's per-head target sparsities (H,), read from the config — the single source of truth."""
        cfg = self.config
        row = cfg.head_budgets[self.layer_idx] if cfg.head_budgets else [cfg.target_sparsity] * self.num_attention_heads
        key = (tuple(float(x) for x in row), str(device))
        if self._target_cache is None or self._target_cache[0] != key:
            self._target_cache = (key, torch.tensor(key[0], dtype=torch.float32, device=device))
        return self._target_cache[1]

    # -- the policy: which blocks to keep ------------------------------------------------------------------------
    def block_policy(
        self, hidden_states: torch.Tensor, q: torch.Tensor, k: torch.Tensor, key_padding: torch.Tensor
    ) -> PerforationOutput:
        """Decide the block mask for this input.  hidden_states (B, n, d); q, k (B, H, n, dh)."""
        cfg, b = self.config, self.block_size
        B, H, n, _ = q.shape
        nb = num_blocks(n, b)
        counts = block_token_counts(key_padding, b)  # (B, nb)
        block_real = counts > 0
        pair_real = (block_real[:, :, None] & block_real[:, None, :])[:, None]  # (B, 1, nb, nb)
        floor = safety_floor(nb, dense_cls_row=cfg.dense_cls_row, device=q.device)
        if cfg.policy == "static":  # a local window of blocks + the floor, the same for every input
            i = torch.arange(nb, device=q.device)
            window = (i[:, None] - i[None, :]).abs() <= cfg.static_window  # (nb, nb)
            return PerforationUnit.from_hard_mask(window.expand(B, H, nb, nb), pair_real, floor, self.target_sparsity(q.device))
        shift = None
        if cfg.policy == "learned":
            log_mass = self.scorer(hidden_states, key_padding, b)  # (B, H, nb, nb)
            if cfg.gating:
                shift = self.gate(hidden_states, key_padding, log_mass)  # (B, H)
        elif cfg.policy == "training_free":  # pooled-QK scores from the layer's real queries and keys
            pq, _ = pool_blocks(q.transpose(1, 2).flatten(2), key_padding, b)  # (B, nb, H*dh)
            pk, _ = pool_blocks(k.transpose(1, 2).flatten(2), key_padding, b)
            pq = pq.view(B, nb, H, -1).transpose(1, 2)  # (B, H, nb, dh)
            pk = pk.view(B, nb, H, -1).transpose(1, 2)
            log_mass = block_log_mass(pq @ pk.transpose(-1, -2) * self.scaling, counts)
        else:  # "random": random scores under the same budget — random masks at the same sparsity
            log_mass = torch.rand(B, H, nb, nb, device=q.device).log()
        out = self.perforation(
            log_mass, pair_real, floor, self.target_sparsity(q.device), shift,
            temperature=self.temperature,
            relaxed=self.training and cfg.policy == "learned",
            gumbel=cfg.gumbel,
            straight_through=cfg.hard_masks_in_training,
        )
        return out

    # -- attention with the mask -------------------------------------------------------------------------------
    def _relaxed_attention(self, q, k, v, mask: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """Dense attention whose probabilities are multiplied by the (relaxed) block mask and renormalised:
        P ∝ exp(S)·m.  With a straight-through mask the forward values equal hard masking exactly, and the
        gradient reaches the policy through m.  q, k, v (B, H, n, dh); mask (B, H, nb, nb)."""
        n, b = q.shape[2], self.block_size
        m = mask.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)[..., :n, :n]  # (B, H, n, n)
        m = m * key_padding[:, None, None, :]
        logits = (q @ k.transpose(-1, -2)) * self.scaling  # (B, H, n, n)
        row_max = logits.masked_fill(m.detach() <= 0, float("-inf")).amax(dim=-1, keepdim=True)
        row_max = torch.nan_to_num(row_max.detach(), neginf=0.0)
        w = torch.exp((logits - row_max).clamp(max=0.0)) * m  # kept entries have logits <= row_max
        probs = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        probs = self.dropout(probs)
        return probs @ v  # (B, H, n, dh)

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        if not self.config.dendritic:
            self.last_policy = None
            return super().forward(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        B, n, _ = hidden_states.shape
        shape = (B, n, -1, self.attention_head_size)
        q = self.query(hidden_states).view(shape).transpose(1, 2)  # (B, H, n, dh)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        key_padding = key_padding_from_attention_mask(attention_mask, B, n, hidden_states.device)  # (B, n)

        policy = self.block_policy(hidden_states, q, k, key_padding)
        self.last_policy = policy
        if self.training:
            out = self._relaxed_attention(q, k, v, policy.mask, key_padding)
        else:
            kv_num_blocks, kv_indices = dense_to_block_mask(policy.hard)  # (B, H, nb), (B, H, nb, nb)
            out = block_sparse_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), kv_num_blocks, kv_indices,
                block_size=self.block_size, key_padding_mask=key_padding,
                backend=self.config.attention_backend, scale=self.scaling,
            )
        return out.transpose(1, 2).reshape(B, n, -1), None

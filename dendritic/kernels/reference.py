"""The reference backend: dense masked attention in fp32 (fp64 for fp64 inputs) — the specification every fast backend must match.

It expands the block mask to a token-level mask, adds it to the full ``n × n`` logits as ``-inf`` and
runs a plain softmax. It is slow (it materialises the whole matrix, skipping nothing) and exists to be
obviously right.
"""

from __future__ import annotations

import torch

from .layout import block_mask_to_dense


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Dense masked attention. Arguments as in :func:`dendritic.kernels.block_sparse_attention`."""
    B, H, n, d = q.shape
    nb = kv_indices.shape[-1]
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, nb)  # (B, H, nq, nk) bool
    tok = keep.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32  # fp32 at least; fp64 stays fp64
    logits = torch.einsum("bhqd,bhkd->bhqk", q.to(compute), k.to(compute)) * scale  # (B, H, n, n)
    logits = logits.masked_fill(~tok, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # A query row with no kept key (only possible for a fully padded row) outputs zeros, never NaN.
    probs = torch.nan_to_num(probs, nan=0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.to(compute)).to(q.dtype)

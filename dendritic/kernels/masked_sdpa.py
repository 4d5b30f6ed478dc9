"""The ``"masked_sdpa"`` backend: the same block-sparse function on PyTorch's dense SDPA path.

The block mask is expanded to a token-level boolean mask (B, H, n, n) — kept blocks, minus padded keys — and handed
to ``torch.nn.functional.scaled_dot_product_attention`` as ``attn_mask``.  It computes every block (nothing is
skipped), but on the fastest dense kernel the platform has, so it is what a mask that cannot pay for itself (short
inputs, fine blocks, little sparsity) should run on: outputs agree with the block-sparse kernels to float tolerance.
Query rows with no real kept key return zeros (the reference's convention; SDPA itself would give NaN there).
It builds the n × n mask, so it suits the lengths where it is chosen (``"auto"`` picks it only there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import block_mask_to_dense

__all__ = ["masked_sdpa_attention", "token_mask"]


def token_mask(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, *, n: int, block_size: int,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """bool (B, H, n, n): True where query i may attend key j (its block pair is kept and key j is real)."""
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])  # (B, H, nb, nb)
    B, H, nb, _ = keep.shape
    b = block_size
    tok = keep[:, :, :, None, :, None].expand(B, H, nb, b, nb, b).reshape(B, H, nb * b, nb * b)[..., :n, :n]
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    return tok


def _additive_mask(keep: torch.Tensor, n: int, block_size: int, key_padding_mask: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """(B, H, n, n) additive mask, 0 where attended and -inf elsewhere — what SDPA's fused CPU/GPU kernels take
    without a conversion (a boolean mask is converted on every call).  Built from the block mask by one expand."""
    B, H, nb, _ = keep.shape
    b = block_size
    block_bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, float("-inf"))
    bias = block_bias[:, :, :, None, :, None].expand(B, H, nb, b, nb, b).reshape(B, H, nb * b, nb * b)[..., :n, :n]
    if key_padding_mask is not None:
        bias = bias.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return bias


def masked_sdpa_attention(
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
    """Block-sparse attention as masked dense SDPA.  Arguments as in :func:`dendritic.kernels.block_sparse_attention`;
    (B, H, n, d) in q's dtype."""
    n, b = q.shape[-2], block_size
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])  # (B, H, nb, nb)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_additive_mask(keep, n, b, key_padding_mask, q.dtype),
                                         scale=scale)
    # Rows with no real kept key (their kept blocks hold only padding) come out of SDPA as NaN: zeros instead,
    # found at block level — a query block is live when one of its kept key blocks holds a real key.
    B, H, nb, _ = keep.shape
    if key_padding_mask is None:
        live = keep.any(-1)  # (B, H, nb)
    else:
        real = torch.nn.functional.pad(key_padding_mask, (0, nb * b - n)).view(B, nb, b).any(-1)  # (B, nb)
        live = (keep & real[:, None, None, :]).any(-1)
    rows = live[..., None].expand(B, H, nb, b).reshape(B, H, nb * b)[..., :n, None]  # (B, H, n, 1)
    return torch.where(rows, out, out.new_zeros(()))

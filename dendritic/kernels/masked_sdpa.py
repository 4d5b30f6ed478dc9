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


def masked_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor | None,
    kv_indices: torch.Tensor | None,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    block_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse attention as masked dense SDPA.  Arguments as in :func:`dendritic.kernels.block_sparse_attention`;
    ``block_mask``: the same mask as bool (B, H, nb, nb), when the caller has it (the model's policies do), instead
    of the compact layout — it saves rebuilding it.  Returns (B, H, n, d) in q's dtype.

    Few tensor operations on purpose (this path serves short inputs, where each one costs as much as the arithmetic):
    one token-level keep mask (block mask expanded, padded keys removed; with 1-token blocks it *is* the block mask),
    one additive bias from it — what SDPA's fused CPU/GPU kernels take without a conversion — and one ``where``."""
    n, b = q.shape[-2], block_size
    keep = block_mask if block_mask is not None else block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])
    B, H, nb, _ = keep.shape
    tok = keep if b == 1 else keep[:, :, :, None, :, None].expand(B, H, nb, b, nb, b).reshape(B, H, nb * b, nb * b)[..., :n, :n]
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    bias = torch.zeros(tok.shape, dtype=q.dtype, device=q.device).masked_fill_(~tok, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    # Rows with no real kept key come out of SDPA as NaN: zeros instead.  With 1-token blocks the row test is the
    # token mask itself; otherwise it is made at block level — a query block is live when one of its kept key
    # blocks holds a real key — and expanded (cheaper than scanning n × n at long n).
    if b == 1:
        rows = tok.any(-1, keepdim=True)  # (B, H, n, 1)
    else:
        if key_padding_mask is None:
            live = keep.any(-1)  # (B, H, nb)
        else:
            real = torch.nn.functional.pad(key_padding_mask, (0, nb * b - n)).view(B, nb, b).any(-1)  # (B, nb)
            live = (keep & real[:, None, None, :]).any(-1)
        rows = live[..., None].expand(B, H, nb, b).reshape(B, H, nb * b)[..., :n, None]  # (B, H, n, 1)
    return torch.where(rows, out, out.new_zeros(()))

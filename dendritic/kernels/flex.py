"""The ``"flex"`` backend: ``torch.nn.attention.flex_attention`` driven by the same BlockMask.

Our ``kv_num_blocks``/``kv_indices`` already use FlexAttention's layout, so the mask goes in through
``BlockMask.from_kv_blocks``.  Kept blocks are split in two, as FlexAttention intends: blocks whose keys are all
real tokens are passed as *full* blocks (no ``mask_mod`` call inside them) and the rest as *partial* blocks, where a
``mask_mod`` reading ``key_padding_mask`` hides padded keys; the partial last block is cut by ``seq_lengths``.

``flex_attention`` is compiled once with :func:`torch.compile` (one compiled callable, re-specialised by Dynamo per
shape).  On the CPU the compiled kernel is inference-only and needs AVX2; this backend refuses inputs that require
grad and raises whatever FlexAttention raises for an unsupported case (dtype, head dim, CPU) — it never falls
back to another backend.  A query row with no real kept key returns zeros (FlexAttention's convention).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..masks import block_mask_to_dense, dense_to_block_mask

__all__ = ["flex_attention_backend", "to_flex_block_mask"]

_compiled = None


def _compiled_flex():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def to_flex_block_mask(
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    n: int,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
) -> BlockMask:
    """Our block mask as a FlexAttention ``BlockMask``: fully real kept blocks as full blocks, the others (padding,
    the partial last block) as partial blocks masked by ``key_padding_mask``."""
    nb = kv_indices.shape[-1]
    partial_tail = n % block_size != 0
    if key_padding_mask is None and not partial_tail:
        # Every kept block is full: no mask_mod is ever evaluated.
        return BlockMask.from_kv_blocks(
            torch.zeros_like(kv_num_blocks),
            kv_indices,
            full_kv_num_blocks=kv_num_blocks,
            full_kv_indices=kv_indices,
            BLOCK_SIZE=block_size,
            mask_mod=None,
            seq_lengths=(n, n),
        )
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, nb)  # (B, H, nq, nk)
    B = kv_num_blocks.shape[0]
    real = (
        key_padding_mask
        if key_padding_mask is not None
        else torch.ones(B, n, dtype=torch.bool, device=kv_indices.device)
    )  # (B, n)
    padded = torch.nn.functional.pad(real, (0, nb * block_size - n), value=False)  # (B, nb*b)
    block_all_real = padded.view(B, nb, block_size).all(dim=-1)  # (B, nk); the partial last block is never "all real"
    full = keep & block_all_real[:, None, None, :]  # (B, H, nq, nk)
    part = keep & ~full
    full_num, full_idx = dense_to_block_mask(full)
    part_num, part_idx = dense_to_block_mask(part)

    def key_is_real(b, h, q_idx, kv_idx):
        return real[b, kv_idx]

    return BlockMask.from_kv_blocks(
        part_num,
        part_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=key_is_real,
        seq_lengths=(n, n),
    )


def flex_attention_backend(
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
    """Block-sparse attention through compiled FlexAttention. Arguments as in
    :func:`dendritic.kernels.block_sparse_attention`; (B, H, n, d) in q's dtype."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError("compiled FlexAttention on the CPU is inference-only; use backend='reference' to train")
    block_mask = to_flex_block_mask(
        kv_num_blocks, kv_indices, n=q.shape[-2], block_size=block_size, key_padding_mask=key_padding_mask
    )
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)

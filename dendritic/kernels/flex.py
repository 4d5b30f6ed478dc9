"""The ``"flex"`` backend: ``torch.nn.attention.flex_attention`` driven by the same BlockMask.

Our ``kv_num_blocks``/``kv_indices`` already use FlexAttention's layout, so the mask goes in unchanged through
``BlockMask.from_kv_blocks``; a ``mask_mod`` reading ``key_padding_mask`` hides padded keys and ``seq_lengths``
cuts the partial last block.

``flex_attention`` is compiled once with :func:`torch.compile` (one compiled callable, re-specialised by Dynamo per
shape).  On the CPU the compiled kernel is inference-only and needs AVX2; this backend refuses inputs that require
grad and raises whatever FlexAttention raises for an unsupported case (dtype, head dim, CPU) — it never falls
back to another backend.  A query row with no real kept key returns zeros (FlexAttention's convention).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

__all__ = ["flex_attention_backend", "to_flex_block_mask"]

_compiled = None
_RECOMPILE_LIMIT = 256  # shapes (n, d, block size, batch, padding or not) one process may compile


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
    """Our block mask as a FlexAttention ``BlockMask``; ``key_padding_mask`` becomes a ``mask_mod``.

    Every kept block is passed as a *partial* block: FlexAttention's "full block" fast path
    (``full_kv_num_blocks``) fails to compile on the CPU in torch 2.13 (the generated C++ references an undeclared
    ``kv_indices``), so mask_mod (a no-op without padding) runs in every kept block."""
    if key_padding_mask is None:
        # The partial last block is cut by seq_lengths; nothing else to mask.
        return BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, BLOCK_SIZE=block_size, seq_lengths=(n, n))
    real = key_padding_mask  # (B, n), True = real token

    def key_is_real(b, h, q_idx, kv_idx):
        return real[b, kv_idx]

    return BlockMask.from_kv_blocks(
        kv_num_blocks,
        kv_indices,
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
        raise NotImplementedError(
            "compiled FlexAttention on the CPU is inference-only; use backend='reference' to train"
        )
    if q.device.type == "cpu" and block_size == 8 and q.shape[-1] <= 16:
        # Measured (torch 2.13, CPU): compiled FlexAttention returns wrong outputs (errors ~1, NaN at n = 128) for
        # 8-token blocks with head dims 8 and 16, while blocks 4/16/32/64 and head dims 24/32 agree with the
        # reference to 1e-6.  Refuse rather than return wrong numbers.
        raise NotImplementedError(
            f"compiled FlexAttention on the CPU gives wrong results for block_size=8 with head_dim={q.shape[-1]} "
            "(<= 16) in this torch; use backend='cpu' or 'reference'"
        )
    block_mask = to_flex_block_mask(
        kv_num_blocks, kv_indices, n=q.shape[-2], block_size=block_size, key_padding_mask=key_padding_mask
    )
    # One compiled callable serves every shape; Dynamo re-specialises per shape.  Past its default recompile limit
    # (8) Dynamo would silently run flex_attention *eagerly* (an unfused dense path): raise the limit for this call
    # and make hitting it an error, never a quiet switch to another implementation.
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        # On CUDA the Triton kernel's own tile (BLOCK_M x BLOCK_N, 128 by default on Hopper) must divide the mask's
        # blocks: tile at the mask's block size (FlexAttention refuses Q_BLOCK_SIZE=64 with its default tile).
        options = {"BLOCK_M": block_size, "BLOCK_N": block_size} if q.device.type == "cuda" else None
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, kernel_options=options)

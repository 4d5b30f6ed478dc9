"""The block-mask layout every backend reads — FlexAttention's ``BlockMask`` ``kv_num_blocks``/``kv_indices``:

* ``kv_num_blocks`` int32 ``(B, H, nq)`` — how many key blocks query block ``i`` keeps;
* ``kv_indices``    int32 ``(B, H, nq, nk)`` — the kept key-block indices first, ascending; the tail
  holds the skipped blocks (also ascending) and is never read by a kernel.

Here ``nq == nk == ceil(n / block_size)``; the last block may be partial.  The kernels own this layout (the CUDA
sources in ``cuda/`` and the C++ in ``csrc/`` read it); the model's policy produces dense ``(B, H, nq, nk)`` bool
masks and compacts them with :func:`dense_to_block_mask`.
"""

from __future__ import annotations

import torch

__all__ = ["block_mask_to_dense", "dense_to_block_mask", "num_blocks", "random_block_mask"]


def num_blocks(n: int, block_size: int) -> int:
    """Blocks needed to cover ``n`` tokens (the last one may be partial)."""
    return -(-n // block_size)


def dense_to_block_mask(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact a dense block mask into the layout.

    keep: bool (B, H, nq, nk).  Returns ``kv_num_blocks`` int32 (B, H, nq), ``kv_indices`` int32 (B, H, nq, nk).
    """
    nk = keep.shape[-1]
    keep_i = keep.to(torch.int32)
    kv_num_blocks = keep_i.sum(dim=-1, dtype=torch.int32)  # (B, H, nq)
    # Slot of each block: kept blocks take slots 0..kept-1 in ascending order, skipped ones the rest — a
    # counting sort by cumulative sums (O(nk) per row, no comparison sort).
    kept_slot = keep_i.cumsum(dim=-1, dtype=torch.int32) - 1  # (B, H, nq, nk)
    skipped_slot = kv_num_blocks[..., None] + (1 - keep_i).cumsum(dim=-1, dtype=torch.int32) - 1
    slot = torch.where(keep, kept_slot, skipped_slot).long()
    block = torch.arange(nk, dtype=torch.int32, device=keep.device).expand_as(keep_i)
    kv_indices = torch.empty_like(keep_i).scatter_(-1, slot, block)  # (B, H, nq, nk)
    return kv_num_blocks, kv_indices


def block_mask_to_dense(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, nk: int) -> torch.Tensor:
    """Inverse of :func:`dense_to_block_mask`: bool (B, H, nq, nk)."""
    slot = torch.arange(kv_indices.shape[-1], device=kv_indices.device)  # (nk,)
    used = slot < kv_num_blocks[..., None].long()  # (B, H, nq, nk): which slots hold kept indices
    idx = torch.where(used, kv_indices.long(), nk)  # unused slots point one past the end ...
    padded = torch.zeros(*kv_indices.shape[:-1], nk + 1, dtype=torch.bool, device=kv_indices.device)
    padded.scatter_(-1, idx, True)  # ... so only kept indices set a bit
    return padded[..., :nk]


def random_block_mask(
    B: int, H: int, nb: int, keep_fraction: float, *, generator: torch.Generator | None = None, floor: bool = True
) -> torch.Tensor:
    """Random bool (B, H, nb, nb) mask keeping about ``keep_fraction`` of the blocks, plus (``floor=True``) the
    diagonal and key block 0 — the part of the model's safety floor every row has: rows keep uneven numbers of
    blocks, as learned masks do.  For tests and benchmarks."""
    keep = torch.rand(B, H, nb, nb, generator=generator) < keep_fraction
    if floor:
        keep |= torch.eye(nb, dtype=torch.bool)
        keep[..., 0] = True
    return keep

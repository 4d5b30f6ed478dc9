"""Block masks: the safety floor, block validity, and FlexAttention's compact layout.

Layout (the same as ``torch.nn.attention.flex_attention.BlockMask``'s ``kv_num_blocks``/``kv_indices``):

* ``kv_num_blocks`` int32 ``(B, H, nq)`` — how many key blocks query block ``i`` keeps;
* ``kv_indices``    int32 ``(B, H, nq, nk)`` — the kept key-block indices first, ascending; the tail
  holds the skipped blocks (also ascending) and is never read by a kernel.

Here ``nq == nk == ceil(n / block_size)``; the last block may be partial.
"""

from __future__ import annotations

import torch


def num_blocks(n: int, block_size: int) -> int:
    """Blocks needed to cover ``n`` tokens (the last one may be partial)."""
    return -(-n // block_size)


def block_validity(key_padding_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Which blocks hold at least one real token.

    key_padding_mask: bool (B, n), True = real token.  Returns bool (B, nb).
    """
    B, n = key_padding_mask.shape
    nb = num_blocks(n, block_size)
    padded = torch.nn.functional.pad(key_padding_mask, (0, nb * block_size - n), value=False)  # (B, nb*b)
    return padded.view(B, nb, block_size).any(dim=-1)  # (B, nb)


def block_token_counts(key_padding_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Real tokens per block, float (B, nb)."""
    B, n = key_padding_mask.shape
    nb = num_blocks(n, block_size)
    padded = torch.nn.functional.pad(key_padding_mask.float(), (0, nb * block_size - n))
    return padded.view(B, nb, block_size).sum(dim=-1)


def safety_floor(nb: int, *, dense_cls_row: bool, device: torch.device | None = None) -> torch.Tensor:
    """Blocks that are always kept, bool (nb, nb): the diagonal, the key block holding [CLS] (block 0), and
    optionally the whole [CLS] query row.  The diagonal guarantees every real query a real key (itself); the
    [CLS] column keeps the pooled token reachable from everywhere."""
    floor = torch.eye(nb, dtype=torch.bool, device=device)
    floor[:, 0] = True
    if dense_cls_row:
        floor[0, :] = True
    return floor


def dense_to_block_mask(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact a dense block mask into FlexAttention's layout.

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
    """Random bool (B, H, nb, nb) mask keeping about ``keep_fraction`` of the blocks (plus the floor): rows keep
    uneven numbers of blocks, as learned masks do.  For tests and benchmarks."""
    keep = torch.rand(B, H, nb, nb, generator=generator) < keep_fraction
    if floor:
        keep |= safety_floor(nb, dense_cls_row=False)
    return keep


def token_level_sparsity(keep: torch.Tensor, key_padding_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Fraction of valid query–key *pairs* skipped, per (B, H): the token-level view of a block mask."""
    counts = block_token_counts(key_padding_mask, block_size)  # (B, nb)
    pairs = counts[:, None, :, None] * counts[:, None, None, :]  # (B, 1, nq, nk)
    total = pairs.sum(dim=(-1, -2))  # (B, 1)
    kept = (keep.float() * pairs).sum(dim=(-1, -2))  # (B, H)
    return 1.0 - kept / total.clamp_min(1.0)

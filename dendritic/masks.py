"""Block masks on the model side: which blocks hold real tokens, the safety floor, and the token-level view of a
block mask.  The compact layout the kernels read (``kv_num_blocks``/``kv_indices``) and its converters live with
the kernels, in :mod:`dendritic.kernels.layout`.
"""

from __future__ import annotations

import torch

from .kernels.layout import num_blocks


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


def token_level_sparsity(keep: torch.Tensor, key_padding_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Fraction of valid query–key *pairs* skipped, per (B, H): the token-level view of a block mask."""
    counts = block_token_counts(key_padding_mask, block_size)  # (B, nb)
    pairs = counts[:, None, :, None] * counts[:, None, None, :]  # (B, 1, nq, nk)
    total = pairs.sum(dim=(-1, -2))  # (B, 1)
    kept = (keep.float() * pairs).sum(dim=(-1, -2))  # (B, H)
    return 1.0 - kept / total.clamp_min(1.0)

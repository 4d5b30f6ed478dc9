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


class InputDependence:
    """How much a policy's block decisions change with the input, beyond what the input's length decides.

    Inputs are grouped by their number of real blocks r; within a group every (layer, head, query block, key block)
    position outside the safety floor is one decision per input.  A per-head pattern that is the same for every
    input of a length (head pruning, a static window) has every decision equal to the group's most common one;
    ``input_dependence`` is the share of decisions that differ from it: Σ min(k, m − k) / Σ m over positions, with k
    of the group's m inputs keeping the block (groups of one input carry no information and are left out).
    ``per_layer`` gives the same share layer by layer.  Feed every evaluation batch to :meth:`add`.
    """

    def __init__(self, block_size: int, dense_cls_row: bool):
        self.block_size, self.dense_cls_row = block_size, dense_cls_row
        self.kept: dict[int, torch.Tensor] = {}  # r -> (L, H, r, r) kept counts
        self.inputs: dict[int, int] = {}  # r -> inputs seen

    def add(self, masks: tuple[torch.Tensor, ...], key_padding_mask: torch.Tensor) -> None:
        """masks: per layer bool (B, H, nb, nb); key_padding_mask: bool (B, n)."""
        stacked = torch.stack([m.to(torch.int64) for m in masks])  # (L, B, H, nb, nb)
        real = block_validity(key_padding_mask, self.block_size).sum(-1).tolist()  # (B,) real blocks per input
        for b, r in enumerate(real):
            m = stacked[:, b, :, :r, :r]
            self.kept[r] = self.kept[r] + m if r in self.kept else m.clone()
            self.inputs[r] = self.inputs.get(r, 0) + 1

    def result(self) -> dict:
        differ = decisions = 0
        L = next(iter(self.kept.values())).shape[0] if self.kept else 0
        layer_differ, layer_decisions = [0] * L, [0] * L
        for r, k in self.kept.items():
            m = self.inputs[r]
            if m < 2:
                continue
            free = ~safety_floor(r, dense_cls_row=self.dense_cls_row)  # (r, r): positions the policy decides
            minority = torch.minimum(k, m - k)[..., free]  # (L, H, positions)
            for layer in range(L):
                layer_differ[layer] += int(minority[layer].sum())
                layer_decisions[layer] += m * minority[layer].numel()
        differ, decisions = sum(layer_differ), sum(layer_decisions)
        return {"input_dependence": differ / decisions if decisions else None, "decisions": decisions,
                "per_layer": [d / n if n else None for d, n in zip(layer_differ, layer_decisions)],
                "length_groups": sum(1 for m in self.inputs.values() if m >= 2)}


def sparsity_spread_given_length(sparsity: list[float], real_blocks: list[int]) -> float | None:
    """Std of per-input sparsity around the mean of the inputs with the same number of real blocks: how much the
    achieved sparsity varies with the input once its length is fixed (0 for a length-only policy)."""
    groups: dict[int, list[float]] = {}
    for s, r in zip(sparsity, real_blocks):
        groups.setdefault(r, []).append(s)
    residuals = [s - sum(g) / len(g) for g in groups.values() if len(g) > 1 for s in g]
    if not residuals:
        return None
    return float((sum(x * x for x in residuals) / len(residuals)) ** 0.5)

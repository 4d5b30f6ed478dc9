"""`PerforationUnit`: a learned, input-dependent threshold on the block log-mass ℓ, relaxed for training.

Threshold per (input b, head h)::

    θ_bh = anchor_bh(budget_h) + shift_bh(X)

* ``anchor`` is the value of ℓ that keeps exactly the head's budget of the input's real, non-floor blocks (a
  per-input order statistic — it is what makes the mask meet the budget from the first step, so the policy
  cannot collapse to keep-all or prune-all);
* ``shift`` is the gating controller's learned, input-dependent move (zero for an untrained gate).

Keep logit ``z = ℓ − θ``.  Training: Gumbel-sigmoid relaxation ``m = σ((z + g) / T)`` with logistic noise
``g`` (the binary Gumbel trick) and temperature ``T`` annealed soft → hard by the trainer; with straight-through
the forward pass uses the hard mask ``m > ½`` and gradients flow through ``m``.  Inference: hard ``z > 0``.
The safety floor is always kept; pairs involving padding-only blocks are never counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PerforationOutput:
    mask: torch.Tensor | None  # (B, H, nb, nb) float: 0/1 (hard or straight-through) or in (0, 1) (soft); None
    #                            from the fused inference path, where only ``hard`` is used
    hard: torch.Tensor  # (B, H, nb, nb) bool: the blocks actually computed
    keep_fraction: torch.Tensor  # (B, H) relaxed fraction of real blocks kept (differentiable; sparsity loss)
    target_keep: torch.Tensor  # (H,) or (B, H) keep fraction the budget asks for, raised to the floor's share
    block_sparsity: torch.Tensor  # (B,) achieved fraction of real blocks skipped, over heads
    kv_num_blocks: torch.Tensor | None = None  # the compact layout of ``hard`` when the policy made it already
    kv_indices: torch.Tensor | None = None
    impl: str = "python"  # which implementation decided: "python" (the modules) or "fused" (dendritic.fused_policy)
    pair_sparsity: torch.Tensor | None = None  # (B,) masks.token_level_sparsity(hard).mean(-1) when the policy made
    #                                            it already (the fused path); the model computes it otherwise


_BIG = 1e4  # log-mass values are clamped to ±_BIG; thresholds beyond them keep nothing / everything


def _anchor_threshold(log_mass: torch.Tensor, candidate: torch.Tensor, n_keep: torch.Tensor) -> torch.Tensor:
    """Threshold keeping the ``n_keep`` (B, H) largest candidates of ``log_mass`` (B, H, nb, nb): midway between the
    n_keep-th and (n_keep+1)-th largest candidate values, so ``ℓ > θ`` selects exactly them (ties aside)."""
    B, H = log_mass.shape[:2]
    vals = log_mass.detach().clamp(-_BIG, _BIG).masked_fill(~candidate, -2 * _BIG).flatten(2)  # (B, H, nb*nb)
    ranked = torch.sort(vals, dim=-1, descending=True).values  # candidates first, then the -2·BIG filler
    # Sentinels: position 0 is "above everything", so ranked[n_keep] is the n_keep-th largest (1-based).
    ranked = torch.cat([vals.new_full((B, H, 1), 2 * _BIG), ranked, vals.new_full((B, H, 1), -2 * _BIG)], dim=-1)
    upper = ranked.gather(-1, n_keep[..., None])
    lower = ranked.gather(-1, n_keep[..., None] + 1)
    return ((upper + lower) / 2).squeeze(-1)  # (B, H)


class PerforationUnit(nn.Module):
    def __init__(self, num_heads: int):
        super().__init__()
        # A learned per-head offset of the threshold (input-independent part of the learned threshold).
        self.offset = nn.Parameter(torch.zeros(num_heads))

    def forward(
        self,
        log_mass: torch.Tensor,
        pair_real: torch.Tensor,
        floor: torch.Tensor,
        target_sparsity: torch.Tensor,
        shift: torch.Tensor | None,
        *,
        temperature: float,
        relaxed: bool,
        gumbel: bool,
        straight_through: bool,
        generator: torch.Generator | None = None,
    ) -> PerforationOutput:
        """
        log_mass: (B, H, nb, nb) fp32 block log-mass ℓ.
        pair_real: bool (B, 1, nb, nb) — both blocks hold a real token.
        floor: bool (nb, nb) — always kept.
        target_sparsity: (H,) budget per head.
        shift: (B, H) gate output, or None.
        relaxed: training mode (Gumbel-sigmoid); False gives the hard inference mask.
        """
        floor = floor[None, None] & pair_real  # (B, 1, nb, nb)
        candidate = pair_real & ~floor  # (B, 1, nb, nb)
        n_real = pair_real.sum(dim=(-1, -2)).float()  # (B, 1)
        n_floor = floor.sum(dim=(-1, -2)).float()
        n_cand = candidate.sum(dim=(-1, -2))  # (B, 1) long
        want = torch.round((1.0 - target_sparsity)[None, :] * n_real) - n_floor  # (B, H) candidates to keep
        n_keep = torch.minimum(want.clamp_min(0).long(), n_cand.expand_as(want))
        candidate = candidate.expand(-1, log_mass.shape[1], -1, -1)  # (B, H, nb, nb)
        theta = _anchor_threshold(log_mass, candidate, n_keep) + self.offset  # (B, H)
        if shift is not None:
            theta = theta + shift
        z = log_mass.clamp(-_BIG, _BIG) - theta[..., None, None]  # (B, H, nb, nb) keep logit

        if relaxed:
            if gumbel:
                u = torch.rand(z.shape, device=z.device, generator=generator).clamp(1e-6, 1 - 1e-6)
                z = z + (u.log() - (-u).log1p())  # logistic noise = difference of two Gumbels
            soft = torch.sigmoid(z / temperature)
            hard = (soft > 0.5) & candidate | floor
            mask = (hard.float() + soft - soft.detach()) if straight_through else soft
        else:
            soft = torch.sigmoid(z / temperature)
            hard = (z > 0) & candidate | floor
            mask = hard.float()
        mask = torch.where(floor, torch.ones_like(mask), mask)
        mask = mask * pair_real  # (B, H, nb, nb)
        hard = hard & pair_real

        soft_kept = torch.where(floor, torch.ones_like(soft), soft) * pair_real
        return _summarise(mask, hard, soft_kept, pair_real, floor, target_sparsity)

    @staticmethod
    def from_hard_mask(
        keep: torch.Tensor, pair_real: torch.Tensor, floor: torch.Tensor, target_sparsity: torch.Tensor
    ) -> PerforationOutput:
        """Wrap a fixed mask (B, H, nb, nb) bool — e.g. the static local-window baseline — with the floor added."""
        floor = floor[None, None] & pair_real
        hard = (keep | floor) & pair_real
        return _summarise(hard.float(), hard, hard.float(), pair_real, floor, target_sparsity)


def _summarise(mask, hard, kept, pair_real, floor, target_sparsity) -> PerforationOutput:
    """Keep fractions and achieved sparsity over the real block pairs."""
    n_real = pair_real.sum(dim=(-1, -2)).float().clamp_min(1.0)  # (B, 1)
    n_floor = floor.sum(dim=(-1, -2)).float()
    keep_fraction = kept.sum(dim=(-1, -2)) / n_real  # (B, H)
    target_keep = torch.maximum((1.0 - target_sparsity)[None, :], n_floor / n_real)  # (B, H)
    block_sparsity = 1.0 - hard.sum(dim=(1, 2, 3)).float() / (n_real.squeeze(-1) * hard.shape[1])  # (B,)
    return PerforationOutput(mask, hard, keep_fraction, target_keep, block_sparsity)

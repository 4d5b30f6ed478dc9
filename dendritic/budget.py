"""Budget allocation: per-layer, per-head target sparsities whose mean is the global target.

Heads differ in how much they suffer when pruned.  Given a sensitivity score per head (higher = hurts more
when pruned; the training package measures it on held-out MLM text), :func:`allocate_budgets` gives the less
sensitive heads more sparsity and the sensitive ones less, keeping the mean exactly at the global target.
The result goes into ``DendriticConfig.head_budgets`` and so travels with every checkpoint.
"""

from __future__ import annotations

import torch


def uniform_budgets(num_layers: int, num_heads: int, target_sparsity: float) -> list[list[float]]:
    """Every head gets the global target (the ``uniform_budget`` ablation)."""
    return [[float(target_sparsity)] * num_heads for _ in range(num_layers)]


def allocate_budgets(
    sensitivity: torch.Tensor, target_sparsity: float, *, spread: float = 0.5, max_sparsity: float = 0.95
) -> list[list[float]]:
    """Per-head target sparsities from per-head sensitivities.

    sensitivity: (L, H), any scale.  Heads are ranked by sensitivity; a head's sparsity moves from the target by
    up to ``spread × min(target, max_sparsity − target)`` (least sensitive: sparser), then the whole table is
    shifted by bisection so its mean equals ``target_sparsity`` exactly after clipping to [0, max_sparsity].
    """
    if sensitivity.dim() != 2:
        raise ValueError(f"sensitivity must be (num_layers, num_heads), got shape {tuple(sensitivity.shape)}")
    if not 0.0 <= target_sparsity < max_sparsity:
        raise ValueError(f"target_sparsity must lie in [0, {max_sparsity}), got {target_sparsity}")
    s = sensitivity.double().flatten()
    if not torch.isfinite(s).all():
        raise ValueError("sensitivity contains NaN or Inf")
    # Rank -> [-1, 1]: robust to the scale and outliers of the raw sensitivities.
    rank = torch.argsort(torch.argsort(s)).double()
    centred = 1.0 - 2.0 * rank / max(len(s) - 1, 1)  # most sensitive -> -1, least -> +1
    width = spread * min(target_sparsity, max_sparsity - target_sparsity)
    raw = (target_sparsity + width * centred).view_as(sensitivity)
    return retarget_budgets(raw.tolist(), target_sparsity, max_sparsity=max_sparsity)


def retarget_budgets(budgets: list[list[float]], target_sparsity: float, *, max_sparsity: float = 0.95) -> list[list[float]]:
    """Move a budget table to a new mean target, keeping its shape: a common shift (bisection, as in
    :func:`allocate_budgets`) so the clipped mean equals ``target_sparsity``."""
    raw = torch.tensor(budgets, dtype=torch.float64)
    lo, hi = -1.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (raw + mid).clamp(0.0, max_sparsity).mean() < target_sparsity:
            lo = mid
        else:
            hi = mid
    out = (raw + (lo + hi) / 2).clamp(0.0, max_sparsity)
    return [[round(float(x), 6) for x in row] for row in out]

"""Mask policies: plain functions that decide one layer's block mask, picked by name (like the kernel backends).

Every policy has the signature ``policy(layer, ctx) -> PerforationOutput``: ``layer`` is the
:class:`~dendritic.attention.DendriticSelfAttention` (which imports this module, not the other way) whose modules (scorer, gate, threshold) a policy may use, and
``ctx`` the :class:`PolicyContext` of this forward pass.  ``POLICIES[name]`` looks one up.

``"learned"``        the method: low-rank block scorer → input-dependent threshold (gate + learned offset) around the
                     budget's anchor; Gumbel-sigmoid relaxed while training, hard at inference.
``"training_free"``  pooled-QK block scores from the layer's real queries and keys, cut at the budget (no learned
                     scorer, no gate): the training-free baseline.
``"random"``         random block scores cut at the budget: random masks at the same sparsity.
``"static"``         a local window of ``config.static_window`` blocks on each side of the diagonal, the same for every
                     input (plus the floor): head pruning's static cousin.

The baselines are never relaxed (there is nothing of theirs to train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .perforation import PerforationOutput, PerforationUnit
from .scoring import block_log_mass, pool_blocks

__all__ = ["POLICIES", "PolicyContext", "get_policy"]


@dataclass
class PolicyContext:
    """What one layer's policy sees in one forward pass."""

    hidden_states: torch.Tensor  # (B, n, d) the layer's input
    q: torch.Tensor  # (B, H, n, dh)
    k: torch.Tensor  # (B, H, n, dh)
    key_padding: torch.Tensor  # bool (B, n), True = real token
    counts: torch.Tensor  # (B, nb) real tokens per block
    pair_real: torch.Tensor  # bool (B, 1, nb, nb): both blocks hold a real token
    floor: torch.Tensor  # bool (nb, nb): always kept
    budgets: torch.Tensor  # (H,) target sparsity per head
    temperature: float  # Gumbel-sigmoid temperature (training)
    training: bool  # relax the mask (the learned policy only)


def _cut(layer: nn.Module, ctx: PolicyContext, log_mass: torch.Tensor, shift, *, relaxed: bool):
    cfg = layer.config
    return layer.perforation(
        log_mass, ctx.pair_real, ctx.floor, ctx.budgets, shift,
        temperature=ctx.temperature, relaxed=relaxed, gumbel=cfg.gumbel, straight_through=cfg.hard_masks_in_training,
    )


def learned(layer: nn.Module, ctx: PolicyContext) -> PerforationOutput:
    log_mass = layer.scorer(ctx.hidden_states, ctx.key_padding, layer.block_size)  # (B, H, nb, nb)
    shift = layer.gate(ctx.hidden_states, ctx.key_padding, log_mass) if layer.gating else None  # (B, H)
    return _cut(layer, ctx, log_mass, shift, relaxed=ctx.training)


def training_free(layer: nn.Module, ctx: PolicyContext) -> PerforationOutput:
    B, H, n, dh = ctx.q.shape
    b = layer.block_size
    pq, _ = pool_blocks(ctx.q.transpose(1, 2).flatten(2), ctx.key_padding, b)  # (B, nb, H*dh)
    pk, _ = pool_blocks(ctx.k.transpose(1, 2).flatten(2), ctx.key_padding, b)
    nb = pq.shape[1]
    pq = pq.view(B, nb, H, dh).transpose(1, 2)  # (B, H, nb, dh)
    pk = pk.view(B, nb, H, dh).transpose(1, 2)
    log_mass = block_log_mass(pq @ pk.transpose(-1, -2) * layer.scaling, ctx.counts)
    return _cut(layer, ctx, log_mass, None, relaxed=False)


def random(layer: nn.Module, ctx: PolicyContext) -> PerforationOutput:
    B, H = ctx.q.shape[:2]
    nb = ctx.counts.shape[1]
    log_mass = torch.rand(B, H, nb, nb, device=ctx.q.device).log()
    return _cut(layer, ctx, log_mass, None, relaxed=False)


def static(layer: nn.Module, ctx: PolicyContext) -> PerforationOutput:
    B, H = ctx.q.shape[:2]
    nb = ctx.counts.shape[1]
    i = torch.arange(nb, device=ctx.q.device)
    window = (i[:, None] - i[None, :]).abs() <= layer.config.static_window  # (nb, nb)
    return PerforationUnit.from_hard_mask(window.expand(B, H, nb, nb), ctx.pair_real, ctx.floor, ctx.budgets)


POLICIES: dict[str, Callable[[nn.Module, PolicyContext], PerforationOutput]] = {
    "learned": learned,
    "training_free": training_free,
    "random": random,
    "static": static,
}


def get_policy(name: str):
    """The policy function called ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)}, got {name!r}")
    return POLICIES[name]

"""Head sensitivity for the budget allocator: how much the held-out MLM loss rises when one head alone is
pruned to the target sparsity (every other head dense).  ``L·H + 1`` evaluations of a few fixed batches."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..modeling import base_model


@torch.no_grad()
def head_sensitivity(model, batches: list[dict], target_sparsity: float, *, progress: bool = True) -> torch.Tensor:
    """(num_layers, num_heads) loss increase per head.  ``batches`` hold input_ids/attention_mask/labels with
    fixed MLM masking (so every evaluation sees the same tokens).  The model is left as it was."""
    base = base_model(model)
    if not base.config.dendritic:
        raise ValueError("head sensitivity needs a model built with dendritic=True (its policy prunes the heads)")
    L, H = base.head_budgets.shape
    saved_budgets, was_training = base.head_budgets.clone(), model.training
    model.eval()

    def loss_with(budgets: torch.Tensor) -> float:
        base.set_head_budgets(budgets)
        return sum(float(model(**b).loss) for b in batches) / len(batches)

    zeros = torch.zeros(L, H)
    try:
        reference = loss_with(zeros)
        out = torch.zeros(L, H)
        cells = [(layer, head) for layer in range(L) for head in range(H)]
        for layer, head in tqdm(cells, desc="head sensitivity", disable=not progress):
            budgets = zeros.clone()
            budgets[layer, head] = target_sparsity
            out[layer, head] = loss_with(budgets) - reference
    finally:
        base.set_head_budgets(saved_budgets)
        model.train(was_training)
    return out

"""Head sensitivity for the budget allocator: how much the held-out MLM loss rises when one head alone is
pruned to the target sparsity (every other head dense).  ``L·H + 1`` evaluations of a few fixed batches."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .trainer import base_model


@torch.no_grad()
def head_sensitivity(model, batches: list[dict], target_sparsity: float, *, progress: bool = True) -> torch.Tensor:
    """(num_layers, num_heads) loss increase per head.  ``batches`` hold input_ids/attention_mask/labels with
    fixed MLM masking (so every evaluation sees the same tokens).  The model is left as it was."""
    base = base_model(model)
    cfg = base.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    saved = (cfg.dendritic, cfg.head_budgets, model.training)
    cfg.dendritic = True
    model.eval()

    def loss_with(budgets) -> float:
        cfg.head_budgets = budgets
        return sum(float(model(**b).loss) for b in batches) / len(batches)

    zeros = [[0.0] * H for _ in range(L)]
    try:
        reference = loss_with(zeros)
        out = torch.zeros(L, H)
        cells = [(layer, head) for layer in range(L) for head in range(H)]
        for layer, head in tqdm(cells, desc="head sensitivity", disable=not progress):
            budgets = [row[:] for row in zeros]
            budgets[layer][head] = target_sparsity
            out[layer, head] = loss_with(budgets) - reference
    finally:
        cfg.dendritic, cfg.head_budgets = saved[0], saved[1]
        model.train(saved[2])
    return out

"""What the policy costs the language model itself at length: held-out masked-LM loss of the long plan's
``long/phase2`` model (masked LM with the sparsity loss at length), dense vs DendriticBERT on the SAME held-out
windows of the dev addresses, at each target of ``[mlm_eval] targets`` — a forward-only evaluation.

Dense = the same phase-2 weights with full attention (masks off); DendriticBERT = those weights with their learned
policy, the head budgets moved to the target for the call (no retraining); ``phase1_loss`` = the long warm-up model
(dense) for reference.  The masking of the held-out windows is drawn once (seeded), so every model sees the same
masked tokens.  Rows go to ``<results>/long/mlm.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dendritic.budget import retarget_budgets
from dendritic.modeling import DendriticBertForMaskedLM
from dendritic.provenance import atomic_write_json, provenance
from dendritic.training.data import mlm_blocks
from dendritic.training.long_docs import mlm_documents
from dendritic.training.phases import evaluate_mlm

__all__ = ["mlm_eval"]


def mlm_eval(plan, lengths: list[int], phase1: Path, phase2: Path, out: Path) -> dict:
    from transformers import AutoTokenizer

    cfg = plan.mlm_eval
    targets = [float(t) for t in cfg.get("targets", [0.5, 0.75, 0.9])]
    windows, batch = int(cfg.get("windows", 32)), int(cfg.get("batch_size", 2))
    tokenizer = AutoTokenizer.from_pretrained(phase2)
    docs = mlm_documents()["held_out"]
    first = DendriticBertForMaskedLM.from_pretrained(phase1, dendritic=False)
    dense = DendriticBertForMaskedLM.from_pretrained(phase2, dendritic=False)
    sparse = DendriticBertForMaskedLM.from_pretrained(phase2, dendritic=True)
    budgets = sparse.bert.head_budgets.tolist()
    import json

    kept = [r for r in json.loads(out.read_text())["rows"] if r["n"] not in lengths] if out.exists() else []
    rows = []
    for n in lengths:
        blocks = mlm_blocks(docs, tokenizer, n)
        blocks = blocks.select(range(min(windows, len(blocks))))
        ref = evaluate_mlm(dense, blocks, tokenizer, batch_size=batch)
        p1 = evaluate_mlm(first, blocks, tokenizer, batch_size=batch)
        for target in targets:
            hb = torch.tensor(retarget_budgets(budgets, target))
            got = evaluate_mlm(sparse, blocks, tokenizer, batch_size=batch, head_budgets=hb, attention_backend="cpu")
            rows.append({"n": n, "target_sparsity": target, "achieved_sparsity": got["block_sparsity"],
                         "dense_loss": ref["loss"], "dendritic_loss": got["loss"],
                         "loss_ratio": got["loss"] / ref["loss"], "phase1_loss": p1["loss"],
                         "masked_tokens": got["masked_tokens"], "windows": len(blocks),
                         "block_size": sparse.config.block_size})
            print(f"MLM n={n} target {target}: dense {ref['loss']:.4f}, DendriticBERT {got['loss']:.4f} at "
                  f"s={got['block_sparsity']:.2f}", flush=True)
            payload = {"rows": sorted(kept + rows, key=lambda r: (r["n"], r["target_sparsity"])),
                       "provenance": provenance(), "model": str(phase2)}
            atomic_write_json(out, payload)
    return {"rows": rows}

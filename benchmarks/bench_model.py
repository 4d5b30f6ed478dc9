"""Layer and model latency benchmarks: DendriticBERT (MiniLM-L6 shapes, random weights, block 64) per backend vs its
dense twin (``transformers.BertModel``, same weights) under SDPA and HF eager — a quick subset of
``python -m reproduce.bench.latency`` (which has the full sweep, interleaved timing and the Amdahl bound).

Run: ``pytest benchmarks/bench_model.py --benchmark-only`` (a few minutes on 2 cores).  Results are grouped per
``level, n`` so the dense rows sit beside every sparse row.  Each sparse case is first checked against the same
model on the ``reference`` backend (same masks); ``benchmark.extra_info`` records the backend that ran, the achieved
block sparsity (not the target), threads and versions.  Lengths beyond 512 extend the positions
(``positions_extended``).
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from dendritic.bench import check_model_against_reference, dense_twin, shaped_model
from dendritic.provenance import cpu_model, provenance

LEVELS = ("layer", "model")
LENGTHS = (256, 1024)
SPARSITIES = (0.0, 0.75)
BLOCK_SIZE = 64
DENSE = ("sdpa", "eager")
SPARSE = ("cpu", "flex")


@lru_cache(maxsize=1)
def models(n: int):
    """The DendriticBERT model of this length and its dense twins (one length at a time)."""
    model = shaped_model("small", n, block_size=BLOCK_SIZE)
    return model, {impl: dense_twin(model, impl) for impl in DENSE}


@lru_cache(maxsize=2)
def inputs(level: str, n: int):
    """The layer-level hidden states (1, n, 384) or model-level input ids (1, n), fixed by seed."""
    model, _ = models(n)
    g = torch.Generator().manual_seed(0)
    if level == "layer":
        return torch.randn(1, n, model.config.hidden_size, generator=g)
    return torch.randint(0, model.config.vocab_size, (1, n), generator=g)


def forward(level: str, n: int, backend: str, sparsity: float):
    model, twins = models(n)
    x = inputs(level, n)
    if backend in DENSE:
        dense = twins[backend]
        return dense.encoder.layer[0].attention.self(x) if level == "layer" else dense(x)
    budgets = torch.full_like(model.head_budgets, sparsity)
    if level == "layer":
        call = model.policy_call(attention_backend=backend, head_budgets=budgets)
        out = model.encoder.layer[0].attention.self(x, policy_call=call)
        return out, call.trace[0]
    return model(x, attention_backend=backend, head_budgets=budgets)


def cases():
    rows = []
    for level in LEVELS:
        for n in LENGTHS:
            rows += [(level, n, b, 0.0) for b in DENSE]
            rows += [(level, n, b, s) for b in SPARSE for s in SPARSITIES]
    return [pytest.param(*r, id=f"{r[0]}-n{r[1]}-{r[2]}-s{r[3]}") for r in rows]


@pytest.mark.parametrize("level,n,backend,sparsity", cases())
def test_dendritic_latency(benchmark, level, n, backend, sparsity):
    model, _ = models(n)
    with torch.inference_mode():
        achieved, check = 0.0, None
        if backend in SPARSE:  # correctness once, before timing (also compiles flex)
            budgets = torch.full_like(model.head_budgets, sparsity)
            check = check_model_against_reference(model, inputs("model", n), backend, head_budgets=budgets)
            achieved = forward(level, n, backend, sparsity)[1].block_sparsity.mean().item() if level == "layer" \
                else check["block_sparsity"]
        versions = provenance()["packages"]
        benchmark.group = f"{level} n={n}"
        benchmark.extra_info.update(
            level=level, model="minilm-l6", backend=backend, baseline="transformers.BertModel" if backend in DENSE else None,
            block_size=BLOCK_SIZE if backend in SPARSE else None, target_sparsity=sparsity,
            achieved_sparsity=round(achieved, 4), correctness=check,
            positions_extended=model.config.max_position_embeddings > 512, threads=torch.get_num_threads(),
            torch_version=versions["torch"], transformers_version=versions["transformers"], cpu=cpu_model(),
        )
        benchmark.pedantic(forward, args=(level, n, backend, sparsity), rounds=5, warmup_rounds=1)

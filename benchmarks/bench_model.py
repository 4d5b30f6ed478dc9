"""Layer and model latency benchmarks: DendriticBERT (MiniLM-L6 shapes, random weights, block 64) per backend vs the
same weights dense under SDPA and HF eager — a quick subset of ``reproduce/bench_latency.py`` (which has the full
sweep, interleaved timing and the Amdahl bound).

Run: ``pytest benchmarks/bench_model.py --benchmark-only`` (a few minutes on 2 cores).  Results are grouped per
``level, n`` so the dense rows sit beside every sparse row.  Each sparse case first checks every kernel call of one
forward against the ``reference`` backend on the same mask; ``benchmark.extra_info`` records the backend that ran,
the achieved block sparsity (not the target), threads and versions.  Lengths beyond 512 use a latency-only config
with ``max_position_embeddings = n`` (``positions_extended``).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dendritic.provenance import cpu_model, provenance
from reproduce.bench_latency import checked_kernel_calls, get_model, set_mode, summarise_check

LEVELS = ("layer", "model")
LENGTHS = (256, 1024)
SPARSITIES = (0.0, 0.75)
BLOCK_SIZE = 64
DENSE = ("sdpa", "eager")
SPARSE = ("cpu", "flex")


@lru_cache(maxsize=2)
def inputs(level: str, n: int):
    """The layer-level hidden states (1, n, 384) or model-level input ids (1, n), fixed by seed."""
    model, _ = get_model("minilm-l6", n, BLOCK_SIZE)
    g = torch.Generator().manual_seed(0)
    if level == "layer":
        return torch.randn(1, n, model.config.hidden_size, generator=g)
    return torch.randint(0, model.config.vocab_size, (1, n), generator=g)


def forward(level: str, n: int, backend: str, sparsity: float):
    model, _ = get_model("minilm-l6", n, BLOCK_SIZE)
    x = inputs(level, n)
    module = model.encoder.layer[0].attention.self if level == "layer" else model
    set_mode(model.config, backend, sparsity)
    return module(x)


def cases():
    rows = []
    for level in LEVELS:
        for n in LENGTHS:
            rows += [(level, n, b, 0.0) for b in DENSE]
            rows += [(level, n, b, s) for b in SPARSE for s in SPARSITIES]
    return [pytest.param(*r, id=f"{r[0]}-n{r[1]}-{r[2]}-s{r[3]}") for r in rows]


@pytest.mark.parametrize("level,n,backend,sparsity", cases())
def test_dendritic_latency(benchmark, level, n, backend, sparsity):
    model, extended = get_model("minilm-l6", n, BLOCK_SIZE)
    with torch.inference_mode():
        checks: list = []
        with checked_kernel_calls(checks):  # correctness once, before timing (also compiles flex)
            forward(level, n, backend, sparsity)
        if backend in SPARSE:
            assert checks, "no block-sparse kernel ran"
            attn = model.encoder.layer[0].attention.self
            achieved = (attn.last_policy.block_sparsity if level == "layer" else
                        forward(level, n, backend, sparsity).block_sparsity).mean().item()
        else:
            assert not checks, "a dense baseline ran the block-sparse kernel"
            achieved = 0.0
        versions = provenance()["packages"]
        benchmark.group = f"{level} n={n}"
        benchmark.extra_info.update(
            level=level, model="minilm-l6", backend=backend, attn_implementation=model.config._attn_implementation,
            dendritic=model.config.dendritic, block_size=BLOCK_SIZE if backend in SPARSE else None,
            target_sparsity=sparsity, achieved_sparsity=round(achieved, 4), correctness=summarise_check(checks),
            positions_extended=extended, threads=torch.get_num_threads(), torch_version=versions["torch"],
            transformers_version=versions["transformers"], cpu=cpu_model(),
        )
        benchmark.pedantic(forward, args=(level, n, backend, sparsity), rounds=5, warmup_rounds=1)

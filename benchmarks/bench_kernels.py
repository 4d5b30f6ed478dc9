"""Attention kernel benchmarks: block-sparse backends against dense baselines, fp32, one forward pass.

Run: ``pytest benchmarks/bench_kernels.py --benchmark-only`` (add ``-k "cpu and 2048"`` etc. to narrow it).
By default a quick subset runs (n 512/2048, block 64: a few minutes); ``DENDRITIC_BENCH_FULL=1`` runs the whole grid
(n 512–4096, blocks 32/64/128).  The efficiency table of record is ``python -m reproduce.bench.kernels`` (interleaved).
Results are grouped per shape (``n=…, d=…, B=…``) so the dense SDPA row sits beside every sparse row of that shape.
Each case checks its output against the reference once before timing; ``benchmark.extra_info`` records the backend
that actually ran (and the cpu kernel's code path), achieved block sparsity, threads, torch version and CPU.

Backends: ``sdpa`` (``F.scaled_dot_product_attention``, dense, no n×n matrix), ``eager`` (dense, materialises the
n×n matrix like HF's eager attention), ``cpu``, ``flex`` (compiled FlexAttention with the same BlockMask) and
``reference`` (dense masked, only at n ≤ 1024).  Efficiency = (1 − s)·T_sdpa / T_backend.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from dendritic.bench import eager_attention
from dendritic.bench import make_inputs as _make_inputs
from dendritic.kernels import block_sparse_attention
from dendritic.kernels.cpu import cpu_isa
from dendritic.kernels.layout import block_mask_to_dense
from dendritic.provenance import cpu_model

H = 12  # heads (BERT-base / MiniLM)
FULL = os.environ.get("DENDRITIC_BENCH_FULL") == "1"
LENGTHS = (512, 1024, 2048, 4096) if FULL else (512, 2048)
SPARSITIES = (0.5, 0.75)
BLOCK_SIZES = (32, 64, 128) if FULL else (64,)
HEAD_DIMS = (32, 64)
DENSE = ("sdpa", "eager")
SPARSE = ("cpu", "flex", "reference")


@lru_cache(maxsize=4)
def make_inputs(B: int, n: int, d: int, block_size: int, sparsity: float, seed: int = 0):
    """q, k, v (B, H, n, d) fp32 and the compact block mask; cached so a shape's inputs are built once."""
    return _make_inputs(B, H, n, d, block_size, sparsity, seed)


def first_block_reference(q, k, v, kv_num_blocks, kv_indices, block_size, *, dense):
    """Masked attention for query block 0 only, (B, H, block_size, d): the reference semantics at O(n·b·d)."""
    n = q.shape[-2]
    qb = q[..., :block_size, :]  # (B, H, b, d)
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])[..., 0, :]  # (B, H, nk)
    tok = keep.repeat_interleave(block_size, dim=-1)[..., :n]  # (B, H, n)
    if dense:
        tok = torch.ones_like(tok)
    logits = (qb @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, b, n)
    probs = torch.softmax(logits.masked_fill(~tok[..., None, :], float("-inf")), dim=-1)
    return probs @ v


def run_backend(backend, q, k, v, kv_num_blocks, kv_indices, block_size):
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "eager":
        return eager_attention(q, k, v)
    return block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size=block_size, backend=backend)


def cases():
    """(backend, B, n, d, block_size, sparsity) rows: dense baselines once per shape, sparse backends everywhere."""
    rows = []
    for n in LENGTHS:
        for d in HEAD_DIMS:
            for backend in DENSE:
                rows.append((backend, 1, n, d, 64, 0.0))
            for backend in SPARSE:
                if backend == "reference" and n > 1024:
                    continue
                for bs in BLOCK_SIZES:
                    for s in SPARSITIES:
                        rows.append((backend, 1, n, d, bs, s))
    for n in (512, 2048):  # batched subset
        rows += [("sdpa", 8, n, 64, 64, 0.0)]
        rows += [(backend, 8, n, 64, 64, s) for backend in ("cpu", "flex") for s in SPARSITIES]
    return [pytest.param(*r, id=f"{r[0]}-B{r[1]}-n{r[2]}-d{r[3]}-b{r[4]}-s{r[5]}") for r in rows]


@pytest.mark.parametrize("backend,B,n,d,block_size,sparsity", cases())
def test_attention_kernel(benchmark, backend, B, n, d, block_size, sparsity):
    path = cpu_isa(torch.float32) if backend == "cpu" else None  # which code path the cpu kernel runs
    q, k, v, kv_num_blocks, kv_indices, achieved = make_inputs(B, n, d, block_size, sparsity)
    if backend in DENSE:
        achieved = 0.0
    with torch.inference_mode():
        # Correctness once, before timing, on the first query block's rows (bounded memory at any n).
        out = run_backend(backend, q, k, v, kv_num_blocks, kv_indices, block_size)
        ref = first_block_reference(q, k, v, kv_num_blocks, kv_indices, block_size, dense=backend in DENSE)
        torch.testing.assert_close(out[..., : ref.shape[-2], :], ref, rtol=1e-4, atol=1e-4)
        assert not out.isnan().any()
        benchmark.group = f"n={n} d={d} B={B}"
        benchmark.extra_info.update(
            backend=backend,
            cpu_kernel_path=path,
            block_size=block_size if backend not in DENSE else None,
            target_sparsity=sparsity,
            achieved_block_sparsity=round(achieved, 4),
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
            cpu=cpu_model(),
        )
        benchmark.pedantic(
            run_backend, args=(backend, q, k, v, kv_num_blocks, kv_indices, block_size), rounds=5, warmup_rounds=1
        )

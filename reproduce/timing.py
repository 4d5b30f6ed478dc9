"""Timing and checking helpers shared by the benchmark scripts (``reproduce/bench_*.py``, ``benchmarks/bench_*.py``).

This class of machine drifts by ±25 % over minutes, so every comparison is timed INTERLEAVED: round r runs each
candidate once, back to back (the order rotated every round so no candidate always follows the same one), and
ratios are taken per round — T_x[r] / T_baseline[r] — before the median.  Drift then hits numerator and
denominator alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from dendritic.kernels import block_sparse_attention

__all__ = ["check_against_reference", "interleaved", "median_p90", "paired_ratio", "timed"]


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function in ``fns``, ``rounds`` times each, interleaved round by round.

    ``warmup`` untimed rounds go first.  Within round r the order is ``fns`` rotated by r."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name]))
    return times


def median_p90(ts: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (nearest rank) of a list of times."""
    s = sorted(ts)
    return statistics.median(s), s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r] (both lists from the same :func:`interleaved` call)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


# Largest (heads × n × n) logits tensor the reference check may build: 2^25 fp32 values = 128 MiB.
_REFERENCE_ELEMENTS = 1 << 25


def check_against_reference(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> dict:
    """Compare a backend's output ``out`` (B, H, n, d) with the ``reference`` backend on the same inputs and mask.

    Whole tensors when the reference's n×n logits fit in 2^25 values; otherwise batch row 0 and as many heads as
    fit (at least one) — every kept and skipped block of those heads is checked.  Raises ``AssertionError`` on a
    mismatch; returns ``{"checked": "full"|"batch0_heads0-<h>", "max_abs_err": ...}``."""
    B, H, n, _ = q.shape
    heads = max(1, min(H, _REFERENCE_ELEMENTS // (n * n)))
    full = B * H * n * n <= _REFERENCE_ELEMENTS
    sl = (slice(None), slice(None)) if full else (slice(0, 1), slice(0, heads))
    pad = None if key_padding_mask is None else (key_padding_mask if full else key_padding_mask[:1])
    ref = block_sparse_attention(
        q[sl].contiguous(), k[sl].contiguous(), v[sl].contiguous(),
        kv_num_blocks[sl].contiguous(), kv_indices[sl].contiguous(),
        block_size=block_size, key_padding_mask=pad, backend="reference", scale=scale,
    )
    got = out[sl]
    assert not got.isnan().any(), "backend output contains NaN"
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    return {"checked": "full" if full else f"batch0_heads0-{heads - 1}", "max_abs_err": float((got - ref).abs().max())}

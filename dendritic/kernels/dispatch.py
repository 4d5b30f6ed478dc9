"""``"auto"``: per call, the path that fits the mask — the block-sparse kernel, or masked dense SDPA — from a cost
model fitted by a benchmark and stored as data (``dispatch_costs.json`` beside this file, written by
``python -m reproduce.bench.dispatch``).

Both paths compute the same function (``masked_sdpa`` expands the block mask to a token mask), so the choice changes
time, never the output beyond float tolerance.  The model predicts the log of the time ratio sparse / dense from
the call's shape::

    log(T_sparse / T_dense) ≈ w · [1, log B, log n, log bs, log kept, log d, (log n)², log bs · log n]

(least squares on the benchmark's timed shapes, per device kind) and ``"auto"`` runs the block-sparse kernel when
the predicted ratio is below 1.  ``kept`` is the *expected* kept fraction — the head budgets' keep share, raised to
the safety floor's — known on the host without reading a tensor (no device synchronisation in the forward pass);
the achieved sparsity of the call is recorded beside the path.  A device kind with no fitted model runs
``masked_sdpa`` (dense speed, nothing to lose) and says so in the path name.

A fit holds for the kernel code path it timed: the CPU fit records ``kernel_path`` (``"avx512"``, ``"avx2"``,
``"portable"``: the ``cpu`` kernel's fp32 path on the fitting machine), and on a machine whose path differs — an
AVX2-only CPU reading a fit made with AVX-512 (half the kernel's vector width; SDPA's too) — the fit is not
used and ``auto`` runs masked SDPA, as with no fit.  Refit there (``python -m reproduce.bench.dispatch``).  Telling
the path loads the ``cpu`` extension on the first CPU call (:meth:`DendriticBertModel.prepare_backends` does it
ahead, e.g. before ``torch.compile``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["COST_FILE", "choose_backend", "cost_model", "expected_keep", "features", "fit_for", "machine_kernel_path",
           "predict_log_ratio"]

COST_FILE = Path(__file__).resolve().parent / "dispatch_costs.json"
SPARSE_BACKEND = {"cpu": "cpu", "cuda": "cupy"}
FORWARD_ONLY = {"cpu"}  # sparse backends without a backward: never chosen when the call must be differentiable


_COSTS = json.loads(COST_FILE.read_text()) if COST_FILE.exists() else {}  # read once, at import (traceable later)
_MACHINE_PATH: dict[str, str] = {}  # device kind -> the sparse kernel's code path here, found once


def cost_model() -> dict:
    """The fitted coefficients per device kind ({} when no benchmark has been stored)."""
    return _COSTS


def expected_keep(budgets: list[float], n: int, block_size: int, dense_cls_row: bool) -> float:
    """Kept fraction of the blocks a layer is expected to compute: mean over heads of max(1 − budget, floor share)."""
    nb = -(-n // block_size)
    floor = min(1.0, (3 * nb - 2 if dense_cls_row else 2 * nb - 1) / nb**2) if nb > 1 else 1.0
    return sum(max(1.0 - float(s), floor) for s in budgets) / max(len(budgets), 1)


def features(B: int, n: int, d: int, block_size: int, keep: float) -> list[float]:
    """The regressors of the log time ratio (see the module docstring)."""
    ln, lb = math.log(n), math.log(block_size)
    return [1.0, math.log(B), ln, lb, math.log(max(keep, 1e-3)), math.log(d), ln * ln, lb * ln]


def predict_log_ratio(coeffs: dict, B: int, n: int, d: int, block_size: int, keep: float) -> float:
    """Predicted log(T_sparse / T_dense) for one call."""
    return sum(w * f for w, f in zip(coeffs["log_ratio"], features(B, n, d, block_size, keep)))


def machine_kernel_path(device_type: str) -> str | None:
    """The sparse kernel's fp32 code path on this machine (``"avx512"`` / ``"avx2"`` / ``"portable"`` on CPU; None
    for device kinds whose fit does not depend on one).  Found once per process."""
    if device_type != "cpu":
        return None
    if device_type not in _MACHINE_PATH:
        import torch

        from .cpu import cpu_isa  # loads the cpu extension (built on first use)

        _MACHINE_PATH[device_type] = cpu_isa(torch.float32)
    return _MACHINE_PATH[device_type]


def fit_for(device_type: str) -> dict | None:
    """The fitted coefficients ``auto`` uses on this machine for ``device_type``: None when there is no fit, or when
    the fit records a kernel code path other than this machine's."""
    coeffs = cost_model().get(device_type)
    if coeffs is None or "kernel_path" not in coeffs:
        return coeffs
    return coeffs if coeffs["kernel_path"] == machine_kernel_path(device_type) else None


def choose_backend(device_type: str, B: int, H: int, n: int, d: int, block_size: int, keep: float, *,
                   needs_grad: bool = False) -> str:
    """``"cpu"``/``"cupy"`` (block-sparse) or ``"masked_sdpa"`` for one call; see the module docstring.
    ``needs_grad``: the call runs under autograd with inputs that require grad (e.g. an eval-mode forward whose loss
    is back-propagated), so a forward-only kernel is not eligible."""
    if device_type not in SPARSE_BACKEND:
        return "masked_sdpa"
    coeffs = fit_for(device_type)
    if coeffs is None:
        return "masked_sdpa"
    if needs_grad and SPARSE_BACKEND[device_type] in FORWARD_ONLY:
        return "masked_sdpa"
    return SPARSE_BACKEND[device_type] if predict_log_ratio(coeffs, B, n, d, block_size, keep) < 0 else "masked_sdpa"

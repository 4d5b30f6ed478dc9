"""Block-sparse attention: one public function, backends picked by name.

Every backend is a plain function with the signature of :func:`reference.reference_attention`, registered in
``BACKENDS``.  :func:`block_sparse_attention` validates every argument *before* any kernel runs (a bad index
must raise here, never read out of bounds in a kernel) and then calls the backend by name — there is no silent
fallback: an unavailable backend raises.

Backends
--------
``"reference"``  dense masked fp32 attention (the specification; skips nothing).
``"cpu"``        fused block-sparse C++ kernel (``dendritic/kernels/csrc``), time proportional to kept blocks.
``"cupy"``       CuPy RawKernels compiled from ``cuda/*.cu`` (CUDA tensors only).
``"flex"``       ``torch.nn.attention.flex_attention`` with the same BlockMask (a baseline and second reference).
``"masked_sdpa"`` the same function on dense SDPA with the block mask expanded to a token mask (skips nothing; the
                 path for masks that cannot pay for themselves).

``"auto"`` is not a backend but a choice made per call by the model (:mod:`dendritic.kernels.dispatch`).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

import numpy as np
import torch

from .reference import reference_attention

__all__ = ["BACKENDS", "available_backends", "block_sparse_attention", "get_backend", "validate_inputs"]

# name -> "module:function", imported lazily so a missing optional dependency only matters when that backend is used.
_BACKEND_PATHS: dict[str, str] = {
    "reference": "dendritic.kernels.reference:reference_attention",
    "cpu": "dendritic.kernels.cpu:cpu_attention",
    "cupy": "dendritic.kernels.cupy_backend:cupy_attention",
    "flex": "dendritic.kernels.flex:flex_attention_backend",
    "masked_sdpa": "dendritic.kernels.masked_sdpa:masked_sdpa_attention",
}
BACKENDS = tuple(_BACKEND_PATHS)
_loaded: dict[str, Callable] = {"reference": reference_attention}


def get_backend(name: str) -> Callable:
    """The backend function called ``name``; raises ``ValueError`` for an unknown name and ``ImportError`` (naming
    what to install) when its dependency is missing."""
    if name not in _BACKEND_PATHS:
        raise ValueError(f"backend must be one of {list(_BACKEND_PATHS)}, got {name!r}")
    if name not in _loaded:
        module_name, fn_name = _BACKEND_PATHS[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module_name), fn_name)
    return _loaded[name]


def available_backends() -> list[str]:
    """Backends whose dependencies import on this machine (does not query a GPU)."""
    names = []
    for name in _BACKEND_PATHS:
        try:
            get_backend(name)
        except ImportError:
            continue
        names.append(name)
    return names


def validate_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    *,
    check_values: bool = True,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the argument for anything a kernel could not handle safely.
    ``check_values=False`` skips the checks that read index values on the host (a device synchronisation): for
    masks made by the model's own policy, correct by construction."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, n, d), got {tuple(t.shape)} ({t.dim()}-D)")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    for name, t in (("kv_num_blocks", kv_num_blocks), ("kv_indices", kv_indices)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be an int32 torch.Tensor, got {type(t).__name__}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == kv_num_blocks.device == kv_indices.device):
        raise ValueError("q, k, v, kv_num_blocks and kv_indices must be on the same device")
    B, H, n, _ = q.shape
    if n == 0 or B == 0 or H == 0 or q.shape[-1] == 0:
        raise ValueError(f"q must have at least one batch row, head, token and feature, got shape {tuple(q.shape)}")
    nb = -(-n // block_size)
    for name, t, shape in (
        ("kv_num_blocks", kv_num_blocks, (B, H, nb)),
        ("kv_indices", kv_indices, (B, H, nb, nb)),
    ):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for n={n}, block_size={block_size}; got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if check_values and kv_num_blocks.numel():
        # On CPU through NumPy views (no copy): the same reductions at ~1 µs an operation instead of ATen's ~20 — the
        # check cost ~0.3 ms a call in ATen ops, a quarter of a 0.9 ms kernel call at n = 512.
        xp = np if kv_num_blocks.device.type == "cpu" else torch
        nblk = kv_num_blocks.numpy() if xp is np else kv_num_blocks
        idx_all = kv_indices.numpy() if xp is np else kv_indices
        lo, hi = int(nblk.min()), int(nblk.max())
        if lo < 0 or hi > nb:
            raise ValueError(f"kv_num_blocks must lie in [0, {nb}] (number of key blocks), got values in [{lo}, {hi}]")
        slot = np.arange(nb) if xp is np else torch.arange(nb, device=kv_indices.device)
        used = slot < nblk[..., None]
        if used.any():
            idx = idx_all[used]
            ilo, ihi = int(idx.min()), int(idx.max())
            if ilo < 0 or ihi >= nb:
                raise ValueError(f"kv_indices must lie in [0, {nb - 1}] in the used slots, got values in [{ilo}, {ihi}]")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = real token), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, n):
            raise ValueError(f"key_padding_mask must have shape {(B, n)}, got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError("key_padding_mask must be on the same device as q")


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "reference",
    scale: float | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Attention over the kept key blocks only.

    Args:
        q, k, v: (B, H, n, d), contiguous, one float dtype, one device.
        kv_num_blocks: int32 (B, H, nb), nb = ceil(n / block_size): key blocks each query block keeps.
        kv_indices: int32 (B, H, nb, nb): kept key-block indices first (see :mod:`dendritic.masks`).
        block_size: tokens per block (query and key blocks are the same size; the last may be partial).
        key_padding_mask: bool (B, n), True = real token; padded keys are never attended.
        backend: one of ``BACKENDS``.
        scale: softmax scale, default ``d ** -0.5``.
        check_values: also check the index values (reads them on the host); the model's own masks skip this.

    Returns:
        (B, H, n, d) in q's dtype.  A query row with no real kept key returns zeros (never NaN).
    """
    fn = get_backend(backend)
    validate_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_padding_mask, check_values=check_values)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    return fn(q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=key_padding_mask, scale=scale)

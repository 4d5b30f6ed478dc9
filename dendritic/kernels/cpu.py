"""The ``"cpu"`` backend: a fused block-sparse flash-style forward in C++ (``csrc/block_sparse_cpu.cpp``).

Each (batch, head, query block) task walks only its kept key blocks — time is proportional to kept blocks —
reading K and V in place, with an online softmax over key tiles of 32 (running max, running sum).  Tasks are
handed out dynamically over ``torch.get_num_threads()`` threads because rows keep uneven numbers of blocks.

Code paths, chosen at run time (never from the build machine's ISA):

* ``"avx512"``: fp32 on CPUs reporting AVX-512F and FMA (``csrc/block_sparse_avx512.cpp``, compiled with
  per-function ``target`` attributes so the same binary loads anywhere); blocks under 16 tokens (the GLUE models'
  1-4) go by groups of 16 / block_size query blocks, one query row per vector lane, over the union of the group's
  kept key blocks with a per-row lane mask — the same function, at full vector width;
* ``"avx2"``: fp32 on CPUs with AVX2 and FMA but no AVX-512 (``csrc/block_sparse_avx2.cpp``, the same kernel with
  8-wide vectors; blocks under 8 tokens grouped 8 query rows a task, as above);
* ``"portable"``: plain C++ (auto-vectorised for the compiler's baseline ISA) for fp64, and for fp32 on every
  other x86-64 or ARM CPU.

fp16 and bf16 inputs are **upcast to fp32 by this wrapper** (a copy of q, k, v — O(n·d), small next to the
O(n²·d) attention), computed in fp32 and rounded back once; the kernel itself has no half-precision arithmetic.

The extension is JIT-built with :func:`torch.utils.cpp_extension.load` on first import (about a minute on two
cores) into torch's extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later imports
load the cached library.  A failed build raises ``ImportError`` carrying the compiler output — the backend never
falls back to another one.  ``DENDRITIC_CPU_ISA=portable|avx512|avx2|auto`` overrides the path (for testing).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["cpu_attention", "cpu_isa", "cpu_kernel_forward"]

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = [_CSRC / "block_sparse_cpu.cpp", _CSRC / "block_sparse_avx512.cpp", _CSRC / "block_sparse_avx2.cpp"]
# -O3 only: no -march/-mavx flags, so nothing of the build machine's ISA leaks outside block_sparse_avx512.cpp's
# explicitly targeted functions.  -fopenmp: at::parallel_for is header code that needs it to run in parallel.
_CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]
_ISA_CODES = {"auto": 0, "portable": 1, "avx512": 2, "avx2": 3}


def _build():
    from torch.utils.cpp_extension import load

    try:
        return load(
            name="dendritic_block_sparse_cpu",
            sources=[str(s) for s in _SOURCES],
            extra_include_paths=[str(_CSRC)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # compiler missing or compile error: surface the compiler's message as ImportError
        raise ImportError(f"building the dendritic 'cpu' attention extension failed:\n{exc}") from exc


_ext = _build()


def _isa_code(isa: str | None) -> int:
    isa = isa or os.environ.get("DENDRITIC_CPU_ISA", "auto")
    if isa not in _ISA_CODES:
        raise ValueError(f"isa must be one of {list(_ISA_CODES)}, got {isa!r}")
    return _ISA_CODES[isa]


def cpu_isa(dtype: torch.dtype = torch.float32, isa: str | None = None) -> str:
    """The code path (``"avx512"``, ``"avx2"`` or ``"portable"``) a call with ``dtype`` inputs runs on this machine."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return _ext.resolve_isa(str(compute).removeprefix("torch."), _isa_code(isa))


def cpu_kernel_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    isa: str | None = None,
) -> torch.Tensor:
    """:func:`cpu_attention` with an explicit code path ``isa`` (``"auto"``, ``"portable"``, ``"avx512"``, ``"avx2"``; raises
    if the requested path cannot run here)."""
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # documented upcast: computed in fp32, rounded back once
        q, k, v = q.float(), k.float(), v.float()
    out = _block_sparse_cpu(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, block_size, float(scale),
                            _isa_code(isa))
    return out.to(dtype)


# The extension call as a PyTorch operator (torch.library), so a model using this backend compiles with
# torch.compile(fullgraph=True): the fake implementation tells the compiler the output's shape and dtype.
@torch.library.custom_op("dendritic::block_sparse_cpu", mutates_args=())
def _block_sparse_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: torch.Tensor,
                      kv_indices: torch.Tensor, key_padding_mask: torch.Tensor | None, block_size: int, scale: float,
                      isa: int) -> torch.Tensor:
    return _ext.forward(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, block_size, scale, isa)


@_block_sparse_cpu.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, block_size, scale, isa):
    return torch.empty_like(q)


def cpu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Block-sparse attention on the CPU. Arguments as in :func:`dendritic.kernels.block_sparse_attention`;
    (B, H, n, d) in q's dtype.  Inference only (no autograd)."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError("the 'cpu' backend is forward-only; use backend='reference' to train")
    return cpu_kernel_forward(
        q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=key_padding_mask, scale=scale
    )

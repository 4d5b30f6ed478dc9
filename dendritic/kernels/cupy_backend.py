"""The "cupy" backend: fused block-sparse attention on the GPU from the CUDA C sources in ``cuda/``, compiled by NVRTC
through CuPy and launched on PyTorch's current CUDA stream, zero-copy on torch tensors.

Kernels (``KERNELS``; one template instantiation per dtype, head dim and block size):

* ``"tc"``   — ``block_sparse_attention_tc.cu``: the forward on tensor cores (WMMA m16n16k16, fp32 accumulation,
  online softmax in fp32), for fp16 and bf16; S, P and the output go through shared memory on every key tile;
* ``"mma"``  — ``block_sparse_attention_mma.cu``: the same forward with register-resident tiles (PTX
  ``mma.sync.m16n8k16``, FlashAttention-2 style) and cp.async double-buffered K/V tiles, for fp16 and bf16.
  Verified on the CPU through the host shim (tests/test_cuda_shim.py) and compiled by NVRTC/ptxas for sm_80/sm_90,
  but **not yet run on a GPU**: it is opt-in (``DENDRITIC_CUPY_TC_KERNEL=mma`` or ``kernel="mma"``) until
  ``gpu_check`` has measured it; "tc" stays the default for fp16/bf16;
* ``"simt"`` — ``block_sparse_attention.cu``: the forward in fp32 SIMT arithmetic, for fp32 inputs (no TF32: the
  fp32 path keeps fp32 products);
* ``"bwd"``  — ``block_sparse_attention_bwd.cu``: dQ, dK, dV from O and the log-sum-exp, walking only kept block
  pairs (fp32 SIMT arithmetic), wrapped with the forward in an ``autograd.Function`` — a skipped block's gradient is
  exactly zero.

Layers (flash-attention style): :func:`_launch` (compile-once cache, raw launch) → :func:`_check_cuda_inputs`
(what these kernels support; a clear error naming the supported set, never a fallback) → :func:`cupy_attention`
(the backend function, the reference's signature; differentiable) and :func:`cupy_attention_forward` (also returns
the log-sum-exp).  :func:`forward_variant` says which forward kernel a dtype runs (recorded in the model's output).

Importing this module needs CuPy installed but never imports it, nor touches a GPU; CuPy is imported at the
first launch.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import numpy
import torch

if importlib.util.find_spec("cupy") is None:
    raise ImportError("the 'cupy' backend needs CuPy and the CUDA headers: pip install 'dendritic-bert[cuda]'")

from .layout import block_mask_to_dense, dense_to_block_mask

__all__ = [
    "CUDA_DIR",
    "KERNELS",
    "SUPPORTED_BLOCK_SIZES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "TC_KERNEL",
    "TC_KERNELS",
    "cuda_include_dirs",
    "cupy_attention",
    "cupy_attention_forward",
    "forward_variant",
    "kernel_name",
    "kernel_names",
    "mma_shared_bytes",
    "nvrtc_options",
    "tc_shared_bytes",
]

CUDA_DIR = Path(os.environ.get("DENDRITIC_CUDA_DIR", Path(__file__).resolve().parent / "cuda"))  # package data
SUPPORTED_DTYPES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}  # C++ types
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_BLOCK_SIZES = (16, 32, 64)
LOG2E = math.log2(math.e)  # the forward kernels work with base-2 exponentials


# kind -> source file, template name, dtypes it serves, threads per block (keep in sync with the .cu configs).
KERNELS = {
    "simt": {"source": "block_sparse_attention.cu", "kernel": "block_sparse_attention_fwd",
             "dtypes": (torch.float32,), "threads": lambda d, bs: {16: 128, 32: 128, 64: 256}[bs]},
    "tc": {"source": "block_sparse_attention_tc.cu", "kernel": "block_sparse_attention_fwd_tc",
           "dtypes": (torch.float16, torch.bfloat16), "threads": lambda d, bs: 32 * (bs // 16)},
    "bwd": {"source": "block_sparse_attention_bwd.cu", "kernel": "block_sparse_attention_bwd",
            "dtypes": (torch.float32, torch.float16, torch.bfloat16), "threads": lambda d, bs: bs * (d // 8)},
    "mma": {"source": "block_sparse_attention_mma.cu", "kernel": "block_sparse_attention_fwd_mma",
            "dtypes": (torch.float16, torch.bfloat16), "threads": lambda d, bs: 32 * (bs // 16)},
}
TC_KERNELS = ("tc", "mma")  # the tensor-core forwards, interchangeable (same arguments, same outputs)
# The tensor-core forward fp16/bf16 inputs run by default; "mma" is opt-in until a GPU has measured it.
TC_KERNEL = os.environ.get("DENDRITIC_CUPY_TC_KERNEL", "tc")
if TC_KERNEL not in TC_KERNELS:
    raise ValueError(f"DENDRITIC_CUPY_TC_KERNEL must be one of {TC_KERNELS}, got {TC_KERNEL!r}")


def forward_variant(dtype: torch.dtype, kernel: str | None = None) -> str:
    """The forward kernel a dtype runs: fp32 "simt"; fp16/bf16 ``kernel`` if given, else :data:`TC_KERNEL`."""
    if dtype not in KERNELS["tc"]["dtypes"]:
        return "simt"
    kernel = TC_KERNEL if kernel is None else kernel
    if kernel not in TC_KERNELS:
        raise ValueError(f"kernel must be one of {TC_KERNELS} for {dtype}, got {kernel!r}")
    return kernel


def kernel_name(kind: str, dtype: torch.dtype, head_dim: int, block_size: int) -> str:
    """The template instantiation of one variant, as passed to NVRTC's ``name_expressions``."""
    return f"{KERNELS[kind]['kernel']}<{SUPPORTED_DTYPES[dtype]}, {head_dim}, {block_size}>"


def kernel_names(kind: str) -> list[str]:
    """Every variant of one kernel the backend can launch."""
    return [kernel_name(kind, dt, d, bs) for dt in KERNELS[kind]["dtypes"] for d in SUPPORTED_HEAD_DIMS
            for bs in SUPPORTED_BLOCK_SIZES]


def tc_shared_bytes(dtype: torch.dtype, head_dim: int, block_size: int) -> int:
    """Dynamic shared memory of a tensor-core variant: ``dbsa_tc::Smem<T, D, BS>::total`` in the .cu (the shim
    test checks the two agree)."""
    def r32(x: int) -> int:
        return (x + 31) // 32 * 32

    t, D, BS = (2 if dtype in (torch.float16, torch.bfloat16) else 4), head_dim, block_size
    KT = 32 if (D == 128 and BS == 64) else BS
    head = r32(BS * D * t) + 2 * r32(KT * D * t) + r32(KT * 4)
    per_warp = r32(16 * KT * 4) + r32(16 * D * 4) + r32(16 * KT * t) + 2 * r32(16 * 4)
    return head + (BS // 16) * per_warp


def mma_shared_bytes(dtype: torch.dtype, head_dim: int, block_size: int) -> int:
    """Dynamic shared memory of a register-tile variant: two pipeline stages of a K and a V tile (rows padded by
    16 bytes) and the tile's key bias — ``dbsa_mma::MmaSmem<T, D, BS>::total`` in the .cu (checked by the shim
    test)."""
    t, D, BS = 2, head_dim, block_size
    KT = 32 if (D == 128 and BS == 64) else BS
    return 2 * (2 * KT * (D + 8) * t + KT * 4)


def _shared_bytes(kind: str, dtype: torch.dtype, head_dim: int, block_size: int) -> int:
    """The dynamic shared memory one launch of ``kind`` needs (the SIMT kernels use static shared memory)."""
    return {"tc": tc_shared_bytes, "mma": mma_shared_bytes}.get(kind, lambda *a: 0)(dtype, head_dim, block_size)


def cuda_include_dirs() -> list[Path]:
    """Directories holding ``cuda_fp16.h``/``cuda_bf16.h`` for NVRTC: the nvidia-cuda-runtime wheel's, then a
    toolkit's (``CUDA_HOME``/``CUDA_PATH``/``/usr/local/cuda``), those that also hold ``crt/mma.h`` first.  Pure
    file-system lookups."""
    dirs = []
    spec = importlib.util.find_spec("nvidia")
    for base in spec.submodule_search_locations if spec else []:
        dirs += sorted(Path(base).glob("cu*/include")) + [Path(base) / "cuda_runtime" / "include"]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            dirs.append(Path(root) / "include")
    found = []
    for d in dirs:
        if (d / "cuda_fp16.h").is_file() and d not in found:
            found.append(d)
    # The tensor-core kernel also needs mma.h's crt/mma.h, which some wheel layouts lack (nvidia-cuda-crt is a
    # separate wheel on CUDA 13): a directory holding both goes first.
    return sorted(found, key=lambda d: not (d / "crt" / "mma.h").is_file())


def nvrtc_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options for every variant; ``arch`` (e.g. ``"sm_90"``) only for device-less builds — at run time
    CuPy picks the current device's architecture."""
    opts = ["-std=c++17", *(f"-I{d}" for d in cuda_include_dirs()[:1])]
    if arch is not None:
        opts.insert(0, f"-arch={arch}")
    return tuple(opts)


@functools.cache
def kernel_source(kind: str) -> str:
    """One kernel's CUDA C++ source, read once."""
    return (CUDA_DIR / KERNELS[kind]["source"]).read_text()


def _cupy():
    try:
        import cupy
    except ImportError as e:  # installed but broken (e.g. a CUDA major version mismatch)
        raise ImportError(f"the 'cupy' backend could not import CuPy ({e}): pip install 'dendritic-bert[cuda]'") from e
    return cupy


_kernels: dict[tuple, object] = {}  # (device, kind, dtype, d, block) -> cupy.RawKernel


def _kernel(device_index: int, kind: str, dtype: torch.dtype, head_dim: int, block_size: int):
    """The compiled kernel for one variant on one device (NVRTC runs once per variant and device)."""
    key = (device_index, kind, dtype, head_dim, block_size)
    if key not in _kernels:
        cupy = _cupy()
        name = kernel_name(kind, dtype, head_dim, block_size)
        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(kind), options=nvrtc_options(), name_expressions=[name])
            fn = module.get_function(name)
            smem = _shared_bytes(kind, dtype, head_dim, block_size)
            if smem > 48 * 1024:  # dynamic shared memory past the default 48 KiB needs the per-kernel opt-in
                fn.max_dynamic_shared_size_bytes = smem
            _kernels[key] = fn
    return _kernels[key]


def _ptr(t: torch.Tensor | None) -> numpy.uint64:
    """A tensor's device address as a by-value kernel argument (zero-copy; 0 for None)."""
    return numpy.uint64(t.data_ptr() if t is not None else 0)


def _run(kind: str, q: torch.Tensor, grid: int, args: tuple, *, block_size: int) -> None:
    """Launch one kernel on torch's current stream; every tensor already checked by the caller."""
    cupy = _cupy()
    d = q.shape[-1]
    device = q.device.index if q.device.index is not None else torch.cuda.current_device()
    kernel = _kernel(device, kind, q.dtype, d, block_size)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(q.device).cuda_stream, device)
    with cupy.cuda.Device(device), stream:
        kernel(grid=(grid,), block=(KERNELS[kind]["threads"](d, block_size),), args=args,
               shared_mem=_shared_bytes(kind, q.dtype, d, block_size))


def _launch(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, out, lse, *, block_size: int, scale: float,
            kernel: str | None = None) -> None:
    """The forward: one thread block per (batch, head, query block)."""
    B, H, n, _ = q.shape
    nb = -(-n // block_size)
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(kv_num_blocks), _ptr(kv_indices), _ptr(key_padding_mask), _ptr(out),
            _ptr(lse), numpy.int32(n), numpy.int32(H), numpy.float32(scale * LOG2E))
    _run(forward_variant(q.dtype, kernel), q, B * H * nb, args, block_size=block_size)


def _launch_backward(q, k, v, dout, lse, delta, q_num_blocks, q_indices, key_padding_mask, dq, dk, dv, *,
                     block_size: int, scale: float) -> None:
    """The backward: one thread block per (batch, head, key block)."""
    B, H, n, _ = q.shape
    nb = -(-n // block_size)
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(dout), _ptr(lse), _ptr(delta), _ptr(q_num_blocks), _ptr(q_indices),
            _ptr(key_padding_mask), _ptr(dq), _ptr(dk), _ptr(dv), numpy.int32(n), numpy.int32(H), numpy.float32(scale))
    _run("bwd", q, B * H * nb, args, block_size=block_size)


def _check_cuda_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_padding_mask) -> None:
    """Raise for anything this kernel does not support (shapes and index ranges are checked by
    :func:`dendritic.kernels.validate_inputs`, which :func:`~dendritic.kernels.block_sparse_attention` runs first)."""
    tensors = {"q": q, "k": k, "v": v, "kv_num_blocks": kv_num_blocks, "kv_indices": kv_indices}
    if key_padding_mask is not None:
        tensors["key_padding_mask"] = key_padding_mask
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_cuda:
            where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"the 'cupy' backend needs CUDA tensors; {name} is on {where} (move inputs with .cuda(), or use "
                f"backend='cpu' or 'reference')"
            )
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous for the 'cupy' backend (call .contiguous() first)")
    if q.dtype not in SUPPORTED_DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"the 'cupy' backend supports {list(SUPPORTED_DTYPES)} (q, k, v alike), got {q.dtype}")
    if q.dim() != 4 or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"the 'cupy' backend supports head dims {SUPPORTED_HEAD_DIMS}, got q of shape {tuple(q.shape)}"
        )
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"the 'cupy' backend supports block sizes {SUPPORTED_BLOCK_SIZES}, got {block_size}")
    if kv_num_blocks.dtype != torch.int32 or kv_indices.dtype != torch.int32:
        raise TypeError("kv_num_blocks and kv_indices must be int32")
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = real token), got {key_padding_mask.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.data_ptr() % 16:  # the kernels move 16 bytes per load
            raise ValueError(f"{name} must start on a 16-byte boundary (call .clone() first)")
    B, H, n, _ = q.shape
    if B * H * (-(-n // block_size)) >= 2**31:
        raise ValueError(f"too many (batch, head, query block) triples for one launch: {B}x{H}x{-(-n // block_size)}")


def cupy_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward on the GPU, plus the softmax statistics a backward pass needs.

    Args:
        q, k, v: (B, H, n, d) contiguous CUDA tensors, float32/float16/bfloat16, d in {32, 64, 128}.
        kv_num_blocks: int32 (B, H, nb), nb = ceil(n / block_size).
        kv_indices: int32 (B, H, nb, nb), kept key-block indices first.
        block_size: 16, 32 or 64 (the last block may be partial).
        key_padding_mask: bool (B, n), True = real token; or None.
        scale: softmax scale.
        kernel: the tensor-core forward for fp16/bf16, "tc" or "mma" (default :data:`TC_KERNEL`); fp32 runs "simt".

    Returns:
        out (B, H, n, d) in q's dtype (zeros for a row with no real kept key) and lse (B, H, n) float32, the
        natural-log log-sum-exp of each row's kept scaled logits (-inf for such a row).
    """
    _check_cuda_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_padding_mask)
    forward_variant(q.dtype, kernel)  # an unknown kernel name fails before any allocation
    B, H, n, _ = q.shape
    out = torch.empty_like(q)  # (B, H, n, d)
    lse = torch.empty(B, H, n, dtype=torch.float32, device=q.device)  # (B, H, n)
    _launch(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, out, lse, block_size=block_size, scale=float(scale),
            kernel=kernel)
    return out, lse


class _CupyBlockSparseAttention(torch.autograd.Function):
    """Forward kernel + backward kernel: gradients of q, k and v, the skipped blocks' exactly zero."""

    @staticmethod
    def forward(ctx, q, k, v, kv_num_blocks, kv_indices, key_padding_mask, block_size: int, scale: float):
        out, lse = cupy_attention_forward(q, k, v, kv_num_blocks, kv_indices, block_size=block_size,
                                          key_padding_mask=key_padding_mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, kv_num_blocks, kv_indices,
                              key_padding_mask if key_padding_mask is not None else torch.empty(0, device=q.device))
        ctx.block_size, ctx.scale, ctx.padded = block_size, scale, key_padding_mask is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, kv_num_blocks, kv_indices, pad = ctx.saved_tensors
        key_padding_mask = pad if ctx.padded else None
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, H, n) rowsum(dO * O)
        keep_t = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1]).transpose(-1, -2).contiguous()
        q_num_blocks, q_indices = dense_to_block_mask(keep_t)  # per key block: the query blocks keeping it
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        _launch_backward(q, k, v, dout, lse, delta, q_num_blocks, q_indices, key_padding_mask, dq, dk, dv,
                         block_size=ctx.block_size, scale=ctx.scale)
        return dq.to(q.dtype), dk, dv, None, None, None, None, None


def cupy_attention(
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
    """The "cupy" backend: arguments as in :func:`dendritic.kernels.block_sparse_attention`; returns (B, H, n, d).
    Differentiable in q, k and v (the backward kernel) when gradients are recorded."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        _check_cuda_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_padding_mask)
        return _CupyBlockSparseAttention.apply(q, k, v, kv_num_blocks, kv_indices, key_padding_mask, block_size,
                                               float(scale))
    out, _ = cupy_attention_forward(
        q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=key_padding_mask, scale=scale
    )
    return out

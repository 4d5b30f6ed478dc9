"""Run the unmodified CUDA kernels of ``dendritic/kernels/cuda/`` on the CPU through ``tests/cuda_shim`` and compare
them with the reference — indexing, masking, online softmax, barriers and (for the tensor-core kernels) the WMMA
fragment traffic and the mma.m16n8k16 register layout and cp.async pipeline, checked without a GPU.

Each CUDA thread is a ``std::thread`` (see ``cuda_shim/cuda_shim.h``; WMMA is ``cuda_shim/wmma/mma.h``, the PTX
wrappers ``cuda_shim/ptx_host.h``), so shapes stay tiny.  Builds whose ``__syncthreads()`` is a no-op, or whose
tensor core drops the accumulator input, must fail the same comparisons: the tests of the tests.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dendritic.kernels import reference_attention, validate_inputs
from dendritic.kernels.checks import FLOOR, dense_attention, token_mask
from dendritic.kernels.layout import dense_to_block_mask, random_block_mask

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "tests" / "cuda_shim"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # as in run_kernel.cpp
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}  # atol, rtol


def _host_include_flags() -> list[str]:
    """-I/-idirafter flags that give a host compiler cuda_fp16.h/cuda_bf16.h: a CUDA toolkit if there is one,
    else the nvidia-cuda-runtime wheel's headers completed by the shim's crt/host_defines.h and CuPy's CCCL."""
    wmma = f"-I{SHIM / 'wmma'}"  # the host WMMA comes before any CUDA include directory
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "crt" / "host_defines.h").is_file():
            return [wmma, f"-I{Path(root) / 'include'}"]
    flags = []
    spec = importlib.util.find_spec("nvidia")
    for base in spec.submodule_search_locations if spec else []:
        for inc in sorted(Path(base).glob("cu*/include")) + [Path(base) / "cuda_runtime" / "include"]:
            if (inc / "cuda_fp16.h").is_file():
                flags.append(f"-I{inc}")
    spec = importlib.util.find_spec("cupy")
    if spec and spec.origin:
        cccl = Path(spec.origin).parent / "_core" / "include" / "cupy" / "_cccl" / "libcudacxx"
        flags.append(f"-idirafter{cccl}")
    return [wmma, *flags, f"-idirafter{SHIM / 'fallback'}"] if any(f.startswith("-I") for f in flags) else []


@pytest.fixture(scope="module")
def shim_libs(tmp_path_factory) -> dict[str, ctypes.CDLL]:
    """The kernel built twice with g++ (in parallel): as written, and with ``__syncthreads()`` a no-op."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    includes = _host_include_flags()
    if not includes:
        pytest.skip("no cuda_fp16.h: install a CUDA toolkit or the cuda extra (pip install 'dendritic-bert[cuda]')")
    out = tmp_path_factory.mktemp("cuda_shim")
    builds = {"ok": [], "no_syncthreads": ["-DSHIM_NO_SYNCTHREADS"], "wmma_drop_c": ["-DSHIM_WMMA_DROP_C"]}
    procs = {}
    for name, extra in builds.items():
        cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", *includes, *extra,
               str(SHIM / "run_kernel.cpp"), "-o", str(out / f"{name}.so")]  # fmt: skip
        procs[name] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    libs = {}
    for name, (cmd, proc) in procs.items():
        log, _ = proc.communicate()
        assert proc.returncode == 0, f"shim build failed: {' '.join(cmd)}\n{log}"
        lib = ctypes.CDLL(str(out / f"{name}.so"))
        for fn in (lib.dbsa_shim_fwd, lib.dbsa_shim_fwd_tc, lib.dbsa_shim_fwd_mma):
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 8 + [ctypes.c_int] * 3 + [ctypes.c_float]
        libs[name] = lib
    return libs


def _shim_attention(lib, q, k, v, kv_num_blocks, kv_indices, *, block_size, key_padding_mask, scale, kernel="simt"):
    """The kernel's (out, lse) for CPU tensors, through the shim (``kernel``: "simt", or the tensor-core kernels
    "tc" (WMMA) and "mma" (register tiles), as in ``cupy_backend.KERNELS``)."""
    B, H, n, d = q.shape
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    lse = torch.full((B, H, n), float("nan"), dtype=torch.float32)
    pad = key_padding_mask.to(torch.uint8).contiguous() if key_padding_mask is not None else None
    fn = {"simt": lib.dbsa_shim_fwd, "tc": lib.dbsa_shim_fwd_tc, "mma": lib.dbsa_shim_fwd_mma}[kernel]
    rc = fn(
        DTYPE_CODE[q.dtype], d, block_size, q.data_ptr(), k.data_ptr(), v.data_ptr(), kv_num_blocks.data_ptr(),
        kv_indices.data_ptr(), pad.data_ptr() if pad is not None else None, out.data_ptr(), lse.data_ptr(),
        B, H, n, scale * math.log2(math.e),
    )  # fmt: skip
    assert rc == 0, f"the shim library has no variant for dtype={q.dtype}, d={d}, block_size={block_size}"
    return out, lse


def _reference_lse(q, k, kv_num_blocks, kv_indices, *, block_size, key_padding_mask, scale):
    """Natural-log log-sum-exp of the kept, real logits per query row (fp64); -inf for a row with none."""
    from dendritic.kernels.layout import block_mask_to_dense

    n = q.shape[2]
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])
    tok = keep.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    logits = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    return torch.logsumexp(logits.masked_fill(~tok, float("-inf")), dim=-1)  # (B, H, n)


def _case(B, H, n, d, block_size, keep_fraction, *, floor=True, pad_tail=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g).to(dtype) for _ in range(3))
    nb = -(-n // block_size)
    keep = random_block_mask(B, H, nb, keep_fraction, generator=g, floor=floor)
    kv_num_blocks, kv_indices = dense_to_block_mask(keep)
    pad = None
    if pad_tail:
        pad = torch.ones(B, n, dtype=torch.bool)
        pad[:, n - pad_tail :] = False
    validate_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, pad)
    return q, k, v, kv_num_blocks, kv_indices, {"block_size": block_size, "key_padding_mask": pad, "scale": d**-0.5}


CASES = {
    # name: (B, H, n, d, block, keep_fraction, floor, pad_tail, dtype)
    "partial_last_block_padding_f32": (1, 2, 77, 32, 16, 0.4, True, 9, torch.float32),
    "floor_only_f16": (1, 2, 80, 32, 16, 0.0, True, 0, torch.float16),
    "dense_bf16": (1, 2, 48, 32, 16, 1.0, True, 0, torch.bfloat16),
    "empty_rows_no_floor_f32": (1, 2, 64, 32, 16, 0.3, False, 5, torch.float32),
    "d64_block32_partial_f16": (1, 1, 70, 64, 32, 0.5, True, 3, torch.float16),
    # d=128, block 64: each key block is two 32-key tiles; n=100 leaves 4 keys in the last tile, n=90 none
    "d128_block64_two_tiles_bf16": (1, 1, 100, 128, 64, 0.5, True, 6, torch.bfloat16),
    "d128_block64_empty_last_tile_f32": (1, 1, 90, 128, 64, 1.0, True, 0, torch.float32),
}


def _run_case(lib, name):
    B, H, n, d, bs, kf, floor, pad_tail, dtype = CASES[name]
    q, k, v, nkb, idx, kw = _case(B, H, n, d, bs, kf, floor=floor, pad_tail=pad_tail, dtype=dtype)
    out, lse = _shim_attention(lib, q, k, v, nkb, idx, **kw)
    ref = reference_attention(q, k, v, nkb, idx, **kw)
    ref_lse = _reference_lse(q, k, nkb, idx, block_size=kw["block_size"], key_padding_mask=kw["key_padding_mask"],
                             scale=kw["scale"])  # fmt: skip
    return out, ref, lse, ref_lse, nkb


@pytest.mark.parametrize("name", list(CASES))
def test_shim_matches_reference(shim_libs, name):
    out, ref, lse, ref_lse, nkb = _run_case(shim_libs["ok"], name)
    atol, rtol = TOL[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    assert torch.isfinite(lse[ref_lse.isfinite()]).all() and (lse[~ref_lse.isfinite()] == float("-inf")).all()
    torch.testing.assert_close(lse[ref_lse.isfinite()].double(), ref_lse[ref_lse.isfinite()], atol=1e-4, rtol=1e-4)
    if name.startswith("empty_rows"):  # the case must really contain query blocks that keep nothing
        assert (nkb == 0).any()


def test_shim_without_barrier_fails(shim_libs):
    """The same comparison must catch a kernel whose __syncthreads() does nothing (tiles read before loaded)."""
    failures = 0
    for name in ("partial_last_block_padding_f32", "dense_bf16"):
        out, ref, *_ = _run_case(shim_libs["no_syncthreads"], name)
        atol, rtol = TOL[out.dtype]
        try:
            torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
        except AssertionError:
            failures += 1
    assert failures > 0, "a kernel without barriers passed the shim comparison: the shim test cannot fail"


# -- the tensor-core kernels (fp16 / bf16): WMMA ("tc") and register tiles with mma.m16n8k16 ("mma") --------------
TC_CASES = {
    # name: (B, H, n, d, block, keep_fraction, floor, pad_tail, dtype)
    "tc_partial_last_block_padding_f16": (1, 2, 77, 32, 16, 0.4, True, 9, torch.float16),
    "tc_floor_only_bf16": (1, 2, 80, 32, 16, 0.0, True, 0, torch.bfloat16),
    "tc_dense_f16": (1, 1, 48, 32, 16, 1.0, True, 0, torch.float16),
    "tc_empty_rows_no_floor_bf16": (1, 2, 64, 32, 16, 0.3, False, 5, torch.bfloat16),
    "tc_d64_block32_partial_bf16": (1, 1, 70, 64, 32, 0.5, True, 3, torch.bfloat16),
    # d=128, block 64: two 32-key tiles per key block; n=100 leaves 4 keys in the last tile
    "tc_d128_block64_two_tiles_f16": (1, 1, 100, 128, 64, 0.5, True, 6, torch.float16),
}


def _tc_errors(lib, name, kernel="tc"):
    """A tensor-core kernel against fp64, by flash-attention's rule (error <= 2 x torch's own error in the dtype
    + a small floor), and its log-sum-exp."""
    B, H, n, d, bs, kf, floor, pad_tail, dtype = TC_CASES[name]
    q, k, v, nkb, idx, kw = _case(B, H, n, d, bs, kf, floor=floor, pad_tail=pad_tail, dtype=dtype, seed=n + d)
    out, lse = _shim_attention(lib, q, k, v, nkb, idx, **kw, kernel=kernel)
    tok = token_mask(nkb, idx, bs, n, kw["key_padding_mask"])
    ref, ref_lse = dense_attention(q, k, v, tok, kw["scale"], torch.float64)
    own, _ = dense_attention(q, k, v, tok, kw["scale"], dtype)
    err, allowed = (out.double() - ref).abs().max().item(), 2 * (own.double() - ref).abs().max().item() + FLOOR[dtype]
    return out, lse, ref_lse, nkb, err, allowed


@pytest.mark.parametrize("kernel", ["tc", "mma"])
@pytest.mark.parametrize("name", list(TC_CASES))
def test_tensor_core_kernel_matches_fp64(shim_libs, name, kernel):
    out, lse, ref_lse, nkb, err, allowed = _tc_errors(shim_libs["ok"], name, kernel)
    assert not out.isnan().any(), "an output element was never written (or is NaN)"
    assert err <= allowed, f"error {err:.3g} > allowed {allowed:.3g}"
    live = ref_lse.isfinite()
    assert (lse[~live] == float("-inf")).all()
    torch.testing.assert_close(lse[live].double(), ref_lse[live], atol=1e-3, rtol=1e-3)
    if "empty_rows" in name:
        assert (nkb == 0).any()


@pytest.mark.parametrize("kernel", ["tc", "mma"])
@pytest.mark.parametrize("build", ["no_syncthreads", "wmma_drop_c"])
def test_broken_tensor_core_builds_fail(shim_libs, build, kernel):
    """A kernel without barriers, or a tensor core that drops its accumulator input, must fail the comparison."""
    failures = 0
    for name in ("tc_partial_last_block_padding_f16", "tc_d128_block64_two_tiles_f16"):
        out, lse, ref_lse, nkb, err, allowed = _tc_errors(shim_libs[build], name, kernel)
        failures += bool(out.isnan().any() or not err <= allowed)
    assert failures > 0, f"the {build} build of {kernel} passed: the tensor-core shim test cannot fail"


# -- the backward kernel (dQ, dK, dV) -------------------------------------------------------------------------------
BWD_CASES = {
    # name: (B, H, n, d, block, keep_fraction, floor, pad_tail, dtype)
    "bwd_partial_last_block_padding_f32": (1, 2, 45, 32, 16, 0.5, True, 5, torch.float32),
    "bwd_floor_only_f16": (1, 1, 40, 32, 16, 0.0, True, 0, torch.float16),
    "bwd_d64_block32_bf16": (1, 1, 70, 64, 32, 0.6, True, 3, torch.bfloat16),
    "bwd_empty_rows_no_floor_f32": (1, 2, 48, 32, 16, 0.3, False, 4, torch.float32),
    "bwd_dense_d64_f32": (1, 1, 64, 64, 32, 1.0, True, 0, torch.float32),
}


def _attention_with_grad(q, k, v, tok, scale, dtype, dout):
    """Masked attention in ``dtype`` and its gradients (rows with no kept real key: output 0, no gradient)."""
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    live = tok.any(-1, keepdim=True)  # (B, H, n, 1)
    logits = (qd @ kd.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~tok, float("-inf")).masked_fill(~live, 0.0)
    probs = torch.softmax(logits, dim=-1) * live
    out = probs @ vd
    out.backward(dout.to(dtype))
    return out.detach(), qd.grad, kd.grad, vd.grad


def _bwd_errors(lib, name):
    B, H, n, d, bs, kf, floor, pad_tail, dtype = BWD_CASES[name]
    q, k, v, nkb, idx, kw = _case(B, H, n, d, bs, kf, floor=floor, pad_tail=pad_tail, dtype=dtype, seed=n * d)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    tok = token_mask(nkb, idx, bs, n, kw["key_padding_mask"])
    ref = _attention_with_grad(q, k, v, tok, kw["scale"], torch.float64, dout)
    own = _attention_with_grad(q, k, v, tok, kw["scale"], dtype if dtype != torch.float16 else torch.float32, dout)
    _, ref_lse = dense_attention(q, k, v, tok, kw["scale"], torch.float64)
    out = ref[0].to(dtype)  # the forward's output, as the kernel would have written it
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, H, n)
    from dendritic.kernels.layout import block_mask_to_dense

    keep_t = block_mask_to_dense(nkb, idx, nkb.shape[-1]).transpose(-1, -2).contiguous()  # by key block
    qn, qi = dense_to_block_mask(keep_t)
    dq = torch.zeros(q.shape, dtype=torch.float32)
    dk, dv = torch.full_like(k, float("nan")), torch.full_like(v, float("nan"))  # poisoned: all must be written
    pad = kw["key_padding_mask"].to(torch.uint8).contiguous() if kw["key_padding_mask"] is not None else None
    lse = ref_lse.float().contiguous()
    lib.dbsa_shim_bwd.restype = ctypes.c_int
    lib.dbsa_shim_bwd.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 12 + [ctypes.c_int] * 3 + [ctypes.c_float]
    rc = lib.dbsa_shim_bwd(DTYPE_CODE[dtype], d, bs, q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(),
                           lse.data_ptr(), delta.data_ptr(), qn.data_ptr(), qi.data_ptr(),
                           pad.data_ptr() if pad is not None else None, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                           B, H, n, kw["scale"])
    assert rc == 0, f"no backward variant for {dtype}, d={d}, block={bs} in the shim library"
    errors = {}
    for got, r, o, label in ((dq, ref[1], own[1], "dq"), (dk, ref[2], own[2], "dk"), (dv, ref[3], own[3], "dv")):
        err = (got.double() - r).abs().max().item()
        allowed = 2 * (o.double() - r).abs().max().item() + 10 * FLOOR[dtype]
        errors[label] = (err, allowed, bool(got.isnan().any()))
    return errors, keep_t, (dk, dv)


@pytest.mark.parametrize("name", list(BWD_CASES))
def test_backward_kernel_matches_fp64_autograd(shim_libs, name):
    errors, keep_t, (dk, dv) = _bwd_errors(shim_libs["ok"], name)
    for label, (err, allowed, nan) in errors.items():
        assert not nan, f"{label}: an element was never written (or is NaN)"
        assert err <= allowed, f"{label}: error {err:.3g} > allowed {allowed:.3g}"
    # a key block that no query block keeps gets exactly zero gradient (it is never visited)
    B, H, n, d, bs, *_ = BWD_CASES[name]
    for b in range(B):
        for h in range(H):
            for j in torch.nonzero(~keep_t[b, h].any(-1)).flatten().tolist():
                assert (dk[b, h, j * bs:(j + 1) * bs] == 0).all() and (dv[b, h, j * bs:(j + 1) * bs] == 0).all()


def test_backward_without_barrier_fails(shim_libs):
    failures = 0
    for name in ("bwd_partial_last_block_padding_f32", "bwd_dense_d64_f32"):
        errors, *_ = _bwd_errors(shim_libs["no_syncthreads"], name)
        failures += any(nan or err > allowed for err, allowed, nan in errors.values())
    assert failures > 0, "a backward kernel without barriers passed: the shim test cannot fail"


@pytest.mark.parametrize("kernel,limit", [("tc", 160 * 1024), ("mma", 48 * 1024)])
def test_loader_shared_memory_formula_matches_the_kernel(shim_libs, kernel, limit):
    """cupy_backend's launch formula (tc_shared_bytes / mma_shared_bytes) equals the kernel's own Smem<...>::total
    for every variant; "tc" fits sm_80's 160 KiB at block 64, "mma" (two pipeline stages) the default 48 KiB."""
    cupy_backend = pytest.importorskip("dendritic.kernels.cupy_backend")
    native = getattr(shim_libs["ok"], f"dbsa_shim_{kernel}_smem")
    native.restype = ctypes.c_int
    formula = {"tc": cupy_backend.tc_shared_bytes, "mma": cupy_backend.mma_shared_bytes}[kernel]
    for dtype in (torch.float16, torch.bfloat16):
        for d in (32, 64, 128):
            for bs in (16, 32, 64):
                assert native(DTYPE_CODE[dtype], d, bs) == formula(dtype, d, bs)
    assert max(formula(torch.float16, d, 64) for d in (32, 64, 128)) <= limit

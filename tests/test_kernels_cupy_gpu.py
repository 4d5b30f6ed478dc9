"""The "cupy" backend against an fp64 reference on a real GPU (marked ``gpu``; skipped without CUDA), and its
input errors.  Float outputs follow flash-attention's rule: error against fp64 at most 2x PyTorch's own error in
the same dtype, plus a small floor for fp32 (the kernel uses base-2 exponentials)."""

from __future__ import annotations

import random

import pytest
import torch

from dendritic.kernels import block_sparse_attention
from dendritic.kernels.checks import FLOOR, check_against_fp64, make_case, token_mask

cupy_backend = pytest.importorskip(
    "dendritic.kernels.cupy_backend", reason="CuPy not installed (pip install 'dendritic-bert[cuda]')"
)


def _assert_ok(errs):
    assert errs["all_finite"], "non-finite output"
    assert errs["err"] <= errs["allowed"], f"error {errs['err']:.3g} > allowed {errs['allowed']:.3g} ({errs})"
    assert errs["lse_err"] <= 1e-3 and errs["lse_empty_ok"], errs


# (dtype, head dim, block, forward kernel): fp32 runs the SIMT kernel, fp16/bf16 each tensor-core kernel.
VARIANTS = [(dt, d, bs, kernel) for dt in cupy_backend.SUPPORTED_DTYPES for d in (32, 64, 128) for bs in (16, 32, 64)
            for kernel in (cupy_backend.TC_KERNELS if dt in cupy_backend.KERNELS["tc"]["dtypes"] else (None,))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,d,block_size,kernel", VARIANTS, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_fp64_every_variant(cuda_device, dtype, d, block_size, kernel):
    rng = random.Random(f"{dtype}{d}{block_size}")
    for n in (1, 97, rng.randint(2, 700)):
        kf = rng.choice([0.0, 0.3, 0.7, 1.0])
        case = make_case(
            2, 3, n, d, block_size, kf, dtype=dtype, pad_frac=rng.choice([0.0, 0.4]), seed=rng.randrange(2**31)
        )
        _assert_ok(check_against_fp64(*case, block_size, kernel))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", cupy_backend.TC_KERNELS)
@pytest.mark.parametrize("dtype", list(cupy_backend.SUPPORTED_DTYPES), ids=str)
@pytest.mark.parametrize("n", [1025, 2048])
def test_long_sequences(cuda_device, dtype, n, kernel):
    case = make_case(1, 4, n, 64, 64, 0.5, dtype=dtype, pad_frac=0.2)
    _assert_ok(check_against_fp64(*case, 64, kernel))


@pytest.mark.gpu
def test_empty_rows_give_zeros(cuda_device):
    """Query blocks that keep no block at all (no floor) and fully padded rows: zeros, lse -inf, never NaN."""
    q, k, v, nkb, idx, _ = make_case(2, 2, 100, 64, 16, 0.2, dtype=torch.float16, floor=False)
    assert (nkb == 0).any()
    pad = torch.ones(2, 100, dtype=torch.bool, device=cuda_device)
    pad[1, 10:] = False
    errs = check_against_fp64(q, k, v, nkb, idx, pad, 16)
    _assert_ok(errs)
    out = block_sparse_attention(q, k, v, nkb, idx, block_size=16, key_padding_mask=pad, backend="cupy")
    empty = ~token_mask(nkb, idx, 16, 100, pad).any(-1)  # (B, H, n): rows with no real kept key
    assert empty.any() and (out[empty] == 0).all()


@pytest.mark.gpu
def test_runs_on_torch_current_stream(cuda_device):
    case = make_case(2, 4, 1000, 64, 32, 0.5, dtype=torch.bfloat16, pad_frac=0.3)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        q, k, v, nkb, idx, pad = (t.clone() if t is not None else None for t in case)  # produced on `stream`
        out = block_sparse_attention(q, k, v, nkb, idx, block_size=32, key_padding_mask=pad, backend="cupy")
        ref = block_sparse_attention(q, k, v, nkb, idx, block_size=32, key_padding_mask=pad, backend="reference")
    stream.synchronize()
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_dispatch_matches_reference_backend(cuda_device):
    q, k, v, nkb, idx, pad = make_case(3, 2, 333, 32, 16, 0.4, dtype=torch.float32, pad_frac=0.5)
    out = block_sparse_attention(q, k, v, nkb, idx, block_size=16, key_padding_mask=pad, backend="cupy", scale=0.3)
    ref = block_sparse_attention(q, k, v, nkb, idx, block_size=16, key_padding_mask=pad, backend="reference", scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


# -- bad inputs -----------------------------------------------------------------------------------------------------


def test_cpu_tensors_raise_clear_error():
    """No GPU needed: the backend refuses CPU tensors before touching CuPy."""
    q, k, v, nkb, idx, _ = make_case(1, 2, 40, 32, 16, 0.5, dtype=torch.float16, device="cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        block_sparse_attention(q, k, v, nkb, idx, block_size=16, backend="cupy")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"d": 48}, ValueError, "head dims"),
        ({"block_size": 8}, ValueError, "block sizes"),
        ({"dtype": torch.float64}, TypeError, "supports"),
        ({"mask_on_cpu": True}, ValueError, "same device|CUDA tensors"),
    ],
)
def test_unsupported_inputs_raise(cuda_device, change, error, match):
    d, bs, dtype = change.get("d", 64), change.get("block_size", 16), change.get("dtype", torch.float16)
    q, k, v, nkb, idx, pad = make_case(1, 2, 64, d, bs, 0.5, dtype=dtype, pad_frac=0.3)
    if change.get("mask_on_cpu"):
        pad = torch.ones(1, 64, dtype=torch.bool)
    with pytest.raises(error, match=match):
        block_sparse_attention(q, k, v, nkb, idx, block_size=bs, key_padding_mask=pad, backend="cupy")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(cupy_backend.SUPPORTED_DTYPES), ids=str)
@pytest.mark.parametrize("d,block_size", [(32, 16), (64, 32), (128, 64)])
def test_backward_matches_fp64_autograd(cuda_device, dtype, d, block_size):
    """dQ, dK, dV of the backward kernel within 2x PyTorch's own error in the dtype (vs fp64 autograd); a key block
    no query block keeps gets exactly zero gradient."""
    q, k, v, nkb, idx, pad = make_case(1, 3, 333, d, block_size, 0.5, dtype=dtype, pad_frac=0.2, seed=d + block_size)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)
    out = block_sparse_attention(q, k, v, nkb, idx, block_size=block_size, key_padding_mask=pad, backend="cupy")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    tok = token_mask(nkb, idx, block_size, q.shape[2], pad)

    def ref_grads(dt):
        qd, kd, vd = (t.detach().to(dt).requires_grad_() for t in (q, k, v))
        live = tok.any(-1, keepdim=True)
        logits = (qd @ kd.transpose(-1, -2)) * d**-0.5
        probs = torch.softmax(logits.masked_fill(~tok, float("-inf")).masked_fill(~live, 0.0), -1) * live
        return torch.autograd.grad(probs @ vd, (qd, kd, vd), dout.to(dt))

    ref, own = ref_grads(torch.float64), ref_grads(dtype)
    for got, r, o in zip(grads, ref, own):
        assert (got.double() - r).abs().max() <= 2 * (o.double() - r).abs().max() + FLOOR[dtype] * 10

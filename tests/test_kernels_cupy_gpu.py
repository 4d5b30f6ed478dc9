"""The "cupy" backend against an fp64 reference on a real GPU (marked ``gpu``; skipped without CUDA), and its
input errors.  Float outputs follow flash-attention's rule: error against fp64 at most 2x PyTorch's own error in
the same dtype, plus a small floor for fp32 (the kernel uses base-2 exponentials)."""

from __future__ import annotations

import random

import pytest
import torch

from dendritic.kernels import block_sparse_attention
from dendritic.masks import block_mask_to_dense, dense_to_block_mask, random_block_mask

cupy_backend = pytest.importorskip(
    "dendritic.kernels.cupy_backend", reason="CuPy not installed (pip install 'dendritic-bert[cuda]')"
)

FLOOR = {torch.float32: 2e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}  # abs error always allowed


def _token_mask(kv_num_blocks, kv_indices, block_size, n, key_padding_mask):
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])  # (B, H, nb, nb)
    tok = keep.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    return tok


def _dense(q, k, v, tok, scale, dtype):
    """Masked dense attention computed in ``dtype`` (fp64 for the reference); empty rows give zeros."""
    logits = torch.einsum("bhqd,bhkd->bhqk", q.to(dtype), k.to(dtype)) * scale  # (B, H, n, n)
    probs = torch.softmax(logits.masked_fill(~tok, float("-inf")), dim=-1).nan_to_num(0.0)
    lse = torch.logsumexp(logits.double().masked_fill(~tok, float("-inf")), dim=-1)  # (B, H, n)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.to(dtype)), lse


def make_case(B, H, n, d, block_size, keep_fraction, *, dtype, pad_frac=0.0, floor=True, device="cuda", seed=0):
    """Random q, k, v, block mask and padding (the tail of each batch row up to ``pad_frac`` of n)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    nb = -(-n // block_size)
    keep = random_block_mask(B, H, nb, keep_fraction, generator=g, floor=floor)
    kv_num_blocks, kv_indices = (t.to(device) for t in dense_to_block_mask(keep))
    pad = None
    if pad_frac > 0:
        lengths = torch.randint(max(1, int(n * (1 - pad_frac))), n + 1, (B,), generator=g)
        pad = (torch.arange(n)[None, :] < lengths[:, None]).to(device)  # (B, n)
    return q, k, v, kv_num_blocks, kv_indices, pad


def check_against_fp64(q, k, v, kv_num_blocks, kv_indices, pad, block_size) -> dict:
    """Run the cupy backend and measure it against fp64; returns the errors (raises nothing)."""
    n, d = q.shape[-2:]
    scale = d**-0.5
    out, lse = cupy_backend.cupy_attention_forward(
        q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=pad, scale=scale
    )
    torch.cuda.synchronize()
    tok = _token_mask(kv_num_blocks, kv_indices, block_size, n, pad)
    ref, ref_lse = _dense(q, k, v, tok, scale, torch.float64)
    own, _ = _dense(q, k, v, tok, scale, q.dtype)
    finite = ref_lse.isfinite()
    return {
        "err": (out.double() - ref).abs().max().item(),
        "torch_err": (own.double() - ref).abs().max().item(),
        "lse_err": (lse.double() - ref_lse)[finite].abs().max().item() if finite.any() else 0.0,
        "lse_empty_ok": bool((lse[~finite] == float("-inf")).all()),
        "all_finite": bool(out.isfinite().all()),
        "allowed": 2 * (own.double() - ref).abs().max().item() + FLOOR[q.dtype],
    }


def _assert_ok(errs):
    assert errs["all_finite"], "non-finite output"
    assert errs["err"] <= errs["allowed"], f"error {errs['err']:.3g} > allowed {errs['allowed']:.3g} ({errs})"
    assert errs["lse_err"] <= 1e-3 and errs["lse_empty_ok"], errs


VARIANTS = [(dt, d, bs) for dt in cupy_backend.SUPPORTED_DTYPES for d in (32, 64, 128) for bs in (16, 32, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,d,block_size", VARIANTS, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_fp64_every_variant(cuda_device, dtype, d, block_size):
    rng = random.Random(f"{dtype}{d}{block_size}")
    for n in (1, 97, rng.randint(2, 700)):
        kf = rng.choice([0.0, 0.3, 0.7, 1.0])
        case = make_case(
            2, 3, n, d, block_size, kf, dtype=dtype, pad_frac=rng.choice([0.0, 0.4]), seed=rng.randrange(2**31)
        )
        _assert_ok(check_against_fp64(*case, block_size))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(cupy_backend.SUPPORTED_DTYPES), ids=str)
@pytest.mark.parametrize("n", [1025, 2048])
def test_long_sequences(cuda_device, dtype, n):
    case = make_case(1, 4, n, 64, 64, 0.5, dtype=dtype, pad_frac=0.2)
    _assert_ok(check_against_fp64(*case, 64))


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
    empty = ~_token_mask(nkb, idx, 16, 100, pad).any(-1)  # (B, H, n): rows with no real kept key
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

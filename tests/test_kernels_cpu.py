"""The "cpu" (C++, both code paths) and "flex" backends against a dense fp64 oracle.

Tolerance (flash-attention's rule): the kernel's max error against the fp64 oracle is at most twice the error of
PyTorch's own dense computation in the same dtype, plus a tiny absolute epsilon; never a NaN.  Inputs are fresh
random tensors drawn by hypothesis over awkward sizes (odd n, partial last blocks, every block size, padding down
to one token, floor-only / dense / empty masks).  Nothing here is timed.
"""

from __future__ import annotations

import math
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dendritic.kernels import (
    block_sparse_attention,
    cpu,  # builds the extension; a build failure is a loud collection error, not a skip
)
from dendritic.kernels.layout import block_mask_to_dense, dense_to_block_mask, random_block_mask
from dendritic.masks import safety_floor

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Absolute slack on top of 2x PyTorch's own error: a few ulps at |out| ~ 1 (output rounding for fp16/bf16).
# fp32: the kernel's online softmax rescales its running sum once per kept key block, so over ~10 blocks with
# logits up to ~20 it legitimately drifts ~20 ulp from a one-shot softmax (7.7e-6 on outputs of 2.8 in the
# example pinned below, where torch's own fp32 error is 2.1e-6); a wrong or missing block errs by > 1e-2.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# Paths to run for a dtype: the AVX-512 path only exists for fp32, and only on CPUs that have it.
# Every code path this CPU can run: the SIMD ones are tested wherever the CPU has them (AVX-512 machines also run AVX2).
def _runs(isa: str) -> bool:
    try:
        cpu.cpu_isa(torch.float32, isa)
        return True
    except RuntimeError:
        return False


ISAS = ["portable"] + [isa for isa in ("avx512", "avx2") if _runs(isa)]
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def dense_attention(q, k, v, kv_num_blocks, kv_indices, *, block_size, key_padding_mask, scale, dtype):
    """Dense masked attention computed entirely in ``dtype`` (the fp64 oracle, or PyTorch's own low-precision
    computation whose error sets the tolerance).  Same semantics as ``reference_attention``, which always
    computes in fp32."""
    _B, _H, n, _d = q.shape
    nb = kv_indices.shape[-1]
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, nb)  # (B, H, nq, nk)
    tok = keep.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    logits = torch.einsum("bhqd,bhkd->bhqk", q.to(dtype), k.to(dtype)) * scale  # (B, H, n, n)
    probs = torch.softmax(logits.masked_fill(~tok, float("-inf")), dim=-1).nan_to_num(nan=0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.to(dtype))


def make_case(seed, B, H, n, d, block_size, mask_kind, padding, dtype):
    """Random q, k, v (in ``dtype``), a block mask of ``mask_kind`` and a key padding mask of ``padding``."""
    g = torch.Generator().manual_seed(seed)
    nb = -(-n // block_size)
    temp = 0.5 + 3.0 * torch.rand((), generator=g).item()  # from flat to peaked softmax
    q = (torch.randn(B, H, n, d, generator=g) * temp).to(dtype)
    k, v = (torch.randn(B, H, n, d, generator=g).to(dtype) for _ in range(2))
    kpm = None
    if padding == "prefix":  # real tokens first, lengths down to a single token
        lengths = torch.randint(1, n + 1, (B,), generator=g)
        lengths[0] = 1 if n > 1 and torch.rand((), generator=g) < 0.3 else lengths[0]
        kpm = torch.arange(n)[None, :] < lengths[:, None]  # (B, n)
    elif padding == "scattered":
        kpm = torch.rand(B, n, generator=g) < 0.7
    if mask_kind == "random":
        keep = random_block_mask(B, H, nb, torch.rand((), generator=g).item(), generator=g, floor=False)
    elif mask_kind == "floor":  # everything but the safety floor dropped
        keep = safety_floor(nb, dense_cls_row=False).expand(B, H, nb, nb).clone()
    elif mask_kind == "full":
        keep = torch.ones(B, H, nb, nb, dtype=torch.bool)
    elif mask_kind == "empty":  # no kept block at all: every row outputs zeros
        keep = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    elif mask_kind == "padding_only":  # keep only key blocks without a real token: fully padded rows
        real = torch.ones(B, n, dtype=torch.bool) if kpm is None else kpm
        real = torch.nn.functional.pad(real, (0, nb * block_size - n)).view(B, nb, block_size).any(-1)  # (B, nb)
        keep = (~real)[:, None, None, :].expand(B, H, nb, nb).clone()
    else:
        raise ValueError(mask_kind)
    kv_num_blocks, kv_indices = dense_to_block_mask(keep)
    return q, k, v, kv_num_blocks, kv_indices, kpm


def check_against_oracle(out, q, k, v, kv_num_blocks, kv_indices, block_size, kpm, scale=None):
    """Assert flash-attention's tolerance rule for ``out`` (computed from q, k, v in their dtype)."""
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    args = (q, k, v, kv_num_blocks, kv_indices)
    kw = {"block_size": block_size, "key_padding_mask": kpm, "scale": scale}
    oracle = dense_attention(*args, **kw, dtype=torch.float64)
    torch_own = dense_attention(*args, **kw, dtype=dtype)
    assert out.dtype == dtype and out.shape == q.shape
    assert not out.isnan().any(), "NaN in kernel output"
    err = (out.double() - oracle).abs().max().item()
    base = (torch_own.double() - oracle).abs().max().item()
    assert err <= 2 * base + ATOL[dtype], f"max error {err:.3g} > 2 x torch's {base:.3g} + {ATOL[dtype]:.1g}"


def run_cpu(q, k, v, kv_num_blocks, kv_indices, block_size, kpm, isa):
    block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=kpm)  # validates
    return cpu.cpu_kernel_forward(
        q,
        k,
        v,
        kv_num_blocks,
        kv_indices,
        block_size=block_size,
        key_padding_mask=kpm,
        scale=q.shape[-1] ** -0.5,
        isa=isa,
    )


MASKS = st.sampled_from(["random", "random", "random", "floor", "full", "empty", "padding_only"])
PADDINGS = st.sampled_from([None, "prefix", "prefix", "scattered"])


@st.composite
def small_cases(draw):
    """Mostly small shapes (any n up to 200, every block size incl. 1) so hundreds of examples stay fast."""
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 32, 64, 128]))  # < 16: grouped on AVX-512
    n = draw(st.integers(1, 200 if block_size > 1 else 64))
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "B": draw(st.integers(1, 2)),
        "H": draw(st.integers(1, 3)),
        "n": n,
        "d": draw(st.sampled_from([16, 32, 64, 80])),
        "block_size": block_size,
        "mask_kind": draw(MASKS),
        "padding": draw(PADDINGS),
    }


@st.composite
def large_cases(draw):
    """Odd lengths up to ~1100 at kernel-friendly block sizes, one head (the fp64 oracle is n^2)."""
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "B": 1,
        "H": 1,
        "n": draw(st.integers(201, 1100)),
        "d": draw(st.sampled_from([32, 64])),
        "block_size": draw(st.sampled_from([16, 32, 64, 128])),
        "mask_kind": draw(MASKS),
        "padding": draw(PADDINGS),
    }


@settings(max_examples=250, **SETTINGS)
@given(case=small_cases(), isa=st.sampled_from(ISAS))
def test_cpu_fp32_small(case, isa):
    q, k, v, nblk, idx, kpm = make_case(**case, dtype=torch.float32)
    out = run_cpu(q, k, v, nblk, idx, case["block_size"], kpm, isa)
    check_against_oracle(out, q, k, v, nblk, idx, case["block_size"], kpm)


@settings(max_examples=40, **SETTINGS)
@given(case=large_cases(), isa=st.sampled_from(ISAS))
@example(case={"seed": 341, "B": 1, "H": 1, "n": 341, "d": 32, "block_size": 32, "mask_kind": "random",
               "padding": None}, isa="portable")  # found by CI: fp32 online-softmax drift (see ATOL)
def test_cpu_fp32_large(case, isa):
    q, k, v, nblk, idx, kpm = make_case(**case, dtype=torch.float32)
    out = run_cpu(q, k, v, nblk, idx, case["block_size"], kpm, isa)
    check_against_oracle(out, q, k, v, nblk, idx, case["block_size"], kpm)


@settings(max_examples=120, **SETTINGS)
@given(case=small_cases(), dtype=st.sampled_from(["float64", "float16", "bfloat16"]))
def test_cpu_other_dtypes(case, dtype):
    q, k, v, nblk, idx, kpm = make_case(**case, dtype=DTYPES[dtype])
    out = run_cpu(q, k, v, nblk, idx, case["block_size"], kpm, "auto")
    check_against_oracle(out, q, k, v, nblk, idx, case["block_size"], kpm)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "n,d,block_size,mask_kind,padding",
    [
        (1, 32, 32, "full", None),
        (97, 64, 32, "floor", "prefix"),
        (97, 32, 16, "random", "scattered"),
        (1025, 64, 64, "full", None),
        (1025, 32, 128, "random", "prefix"),
        (512, 64, 64, "empty", "prefix"),
        # blocks under 16 tokens (the GLUE models'): grouped 16 query rows a task on AVX-512, partial last group
        (130, 32, 4, "random", "scattered"),
        (77, 32, 1, "random", "prefix"),
        (50, 64, 3, "floor", "scattered"),
        (200, 32, 2, "empty", None),
    ],
)
def test_cpu_named_shapes(n, d, block_size, mask_kind, padding, isa):
    """The sizes DESIGN.md names: n = 1, 97, 1025; head dims 32/64; partial last block; floor-only, dense, empty."""
    q, k, v, nblk, idx, kpm = make_case(7, 2, 2, n, d, block_size, mask_kind, padding, torch.float32)
    out = run_cpu(q, k, v, nblk, idx, block_size, kpm, isa)
    check_against_oracle(out, q, k, v, nblk, idx, block_size, kpm)
    if mask_kind == "empty":
        assert torch.equal(out, torch.zeros_like(out))


@settings(max_examples=40, **SETTINGS)
@given(case=small_cases(), isa=st.sampled_from(ISAS), data=st.data())
def test_cpu_ignores_tail_and_order(case, isa, data):
    """Garbage in the unused tail of kv_indices changes nothing (bit for bit); permuting the kept slots only
    reorders a sum (within tolerance)."""
    q, k, v, nblk, idx, kpm = make_case(**case, dtype=torch.float32)
    bs = case["block_size"]
    out = run_cpu(q, k, v, nblk, idx, bs, kpm, isa)
    nb = idx.shape[-1]
    used = torch.arange(nb) < nblk[..., None]  # (B, H, nq, nk)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    garbage = torch.randint(-(2**31), 2**31 - 1, idx.shape, generator=g, dtype=torch.int64).to(torch.int32)
    idx_garbage = torch.where(used, idx, garbage)
    assert torch.equal(run_cpu(q, k, v, nblk, idx_garbage, bs, kpm, isa), out)
    # Permute each row's kept slots: sort on random keys that put used slots first.
    key = torch.rand(idx.shape, generator=g) + (~used).float()
    idx_perm = torch.gather(idx, -1, key.argsort(dim=-1)).contiguous()
    check_against_oracle(run_cpu(q, k, v, nblk, idx_perm, bs, kpm, isa), q, k, v, nblk, idx, bs, kpm)


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_never_reads_skipped_blocks(isa):
    """K and V of key blocks no query keeps are NaN: the output stays finite and equals the clean result."""
    B, H, n, d, bs = 1, 2, 300, 64, 32
    nb = -(-n // bs)
    q, k, v = (torch.randn(B, H, n, d) for _ in range(3))
    keep = random_block_mask(B, H, nb, 0.5, floor=False)
    keep[..., 1::3] = False  # key blocks 1, 4, 7, ... are never kept
    keep[..., 0] = True
    nblk, idx = dense_to_block_mask(keep)
    clean = run_cpu(q, k, v, nblk, idx, bs, None, isa)
    tok_skipped = (torch.arange(n) // bs) % 3 == 1  # (n,)
    k[:, :, tok_skipped] = float("nan")
    v[:, :, tok_skipped] = float("nan")
    assert torch.equal(run_cpu(q, k, v, nblk, idx, bs, None, isa), clean)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bs", [1, 4])
def test_cpu_small_blocks_read_only_their_groups_union(isa, bs):
    """Blocks under 16 tokens go by groups of 16 / bs query blocks over the union of their kept key blocks (AVX-512):
    a key block that no query block of a group keeps is never read for that group — NaN there changes nothing —,
    and a block kept by only one query block of a group reaches only that block's rows (each row's output equals
    the oracle's, which attends to its own kept blocks only)."""
    B, H, n, d = 1, 2, 96, 32
    nb, G = n // bs, 16 // bs
    q, k, v = (torch.randn(B, H, n, d) for _ in range(3))
    keep = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    keep[..., torch.arange(nb), torch.arange(nb)] = True  # the diagonal: each group's union is its own rows' blocks
    keep[..., 0, nb - 1] = True  # query block 0 alone (group 0) keeps the last key block
    nblk, idx = dense_to_block_mask(keep)
    clean = run_cpu(q, k, v, nblk, idx, bs, None, isa)
    check_against_oracle(clean, q, k, v, nblk, idx, bs, None)
    # key blocks outside group 0's union (its own G blocks and the last one) are NaN: group 0's rows never read them
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, G * bs:n - bs] = float("nan")
    poisoned_v[:, :, G * bs:n - bs] = float("nan")
    out = run_cpu(q, poisoned_k, poisoned_v, nblk, idx, bs, None, isa)
    assert torch.equal(out[:, :, :G * bs], clean[:, :, :G * bs])


def test_cpu_fully_padded_rows_are_zero():
    B, H, n, d, bs = 2, 3, 100, 32, 16
    q, k, v = (torch.randn(B, H, n, d) for _ in range(3))
    kpm = torch.zeros(B, n, dtype=torch.bool)
    kpm[0, :40] = True  # batch 1 is entirely padding
    nblk, idx = dense_to_block_mask(torch.ones(B, H, 7, 7, dtype=torch.bool))
    out = block_sparse_attention(q, k, v, nblk, idx, block_size=bs, key_padding_mask=kpm, backend="cpu")
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert not out.isnan().any() and out[0].abs().sum() > 0


def test_cpu_dispatch_and_errors():
    capability = torch.backends.cpu.get_cpu_capability()
    expected = "avx512" if "AVX512" in capability else "avx2" if "AVX2" in capability else "portable"
    assert cpu.cpu_isa(torch.float32) == expected  # the fastest path the CPU has, chosen at run time
    assert cpu.cpu_isa(torch.float64) == "portable"
    assert cpu.cpu_isa(torch.float32, "portable") == "portable"
    q = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    nblk, idx = dense_to_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="fp32|AVX-512"):
        cpu.cpu_kernel_forward(q, q, q, nblk, idx, block_size=8, key_padding_mask=None, scale=0.25, isa="avx512")
    with pytest.raises(ValueError, match="isa"):
        cpu.cpu_kernel_forward(q, q, q, nblk, idx, block_size=8, key_padding_mask=None, scale=0.25, isa="sse9")
    qg = torch.randn(1, 1, 8, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="forward-only"):
        block_sparse_attention(qg, qg, qg, nblk, idx, block_size=8, backend="cpu")


def test_cpu_custom_scale():
    q, k, v, nblk, idx, kpm = make_case(3, 1, 2, 130, 64, 32, "random", "prefix", torch.float32)
    out = block_sparse_attention(q, k, v, nblk, idx, block_size=32, key_padding_mask=kpm, backend="cpu", scale=0.3)
    check_against_oracle(out, q, k, v, nblk, idx, 32, kpm, scale=0.3)


# --- flex: compiled FlexAttention is slow to compile (seconds per shape), so a handful of fixed shapes. ---
flex_cases = [
    (1, 2, 256, 64, 64, "random", None),  # aligned, no padding
    (2, 2, 97, 32, 32, "random", "prefix"),  # partial last block + padding
    (1, 3, 128, 64, 16, "floor", "prefix"),  # floor-only, rows padded down to one token possible
    (2, 1, 200, 32, 32, "padding_only", "prefix"),  # fully padded rows -> zeros
]


@pytest.mark.slow
@pytest.mark.parametrize("B,H,n,d,block_size,mask_kind,padding", flex_cases)
def test_flex_matches_oracle(B, H, n, d, block_size, mask_kind, padding):
    q, k, v, nblk, idx, kpm = make_case(11, B, H, n, d, block_size, mask_kind, padding, torch.float32)
    out = block_sparse_attention(q, k, v, nblk, idx, block_size=block_size, key_padding_mask=kpm, backend="flex")
    check_against_oracle(out, q, k, v, nblk, idx, block_size, kpm)


# --- masked_sdpa: the same function on dense SDPA (the path "auto" picks for masks that cannot pay) ---
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 150), block=st.sampled_from([1, 2, 4, 16, 32]),
       kind=st.sampled_from(["random", "floor", "full", "empty", "padding_only"]),
       padding=st.sampled_from([None, "prefix", "scattered"]))
def test_masked_sdpa_matches_oracle(seed, n, block, kind, padding):
    q, k, v, nblk, idx, kpm = make_case(seed, 2, 2, n, 32, block, kind, padding, torch.float32)
    out = block_sparse_attention(q, k, v, nblk, idx, block_size=block, key_padding_mask=kpm, backend="masked_sdpa")
    check_against_oracle(out, q, k, v, nblk, idx, block, kpm)


def test_auto_dispatch_follows_the_cost_model(monkeypatch):
    """'auto' runs whichever path the stored cost model predicts cheaper, and without a model the dense path."""
    from dendritic.kernels import dispatch

    monkeypatch.setattr(dispatch, "cost_model", lambda: {})
    assert dispatch.choose_backend("cpu", 1, 12, 4096, 64, 64, 0.25) == "masked_sdpa"  # no model: dense speed
    # a model whose predicted log time ratio is log(kept) + 0.1 (log 1024 - log n): sparse pays for long inputs
    # with something skipped
    w = [0.1 * math.log(1024), 0, -0.1, 0, 1.0, 0, 0, 0]
    monkeypatch.setattr(dispatch, "cost_model", lambda: {"cpu": {"log_ratio": w}})
    assert dispatch.choose_backend("cpu", 1, 12, 4096, 64, 64, 0.25) == "cpu"  # long input, a quarter kept
    # under autograd the forward-only CPU kernel is not eligible: masked SDPA (differentiable, the same function)
    assert dispatch.choose_backend("cpu", 1, 12, 4096, 64, 64, 0.25, needs_grad=True) == "masked_sdpa"
    assert dispatch.choose_backend("cpu", 1, 12, 64, 64, 64, 1.0) == "masked_sdpa"  # one block: nothing to skip
    assert dispatch.choose_backend("cpu", 1, 12, 1024, 64, 64, 1.0) == "masked_sdpa"  # everything kept
    assert dispatch.choose_backend("mps", 1, 12, 4096, 64, 64, 0.25) == "masked_sdpa"  # no sparse kernel there
    # a fit made on another kernel code path (e.g. AVX-512's, read on an AVX2-only CPU) is not used: dense path
    here = dispatch.machine_kernel_path("cpu")
    other = "avx2" if here != "avx2" else "avx512"
    monkeypatch.setattr(dispatch, "cost_model", lambda: {"cpu": {"log_ratio": w, "kernel_path": other}})
    assert dispatch.fit_for("cpu") is None
    assert dispatch.choose_backend("cpu", 1, 12, 4096, 64, 64, 0.25) == "masked_sdpa"
    monkeypatch.setattr(dispatch, "cost_model", lambda: {"cpu": {"log_ratio": w, "kernel_path": here}})
    assert dispatch.choose_backend("cpu", 1, 12, 4096, 64, 64, 0.25) == "cpu"
    # the expected kept share: budgets raised to the floor's share (3 nb - 2 of nb^2 with the dense [CLS] row)
    assert dispatch.expected_keep([0.9, 0.5], 8 * 4, 4, True) == pytest.approx(((22 / 64) + 0.5) / 2)


@pytest.mark.parametrize("n,block,padding", [(1, 1, False), (37, 5, True), (64, 1, True), (128, 4, True),
                                             (130, 64, False), (200, 16, True)])
def test_masked_sdpa_cpu_mask_builder_equals_the_torch_expression(n, block, padding):
    """masked_sdpa builds its additive mask in C++ on CPU fp32 and with tensor ops elsewhere (GPU, other dtypes):
    both give the same 0 / −inf values and the same live query rows, partial last block and padding included."""
    from dendritic.kernels.policy_ext import policy_extension as _extension
    from dendritic.kernels.masked_sdpa import _additive_mask, _live_rows

    g = torch.Generator().manual_seed(n * 31 + block)
    B, H, nb = 3, 4, -(-n // block)
    keep = torch.rand(B, H, nb, nb, generator=g) < 0.4
    keep[1, 2] = False  # a head with nothing kept: no live row
    kpm = (torch.arange(n)[None, :] < torch.tensor([n, max(1, n // 2), max(1, n - 3)])[:, None]) if padding else None
    bias, live = _extension().block_bias(keep, kpm, n, block)
    assert torch.equal(bias, _additive_mask(keep, kpm, n, block, torch.float32))
    assert torch.equal(live[..., None], _live_rows(keep, kpm, n, block))
    assert not live[1, 2].any() and set(bias.unique().tolist()) <= {0.0, float("-inf")}

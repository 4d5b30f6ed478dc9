"""Backend outputs against an fp64 reference — flash-attention's rule: a float output's error against fp64 is at
most 2× PyTorch's own error in the same dtype (plus a small floor; the kernels use base-2 exponentials).  Shared
by the GPU tests and ``python -m reproduce.bench.gpu_check``; nothing here needs a GPU unless asked to run on one.
"""

from __future__ import annotations

import torch

from .layout import block_mask_to_dense, dense_to_block_mask, random_block_mask

__all__ = ["FLOOR", "check_against_fp64", "make_case", "token_mask"]

FLOOR = {torch.float32: 2e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}  # abs error always allowed


def token_mask(kv_num_blocks, kv_indices, block_size, n, key_padding_mask):
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])  # (B, H, nb, nb)
    tok = keep.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    return tok


def dense_attention(q, k, v, tok, scale, dtype):
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


def check_against_fp64(q, k, v, kv_num_blocks, kv_indices, pad, block_size, kernel: str | None = None) -> dict:
    """Run the cupy backend (``kernel``: its tensor-core forward for fp16/bf16, "tc" or "mma"; default the
    backend's) and measure it against fp64; returns the errors (raises nothing)."""
    from .cupy_backend import cupy_attention_forward

    n, d = q.shape[-2:]
    scale = d**-0.5
    out, lse = cupy_attention_forward(
        q, k, v, kv_num_blocks, kv_indices, block_size=block_size, key_padding_mask=pad, scale=scale, kernel=kernel
    )
    torch.cuda.synchronize()
    tok = token_mask(kv_num_blocks, kv_indices, block_size, n, pad)
    ref, ref_lse = dense_attention(q, k, v, tok, scale, torch.float64)
    own, _ = dense_attention(q, k, v, tok, scale, q.dtype)
    finite = ref_lse.isfinite()
    return {
        "err": (out.double() - ref).abs().max().item(),
        "torch_err": (own.double() - ref).abs().max().item(),
        "lse_err": (lse.double() - ref_lse)[finite].abs().max().item() if finite.any() else 0.0,
        "lse_empty_ok": bool((lse[~finite] == float("-inf")).all()),
        "all_finite": bool(out.isfinite().all()),
        "allowed": 2 * (own.double() - ref).abs().max().item() + FLOOR[q.dtype],
    }

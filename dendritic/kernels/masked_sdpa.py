"""The ``"masked_sdpa"`` backend: the same block-sparse function on PyTorch's dense SDPA path.

The block mask is expanded to a token-level boolean mask (B, H, n, n) — kept blocks, minus padded keys — and handed
to ``torch.nn.functional.scaled_dot_product_attention`` as ``attn_mask``.  It computes every block (nothing is
skipped), but on the fastest dense kernel the platform has, so it is what a mask that cannot pay for itself (short
inputs, fine blocks, little sparsity) should run on: outputs agree with the block-sparse kernels to float tolerance.
Query rows with no real kept key return zeros (the reference's convention; SDPA itself would give NaN there).
It builds the n × n mask, so it suits the lengths where it is chosen (``"auto"`` picks it only there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import block_mask_to_dense

__all__ = ["masked_sdpa_attention"]


def _additive_mask(keep: torch.Tensor, key_padding_mask: torch.Tensor | None, n: int, b: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """(B, H, n, n) float: 0 where query i may attend key j (block pair kept, key j real), −inf elsewhere — built in
    one pass: the block mask viewed as (B, H, nb, b, nb, 1) selects between the keys' padding bias (B, 1, 1, 1, nb, b)
    and −inf."""
    B, H, nb, _ = keep.shape
    neg_inf = float("-inf")
    if key_padding_mask is None:
        pad = torch.zeros((), dtype=dtype, device=keep.device)
        if nb * b != n:  # the last block's missing tokens: masked like padding
            pad = torch.zeros(nb * b, dtype=dtype, device=keep.device)
            pad[n:] = neg_inf
            pad = pad.view(1, 1, 1, 1, nb, b)
    else:
        real = torch.nn.functional.pad(key_padding_mask.bool(), (0, nb * b - n))  # (B, nb·b), False past n
        pad = torch.zeros(real.shape, dtype=dtype, device=keep.device).masked_fill_(~real, neg_inf)
        pad = pad.view(B, 1, 1, 1, nb, b)
    sel = keep[:, :, :, None, :, None].expand(B, H, nb, b, nb, 1)
    bias = torch.where(sel, pad, neg_inf)
    if bias.shape[-1] != b:  # no padding tensor and whole blocks: the scalar did not broadcast the key positions
        bias = bias.expand(B, H, nb, b, nb, b)
    return bias.reshape(B, H, nb * b, nb * b)[..., :n, :n]


def _live_rows(keep: torch.Tensor, key_padding_mask: torch.Tensor | None, n: int, b: int) -> torch.Tensor:
    """(B, H, n, 1) bool: the query row has a real kept key — made at block level (a query block is live when one of
    its kept key blocks holds a real key) and expanded, cheaper than scanning the n × n mask at long n."""
    B, H, nb, _ = keep.shape
    if key_padding_mask is None:
        live = keep.any(-1)  # (B, H, nb)
    else:
        real = torch.nn.functional.pad(key_padding_mask.bool(), (0, nb * b - n)).view(B, nb, b).any(-1)  # (B, nb)
        live = (keep & real[:, None, None, :]).any(-1)
    return live[..., None].expand(B, H, nb, b).reshape(B, H, nb * b)[..., :n, None]


def masked_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor | None,
    kv_indices: torch.Tensor | None,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    block_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse attention as masked dense SDPA.  Arguments as in :func:`dendritic.kernels.block_sparse_attention`;
    ``block_mask``: the same mask as bool (B, H, nb, nb), when the caller has it (the model's policies do), instead
    of the compact layout — it saves rebuilding it.  Returns (B, H, n, d) in q's dtype.

    Few tensor operations on purpose (this path serves short inputs, where each one costs as much as the arithmetic):
    the additive bias SDPA's fused CPU/GPU kernels take without a conversion — on CPU fp32 made in one C++ pass
    (``block_bias`` beside the fused policy: building it with tensor ops cost ~0.5 ms a layer at n = 128, more than
    the attention), elsewhere by one ``where`` that expands block mask and padded keys together — and one ``where``
    for the rows with no real kept key."""
    n, b = q.shape[-2], block_size
    keep = block_mask if block_mask is not None else block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])
    B, H, nb, _ = keep.shape
    if q.device.type == "cpu" and q.dtype == torch.float32 and not torch.compiler.is_compiling():
        from .policy_ext import policy_extension  # the C++ extension beside the fused policy

        bias, live_rows = policy_extension().block_bias(keep, key_padding_mask, n, b)
        rows = live_rows[..., None]  # (B, H, n, 1)
    else:
        bias = _additive_mask(keep, key_padding_mask, n, b, q.dtype)
        rows = _live_rows(keep, key_padding_mask, n, b)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    # Rows with no real kept key come out of SDPA as NaN: zeros instead.
    return torch.where(rows, out, out.new_zeros(()))

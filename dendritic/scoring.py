"""`ImportanceScorer`: per-head block-pair importance from the layer's input, at cost linear in n.

For each head ``h`` the scorer maps block-pooled hidden states to rank-``r`` query and key features and scores
every (query block, key block) pair with their dot product::

    X (B, n, d) --mean over the real tokens of each block--> Xb (B, nb, d)
    Fq = Xb Uq_h + aq_h,  Fk = Xb Uk_h + ak_h                 (B, H, nb, r)   cost O(n d + nb d H r)
    S  = Fq Fkᵀ / sqrt(d_head) + log(tokens in key block)     (B, H, nb, nb)  cost O(nb² H r)
    ℓ  = log_softmax over the real key blocks of each row      -> estimated log attention *mass* per block

Pooling is linear, so ``Xb Wq + b`` equals the block mean of the layer's real queries: with rank ``r = d_head``
and weights copied from the layer's query/key projections, ``S`` is exactly the pooled-QK block score (a good
training-free predictor, DESIGN.md).  :meth:`init_from_attention` starts the scorer there, truncated to rank
``r`` through an SVD of each head's bilinear form, and training moves it on.  ``ℓ`` is scale-free (a row's
masses sum to 1), so one threshold is meaningful across rows, heads and inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import block_token_counts


def pool_blocks(x: torch.Tensor, key_padding_mask: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the real tokens of each block.

    x: (B, n, C); key_padding_mask: bool (B, n).  Returns pooled (B, nb, C) and real-token counts (B, nb).
    """
    B, n, C = x.shape
    counts = block_token_counts(key_padding_mask, block_size)  # (B, nb)
    nb = counts.shape[1]
    xm = x * key_padding_mask[..., None].to(x.dtype)  # (B, n, C): padded tokens contribute nothing
    xm = nn.functional.pad(xm, (0, 0, 0, nb * block_size - n))  # (B, nb*b, C)
    pooled = xm.view(B, nb, block_size, C).sum(dim=2) / counts.clamp_min(1.0)[..., None].to(x.dtype)  # (B, nb, C)
    return pooled, counts


def block_log_mass(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Turn block-pair scores into log attention mass per key block, row-normalised over real key blocks.

    scores: (B, H, nb, nb); counts: (B, nb) real tokens per block.  Padding-only key blocks get -inf.
    A block of c tokens with mean logit s carries mass ~ c·exp(s): hence the log-count term.
    """
    log_counts = torch.log(counts.clamp_min(1.0))  # (B, nb)
    s = scores.float().clamp(-1e4, 1e4) + log_counts[:, None, None, :]  # extreme logits stay finite
    s = s.masked_fill((counts == 0)[:, None, None, :], float("-inf"))  # block 0 is always real: rows stay finite
    return torch.log_softmax(s, dim=-1)  # (B, H, nb, nb) fp32


class ImportanceScorer(nn.Module):
    """Low-rank, per-head block-pair scorer (see the module docstring for the data flow)."""

    def __init__(self, hidden_size: int, num_heads: int, rank: int, head_dim: int):
        super().__init__()
        self.num_heads, self.rank = num_heads, rank
        self.scale = head_dim ** -0.5  # the attention's own 1/sqrt(d_head), so S lives on the logits' scale
        self.q_features = nn.Linear(hidden_size, num_heads * rank)
        self.k_features = nn.Linear(hidden_size, num_heads * rank)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, block_size: int) -> torch.Tensor:
        """hidden_states (B, n, d), key_padding_mask bool (B, n) -> ℓ (B, H, nb, nb), fp32 log block mass."""
        B = hidden_states.shape[0]
        pooled, counts = pool_blocks(hidden_states, key_padding_mask, block_size)  # (B, nb, d), (B, nb)
        nb = pooled.shape[1]
        fq = self.q_features(pooled).view(B, nb, self.num_heads, self.rank).transpose(1, 2)  # (B, H, nb, r)
        fk = self.k_features(pooled).view(B, nb, self.num_heads, self.rank).transpose(1, 2)  # (B, H, nb, r)
        scores = fq @ fk.transpose(-1, -2) * self.scale  # (B, H, nb, nb)
        return block_log_mass(scores, counts)

    @torch.no_grad()
    def init_from_attention(self, query: nn.Linear, key: nn.Linear) -> None:
        """Start from the best rank-r approximation of each head's query–key bilinear form (biases included).

        With x̃ = [x, 1], head h's logit is x̃ᵀ W̃qᵀ W̃k ỹ where W̃ = [W, b] is (d_head, d+1).  QR of both factors
        and an SVD of the small (d_head, d_head) core give the optimal rank-r factors A, B ((d+1, r) each).
        """
        H, r = self.num_heads, self.rank
        d = query.in_features
        dh = query.out_features // H
        wq = torch.cat([query.weight, query.bias[:, None]], dim=1).double().view(H, dh, d + 1)  # (H, dh, d+1)
        wk = torch.cat([key.weight, key.bias[:, None]], dim=1).double().view(H, dh, d + 1)
        qa, ra = torch.linalg.qr(wq.transpose(1, 2))  # (H, d+1, dh), (H, dh, dh)
        qb, rb = torch.linalg.qr(wk.transpose(1, 2))
        u, s, vh = torch.linalg.svd(ra @ rb.transpose(1, 2))  # core (H, dh, dh)
        k = min(r, dh)
        root = s[:, :k].sqrt()  # (H, k)
        a = qa @ u[:, :, :k] * root[:, None, :]  # (H, d+1, k)
        b = qb @ vh.transpose(1, 2)[:, :, :k] * root[:, None, :]
        if k < r:  # rank above d_head: the extra features start at zero
            a = nn.functional.pad(a, (0, r - k))
            b = nn.functional.pad(b, (0, r - k))
        for lin, fac in ((self.q_features, a), (self.k_features, b)):
            lin.weight.copy_(fac[:, :d, :].permute(0, 2, 1).reshape(H * r, d).to(lin.weight.dtype))
            lin.bias.copy_(fac[:, d, :].reshape(H * r).to(lin.bias.dtype))

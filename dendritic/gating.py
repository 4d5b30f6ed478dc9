"""`GatingController`: how much sparser (or denser) than its budget each head should be *for this input*.

Complexity features of the input — its length, how spread its hidden states are, and how peaked each head's
block scores are (the entropy of ℓ) — feed a small MLP whose output shifts each head's threshold by at most
``max_shift`` (in log-mass units).  A positive shift raises the threshold (more blocks skipped), a negative one
protects a hard input.  The last layer starts at zero, so an untrained gate leaves every budget unchanged; the
sparsity loss holds the *batch mean* to the budget, leaving the gate free to move individual inputs.
"""

from __future__ import annotations

import torch
from torch import nn


class GatingController(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, max_shift: float, hidden: int = 32):
        super().__init__()
        self.max_shift = max_shift
        n_features = hidden_size + num_heads + 2
        self.norm = nn.LayerNorm(n_features)
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, num_heads))
        self.reset_output()

    def reset_output(self) -> None:
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @staticmethod
    def features(hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, log_mass: torch.Tensor) -> torch.Tensor:
        """(B, d + H + 2) fp32 complexity features: mean hidden state, log length, spread of token norms, and each
        head's mean row entropy of the block log-mass ℓ (B, H, nb, nb)."""
        # In fp32 whatever the model's dtype: sums over n tokens overflow fp16 (at n = 4096 the token norms of a
        # MiniLM sum past 65504, the shift became NaN and every block but the floor was dropped).
        hidden_states = hidden_states.float()
        real = key_padding_mask[..., None].float()  # (B, n, 1)
        length = real.sum(dim=1).clamp_min(1.0)  # (B, 1)
        mean = (hidden_states * real).sum(dim=1) / length  # (B, d)
        norms = hidden_states.norm(dim=-1, keepdim=True)  # (B, n, 1)
        norm_mean = (norms * real).sum(dim=1) / length
        norm_std = ((((norms - norm_mean[:, None]) ** 2 * real).sum(dim=1) / length) + 1e-6).sqrt()  # (B, 1)
        p = log_mass.exp()
        entropy = -(p * log_mass.clamp_min(-1e4)).sum(dim=-1)  # (B, H, nb): -inf entries carry p = 0
        return torch.cat([mean, length.log(), norm_std, entropy.mean(dim=-1).to(mean.dtype)], dim=-1)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, log_mass: torch.Tensor) -> torch.Tensor:
        """Threshold shift per input and head, (B, H), bounded by ``±max_shift``."""
        f = self.features(hidden_states, key_padding_mask, log_mass.detach()).to(self.norm.weight.dtype)
        return self.max_shift * torch.tanh(self.mlp(self.norm(f)))

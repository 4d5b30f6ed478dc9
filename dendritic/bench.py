"""The one timing harness, and what every benchmark needs around it: inputs, dense baselines, correctness checks.

Used by the result-writing scripts (``python -m reproduce.bench.*``) and the pytest-benchmark suites
(``benchmarks/``); it imports the package only.

Timing.  This class of machine drifts by ±25 % over minutes, so every comparison is timed INTERLEAVED
(:func:`interleaved`): round r runs each candidate once, back to back (the order rotated every round so no candidate
always follows the same one), and ratios are taken per round — T_x[r] / T_baseline[r] — before the median
(:func:`paired_ratio`).  Drift then hits numerator and denominator alike.  On a GPU, :func:`cuda_median_ms` times
with CUDA events.  :func:`load_average` is recorded at the start of every timed run: a number measured on busy
cores is labelled as such.

Baselines.  :func:`dense_twin` is a plain ``transformers`` ``BertModel`` carrying the same weights as a DendriticBERT
model, under ``attn_implementation`` "sdpa" or "eager" (or any registered attention function): the dense baseline
is HF's own code, not a switch inside DendriticBERT.

Correctness.  :func:`check_against_reference` compares a kernel output with the ``reference`` backend on the same
mask; :func:`check_model_against_reference` compares a whole forward pass on one backend with the same model on
the ``reference`` backend (in eval mode the masks are a function of the inputs and weights, so both run the same
masks).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import BertConfig, BertModel

from .config import DendriticConfig
from .kernels import block_sparse_attention
from .kernels.layout import dense_to_block_mask, random_block_mask
from .modeling import DendriticBertModel
from .perforation import PerforationUnit
from .policies import POLICIES

__all__ = ["block_mask_for_sparsity", "check_against_reference", "check_model_against_reference", "cuda_median_ms",
           "dense_twin", "eager_attention", "eager_fits", "interleaved", "load_average", "make_inputs", "median_p90",
           "paired_ratio", "shaped_model", "timed"]


# -- timing ----------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, rounds: int, *, warmup: int = 1) -> dict[object, list[float]]:
    """Seconds per call of every function in ``fns``, ``rounds`` times each, interleaved round by round.

    ``warmup`` untimed rounds go first.  Within round r the order is ``fns`` rotated by r."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name]))
    return times


def median_p90(ts: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (nearest rank) of a list of times."""
    s = sorted(ts)
    return statistics.median(s), s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r] (both lists from the same :func:`interleaved` call)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def cuda_median_ms(fn: Callable[[], object], *, warmup: int, repeats: int) -> float:
    """Median milliseconds per call over ``repeats`` CUDA-event-timed repeats (after ``warmup`` calls); a repeat
    runs several calls when one is short, so launch gaps amortise the same way for every backend."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, min(50, math.ceil(1.0 / max(start.elapsed_time(end), 1e-3))))  # >= ~1 ms per repeat
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (recorded at the start of every timed run)."""
    return [round(x, 2) for x in os.getloadavg()]


# -- inputs and baselines --------------------------------------------------------------------------------------------
def block_mask_for_sparsity(B: int, H: int, nb: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random bool (B, H, nb, nb) block mask with about ``sparsity`` of the blocks skipped, the diagonal and the
    block-0 column included — so short sequences cannot reach high sparsity; report the achieved value."""
    floor = (2 * nb - 1) / nb**2  # fraction of blocks the floor keeps
    keep_extra = max(0.0, ((1.0 - sparsity) - floor) / (1.0 - floor)) if nb > 1 else 1.0
    g = torch.Generator().manual_seed(seed)
    return random_block_mask(B, H, nb, keep_extra, generator=g)


def make_inputs(B: int, H: int, n: int, d: int, block_size: int, sparsity: float, seed: int = 0):
    """q, k, v (B, H, n, d) fp32 and the compact mask of :func:`block_mask_for_sparsity`; returns
    ``(q, k, v, kv_num_blocks, kv_indices, achieved_sparsity)``."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))
    keep = block_mask_for_sparsity(B, H, -(-n // block_size), sparsity, seed)
    kv_num_blocks, kv_indices = dense_to_block_mask(keep)
    return q, k, v, kv_num_blocks, kv_indices, 1.0 - keep.float().mean().item()


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Dense attention materialising the n × n probabilities (what HF's eager BertSelfAttention does)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # (B, H, n, n)
    return probs @ v


def eager_fits(B: int, H: int, n: int, max_gib: float, element_size: int = 4) -> bool:
    """Whether eager attention's n × n buffers (scores, probabilities, additive mask) fit in ``max_gib``."""
    return 3 * B * H * n * n * element_size <= max_gib * (1 << 30)


def shaped_model(preset: str, n: int, *, block_size: int, attention_backend: str = "cpu",
                 seed: int = 0, **config_overrides) -> DendriticBertModel:
    """A random-weight DendriticBertModel with a preset's shapes (eval mode); positions extended to ``n`` when the
    preset's 512 do not reach (``model.config.max_position_embeddings`` says so).  Weights do not change the work.
    ``config_overrides``: further DendriticConfig fields (e.g. ``scorer_rank``)."""
    positions = max(n, DendriticConfig.from_preset(preset).max_position_embeddings)
    torch.manual_seed(seed)
    cfg = DendriticConfig.from_preset(preset, block_size=block_size, attention_backend=attention_backend,
                                      max_position_embeddings=positions, **config_overrides)
    return DendriticBertModel(cfg).eval()


_BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


def dense_twin(model: DendriticBertModel, attn_implementation: str) -> BertModel:
    """A plain ``transformers.BertModel`` with ``model``'s BERT weights (the policy's are left out), eval mode."""
    cfg = BertConfig(**{k: getattr(model.config, k) for k in _BERT_FIELDS}, attn_implementation=attn_implementation)
    twin = BertModel(cfg, add_pooling_layer=model.pooler is not None)
    state = {k: v for k, v in model.state_dict().items() if k in twin.state_dict()}
    missing = set(twin.state_dict()) - set(state)
    if missing:
        raise ValueError(f"dense twin: weights missing from the source model: {sorted(missing)[:5]}")
    twin.load_state_dict(state)
    return twin.eval()


# -- correctness -----------------------------------------------------------------------------------------------------
# Largest (heads × n × n) logits tensor a reference check may build: 2^25 fp32 values = 128 MiB.
_REFERENCE_ELEMENTS = 1 << 25


def check_against_reference(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    block_size: int,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> dict:
    """Compare a backend's output ``out`` (B, H, n, d) with the ``reference`` backend on the same inputs and mask.

    Whole tensors when the reference's n×n logits fit in 2^25 values; otherwise batch row 0 and as many heads as
    fit (at least one) — every kept and skipped block of those heads is checked.  Raises ``AssertionError`` on a
    mismatch; returns ``{"checked": "full"|"batch0_heads0-<h>", "max_abs_err": ...}``."""
    B, H, n, _ = q.shape
    heads = max(1, min(H, _REFERENCE_ELEMENTS // (n * n)))
    full = B * H * n * n <= _REFERENCE_ELEMENTS
    sl = (slice(None), slice(None)) if full else (slice(0, 1), slice(0, heads))
    pad = None if key_padding_mask is None else (key_padding_mask if full else key_padding_mask[:1])
    ref = block_sparse_attention(
        q[sl].contiguous(), k[sl].contiguous(), v[sl].contiguous(),
        kv_num_blocks[sl].contiguous(), kv_indices[sl].contiguous(),
        block_size=block_size, key_padding_mask=pad, backend="reference", scale=scale,
    )
    got = out[sl]
    assert not got.isnan().any(), "backend output contains NaN"
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    return {"checked": "full" if full else f"batch0_heads0-{heads - 1}", "max_abs_err": float((got - ref).abs().max())}


@contextmanager
def _replaying(masks: tuple[torch.Tensor, ...]):
    """Register, for the duration, a policy ``"_replay"`` that hands each layer (in call order) its recorded mask."""
    layers = iter(masks)

    def replay(layer, ctx):
        return PerforationUnit.from_hard_mask(next(layers), ctx.pair_real, ctx.floor, ctx.budgets)

    POLICIES["_replay"] = replay
    try:
        yield "_replay"
    finally:
        del POLICIES["_replay"]


@torch.no_grad()
def check_model_against_reference(model: DendriticBertModel, input_ids: torch.Tensor, backend: str,
                                   attention_mask: torch.Tensor | None = None, *, atol: float = 1e-4,
                                   **controls) -> dict:
    """One forward on ``backend`` against the same model on the ``reference`` backend, with the **same masks**
    (``controls``: further per-call arguments of the forward, e.g. ``head_budgets``).

    The reference replays the block masks the backend's forward chose, layer by layer: a later layer's policy
    reads hidden states that differ between backends by rounding, and a score that sits on its threshold may
    flip — a different mask, not a kernel error.  How many blocks the reference's own policy would have decided
    differently is reported as ``mask_flips``.  Beyond 2^25 reference logits per layer only the first sequence is
    compared.  Raises ``AssertionError`` on a mismatch; returns ``{"checked": "full"|"batch0", "max_abs_err",
    "block_sparsity", "mask_flips"}``."""
    B, n = input_ids.shape
    full = B * model.config.num_attention_heads * n * n <= _REFERENCE_ELEMENTS
    ids = input_ids if full else input_ids[:1]
    mask = attention_mask if full or attention_mask is None else attention_mask[:1]
    got = model(ids, attention_mask=mask, attention_backend=backend, output_block_masks=True, **controls)
    own = model(ids, attention_mask=mask, attention_backend="reference", output_block_masks=True, **controls)
    flips = sum(int((a != b).sum()) for a, b in zip(got.block_masks, own.block_masks))
    with _replaying(got.block_masks) as replay:
        ref = model(ids, attention_mask=mask, attention_backend="reference", **{**controls, "policy": replay})
    assert torch.equal(got.block_sparsity, ref.block_sparsity), "the replayed masks differ from the recorded ones"
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, rtol=atol, atol=atol)
    return {"checked": "full" if full else "batch0",
            "max_abs_err": float((got.last_hidden_state - ref.last_hidden_state).abs().max()),
            "block_sparsity": float(got.block_sparsity.mean()), "mask_flips": flips}

"""The learned policy's inference forward as one C++ call (``csrc/policy_cpu.cpp``): scorer, gate, threshold, hard
mask, the kernels' compact layout and the statistics, for CPU fp32 inputs.

Why: per layer the Python modules dispatch ~100 small tensor operations (and a full sort for the budget's order
statistic); at short inputs that costs more than the attention it could save.  The fused call is plain loops
around one scorer GEMM: its floats (pooling, scores, log block mass, gate) follow the Python expressions term by
term, agreeing with them to float rounding (not bit for bit: the reduction order differs), and its discrete part
(order statistic by ``nth_element``, comparison, floor, compaction, counts) reproduces the Python perforation unit
exactly given those floats — so a block decision can differ from the Python path's only where a log mass lies within
rounding of its threshold (``tests/test_policy_fused.py`` checks both halves).  The Python modules stay the
specification and the training path.

The extension is JIT-built on first use into torch's extension cache (:mod:`dendritic.kernels.policy_ext`, like the
``cpu`` attention backend); a failed build raises ``ImportError`` with the compiler output.
:func:`fused_policy_available` says whether a call can use it.
"""

from __future__ import annotations

import torch

from .kernels.policy_ext import policy_extension
from .perforation import PerforationOutput

__all__ = ["fused_learned_policy", "fused_policy_available", "scorer_weights"]

_extension = policy_extension  # the loader (kernel layer: masked SDPA uses the same extension)


def fused_policy_available(hidden_states: torch.Tensor) -> bool:
    """The fused call serves CPU fp32 inference (the policy's training path is differentiable Python)."""
    return hidden_states.device.type == "cpu" and hidden_states.dtype == torch.float32 and not torch.is_grad_enabled()


def fused_learned_policy(layer, hidden_states: torch.Tensor, key_padding: torch.Tensor, budgets: torch.Tensor,
                         temperature: float) -> PerforationOutput:
    """The ``learned`` policy of ``layer`` (a DendriticSelfAttention) with hard masks, in one C++ call."""
    scorer, gate, perforation = _submodules(layer, "scorer", "gate", "perforation")
    gate_params, ln_eps = [], 0.0
    if layer.gating:
        norm, mlp = _submodules(gate, "norm", "mlp")
        lin1, lin2 = _submodules(mlp, "0", "2")  # Linear, GELU, Linear
        gate_params = [*_params(norm, "weight", "bias"), *_params(lin1, "weight", "bias"), *_params(lin2, "weight", "bias")]
        ln_eps = float(norm.eps)
    # Eager calls go straight to the extension (the custom operator's Python dispatch costs ~50 µs a layer, as much
    # as the policy itself at GLUE lengths); a torch.compile trace goes through the operator.
    call = _learned_policy if torch.compiler.is_compiling() else _direct
    w_qk, b_qk = scorer_weights(scorer)
    hard, kv_num_blocks, kv_indices, keep_fraction, target_keep, block_sparsity, pair_sparsity = call(
        hidden_states, key_padding, w_qk, b_qk, scorer.num_heads, scorer.rank, float(scorer.scale), gate_params, ln_eps,
        float(gate.max_shift), *_params(perforation, "offset"), budgets, layer.block_size, layer.dense_cls_row,
        float(temperature))
    return PerforationOutput(None, hard, keep_fraction, target_keep, block_sparsity, kv_num_blocks, kv_indices, "fused",
                             pair_sparsity)


# The policy's modules and parameters read through the modules' own dictionaries: ``nn.Module.__getattr__`` is the
# slow fallback path of attribute lookup and the call needs ~20 lookups a layer, every forward pass.  Read
# every call (not cached): a parameter replaced by ``load_state_dict(assign=True)`` or ``.to()`` is seen at once.
def _submodules(module, *names):
    mods = module._modules
    return tuple(mods[name] for name in names)


def _params(module, *names):
    params = module._parameters
    return tuple(params[name] for name in names)


def scorer_weights(scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """The scorer's two projections as the extension's one GEMM takes them: ``[W_q; W_k]ᵀ`` (d, 2·H·r), contiguous,
    and ``[b_q; b_k]``.  Made once and kept on the scorer until a parameter changes (its version counter or storage
    moves: an optimiser step, ``load_state_dict``, ``.to()``) — rebuilding the copy every call would cost about what
    the merged GEMM saves.  Inside a ``torch.compile`` trace it is built in the graph."""
    q_lin, k_lin = _submodules(scorer, "q_features", "k_features")
    params = (*_params(q_lin, "weight"), *_params(k_lin, "weight"), *_params(q_lin, "bias"), *_params(k_lin, "bias"))
    if torch.compiler.is_compiling() or any(p.is_inference() for p in params):
        # a trace: built in the graph; inference tensors (parameters made under torch.inference_mode) have no
        # version counter to key a cache on: built per call
        return torch.cat(params[:2]).t().contiguous(), torch.cat(params[2:])
    key = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in params)
    cached = scorer.__dict__.get("_fused_weights")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.cat(params[:2]).t().contiguous(), torch.cat(params[2:]).contiguous())
        scorer.__dict__["_fused_weights"] = cached
    return cached[1], cached[2]


def _direct(x, key_padding, w_qk, b_qk, num_heads, rank, scale, gate, ln_eps, max_shift, offset, budgets, block_size,
            dense_cls_row, temperature):
    out = _extension().learned_policy(x, key_padding, w_qk, b_qk, num_heads, rank, scale, gate or None, ln_eps,
                                      max_shift, offset, budgets, block_size, dense_cls_row, temperature)
    return out[:6] + [out[8]]  # hard, kv_num_blocks, kv_indices, keep_fraction, target_keep, block_sparsity,
    #                            pair_sparsity (the log mass and gate shift at 6, 7 are for the tests)


# The extension call as a PyTorch operator (torch.library), so the model compiles with torch.compile(fullgraph=True).
@torch.library.custom_op("dendritic::learned_policy", mutates_args=())
def _learned_policy(x: torch.Tensor, key_padding: torch.Tensor, w_qk: torch.Tensor, b_qk: torch.Tensor,
                    num_heads: int, rank: int, scale: float, gate: list[torch.Tensor],
                    ln_eps: float, max_shift: float, offset: torch.Tensor, budgets: torch.Tensor, block_size: int,
                    dense_cls_row: bool, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    return tuple(_direct(x, key_padding, w_qk, b_qk, num_heads, rank, scale, gate, ln_eps, max_shift, offset, budgets,
                         block_size, dense_cls_row, temperature))


@_learned_policy.register_fake
def _(x, key_padding, w_qk, b_qk, num_heads, rank, scale, gate, ln_eps, max_shift, offset, budgets, block_size,
      dense_cls_row, temperature):
    B, n = x.shape[0], x.shape[1]
    nb = (n + block_size - 1) // block_size
    H = num_heads
    return (x.new_empty((B, H, nb, nb), dtype=torch.bool), x.new_empty((B, H, nb), dtype=torch.int32),
            x.new_empty((B, H, nb, nb), dtype=torch.int32), x.new_empty((B, H)), x.new_empty((B, H)), x.new_empty((B,)),
            x.new_empty((B,)))

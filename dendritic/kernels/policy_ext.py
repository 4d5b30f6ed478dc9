"""Loader of the CPU extension ``dendritic/csrc/policy_cpu.cpp``: the learned policy's fused inference call (used by
:mod:`dendritic.fused_policy`) and ``block_bias``, masked SDPA's additive token mask (used by
:mod:`dendritic.kernels.masked_sdpa`).  It lives in the kernel layer so that both can reach it without a kernel
importing the model.

The extension is JIT-built on first use into torch's extension cache (like the ``cpu`` attention backend),
``-ffp-contract=off`` so that its discrete decisions reproduce the Python expressions exactly, and
``-fno-trapping-math -fno-math-errno`` (as PyTorch's own build) so that GCC vectorises the branch-free selects of its
hot loops — these two change no value, only what the compiler may assume about floating-point exceptions and errno.
A failed build raises ``ImportError`` with the compiler output.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["policy_extension"]

_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "policy_cpu.cpp"
_ext = None


def policy_extension():
    global _ext
    if _ext is None:
        from torch.utils.cpp_extension import load

        try:
            _ext = load(name="dendritic_policy_cpu", sources=[str(_SOURCE)],
                        extra_cflags=["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math",
                                      "-fno-math-errno"],
                        extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # compiler missing or compile error: the compiler's message, as ImportError
            raise ImportError(f"building the fused policy extension failed:\n{exc}") from exc
    return _ext

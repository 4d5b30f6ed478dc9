"""int8 dynamic quantisation of the BERT linear layers, the attention policy left in fp32 (issue #15, goal 8).

Sparse attention removes work from the attention core only; at GLUE lengths (n ≤ 128) that core is ~10 % of a
MiniLM-L6 forward and the linear layers are most of the rest.  Quantising those linear layers is the complementary
saving, and the two compound::

    X ─ query/key/value (int8) ─ policy (fp32: scorer, gate, threshold) ─ block-sparse attention (fp32)
      ─ attention.output.dense (int8) ─ intermediate.dense (int8) ─ output.dense (int8) ─> next layer

:func:`quantize_int8` applies PyTorch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``: weights
int8 per tensor, activations quantised per call from their observed range, x86/fbgemm kernels on CPU) to every
``nn.Linear`` of a model **except** the policy's own (``scorer.*``, ``gate.*``): the fused C++ policy reads their
fp32 weights directly, and they are ~2 % of a layer's work.  The same function quantises the dense baseline (a plain
``transformers.BertModel``: there every linear layer is converted), so int8 is compared with int8.

CPU only, inference only (dynamic quantisation has no backward and no CUDA kernels).  PyTorch ≥ 2.10 marks
``torch.ao.quantization`` deprecated in favour of ``torchao``; it is still the supported CPU path for eager int8
linear layers with no compilation step, which is why it is used here (the warning is silenced in this call only).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["POLICY_MODULES", "int8_linear_names", "quantize_int8"]

# Module-name parts that mark the attention policy (DendriticSelfAttention.scorer / .gate): kept in fp32.
POLICY_MODULES = ("scorer", "gate")


def int8_linear_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules :func:`quantize_int8` converts (every one outside the policy)."""
    return [name for name, mod in model.named_modules()
            if type(mod) is nn.Linear and not set(name.split(".")) & set(POLICY_MODULES)]


def quantize_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` (eval mode, CPU) with its non-policy linear layers dynamically quantised to int8.

    Raises ``ValueError`` before any work for a model in training mode or with parameters off the CPU."""
    if model.training:
        raise ValueError("quantize_int8: call model.eval() first (dynamic quantisation is inference only)")
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"quantize_int8: CPU models only (parameters on {sorted(devices)}); "
                         "dynamic int8 quantisation has no CUDA kernels")
    names = int8_linear_names(model)
    if not names:
        raise ValueError("quantize_int8: the model has no linear layer outside the policy")
    target = model if inplace else copy.deepcopy(model)
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # torch.ao's deprecation notices (docstring)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.ao.quantization.quantize_dynamic(target, spec, dtype=torch.qint8, inplace=True)
    return target

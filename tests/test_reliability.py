"""Reliability: bad input gets one clear error (naming the argument) or a documented finite result; randomised
model- and unit-level invariants; determinism; safe loading; no network; atomic result writes.

Bad inputs already covered elsewhere are not repeated here: the model's over-long sequence, 2-D wrong-shape
attention mask, empty batch, n = 1, NaN embeddings and NaN weights (tests/test_model.py); bad config sizes,
target_sparsity 1.0 / -0.1 and the unknown preset (tests/test_model.py); the missing data directory and the
unknown GLUE task (tests/test_data.py); the cupy backend on CPU tensors (tests/test_kernels_cupy_gpu.py).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModel

from dendritic import DendriticBertModel, DendriticConfig
from dendritic.kernels import block_sparse_attention
from dendritic.kernels.layout import dense_to_block_mask, num_blocks, random_block_mask
from dendritic.masks import safety_floor
from dendritic.perforation import PerforationUnit
from dendritic.provenance import RESULTS_SCHEMA_VERSION, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
VOCAB = 1000  # the smoke preset with a small vocabulary: model construction stays ~0.1 s per example
DATA_DIR = Path(os.environ.get("DENDRITIC_DATA_DIR", REPO.parent / "shared" / "data"))
needs_offline_data = pytest.mark.skipif(not (DATA_DIR / "glue").is_dir() or not (DATA_DIR / "mlm").is_dir(),
                                        reason=f"no offline data at {DATA_DIR}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every tensor here is small: one intra-op thread is faster, and immune to a busy machine's other cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kernel_case(B=1, H=2, n=10, d=16, block_size=4, dtype=torch.float32):
    q, k, v = (torch.randn(B, H, n, d, dtype=dtype) for _ in range(3))
    nb = num_blocks(n, block_size)
    kv_num_blocks, kv_indices = dense_to_block_mask(torch.ones(B, H, nb, nb, dtype=torch.bool))
    return q, k, v, kv_num_blocks, kv_indices


# ==================================================================================================================
# Kernels: every bad argument raises before any kernel runs (backends "reference" and "cpu")
# ==================================================================================================================
def _corrupt(name):
    """A function (q, k, v, kv_num_blocks, kv_indices) -> (args, kwargs) that breaks one argument."""

    def out_of_range_index(q, k, v, nblk, idx):
        idx = idx.clone()
        idx[0, 0, 0, 0] = idx.shape[-1]  # one past the last key block, in a used slot
        return (q, k, v, nblk, idx), {}

    def negative_index(q, k, v, nblk, idx):
        idx = idx.clone()
        idx[0, 1, 0, 1] = -1
        return (q, k, v, nblk, idx), {}

    def too_many_blocks(q, k, v, nblk, idx):
        nblk = nblk.clone()
        nblk[0, 0, 0] = idx.shape[-1] + 1
        return (q, k, v, nblk, idx), {}

    def negative_blocks(q, k, v, nblk, idx):
        nblk = nblk.clone()
        nblk[0, 0, 1] = -1
        return (q, k, v, nblk, idx), {}

    cases = {
        "out_of_range_index": (out_of_range_index, ValueError, r"kv_indices must lie in \[0, 2\]"),
        "negative_index": (negative_index, ValueError, r"kv_indices must lie in \[0, 2\]"),
        "too_many_blocks": (too_many_blocks, ValueError, r"kv_num_blocks must lie in \[0, 3\]"),
        "negative_blocks": (negative_blocks, ValueError, r"kv_num_blocks must lie in \[0, 3\]"),
        "shape_mismatch": (lambda q, k, v, n_, i: ((q, k[:, :, :9].contiguous(), v, n_, i), {}), ValueError,
                           "q, k, v must have the same shape"),
        "dtype_mismatch": (lambda q, k, v, n_, i: ((q, k.double(), v, n_, i), {}), TypeError, "share a dtype"),
        "integer_dtype": (lambda q, k, v, n_, i: ((q.int(), k.int(), v.int(), n_, i), {}), TypeError,
                          "q must be float16, bfloat16, float32 or float64"),
        "device_mismatch": (lambda q, k, v, n_, i: ((q, k.to("meta"), v, n_, i), {}), ValueError, "same device"),
        "three_d": (lambda q, k, v, n_, i: ((q[0], k[0], v[0], n_, i), {}), ValueError,
                    r"q must have shape \(B, H, n, d\)"),
        "non_contiguous": (lambda q, k, v, n_, i: ((q.mT, k.mT, v.mT, n_, i), {}), ValueError, "q must be contiguous"),
        "index_dtype": (lambda q, k, v, n_, i: ((q, k, v, n_, i.long()), {}), TypeError, "kv_indices must be int32"),
        "index_not_tensor": (lambda q, k, v, n_, i: ((q, k, v, n_.tolist(), i), {}), TypeError,
                             "kv_num_blocks must be an int32 torch.Tensor"),
        "index_shape": (lambda q, k, v, n_, i: ((q, k, v, n_, i[..., :2].contiguous()), {}), ValueError,
                        r"kv_indices must have shape \(1, 2, 3, 3\)"),
        "zero_head_dim": (lambda q, k, v, n_, i: ((q[..., :0].contiguous(), k[..., :0].contiguous(),
                                                   v[..., :0].contiguous(), n_, i), {}), ValueError,
                          "at least one batch row, head, token and feature"),
        "padding_mask_dtype": (lambda q, k, v, n_, i: ((q, k, v, n_, i), {"key_padding_mask": torch.ones(1, 10)}),
                               TypeError, "key_padding_mask must be bool"),
        "padding_mask_shape": (lambda q, k, v, n_, i: ((q, k, v, n_, i),
                                                       {"key_padding_mask": torch.ones(1, 11, dtype=torch.bool)}),
                               ValueError, r"key_padding_mask must have shape \(1, 10\)"),
        "block_size_zero": (lambda q, k, v, n_, i: ((q, k, v, n_, i), {"block_size": 0}), ValueError,
                            "block_size must be a positive int, got 0"),
        "block_size_negative": (lambda q, k, v, n_, i: ((q, k, v, n_, i), {"block_size": -4}), ValueError,
                                "block_size must be a positive int, got -4"),
        "scale_nan": (lambda q, k, v, n_, i: ((q, k, v, n_, i), {"scale": float("nan")}), ValueError,
                      "scale must be a finite float"),
        "unknown_backend": (lambda q, k, v, n_, i: ((q, k, v, n_, i), {"backend": "triton"}), ValueError,
                            r"backend must be one of \['reference', 'cpu', 'cupy', 'flex', 'masked_sdpa'\], got 'triton'"),
    }
    return cases[name]


KERNEL_BAD_INPUTS = [
    "out_of_range_index", "negative_index", "too_many_blocks", "negative_blocks", "shape_mismatch", "dtype_mismatch",
    "integer_dtype", "device_mismatch", "three_d", "non_contiguous", "index_dtype", "index_not_tensor", "index_shape",
    "zero_head_dim", "padding_mask_dtype", "padding_mask_shape", "block_size_zero", "block_size_negative",
    "scale_nan", "unknown_backend",
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", KERNEL_BAD_INPUTS)
def test_kernel_bad_input_raises_clear_error(case, backend):
    corrupt, error, match = _corrupt(case)
    args, kwargs = corrupt(*_kernel_case())
    kwargs = {"block_size": 4, "backend": backend, **kwargs}
    with pytest.raises(error, match=match):
        block_sparse_attention(*args, **kwargs)


@settings(max_examples=150, **SETTINGS)
@given(n=st.integers(1, 60), block_size=st.integers(1, 16), seed=st.integers(0, 2**31 - 1),
       backend=st.sampled_from(["reference", "cpu"]), where=st.sampled_from(["used", "tail", "num_blocks"]))
def test_kernel_random_corrupt_indices(n, block_size, seed, backend, where):
    """Random garbage in the block mask: in a used slot or in kv_num_blocks it raises ValueError naming the
    argument; in the unused tail it is ignored (finite output, equal to the clean result)."""
    g = torch.Generator().manual_seed(seed)
    nb = num_blocks(n, block_size)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    keep = random_block_mask(1, 2, nb, 0.5, generator=g)
    nblk, idx = dense_to_block_mask(keep)
    kw = {"block_size": block_size, "backend": backend}
    garbage = int(torch.randint(nb, 2**31 - 1, (), generator=g)) * (1 if torch.rand((), generator=g) < 0.5 else -1)
    if garbage < 0:
        garbage = min(garbage, -1)
    h, i = int(torch.randint(0, 2, (), generator=g)), int(torch.randint(0, nb, (), generator=g))
    if where == "num_blocks":
        bad = nblk.clone()
        bad[0, h, i] = nb + abs(garbage) % 1000 + 1 if garbage > 0 else -(abs(garbage) % 1000) - 1
        with pytest.raises(ValueError, match="kv_num_blocks must lie in"):
            block_sparse_attention(q, k, v, bad, idx, **kw)
        return
    bad = idx.clone()
    used = int(nblk[0, h, i])
    if where == "used":
        bad[0, h, i, int(torch.randint(0, used, (), generator=g))] = garbage  # the floor keeps >= 1 block
        with pytest.raises(ValueError, match="kv_indices must lie in"):
            block_sparse_attention(q, k, v, nblk, bad, **kw)
    elif used < nb:
        bad[0, h, i, used:] = garbage
        out = block_sparse_attention(q, k, v, nblk, bad, **kw)
        assert torch.isfinite(out).all()
        assert torch.equal(out, block_sparse_attention(q, k, v, nblk, idx, **kw))


def test_cupy_backend_without_cupy_raises_import_error(monkeypatch):
    """No CuPy installed: asking for the backend raises ImportError saying what to install (never a fallback)."""
    import importlib.util

    import dendritic.kernels as K

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cupy" else real_find_spec(name, *a))
    monkeypatch.delitem(sys.modules, "dendritic.kernels.cupy_backend", raising=False)
    monkeypatch.delitem(K._loaded, "cupy", raising=False)
    q, k, v, nblk, idx = _kernel_case(n=32, d=32)
    with pytest.raises(ImportError, match=r"needs CuPy.*pip install"):
        block_sparse_attention(q, k, v, nblk, idx, block_size=16, backend="cupy")
    assert "cupy" not in K.available_backends()


# -- fp16 / bf16 with large logits -----------------------------------------------------------------------------------
def _oracle_and_fp32_bound(q, k, v, kv_num_blocks, kv_indices, block_size, key_padding_mask):
    """The fp64 oracle, and a first-order bound on what fp32 arithmetic may change in it.

    Any fp32 evaluation of a logit ``s·q·k`` is off by at most ``δ = γ_{d+2}·s·Σ|q_t k_t|`` (Higham's bound for a
    dot product, plus the scale multiplication; ``γ_m ≈ m·2^-24``), in any summation order.  The output's
    derivative with respect to logit j is ``p_j (v_j − out)``, so it moves by at most ``Σ_j p_j δ_j |v_j − out|``.
    With logits ~1e4 and near-ties this is what fp32 can do; a computation in fp16/bf16 arithmetic exceeds it by
    orders of magnitude."""
    from dendritic.kernels.layout import block_mask_to_dense

    n, d = q.shape[-2:]
    keep = block_mask_to_dense(kv_num_blocks, kv_indices, kv_indices.shape[-1])  # (B, H, nb, nb)
    tok = keep.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]  # (B, H, n, n)
    if key_padding_mask is not None:
        tok = tok & key_padding_mask[:, None, None, :]
    scale = d ** -0.5
    qd, kd, vd = q.double(), k.double(), v.double()
    logits = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale  # (B, H, n, n)
    p = torch.softmax(logits.masked_fill(~tok, float("-inf")), -1).nan_to_num(nan=0.0)
    out = p @ vd  # (B, H, n, d)
    delta = (d + 2) * 2.0**-24 * torch.einsum("bhqd,bhkd->bhqk", qd.abs(), kd.abs()) * scale  # (B, H, n, n)
    spread = (vd[:, :, None, :, :] - out[:, :, :, None, :]).abs()  # (B, H, n, n, d): |v_j - out_i|
    return out, torch.einsum("bhqk,bhqkd->bhqd", p * delta, spread)


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@settings(max_examples=300, **SETTINGS)
@given(n=st.integers(1, 130), d=st.sampled_from([16, 32, 64]), block_size=st.sampled_from([1, 4, 8, 16, 32]),
       dtype=st.sampled_from(["float16", "bfloat16"]), backend=st.sampled_from(["reference", "cpu"]),
       padded=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_low_precision_large_logits_finite_and_close(n, d, block_size, dtype, backend, padded, seed):
    """q, k scaled x100 (logits ~1e4) in fp16/bf16: outputs are finite and within fp32 arithmetic's bound of the
    fp64 oracle (both backends compute in fp32) plus one rounding of the output to the input dtype."""
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    q, k = ((torch.randn(1, 2, n, d, generator=g) * 100).to(dt) for _ in range(2))
    v = torch.randn(1, 2, n, d, generator=g).to(dt)
    nb = num_blocks(n, block_size)
    nblk, idx = dense_to_block_mask(random_block_mask(1, 2, nb, 0.5, generator=g))
    kpm = (torch.arange(n) < int(torch.randint(1, n + 1, (), generator=g)))[None] if padded else None
    out = block_sparse_attention(q, k, v, nblk, idx, block_size=block_size, key_padding_mask=kpm, backend=backend)
    assert out.dtype == dt and torch.isfinite(out).all()
    oracle, fp32_bound = _oracle_and_fp32_bound(q, k, v, nblk, idx, block_size, kpm)
    err = (out.double() - oracle).abs()
    bound = fp32_bound + UNIT_ROUNDOFF[dt] * oracle.abs() + 1e-6
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max()):.3g}"


# ==================================================================================================================
# Model: bad input and degenerate input
# ==================================================================================================================
@pytest.fixture(scope="module")
def smoke_model():
    torch.manual_seed(0)
    return DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB, max_position_embeddings=64)).eval()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(inputs_embeds=torch.full((1, 4, 64), float("inf"))), ValueError, "inputs_embeds contains NaN or Inf"),
        (dict(inputs_embeds=torch.zeros(1, 4, 32)), ValueError,
         r"inputs_embeds must have shape \(batch, seq_len, 64\)"),
        (dict(input_ids=torch.randint(0, 100, (2, 8)), attention_mask=torch.ones(8)), ValueError,
         r"attention_mask must have shape \(batch, seq_len\) = \(2, 8\)"),
        (dict(input_ids=torch.randint(0, 100, (2, 8)), attention_mask=torch.ones(2, 8, 8)), ValueError,
         r"attention_mask must have shape \(batch, seq_len\) = \(2, 8\)"),
        (dict(input_ids=torch.randint(0, 100, (2, 0))), ValueError, "at least one sequence of at least one token"),
        (dict(inputs_embeds=torch.zeros(0, 4, 64)), ValueError, "at least one sequence of at least one token"),
        (dict(input_ids=torch.randint(0, 100, (1, 4)), token_type_ids=torch.full((1, 4), 2)), ValueError,
         r"token_type_ids must lie in \[0, 1\]"),
        (dict(input_ids=torch.randint(0, 100, (1, 4)), token_type_ids=torch.zeros(1, 5, dtype=torch.long)),
         ValueError, r"token_type_ids must have shape"),
        (dict(), ValueError, "pass input_ids"),
    ],
)
def test_bad_model_input_more(smoke_model, kwargs, error, match):
    with torch.no_grad(), pytest.raises(error, match=match):
        smoke_model(**kwargs)


def test_inf_weights_are_reported():
    model = DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB)).eval()
    with torch.no_grad():
        model.encoder.layer[0].attention.self.value.weight[3, 1] = float("inf")
    with torch.no_grad(), pytest.raises(FloatingPointError, match=r"encoder\.layer\.0\.attention\.self\.value\.weight"):
        model(torch.randint(0, 100, (1, 8)))


@pytest.mark.parametrize("policy", ["learned", "random", "static", "training_free"])
@pytest.mark.parametrize("train", [False, True])
def test_rows_padded_to_cls_alone_are_finite(policy, train):
    """Every row padded down to [CLS] alone, at 90 % target sparsity: finite outputs and gradients, nothing
    skipped (the lone real block is the floor)."""
    torch.manual_seed(0)
    model = DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB, target_sparsity=0.9,
                                                           policy=policy)).train(train)
    ids = torch.randint(5, VOCAB, (3, 33))
    mask = torch.zeros(3, 33, dtype=torch.long)
    mask[:, 0] = 1
    out = model(ids, attention_mask=mask, output_block_masks=True)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
    assert torch.equal(out.block_sparsity, torch.zeros_like(out.block_sparsity))
    for keep in out.block_masks:
        assert bool(keep[..., 0, 0].all()) and int(keep.sum()) == keep.shape[0] * keep.shape[1]
    if train:
        (out.last_hidden_state[:, 0].sum() + out.keep_fraction.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ==================================================================================================================
# Config
# ==================================================================================================================
@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(target_sparsity=float("nan")), r"target_sparsity must be a float in \[0, 1\)"),
        (dict(target_sparsity=1.5), r"target_sparsity must be a float in \[0, 1\)"),
        (dict(target_sparsity="0.5"), r"target_sparsity must be a float in \[0, 1\)"),
        (dict(hidden_size=0), "hidden_size must be a positive int, got 0"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive int"),
        (dict(num_attention_heads=-1), "num_attention_heads must be a positive int"),
        (dict(intermediate_size=0), "intermediate_size must be a positive int"),
        (dict(max_position_embeddings=0), "max_position_embeddings must be a positive int"),
        (dict(vocab_size=0), "vocab_size must be a positive int"),
        (dict(type_vocab_size=0), "type_vocab_size must be a positive int"),
        (dict(block_size=-3), "block_size must be a positive int, got -3"),
        (dict(block_size=2.5), "block_size must be a positive int, got 2.5"),
        (dict(scorer_rank=0), "scorer_rank must be a positive int"),
        (dict(hidden_size=66), r"hidden_size \(66\) must be a multiple of num_attention_heads \(4\)"),
        (dict(static_window=-1), "static_window must be an int >= 0"),
        (dict(gating_max_shift=-1.0), "gating_max_shift must be a float >= 0"),
        (dict(head_budgets=[[0.5] * 4, [1.0] * 4]), r"head_budgets entries .* \[0, 1\)"),
    ],
)
def test_bad_config_more(overrides, match):
    with pytest.raises(ValueError, match=match):
        DendriticConfig.from_preset("smoke", **overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of \['smoke', 'small', 'paper'\]"):
        DendriticConfig.from_preset("huge")


# ==================================================================================================================
# Checkpoints and result folders
# ==================================================================================================================
@pytest.fixture(scope="module")
def saved_smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "smoke"
    torch.manual_seed(0)
    DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncate_half", "truncate_header", "garbage_header"])
def test_corrupt_checkpoint_raises_clear_error(saved_smoke, tmp_path, damage):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(saved_smoke, folder)
    weights = folder / "model.safetensors"
    if damage == "truncate_half":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "truncate_header":
        os.truncate(weights, 4)
    else:
        with open(weights, "r+b") as f:
            f.write(b"\xff" * 16)
    with pytest.raises(OSError, match=r"checkpoint .*damaged.* model\.safetensors is truncated or corrupt"):
        AutoModel.from_pretrained(folder)


def test_checkpoint_config_mismatch_raises_clear_error(saved_smoke):
    with pytest.raises(ValueError, match=r"does not fit .* \(hidden_size: checkpoint 64, requested 32\)"):
        AutoModel.from_pretrained(saved_smoke, hidden_size=32)
    config = DendriticConfig.from_preset("smoke", vocab_size=VOCAB, num_hidden_layers=1, intermediate_size=96)
    with pytest.raises(ValueError, match=r"intermediate_size: checkpoint 128, requested 96"):
        DendriticBertModel.from_pretrained(saved_smoke, config=config)
    assert isinstance(AutoModel.from_pretrained(saved_smoke), DendriticBertModel)  # the intact one still loads


def test_missing_data_and_unknown_task_need_no_data(tmp_path, monkeypatch):
    """As tests/test_data.py checks, but without the offline data present (that module skips without it)."""
    from dendritic.training import data as D

    with pytest.raises(FileNotFoundError, match=r"DENDRITIC_DATA_DIR=\.\./shared/data.*source='hub'"):
        D.load_glue("rte", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"DENDRITIC_DATA_DIR=\.\./shared/data.*source='hub'"):
        D.load_mlm_text(tmp_path / "nope")
    monkeypatch.delenv("DENDRITIC_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "_SHARED_DATA", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"DENDRITIC_DATA_DIR.*\.\./shared/data"):
        D.load_glue("rte", source="local")
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'; expected one of: cola, sst2"):
        D.load_glue("squad")
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'"):
        D.get_task("squad")


def test_results_folder_from_another_version_is_refused(tmp_path):
    from reproduce.runner import check_results_folder as check

    good = {"score": 0.5, "provenance": {"schema_version": RESULTS_SCHEMA_VERSION}}
    atomic_write_json(tmp_path / "wnli" / "dense-seed0.json", good)
    check(tmp_path)  # this version: accepted
    atomic_write_json(tmp_path / "wnli" / "dendritic-seed0.json", {**good, "provenance": {"schema_version": 0}})
    with pytest.raises(RuntimeError, match=r"dendritic-seed0\.json has results schema version 0, this code writes 1"):
        check(tmp_path)
    (tmp_path / "wnli" / "dendritic-seed0.json").write_text('{"score": 0.5, "provenance": {"sche')  # truncated
    with pytest.raises(RuntimeError, match=r"dendritic-seed0\.json is not a results file of schema version 1"):
        check(tmp_path)


def test_finished_result_with_other_settings_is_not_reused(tmp_path):
    from reproduce.plans import Run
    from reproduce.runner import run_one

    result = {"score": 0.5, "resolved_config": {"epochs": 2.0, "train_samples": 1500, "target_sparsity": 0.5},
              "provenance": {"schema_version": RESULTS_SCHEMA_VERSION}}
    atomic_write_json(tmp_path / "rte" / "dense-seed0.json", result)
    kw = dict(preset="small", run_dir=tmp_path, results=tmp_path, init_from="unused", config_dir=REPO / "reproduce" / "configs")
    same = run_one(Run("rte", "dense-seed0", "dense", 0, "phase1", {"epochs": 2.0, "train_samples": 1500}), **kw)
    assert same["score"] == 0.5  # reused, nothing rerun
    with pytest.raises(RuntimeError, match=r"other settings.*epochs"):
        run_one(Run("rte", "dense-seed0", "dense", 0, "phase1", {"epochs": 3.0, "train_samples": 1500}), **kw)


def test_result_from_a_run_trained_anew_is_not_reused(tmp_path):
    """A DendriticBERT result is not reused when the dense run it was sparsified from is about to be trained again
    (its result removed, e.g. after its recipe changed) — one error before any training, naming the stale file —
    and the same through a chain; with both results absent, or both present, nothing is refused."""
    from reproduce.plans import RUN_PREFIX, Run
    from reproduce.runner import _check_no_stale_results as check

    dense = Run("cola", "dense-seed0", "dense", 0, "minilm", {}, group="glue")
    dend = Run("cola", "dendritic-seed0", "dendritic", 0, f"{RUN_PREFIX}glue/cola/dense-seed0", {}, group="glue")
    trade = Run("cola", "tradeoff-x", "dendritic", 0, f"{RUN_PREFIX}glue/cola/dendritic-seed0", {}, group="glue")
    other = Run("rte", "dendritic-seed0", "dendritic", 0, f"{RUN_PREFIX}glue/rte/dense-seed0", {}, group="glue")
    runs = [dense, dend, trade, other]
    check(runs, [], tmp_path)  # everything finished
    check(runs, [dense, dend, trade], tmp_path)  # the chain trained anew together
    with pytest.raises(RuntimeError, match=r"(?s)dendritic-seed0\.json \(starts from cola dense-seed0.*tradeoff-x\.json"):
        check(runs, [dense], tmp_path)
    check(runs, [dend, trade], tmp_path)  # downstream only: its base is finished and kept as it is


def test_model_override_to_its_default_is_the_same_setting(tmp_path):
    """``model_overrides`` are compared by effect: DendriticBERT's ``gumbel = true`` is its default (the same model as
    no override), ``gumbel = false`` is not; BERT's own options count as written."""
    from reproduce.plans import Run
    from reproduce.runner import run_one

    result = {"score": 0.5, "resolved_config": {"epochs": 1.0, "model_overrides": {"attention_probs_dropout_prob": 0.0}},
              "provenance": {"schema_version": RESULTS_SCHEMA_VERSION}}
    atomic_write_json(tmp_path / "rte" / "dendritic-seed0.json", result)
    kw = dict(preset="small", run_dir=tmp_path, results=tmp_path, init_from="unused", config_dir=REPO / "reproduce" / "configs")

    def run(overrides):
        return run_one(Run("rte", "dendritic-seed0", "dendritic", 0, "phase1",
                           {"epochs": 1.0, "model_overrides": overrides}), **kw)

    assert run({"attention_probs_dropout_prob": 0.0, "gumbel": True})["score"] == 0.5  # reused
    with pytest.raises(RuntimeError, match=r"other settings.*gumbel"):
        run({"attention_probs_dropout_prob": 0.0, "gumbel": False})
    with pytest.raises(RuntimeError, match=r"other settings.*attention_probs_dropout_prob"):
        run({"gumbel": True})  # BERT's option dropped: the pretrained model's value would apply


# ==================================================================================================================
# Randomised: the model-level policy
# ==================================================================================================================
@st.composite
def policy_cases(draw):
    n = draw(st.integers(1, 200))
    B = draw(st.integers(1, 3))
    return {
        "n": n,
        "B": B,
        "lengths": draw(st.lists(st.integers(1, n), min_size=B, max_size=B)),
        "scattered": draw(st.booleans()),
        "block_size": draw(st.integers(1, 16)),
        "target": draw(st.floats(0.0, 0.95)),
        "gating": draw(st.booleans()),
        "policy": draw(st.sampled_from(["learned", "learned", "random", "static", "training_free"])),
        "train": draw(st.booleans()),
        "backend": draw(st.sampled_from(["reference", "cpu", "auto"])),
        "extreme": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(max_examples=200, **SETTINGS)
@given(case=policy_cases())
def test_model_policy_invariants(case):
    """For random lengths, padding, block sizes, targets, gating and policies, in train and eval mode: finite
    outputs (also with scorer weights x1e6), block sparsity in [0, 1], the safety floor always kept, and padded
    keys never attended (changing padded tokens changes no valid output, nor any mask)."""
    n, B, b = case["n"], case["B"], case["block_size"]
    torch.manual_seed(case["seed"])
    cfg = DendriticConfig.from_preset(
        "smoke", vocab_size=VOCAB, block_size=b, target_sparsity=case["target"], gating=case["gating"],
        policy=case["policy"], attention_backend=case["backend"] if not case["train"] else "reference",
    )
    model = DendriticBertModel(cfg).train(case["train"])
    if case["extreme"]:
        with torch.no_grad():
            for attn in model.dendritic_layers():
                for lin in (attn.scorer.q_features, attn.scorer.k_features):
                    lin.weight.mul_(1e6)  # block scores scale with the product: x1e12
                    lin.bias.mul_(1e6)
    g = torch.Generator().manual_seed(case["seed"])
    ids = torch.randint(5, VOCAB, (B, n), generator=g)
    lengths = torch.tensor(case["lengths"])
    mask = torch.arange(n)[None, :] < lengths[:, None]  # (B, n) real tokens first
    if case["scattered"]:  # holes anywhere except [CLS]
        mask = mask & ((torch.rand(B, n, generator=g) < 0.7) | (torch.arange(n) == 0))
    other_ids = torch.where(mask, ids, torch.randint(5, VOCAB, (B, n), generator=g))  # differs only where padded

    def forward(x):
        torch.manual_seed(case["seed"] + 1)  # the same Gumbel noise, dropout and random scores for both inputs
        with torch.set_grad_enabled(case["train"]):
            return model(x, attention_mask=mask.long(), output_block_masks=True)

    out, out_other = forward(ids), forward(other_ids)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
    assert bool(((out.block_sparsity >= 0) & (out.block_sparsity <= 1)).all())
    assert bool(((out.pair_sparsity >= 0) & (out.pair_sparsity <= 1)).all())
    nb = num_blocks(n, b)
    floor = safety_floor(nb, dense_cls_row=True)
    real = torch.nn.functional.pad(mask, (0, nb * b - n)).view(B, nb, b).any(-1)  # (B, nb)
    must_keep = (floor & real[:, :, None] & real[:, None, :])[:, None]  # (B, 1, nb, nb)
    for keep, keep_other in zip(out.block_masks, out_other.block_masks):
        assert keep.shape == (B, cfg.num_attention_heads, nb, nb)
        assert bool((keep | ~must_keep).all()), "the safety floor was dropped"
        assert torch.equal(keep, keep_other), "padded tokens changed the mask"
    valid = mask[..., None].expand_as(out.last_hidden_state)
    diff = (out.last_hidden_state - out_other.last_hidden_state).detach()[valid].abs().max()
    assert float(diff) <= 1e-5, f"padded tokens changed valid outputs by {float(diff):.3g}"
    if case["train"]:
        (out.last_hidden_state[valid].sum() + out.keep_fraction.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ==================================================================================================================
# Randomised: the perforation unit under extreme logits
# ==================================================================================================================
@settings(max_examples=300, **SETTINGS)
@given(nb=st.integers(1, 12), H=st.integers(1, 3), real_blocks=st.integers(1, 12),
       mode=st.sampled_from(["eval", "relaxed", "relaxed_gumbel", "soft", "soft_gumbel"]),
       temperature=st.sampled_from([1e-4, 0.1, 1.0, 10.0]), target=st.floats(0.0, 0.99),
       extreme=st.sampled_from([1e30, -1e30, float("inf"), 1e4, 0.0]), shift_scale=st.sampled_from([0.0, 1.0, 1e30]),
       seed=st.integers(0, 2**31 - 1))
def test_perforation_extreme_logits(nb, H, real_blocks, mode, temperature, target, extreme, shift_scale, seed):
    """log-mass entries of ±1e30 (and ±inf) with -inf for padding-only key blocks: finite masks, keep fractions
    and gradients in every mode; the floor kept; sparsity in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    B = 2
    real = torch.arange(nb)[None, :] < torch.tensor([min(real_blocks, nb), max(1, min(real_blocks, nb) // 2)])[:, None]
    pair_real = (real[:, :, None] & real[:, None, :])[:, None]  # (B, 1, nb, nb)
    log_mass = torch.randn(B, H, nb, nb, generator=g) * 10
    spots = torch.rand(B, H, nb, nb, generator=g) < 0.3
    sign = torch.where(torch.rand(B, H, nb, nb, generator=g) < 0.5, -1.0, 1.0)
    log_mass = torch.where(spots, sign * extreme, log_mass)
    log_mass = log_mass.masked_fill(~real[:, None, None, :], float("-inf"))  # padding-only key blocks
    log_mass.requires_grad_(True)
    shift = (torch.randn(B, H, generator=g) * shift_scale).requires_grad_(True)
    unit = PerforationUnit(H)
    floor = safety_floor(nb, dense_cls_row=bool(seed % 2))
    out = unit(log_mass, pair_real, floor, torch.full((H,), target), shift, temperature=temperature,
               relaxed=mode != "eval", gumbel=mode.endswith("gumbel"), straight_through=mode.startswith("relaxed"),
               generator=g)
    for name in ("mask", "keep_fraction", "target_keep", "block_sparsity"):
        assert torch.isfinite(getattr(out, name)).all(), name
    assert bool(((out.block_sparsity >= 0) & (out.block_sparsity <= 1)).all())
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    assert bool((out.hard | ~(floor[None, None] & pair_real)).all()), "floor dropped"
    assert not bool((out.hard & ~pair_real).any()), "a padding-only block was kept"
    (out.mask.sum() + out.keep_fraction.sum()).backward()
    for t in (log_mass.grad, shift.grad, unit.offset.grad):
        assert t is not None and torch.isfinite(t).all()


# ==================================================================================================================
# Determinism
# ==================================================================================================================
@pytest.mark.parametrize("train", [False, True])
def test_same_seed_same_masks_and_outputs(train):
    """Same seed -> identical weights, masks, sparsity and outputs (train mode: Gumbel noise and dropout from
    torch's global generator, seeded)."""
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB, target_sparsity=0.6,
                                                               block_size=2)).train(train)
        ids = torch.randint(5, VOCAB, (3, 50))
        mask = torch.ones(3, 50, dtype=torch.long)
        mask[1, 30:] = 0
        with torch.set_grad_enabled(train):
            runs.append(model(ids, attention_mask=mask, output_block_masks=True))
    a, b = runs
    assert 0.0 < float(a.block_sparsity.mean()) < 1.0
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.block_sparsity, b.block_sparsity) and torch.equal(a.keep_fraction, b.keep_fraction)
    assert all(torch.equal(x, y) for x, y in zip(a.block_masks, b.block_masks))
    if train:  # the noise really is random: another seed gives other masks
        torch.manual_seed(124)
        model = DendriticBertModel(DendriticConfig.from_preset("smoke", vocab_size=VOCAB, target_sparsity=0.6,
                                                               block_size=2)).train()
        torch.manual_seed(7)
        c = model(ids, attention_mask=mask, output_block_masks=True)
        assert not all(torch.equal(x, y) for x, y in zip(a.block_masks, c.block_masks))


# A subprocess with every socket connection refused (and recorded): phase 1 of the smoke preset, a forward pass of
# the saved model, GLUE data loading and metric loading, all with HF_HUB_OFFLINE=1.
OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []

    def _deny(kind):
        def refuse(*args, **kwargs):
            attempts.append([kind, repr(args)[:200]])
            raise OSError(f"network access attempted in an offline test: {kind} {args!r}"[:300])
        return refuse

    socket.socket.connect = _deny("socket.connect")
    socket.socket.connect_ex = _deny("socket.connect_ex")
    socket.create_connection = _deny("create_connection")
    socket.getaddrinfo = _deny("getaddrinfo")

    out = sys.argv[1]
    report = {"attempts": attempts}
    try:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from dendritic.training.data import load_glue
        from dendritic.training.metrics import compute_glue_metrics
        from dendritic.training import load_phase_config, run_phase1

        done = run_phase1(load_phase_config(1, "smoke", {"output_dir": out}), resume=False)
        report["phase1_steps"] = done["global_step"]
        model = AutoModelForMaskedLM.from_pretrained(out).eval()
        tok = AutoTokenizer.from_pretrained(out)
        batch = tok(["the state of the union is strong", "hello"], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        report["forward_finite"] = bool(torch.isfinite(logits).all())
        glue = load_glue("wnli")
        report["glue_rows"] = {k: len(v) for k, v in glue.items()}
        report["metric"] = compute_glue_metrics("wnli", [0, 1, 1], [0, 1, 0])
    except BaseException as err:
        import traceback
        report["error"] = traceback.format_exc()[-3000:]
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def offline_phase1(tmp_path_factory):
    """Runs OFFLINE_SCRIPT once; its phase-1 checkpoint also feeds the phase-3 determinism test."""
    out = tmp_path_factory.mktemp("offline") / "phase1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "DENDRITIC_DATA_DIR": str(DATA_DIR)}
    env.pop("HF_DATASETS_OFFLINE", None)  # HF_HUB_OFFLINE alone must be enough
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return out, json.loads(lines[-1][len("REPORT "):])


@needs_offline_data
def test_offline_smoke_makes_no_network_connection(offline_phase1):
    _, report = offline_phase1
    assert "error" not in report, report.get("error")
    assert report["attempts"] == [], f"network connection attempts: {report['attempts']}"
    assert report["phase1_steps"] > 0 and report["forward_finite"]
    assert report["glue_rows"] == {"train": 635, "validation": 71}
    assert set(report["metric"]) == {"accuracy"}


@needs_offline_data
def test_phase3_smoke_is_deterministic(offline_phase1, tmp_path):
    from dendritic.training import load_phase_config, run_phase3

    phase1, report = offline_phase1
    assert (phase1 / "model.safetensors").exists(), report.get("error")
    results = []
    for run in ("a", "b"):
        cfg = load_phase_config(3, "smoke", {
            "output_dir": str(tmp_path / run), "init_from": str(phase1), "seed": 3, "max_steps": 3,
            "train_samples": 24, "eval_samples": 16, "batch_size": 8, "save_steps": 100, "logging_steps": 1,
        })
        results.append(run_phase3(cfg, resume=False, save_model=False))
    a, b = results
    for key in ("score", "metrics", "predictions", "per_input_sparsity", "sparsity_mean", "pair_sparsity_mean",
                "global_step"):
        assert a[key] == b[key], key
    assert 0.0 < a["sparsity_mean"] < 1.0
    logs = [(tmp_path / r / "log.jsonl").read_text().splitlines() for r in ("a", "b")]
    strip = [[{k: v for k, v in json.loads(x).items() if "runtime" not in k and "per_second" not in k} for x in log]
             for log in logs]
    assert strip[0] == strip[1]  # losses, achieved sparsity per step


# ==================================================================================================================
# Safe loading
# ==================================================================================================================
def _python_sources():
    for top in ("dendritic", "reproduce", "scripts", "benchmarks", "tests"):
        yield from sorted((REPO / top).rglob("*.py"))
    yield REPO / "noxfile.py"


def test_no_unsafe_loading_in_the_source_tree():
    """Every torch.load passes weights_only=True; nothing passes trust_remote_code=True (AST scan, so strings
    and comments do not count)."""
    problems = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name) \
                    and func.value.id == "torch":
                safe = kw.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            remote = kw.get("trust_remote_code")
            if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
                problems.append(f"{where}: trust_remote_code={ast.unparse(remote)}")
    assert not problems, "\n".join(problems)


# ==================================================================================================================
# Atomic writes
# ==================================================================================================================
class _Boom:
    def tolist(self):
        raise KeyboardInterrupt  # a kill arriving mid-write


@pytest.mark.parametrize("bad", [object(), _Boom()], ids=["unserialisable", "interrupted"])
def test_atomic_write_failure_keeps_old_file(tmp_path, bad):
    path = tmp_path / "results" / "run.json"
    atomic_write_json(path, {"score": 0.5, "values": list(range(1000))})
    before = path.read_bytes()
    error = KeyboardInterrupt if isinstance(bad, _Boom) else TypeError
    with pytest.raises(error):
        atomic_write_json(path, {"a": list(range(1000)), "z": bad})  # fails after part of the JSON is written
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"], "a temp file was left behind"
    atomic_write_json(path, {"score": 0.75, "t": torch.tensor([1.0, 2.0])})
    assert json.loads(path.read_text()) == {"score": 0.75, "t": [1.0, 2.0]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]


@pytest.mark.parametrize("flags, expected", [("fpu sse2 avx2 avx512f", "avx512f"), ("fpu avx avx2", "avx2"),
                                             ("fpu sse2", "baseline"), (None, "unknown")])
def test_provenance_reads_the_first_processor_of_cpuinfo(monkeypatch, tmp_path, flags, expected):
    import dendritic.provenance as prov

    text = "processor\t: 0\nmodel name\t: Test CPU 9000\n" + (f"flags\t\t: {flags}\n" if flags else "")
    text += "\nprocessor\t: 1\nmodel name\t: Other CPU\nflags\t\t: avx512f\n"  # a later block must not count
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    real_path = prov.Path
    monkeypatch.setattr(prov, "Path", lambda p: real_path(info) if p == "/proc/cpuinfo" else real_path(p))
    prov._cpuinfo.cache_clear()
    try:
        assert prov.cpu_model() == "Test CPU 9000"
        assert prov.cpu_vector_isa() == expected
    finally:
        prov._cpuinfo.cache_clear()

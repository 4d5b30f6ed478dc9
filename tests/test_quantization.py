"""int8 dynamic quantisation (dendritic.quantization, issue #15 goal 8): what is converted, what stays fp32, how far
the int8 forward moves, and the errors before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dendritic.bench import dense_twin, shaped_model
from dendritic.quantization import int8_linear_names, quantize_int8

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    m = shaped_model("smoke", 64, block_size=4, attention_backend="auto")
    m.set_head_budgets(torch.full_like(m.head_budgets, 0.5))
    return m


def _linears(m: nn.Module) -> dict[str, type]:
    return {name: type(mod) for name, mod in m.named_modules() if isinstance(mod, nn.Linear)
            or type(mod).__name__ == "Linear"}


def test_every_linear_outside_the_policy_becomes_int8(model):
    names = int8_linear_names(model)
    layers = model.config.num_hidden_layers
    assert len(names) == 6 * layers + (model.pooler is not None)  # q, k, v, attention out, intermediate, out
    q = quantize_int8(model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    for name, cls in _linears(q).items():
        policy = ".scorer." in name or ".gate." in name
        assert cls is (nn.Linear if policy else dynamic), name
    # the source model is untouched (a copy was converted)
    assert all(cls is nn.Linear for cls in _linears(model).values())


def test_int8_forward_stays_close_and_keeps_the_budget(model):
    q = quantize_int8(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 64), generator=g)
    mask = torch.ones(2, 64, dtype=torch.long)
    mask[1, 40:] = 0
    with torch.inference_mode():
        a, b = model(ids, attention_mask=mask), q(ids, attention_mask=mask)
    err = (a.last_hidden_state - b.last_hidden_state).abs()
    assert 0 < float(err.max()) < 0.25  # int8 moved the output (it ran), by a quantisation-sized amount
    assert float(err.mean()) < 0.05
    torch.testing.assert_close(b.block_sparsity, a.block_sparsity, atol=0.05, rtol=0)
    assert set(b.policy_impl) == set(a.policy_impl)  # the fp32 policy ran the same implementation


def test_the_dense_twin_is_quantised_whole(model):
    twin = dense_twin(model, "sdpa")
    q = quantize_int8(twin)
    assert all(cls is torch.ao.nn.quantized.dynamic.Linear for cls in _linears(q).values())


def test_quantize_refuses_a_model_in_training_mode(model):
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            quantize_int8(model)
    finally:
        model.eval()


def test_int8_bench_latency_rows(tmp_path):
    out = tmp_path / "int8.json"
    proc = subprocess.run([sys.executable, "-m", "reproduce.bench.int8", "latency", "--lengths", "64", "--batches", "1",
                           "--rounds", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())["latency"]
    (row,) = data["rows"]
    assert row["n"] == 64 and row["block_size"] == 4 and row["loadavg_start"] is not None
    for key in ("sdpa_fp32_ms", "sdpa_int8_ms", "dendritic_fp32_ms", "dendritic_int8_ms"):
        assert row[key] > 0
    # one round: the paired ratios are the ratios of the (single) times
    assert row["compound"] == pytest.approx(row["dendritic_int8_ms"] / row["sdpa_fp32_ms"])
    assert row["quantisation"] == pytest.approx(row["sdpa_int8_ms"] / row["sdpa_fp32_ms"])
    assert 0 < max(row["max_abs_diff_int8_vs_fp32"].values()) < 1


def test_int8_bench_accuracy_needs_kept_models(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reproduce.bench.int8", "accuracy", "--run-dir", str(tmp_path),
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)
    assert proc.returncode != 0 and "no kept (dense, dendritic) model pair" in proc.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("impl, sdpa_calls", [("sdpa", 1), ("eager", 0)])
def test_the_dense_baseline_runs_the_attention_it_is_named_after(model, monkeypatch, impl, sdpa_calls):
    """Every benchmark's "sdpa" baseline is dense_twin(model, "sdpa"): a transformers BertModel whose every layer calls
    torch's scaled_dot_product_attention (the kernel the ratios are against) — and "eager" never does — with the
    same output as the other."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    ids = torch.randint(5, model.config.vocab_size, (2, 64))
    with torch.inference_mode():
        want = dense_twin(model, "eager" if impl == "sdpa" else "sdpa")(ids).last_hidden_state
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
        got = dense_twin(model, impl)(ids).last_hidden_state
    assert len(calls) == sdpa_calls * model.config.num_hidden_layers
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

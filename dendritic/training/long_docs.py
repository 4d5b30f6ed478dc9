"""Long documents from the shipped State of the Union addresses: windows of n tokens, labelled by the speaker's party.

``<data_dir>/mlm/sotu.txt`` holds one address a line; ``<data_dir>/mlm/sotu_meta.tsv`` gives each line's year,
president and party.  The long-document task ``sotu_party`` classifies a window of n tokens of an address as
Democratic (0) or Republican (1); addresses of other parties are dropped.

Splits are by **address** (``sotu_party``: every window of an address is in one split) or by **president**
(``sotu_party_president``, the harder one: no president of the dev split speaks in training).  The split is drawn
once over *all* addresses with a fixed seed (:data:`SPLIT_SEED`), so the masked-LM warm-up on long windows
(``mlm_split = "sotu_address"``) never trains on a dev address of the classification task.

Windows: an address is tokenized once (no special tokens) and cut into consecutive pieces of n − 2 tokens, each
``[CLS] … [SEP]``; the tail shorter than that is dropped.  ``max_windows`` per address keeps evenly spaced windows
(long addresses would otherwise dominate).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from .data import _resolve_source

__all__ = ["LONG_TASKS", "PARTIES", "SPLIT_SEED", "Address", "LongDocsError", "compute_long_metrics",
           "load_addresses", "long_task_datasets", "mlm_documents", "split_addresses", "windows"]

PARTIES = ("Democratic", "Republican")  # label 0, 1
SPLIT_SEED = 1234
DEV_FRACTION = 0.2
LONG_TASKS = {"sotu_party": "address", "sotu_party_president": "president"}  # task -> how dev is split off


class LongDocsError(ValueError):
    """Bad long-document input, named before any training starts."""


@dataclass(frozen=True)
class Address:
    line: int  # 1-based line of sotu.txt
    year: int
    president: str
    party: str
    text: str


def _data_root(data_dir) -> Path:
    kind, root = _resolve_source("local", data_dir)
    assert root is not None
    return root


def load_addresses(data_dir: str | os.PathLike | None = None) -> list[Address]:
    """Every address with its metadata.  A line without a metadata row, a row without a party, or a count
    mismatch between the two files raises :class:`LongDocsError` naming the line."""
    root = _data_root(data_dir) / "mlm"
    text_path, meta_path = root / "sotu.txt", root / "sotu_meta.tsv"
    for p in (text_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: the long-document task needs the shipped speeches and their "
                                    "metadata (../shared/data/mlm, or DENDRITIC_DATA_DIR)")
    texts = text_path.read_text(encoding="utf-8").splitlines()
    with open(meta_path, encoding="utf-8", newline="") as f:
        meta = {int(r["line"]): r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    out = []
    for i, text in enumerate(texts, 1):
        if not text.strip():
            continue
        row = meta.get(i)
        if row is None:
            raise LongDocsError(f"{text_path} line {i} has no row in {meta_path}")
        if not (row.get("party") or "").strip():
            raise LongDocsError(f"{meta_path}: address on line {i} ({row.get('year')}, {row.get('president')}) has no "
                                "party label")
        out.append(Address(i, int(row["year"]), row["president"], row["party"].strip(), text))
    if len(meta) != len(out):
        raise LongDocsError(f"{meta_path} has {len(meta)} rows for {len(out)} addresses in {text_path}")
    return out


def split_addresses(addresses: list[Address], by: str = "address", *, dev_fraction: float = DEV_FRACTION,
                    seed: int = SPLIT_SEED) -> dict[str, list[Address]]:
    """Deterministic train/dev split of *all* addresses: by address (a seeded ``dev_fraction`` of them) or by
    president (seeded order of presidents, added to dev until it holds ``dev_fraction`` of the addresses)."""
    if by not in ("address", "president"):
        raise LongDocsError(f"split must be 'address' or 'president', got {by!r}")
    rng = np.random.default_rng(seed)
    if by == "address":
        dev_idx = set(rng.choice(len(addresses), size=max(1, round(dev_fraction * len(addresses))), replace=False).tolist())
        dev_lines = {addresses[i].line for i in dev_idx}
    else:
        presidents = sorted({a.president for a in addresses})
        dev_lines: set[int] = set()
        for p in [presidents[i] for i in rng.permutation(len(presidents))]:
            if len(dev_lines) >= dev_fraction * len(addresses):
                break
            dev_lines |= {a.line for a in addresses if a.president == p}
    split = {"train": [a for a in addresses if a.line not in dev_lines], "dev": [a for a in addresses if a.line in dev_lines]}
    for name, part in split.items():
        if not part:
            raise LongDocsError(f"the {by} split left the {name} split empty ({len(addresses)} addresses)")
    return split


def mlm_documents(data_dir=None) -> DatasetDict:
    """``DatasetDict(train=..., held_out=...)`` of address texts (one ``text`` column), split by address exactly as
    ``sotu_party``: the long masked-LM warm-up never sees a dev address of the classification task."""
    split = split_addresses(load_addresses(data_dir), "address")
    return DatasetDict({"train": Dataset.from_dict({"text": [a.text for a in split["train"]]}),
                        "held_out": Dataset.from_dict({"text": [a.text for a in split["dev"]]})})


_FEATURES = Features({"input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
                      "label": ClassLabel(names=list(PARTIES)), "line": Value("int32"), "year": Value("int32")})


_TOKENS: dict[tuple, list[int]] = {}  # (vocabulary fingerprint, address line) -> token ids: each address tokenized once
_FINGERPRINTS: dict[int, tuple] = {}  # id -> (the tokenizer, kept alive so its id is never reused; fingerprint)


def _fingerprint(tokenizer) -> str:
    """The same vocabulary, casing and class give the same token ids, whichever checkpoint folder holds the copy."""
    if id(tokenizer) not in _FINGERPRINTS:
        import hashlib

        vocab = sorted(tokenizer.get_vocab().items())
        text = f"{type(tokenizer).__name__}|{tokenizer.init_kwargs.get('do_lower_case')}|{vocab}"
        _FINGERPRINTS[id(tokenizer)] = (tokenizer, hashlib.sha256(text.encode()).hexdigest())
    return _FINGERPRINTS[id(tokenizer)][1]


def _token_ids(tokenizer, address: Address) -> list[int]:
    key = (_fingerprint(tokenizer), address.line, len(address.text))
    if key not in _TOKENS:
        _TOKENS[key] = tokenizer(address.text, add_special_tokens=False, return_attention_mask=False,
                                 verbose=False)["input_ids"]
    return _TOKENS[key]


def windows(addresses: list[Address], tokenizer, n: int, *, max_windows: int | None = None) -> Dataset:
    """Windows of ``n`` tokens (``[CLS]`` + n − 2 + ``[SEP]``) of the Democratic and Republican addresses."""
    if n < 3:
        raise LongDocsError(f"window length must be >= 3 tokens, got {n}")
    rows: dict[str, list] = {k: [] for k in _FEATURES}
    body = n - 2
    for a in addresses:
        if a.party not in PARTIES:
            continue
        ids = _token_ids(tokenizer, a)
        count = len(ids) // body
        keep = range(count) if max_windows is None or count <= max_windows else \
            sorted({round(i * (count - 1) / max(max_windows - 1, 1)) for i in range(max_windows)})
        for w in keep:
            rows["input_ids"].append([tokenizer.cls_token_id, *ids[w * body:(w + 1) * body], tokenizer.sep_token_id])
            rows["attention_mask"].append([1] * n)
            rows["label"].append(PARTIES.index(a.party))
            rows["line"].append(a.line)
            rows["year"].append(a.year)
    return Dataset.from_dict(rows, features=_FEATURES)


def long_task_datasets(task: str, tokenizer, n: int, *, data_dir=None, max_positions: int | None = None,
                       train_windows_per_address: int | None = None,
                       dev_windows_per_address: int | None = None) -> DatasetDict:
    """``DatasetDict(train=..., validation=...)`` of windows for ``task`` (``LONG_TASKS``).  Raises
    :class:`LongDocsError` before any training for a window longer than the model's positions or an empty split."""
    if task not in LONG_TASKS:
        raise LongDocsError(f"unknown long-document task {task!r}; expected one of {list(LONG_TASKS)}")
    if max_positions is not None and n > max_positions:
        raise LongDocsError(f"windows of {n} tokens exceed the model's {max_positions} positions: extend them "
                            f"(from_bert(..., max_position_embeddings={n})) or use shorter windows")
    split = split_addresses(load_addresses(data_dir), LONG_TASKS[task])
    out = DatasetDict({"train": windows(split["train"], tokenizer, n, max_windows=train_windows_per_address),
                       "validation": windows(split["dev"], tokenizer, n, max_windows=dev_windows_per_address)})
    for name, ds in out.items():
        if len(ds) == 0:
            raise LongDocsError(f"{task}: no {name} windows of {n} tokens (addresses too short, or no Democratic/"
                                "Republican address in that split)")
    return out


def compute_long_metrics(predictions, labels) -> dict[str, float]:
    """Accuracy (primary), F1 of the Republican class, and the majority-class rate of these labels."""
    from sklearn.metrics import accuracy_score, f1_score

    preds, refs = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    majority = float(max(np.mean(refs == c) for c in range(len(PARTIES))))
    return {"accuracy": float(accuracy_score(refs, preds)), "f1": float(f1_score(refs, preds, zero_division=0)),
            "majority_rate": majority}

"""GLUE metrics: per-task scores, the one number per task for tables, and the GLUE average.

Per-task scores (:func:`compute_glue_metrics`, backed by the local ``evaluate`` module
``dendritic/glue_metric/glue_metric.py``, i.e. scikit-learn/SciPy):

=========  ==============================================  =====================================
task       reported                                        primary (one number per task)
=========  ==============================================  =====================================
cola       matthews_correlation                            matthews_correlation
stsb       pearson, spearmanr, combined = their mean       combined (mean of Pearson and Spearman)
mrpc, qqp  f1, accuracy, combined = their mean             f1 (positive class = equivalent/duplicate)
others     accuracy (mnli: on validation_matched)          accuracy
=========  ==============================================  =====================================

Why these primaries: CoLA and the accuracy tasks follow the GLUE paper; STS-B averages its two correlations as the
GLUE leaderboard does; for MRPC and QQP we report F1 (as the BERT paper does) because accuracy there mostly tracks
the class prior.  All values are fractions (0.873), tables multiply by 100.

**GLUE average** = unweighted mean over tasks of the primary metric, reported with and without WNLI
(:func:`glue_average`).  WNLI's dev set is adversarial to train-set memorisation and BERT-size models score the
majority class (56.3 %), so the number without WNLI is the one to compare models by; the one with WNLI is the
GLUE-style number.  Offline, MNLI and QQP (and QNLI training) are not available: an average over a subset of tasks
must say which tasks it covers (:func:`glue_average` returns them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .data import get_task

__all__ = [
    "GLUE_METRIC_PATH",
    "compute_glue_metrics",
    "compute_metrics_for_trainer",
    "glue_average",
    "glue_metric",
    "primary_metric",
]

GLUE_METRIC_PATH = Path(__file__).resolve().parent / "glue_metric" / "glue_metric.py"


@lru_cache(maxsize=None)
def glue_metric(task: str) -> Any:
    """The ``evaluate`` metric for ``task`` (``evaluate.load(<GLUE_METRIC_PATH>, task)``; works offline)."""
    import evaluate

    return evaluate.load(str(GLUE_METRIC_PATH), get_task(task).name, keep_in_memory=True)


def compute_glue_metrics(task: str, predictions: Any, references: Any) -> dict[str, float]:
    """Scores for ``task`` from predicted class ids (floats for STS-B) and gold labels; see the module table."""
    spec = get_task(task)
    preds = np.asarray(predictions, dtype=np.float32 if spec.is_regression else np.int64).reshape(-1)
    refs = np.asarray(references, dtype=np.float32 if spec.is_regression else np.int64).reshape(-1)
    return dict(glue_metric(spec.name).compute(predictions=preds, references=refs))


def primary_metric(task: str) -> str:
    """The key of the one number per task for tables: cola matthews_correlation, stsb combined, mrpc/qqp f1,
    otherwise accuracy."""
    return get_task(task).primary_metric


def compute_metrics_for_trainer(task: str) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer``: takes an ``EvalPrediction`` (logits, label ids), argmaxes
    the logits (classification) or squeezes them (STS-B regression), returns :func:`compute_glue_metrics`."""
    spec = get_task(task)

    def compute(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions"):
            logits, labels = eval_pred.predictions, eval_pred.label_ids
        else:
            logits, labels = eval_pred
        if isinstance(logits, (tuple, list)):  # models that also return hidden states etc.
            logits = logits[0]
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        logits = np.asarray(logits)
        if spec.is_regression:
            preds = logits.reshape(-1)
        else:
            preds = logits.argmax(axis=-1)
        return compute_glue_metrics(spec.name, preds, np.asarray(labels).reshape(-1))

    return compute


def glue_average(scores: Mapping[str, float | Mapping[str, float]], *, include_wnli: bool = True) -> dict[str, Any]:
    """Unweighted mean over tasks of the primary metric.

    ``scores`` maps task -> either the primary value or the dict from :func:`compute_glue_metrics`.  Returns
    ``{"average": float, "tasks": [...]}`` (the tasks averaged, WNLI dropped when ``include_wnli=False``).
    """
    vals, tasks = [], []
    for task, s in scores.items():
        name = get_task(task).name
        if name == "wnli" and not include_wnli:
            continue
        vals.append(float(s[primary_metric(name)]) if isinstance(s, Mapping) else float(s))
        tasks.append(name)
    if not vals:
        raise ValueError("no task scores to average")
    return {"average": float(np.mean(vals)), "tasks": tasks}

"""GLUE metrics as a local `evaluate` module (no network): ``evaluate.load("<path to this file>", "<task>")``.

Backed by scikit-learn and SciPy.  Scores per config (task):

* ``cola``: ``matthews_correlation``
* ``stsb``: ``pearson``, ``spearmanr`` and ``combined`` (their mean)
* ``mrpc``, ``qqp``: ``f1`` (positive class 1), ``accuracy`` and ``combined`` (their mean)
* ``sst2``, ``mnli``, ``mnli_matched``, ``mnli_mismatched``, ``qnli``, ``rte``, ``wnli``, ``ax``: ``accuracy``

The keys and values of ``pearson``, ``spearmanr``, ``f1``, ``accuracy`` and ``matthews_correlation`` are the
same as the hub's ``glue`` metric; ``combined`` is added.  Values are Python floats in [−1, 1] / [0, 1], not
percentages.  (The dependency scanner of ``evaluate`` reads import lines literally: one module per line here.)
"""

import datasets
import evaluate
import numpy
import scipy.stats
import sklearn.metrics

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_DESCRIPTION = "GLUE task metrics (Matthews correlation, Pearson/Spearman, F1, accuracy) via scikit-learn/SciPy."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (class ids; floats for stsb).
    references: gold labels (class ids; floats for stsb).
Returns: a dict of floats, see the module docstring for the keys per task.
Example:
    >>> m = evaluate.load("dendritic/glue_metric/glue_metric.py", "mrpc")
    >>> m.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0, 'combined': 1.0}
"""

CLASSIFICATION = ("cola", "sst2", "mrpc", "qqp", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli",
                  "ax")
CONFIGS = CLASSIFICATION + ("stsb",)


def glue_scores(task, predictions, references):
    """The scores for ``task`` as a dict of Python floats (the computation behind the evaluate module)."""
    preds = numpy.asarray(predictions)
    refs = numpy.asarray(references)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions {preds.shape} and references {refs.shape} differ in shape")
    if task == "cola":
        return {"matthews_correlation": float(sklearn.metrics.matthews_corrcoef(refs, preds))}
    if task == "stsb":
        pearson = float(scipy.stats.pearsonr(preds.astype(numpy.float64), refs.astype(numpy.float64))[0])
        spearman = float(scipy.stats.spearmanr(preds, refs)[0])
        return {"pearson": pearson, "spearmanr": spearman, "combined": (pearson + spearman) / 2}
    if task in ("mrpc", "qqp"):
        acc = float((preds == refs).mean())
        f1 = float(sklearn.metrics.f1_score(refs, preds, zero_division=0.0))
        return {"accuracy": acc, "f1": f1, "combined": (acc + f1) / 2}
    if task in CLASSIFICATION:
        return {"accuracy": float((preds == refs).mean())}
    raise KeyError(f"unknown GLUE task {task!r}; expected one of {list(CONFIGS)}")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            raise KeyError(f"unknown GLUE task {self.config_name!r}; expected one of {list(CONFIGS)}")
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        return glue_scores(self.config_name, predictions, references)

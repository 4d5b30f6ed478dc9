"""Accuracy against sparsity for four mask policies on one fine-tuned model, at inference only (no retraining).

    python -m reproduce.sweep_inference --preset small              # tasks of the ablation plan, ~5 min on 2 cores

The trained trade-off points (``python -m reproduce glue --tradeoff``) fine-tune one model per target, for the learned policy
only.  This sweep is the cheap complement that the ablation figure needs: it takes the kept seed-0 DendriticBERT
fine-tuned at the main target (``<runs>/glue/<task>/dendritic-seed0``) and evaluates its dev set with the mask
chosen by each policy —

* ``learned``: the model's own scorer + gate, budgets moved to each target (as the trade-off runs do);
* ``training_free``: pooled-QK block scores, top-k per row under the same budgets;
* ``random``: random block scores under the same budgets;
* ``none``: the same weights with full attention (dendritic off) — what the masks cost this model at all;
* ``static``: a local window of ``w`` blocks each side of the diagonal, for w = 0..4 (its sparsity follows
  from the input lengths, so it is swept by window, not by target);

— always with the same safety floor (diagonal + [CLS] blocks).  Only the learned policy was trained with this
model, so the curves answer "which blocks does this model need at inference", not "how well would a model
adapted to policy X do" (that is the ablation grid).  Rows go to ``<results>/inference_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dendritic.provenance import atomic_write_json, provenance

from .paths import RESULTS
from .plans import load_plan

DEFAULT_RESULTS = RESULTS / "ablations"
TARGETS = (0.3, 0.5, 0.7, 0.9)
WINDOWS = (0, 1, 2, 3, 4)


def sweep_task(model_dir: Path, task: str, *, max_length: int, batch_size: int, eval_samples: int | None,
               targets=TARGETS, windows=WINDOWS) -> list[dict]:
    """One row per (policy, target or window): dev score and achieved block / pair sparsity."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from dendritic.budget import retarget_budgets
    from dendritic.training.data import load_glue, subsample, tokenize_glue
    from dendritic.training.metrics import compute_glue_metrics, primary_metric
    from dendritic.modeling import DendriticBertForSequenceClassification
    from dendritic.modeling import base_model
    from dendritic.training.phases import evaluate_glue

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = load_glue(task, splits=("validation",))["validation"]
    if eval_samples:
        dev = subsample(dev, eval_samples, 0)
    dev = tokenize_glue(dev, tokenizer, task, max_length)
    points = [("none", None, None)] + [("learned", t, None) for t in targets] + [("training_free", t, None) for t in targets] + \
             [("random", t, None) for t in targets] + [("static", None, w) for w in windows]
    rows = []
    for policy, target, window in tqdm(points, desc=f"inference sweep {task}"):
        if policy == "none":  # the same weights with every block kept: what the masks cost this model
            overrides = {"dendritic": False}
        else:
            overrides = {"policy": policy} | ({"static_window": window} if window is not None else {})
        model = DendriticBertForSequenceClassification.from_pretrained(model_dir, **overrides)
        if target is not None:
            base = base_model(model)
            base.set_head_budgets(retarget_budgets(base.head_budgets.tolist(), target))
        torch.manual_seed(0)  # the random policy draws its scores from torch's generator
        with torch.no_grad():
            ev = evaluate_glue(model, dev, tokenizer, batch_size)
        metrics = compute_glue_metrics(task, ev["predictions_raw"], ev["labels"])
        rows.append({"task": task, "policy": policy, "target_sparsity": target, "static_window": window,
                     "metric": primary_metric(task), "score": metrics[primary_metric(task)], "metrics": metrics,
                     "sparsity_mean": ev["sparsity_mean"] or 0.0, "pair_sparsity_mean": ev["pair_sparsity_mean"] or 0.0,
                     "dev_examples": len(dev), "model": str(model_dir)})
    return rows


def merge_rows(previous: list[dict], new: list[dict], tasks: list[str]) -> list[dict]:
    """The rows of the tasks swept now replace their old rows; every other task's rows are kept (a sweep of one
    task must not drop the others)."""
    return [r for r in previous if r["task"] not in tasks] + new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tasks", nargs="*", default=None, help="default: the ablation plan's tasks")
    parser.add_argument("--output-dir", default=None, help="where the fine-tuned models are (default: runs/<preset>)")
    parser.add_argument("--results-dir", default=None, help="default: reproduce/results/ablations")
    parser.add_argument("--eval-samples", type=int, default=None, help="dev subsample (default: the whole dev set)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)

    plan = load_plan("ablations", args.preset)
    runs = Path(args.output_dir or f"runs/{args.preset}")
    results = Path(args.results_dir) if args.results_dir else DEFAULT_RESULTS
    tasks = args.tasks or plan.tasks
    out_file = results / "inference_sweep.json"
    previous = json.loads(out_file.read_text())["rows"] if out_file.exists() else []
    rows = []
    for task in tasks:
        model_dir = runs / "glue" / task / "dendritic-seed0"
        if not (model_dir / "model.safetensors").exists():
            raise SystemExit(f"no fine-tuned model in {model_dir}: run `python -m reproduce glue --preset "
                             f"{args.preset} --tasks {task} --seeds 0` first (it keeps the seed-0 dendritic model)")
        rows += sweep_task(model_dir, task, max_length=args.max_length, batch_size=args.batch_size,
                           eval_samples=args.eval_samples)
        atomic_write_json(out_file, {"rows": merge_rows(previous, rows, tasks), "provenance": provenance()})
    for r in rows:
        knob = f"w={r['static_window']}" if r["policy"] == "static" else f"t={r['target_sparsity']}"
        print(f"{r['task']:5s} {r['policy']:13s} {knob:6s} {r['metric']} {r['score']:.4f} "
              f"sparsity {r['sparsity_mean']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

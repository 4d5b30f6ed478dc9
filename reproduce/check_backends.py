"""Do the fast attention backends give the same predictions as the reference one on trained models?  (#13 part 3)

    python -m reproduce.check_backends                       # every kept seed-0 DendriticBERT of the GLUE plan
    python -m reproduce.check_backends --tasks cola --seeds 0 1 2

Table 1's scores come from ``attention_backend="auto"`` (the block-sparse ``cpu`` kernel or masked SDPA, chosen per
call).  The ``reference`` backend is the specification: dense math with the block mask applied.  For each kept
DendriticBERT model (``<runs>/glue/<task>/dendritic-seed<k>``) this evaluates the whole dev set once per backend and
records, per backend against ``reference``: the share of equal predictions (classification: argmax; STS-B: the
regression output within 1e-4), the largest absolute logit difference, both scores and the paths that ran.
Rows go to ``reproduce/results/glue/backend_agreement.json`` (rows of other (task, seed) pairs are kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dendritic.provenance import atomic_write_json, provenance

from .paths import RESULTS
from .plans import load_plan

BACKENDS = ("reference", "cpu", "masked_sdpa", "auto")


def _logits(model, dev, tokenizer, batch_size: int) -> tuple[np.ndarray, list[str]]:
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dev.column_names]
    out, paths = [], set()
    with torch.inference_mode():
        for start in range(0, len(dev), batch_size):
            rows = dev[start:start + batch_size]
            batch = collate([{c: rows[c][i] for c in cols} for i in range(len(rows["input_ids"]))])
            res = model(**batch)
            out.append(res.logits.float().numpy())
            paths.update(getattr(res, "attention_path", None) or [])
    return np.concatenate(out), sorted(paths)


def check(model_dir: Path, task: str, seed: int, *, batch_size: int, max_length: int) -> dict:
    from transformers import AutoTokenizer

    from dendritic.modeling import DendriticBertForSequenceClassification
    from dendritic.training.data import load_glue, tokenize_glue
    from dendritic.training.metrics import compute_glue_metrics, primary_metric

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = tokenize_glue(load_glue(task, splits=("validation",))["validation"], tokenizer, task, max_length)
    labels = np.asarray(dev["label"])
    logits, paths = {}, {}
    for backend in BACKENDS:
        model = DendriticBertForSequenceClassification.from_pretrained(model_dir, attention_backend=backend).eval()
        logits[backend], paths[backend] = _logits(model, dev, tokenizer, batch_size)
    regression = logits["reference"].shape[-1] == 1

    def predictions(x):
        return x[:, 0] if regression else x.argmax(-1)

    ref = predictions(logits["reference"])
    row = {"task": task, "seed": seed, "model": str(model_dir), "dev_examples": len(dev), "paths": paths,
           "metric": primary_metric(task),
           "score": {b: compute_glue_metrics(task, predictions(logits[b]), labels)[primary_metric(task)]
                     for b in BACKENDS}}
    for backend in BACKENDS[1:]:
        mine = predictions(logits[backend])
        same = np.abs(mine - ref) <= 1e-4 if regression else mine == ref
        row[f"{backend}_vs_reference"] = {"equal_predictions": float(same.mean()),
                                          "max_abs_logit_diff": float(np.abs(logits[backend] - logits["reference"]).max())}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tasks", nargs="*", default=None, help="default: the GLUE plan's tasks")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<preset>")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "glue" / "backend_agreement.json")
    args = parser.parse_args(argv)
    plan = load_plan("glue", args.preset)
    run_dir = args.run_dir or Path("runs") / args.preset
    todo = [(t, s) for t in (args.tasks or plan.tasks) for s in args.seeds]
    missing = [run_dir / "glue" / t / f"dendritic-seed{s}" for t, s in todo
               if not (run_dir / "glue" / t / f"dendritic-seed{s}" / "model.safetensors").exists()]
    if missing:  # before any work starts
        raise SystemExit(f"no kept model in {', '.join(map(str, missing))}: run `python -m reproduce glue` first")
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    for task, seed in todo:
        row = check(run_dir / "glue" / task / f"dendritic-seed{seed}", task, seed, batch_size=args.batch_size,
                    max_length=args.max_length)
        rows = [r for r in rows if (r["task"], r["seed"]) != (task, seed)] + [row]
        atomic_write_json(args.out, {"rows": rows, "provenance": provenance()})
        print(f"{task} seed {seed}: " + ", ".join(
            f"{b} {row[f'{b}_vs_reference']['equal_predictions']:.4f} equal (max |Δlogit| "
            f"{row[f'{b}_vs_reference']['max_abs_logit_diff']:.2e})" for b in BACKENDS[1:]) +
            f"; paths {row['paths']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

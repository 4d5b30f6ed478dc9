"""Accuracy against sparsity for four mask policies on one fine-tuned model, at inference only (no retraining).

    python -m reproduce.sweep_inference --preset small              # the ablation plan's tasks, the GLUE plan's seeds
    python -m reproduce.sweep_inference --tasks cola --seeds 0      # one model
    python -m reproduce.sweep_inference --long 2048 --seeds 0       # the long plan's DendriticBERT at n = 2048
    python -m reproduce.sweep_inference --long 1024 --seeds 0 --dense   # its dense model under the same masks


The trained trade-off points (``python -m reproduce glue --tradeoff``) fine-tune one model per target, for the learned policy
only.  This sweep is the cheap complement that the ablation figure needs: it takes the kept seed-0 DendriticBERT
fine-tuned at the main target (``<runs>/glue/<task>/dendritic-seed<k>``, one per seed: the GLUE plan keeps them)
and evaluates its dev set with the mask chosen by each policy —

* ``learned``: the model's own scorer + gate, budgets moved to each target (as the trade-off runs do);
* ``training_free``: pooled-QK block scores, top-k per row under the same budgets;
* ``random``: random block scores under the same budgets;
* ``none``: the same weights with full attention (dendritic off) — what the masks cost this model at all;
* ``static``: a local window of ``w`` blocks each side of the diagonal, for w = 0..4, 6, 8 (its sparsity
  follows from the input lengths, so it is swept by window, not by target);

— always with the same safety floor (diagonal + [CLS] blocks).  Only the learned policy was trained with this
model, so the curves answer "which blocks does this model need at inference", not "how well would a model
adapted to policy X do" (that is the ablation grid).  Rows (with their ``seed``) go to
``<results>/inference_sweep.json``; a sweep replaces the rows of the (task, seed) pairs it ran and keeps the rest.
``matched`` compares the policies at the sparsity the learned one achieves at the main target (:func:`matched_summary`).

``--long N`` sweeps the long-document plan's kept DendriticBERT at n = N instead (``<runs>/long/<task>/dendritic-n<N>-
seed<k>``, on its dev windows; targets around the plan's 0.75, windows up to 4 blocks) into
``reproduce/results/long/inference_sweep.json``: whether, where skipping attention pays, the learned policy chooses
better blocks than a static window or training-free scores at the same sparsity.

``--dense`` (with ``--long`` only: the GLUE plan's dense models were never swept this way) sweeps the same seed's
*dense* model instead (``dense-n<N>-seed<k>``: never fine-tuned under masks, so no learned policy — its scorer is
untrained) under the training-free, random and static masks, into ``inference_sweep_dense.json`` beside the main file: what skipping costs the dense model itself, the baseline any
fine-tuning under masks has to beat.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dendritic.provenance import atomic_write_json, provenance

from .paths import RESULTS
from .plans import load_plan

DEFAULT_RESULTS = RESULTS / "ablations"
TARGETS = (0.3, 0.5, 0.7, 0.9)
WINDOWS = (0, 1, 2, 3, 4, 6, 8)
# Long documents (64-token blocks, target 0.75): the learned policy achieves ~0.8-0.85 block sparsity there, so the
# curves are swept around it; a static window of w blocks keeps ~(2w + 2)/nb of a row (0.88-0.94 at w = 0).
LONG_TARGETS = (0.5, 0.75, 0.9)
LONG_WINDOWS = (0, 1, 2, 3, 4)


def n_points(targets, windows, learned: bool = True) -> int:
    """none + learned (unless a dense model's sweep) / training-free / random per target + static per window."""
    return 1 + (3 if learned else 2) * len(targets) + len(windows)


def sweep_task(model_dir: Path, task: str, seed: int, *, max_length: int, batch_size: int, eval_samples: int | None,
               targets=TARGETS, windows=WINDOWS, dense: bool = False) -> list[dict]:
    """One row per (policy, target or window) for a GLUE task: dev score and achieved block / pair sparsity."""
    from transformers import AutoTokenizer

    from dendritic.training.data import load_glue, subsample, tokenize_glue
    from dendritic.training.metrics import compute_glue_metrics, primary_metric

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = load_glue(task, splits=("validation",))["validation"]
    if eval_samples:
        dev = subsample(dev, eval_samples, 0)
    dev = tokenize_glue(dev, tokenizer, task, max_length)
    return sweep_model(model_dir, dev, tokenizer, task=task, seed=seed, metric=primary_metric(task),
                       metrics_fn=lambda p, y: compute_glue_metrics(task, p, y), batch_size=batch_size,
                       targets=targets, windows=windows, dense=dense)


def sweep_long(model_dir: Path, task: str, n: int, seed: int, *, batch_size: int, eval_samples: int | None,
               targets=LONG_TARGETS, windows=LONG_WINDOWS, dense: bool = False) -> list[dict]:
    """The same sweep for a long-document model on its dev windows of n tokens (rows carry ``n``)."""
    from transformers import AutoTokenizer

    from dendritic.training.data import subsample
    from dendritic.training.long_docs import compute_long_metrics, long_task_datasets

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = long_task_datasets(task, tokenizer, n)["validation"]
    if eval_samples:
        dev = subsample(dev, eval_samples, 0)
    return sweep_model(model_dir, dev, tokenizer, task=task, seed=seed, metric="accuracy",
                       metrics_fn=compute_long_metrics, batch_size=batch_size, targets=targets, windows=windows,
                       extra={"n": n}, dense=dense)


def sweep_model(model_dir: Path, dev, tokenizer, *, task: str, seed: int, metric: str, metrics_fn, batch_size: int,
                targets, windows, extra: dict | None = None, dense: bool = False) -> list[dict]:
    """Evaluate ``dev`` with the model in ``model_dir`` under every policy point; one row each.  ``dense``: the
    model is a dense run's (saved with ``dendritic = False``, an untrained scorer): its masks are switched on for the
    untrained policies only, and rows say ``variant = "dense"``."""
    import torch
    from tqdm.auto import tqdm

    from dendritic.budget import retarget_budgets
    from dendritic.modeling import DendriticBertForSequenceClassification
    from dendritic.modeling import base_model
    from dendritic.training.phases import evaluate_glue

    points = [("none", None, None)] + ([] if dense else [("learned", t, None) for t in targets]) + \
             [("training_free", t, None) for t in targets] + [("random", t, None) for t in targets] + \
             [("static", None, w) for w in windows]
    rows = []
    for policy, target, window in tqdm(points, desc=f"inference sweep {task} seed {seed}"):
        if policy == "none":  # the same weights with every block kept: what the masks cost this model
            overrides = {"dendritic": False}
        else:
            overrides = {"policy": policy} | ({"static_window": window} if window is not None else {}) | \
                        ({"dendritic": True} if dense else {})
        model = DendriticBertForSequenceClassification.from_pretrained(model_dir, **overrides)
        if target is not None:
            base = base_model(model)
            base.set_head_budgets(retarget_budgets(base.head_budgets.tolist(), target))
        torch.manual_seed(0)  # the random policy draws its scores from torch's generator
        with torch.no_grad():
            ev = evaluate_glue(model, dev, tokenizer, batch_size)
        metrics = metrics_fn(ev["predictions_raw"], ev["labels"])
        rows.append({"task": task, "seed": seed, "policy": policy, "target_sparsity": target, "static_window": window,
                     "metric": metric, "score": metrics[metric], "metrics": metrics,
                     "sparsity_mean": ev["sparsity_mean"] or 0.0, "pair_sparsity_mean": ev["pair_sparsity_mean"] or 0.0,
                     "dev_examples": len(dev), "model": str(model_dir), "variant": "dense" if dense else "dendritic",
                     **(extra or {})})
    return rows


OTHERS = ("training_free", "static", "random")  # the policies the learned one is compared with


def interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """Score at sparsity ``at`` on a policy's (sparsity, score) curve, linear between its two nearest points; None
    outside the swept range (no extrapolation)."""
    pts = sorted(points)
    for (s0, y0), (s1, y1) in zip(pts, pts[1:]):
        if s0 <= at <= s1:
            return y0 if s1 == s0 else y0 + (y1 - y0) * (at - s0) / (s1 - s0)
    return pts[0][1] if len(pts) == 1 and abs(pts[0][0] - at) < 1e-9 else None


def _stats(xs: list[float]) -> dict:
    arr = np.asarray(xs, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": len(arr)}


def sweep_key(row: dict) -> str:
    """What a row's curves belong to: the GLUE task, or ``<task>-n<n>`` for a long-document length."""
    return f"{row['task']}-n{row['n']}" if row.get("n") is not None else row["task"]


def matched_summary(rows: list[dict], main_target: float) -> dict:
    """Part 2b of #13: per task, every policy's dev score at the sparsity the learned policy achieves at the main
    target (interpolated along each policy's swept curve, per seed), and the learned policy's paired margin over
    each other policy across seeds.  For a dense model's sweep (``--dense``) the learned point is its rows'
    ``learned_reference`` (the same seed's DendriticBERT), and ``none`` is the dense model itself.
    ``beyond_noise``: the mean margin exceeds twice its standard error (≥ 3 seeds); ``None`` with fewer seeds."""
    out = {}
    for task in sorted({sweep_key(r) for r in rows}):  # a GLUE task, or a long task at one length
        per_seed = {}
        for seed in sorted({r.get("seed", 0) for r in rows if sweep_key(r) == task}):
            mine = [r for r in rows if sweep_key(r) == task and r.get("seed", 0) == seed]
            ref = [r for r in mine if r["policy"] == "learned" and r["target_sparsity"] == main_target]
            # a dense model's sweep: the learned point is the same seed's DendriticBERT, from its run's evaluation
            ref = ref or [r["learned_reference"] for r in mine[:1] if r.get("learned_reference")]
            none = [r for r in mine if r["policy"] == "none"]
            if not ref:
                continue
            at = ref[0]["sparsity_mean"]
            entry = {"sparsity": at, "learned": ref[0]["score"], "none": none[0]["score"] if none else None}
            for policy in OTHERS:
                curve = [(r["sparsity_mean"], r["score"]) for r in mine if r["policy"] == policy]
                entry[policy] = interpolate(curve, at) if curve else None
            per_seed[str(seed)] = entry
        if not per_seed:
            continue
        seeds = list(per_seed.values())
        task_out = {"seeds": [int(k) for k in per_seed], "metric": next(r["metric"] for r in rows if sweep_key(r) == task),
                    "per_seed": per_seed, "sparsity": _stats([e["sparsity"] for e in seeds])}
        for policy in ("learned", "none", *OTHERS):
            vals = [e[policy] for e in seeds if e[policy] is not None]
            task_out[policy] = _stats(vals) if vals else None
        margins = {}
        for policy in ("none", *OTHERS):
            diffs = [e["learned"] - e[policy] for e in seeds if e[policy] is not None]
            if not diffs:
                continue
            st = _stats(diffs)
            se = st["std"] / np.sqrt(st["n"]) if st["std"] is not None else None
            st["beyond_noise"] = (None if st["n"] < 3 or se is None else
                                  "learned better" if st["mean"] > 2 * se else
                                  "learned worse" if st["mean"] < -2 * se else "not separable")
            margins[policy] = st
        task_out["learned_minus"] = margins
        out[task] = task_out
    return out


def _learned_references(runs: Path, task: str, n: int, seeds) -> dict:
    """For a dense sweep at length ``n``: each seed's DendriticBERT as its own run evaluated it (its ``done.json``,
    kept even where the model is not), keyed like the rows: (sweep key, seed)."""
    refs = {}
    for seed in seeds:
        done = runs / "long" / task / f"dendritic-n{n}-seed{seed}" / "done.json"
        if done.exists():
            run = json.loads(done.read_text())
            refs[(f"{task}-n{n}", seed)] = {"score": run["score"], "sparsity_mean": run["sparsity_mean"],
                                            "run": str(done.parent)}
    return refs


def _with_references(rows: list[dict], refs: dict) -> list[dict]:
    return [{**r, "learned_reference": refs[(sweep_key(r), r.get("seed", 0))]}
            if (sweep_key(r), r.get("seed", 0)) in refs else r for r in rows]


def merge_rows(previous: list[dict], new: list[dict]) -> list[dict]:
    """The rows of the (task, seed) pairs swept now replace their old rows; every other pair's rows are kept (a
    sweep of one task or seed must not drop the others).  Rows from before seeds were recorded count as seed 0."""
    swept = {(sweep_key(r), r.get("seed", 0)) for r in new}
    return [r for r in previous if (sweep_key(r), r.get("seed", 0)) not in swept] + new


def write(out_file: Path, rows: list[dict], main_target: float, wall_s: float | None = None,
          swept: dict | None = None) -> None:
    """``wall_s``: seconds this invocation has run so far (the sweep's runtime, for ARTIFACT.md).  ``swept``: where,
    when and in how many seconds each (sweep key, seed) now in the file was swept — ``"<key>/seed<k>"`` → record —
    merged with the file's earlier records, so that a later sweep of another length or task does not erase how an
    earlier one was made (a file written before these records keeps its last provenance under ``earlier``)."""
    prov = provenance() if wall_s is None else {**provenance(), "wall_s": round(wall_s, 1)}
    old = json.loads(out_file.read_text())["provenance"] if out_file.exists() else {}
    kept = {f"{sweep_key(r)}/seed{r.get('seed', 0)}" for r in rows}
    records = {k: v for k, v in {**old.get("swept", {}), **(swept or {})}.items() if k in kept}
    earlier = old.get("earlier") or ({k: v for k, v in old.items() if k != "swept"} if old and "swept" not in old
                                     else None)
    prov.update(swept=records, **({"earlier": earlier} if earlier else {}))
    atomic_write_json(out_file, {"rows": rows, "main_target": main_target,
                                 "matched": matched_summary(rows, main_target), "provenance": prov})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tasks", nargs="*", default=None, help="default: the ablation plan's tasks")
    parser.add_argument("--long", type=int, default=None, metavar="N",
                        help="sweep the long-document plan's DendriticBERT at n = N instead of GLUE models")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="default: the GLUE plan's seeds of each task (its kept DendriticBERT models); with --long, "
                             "the long plan's seeds")
    parser.add_argument("--output-dir", default=None, help="where the fine-tuned models are (default: runs/<preset>)")
    parser.add_argument("--results-dir", default=None,
                        help="default: reproduce/results/ablations (GLUE) or reproduce/results/long (--long)")
    parser.add_argument("--eval-samples", type=int, default=None, help="dev subsample (default: the whole dev set)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip the (task, seed) pairs whose every point is already in the results file")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 (GLUE), 8 (--long)")
    parser.add_argument("--max-length", type=int, default=128, help="GLUE only")
    parser.add_argument("--dense", action="store_true",
                        help="with --long: sweep the same seeds' dense models (untrained policies only) into "
                             "inference_sweep_dense.json")
    args = parser.parse_args(argv)
    if args.dense and args.long is None:
        parser.error("--dense sweeps the long plan's dense models: give --long N")
    t0 = time.time()

    runs = Path(args.output_dir or f"runs/{args.preset}")
    variant = "dense" if args.dense else "dendritic"
    if args.long is not None:
        plan = load_plan("long", args.preset)
        if args.long not in plan.lengths:
            raise SystemExit(f"--long {args.long}: the long plan's lengths are {plan.lengths}")
        tasks, seeds = [plan.task], (args.seeds if args.seeds is not None else plan.seeds)
        todo = [(plan.task, s) for s in seeds]
        model_of = {(plan.task, s): runs / "long" / plan.task / f"{variant}-n{args.long}-seed{s}" for s in seeds}
        results = Path(args.results_dir) if args.results_dir else RESULTS / "long"
        main_target = float(plan.variant["dendritic"]["settings"]["target_sparsity"])
        targets, windows, batch_size = LONG_TARGETS, LONG_WINDOWS, args.batch_size or 8
        how = f"python -m reproduce long --preset {args.preset} --tasks {args.long}"
    else:
        plan, glue_plan = load_plan("ablations", args.preset), load_plan("glue", args.preset)
        tasks = args.tasks or plan.tasks
        todo = [(task, seed) for seed in sorted({s for t in tasks for s in glue_plan.task_seeds(t, args.seeds)})
                for task in tasks if seed in glue_plan.task_seeds(task, args.seeds)]  # seed by seed
        model_of = {(t, s): runs / "glue" / t / f"dendritic-seed{s}" for t, s in todo}
        results = Path(args.results_dir) if args.results_dir else DEFAULT_RESULTS
        main_target = glue_plan.main_target
        targets, windows, batch_size = TARGETS, WINDOWS, args.batch_size or 64
        how = f"python -m reproduce glue --preset {args.preset} --variants dense dendritic"
    missing = [model_of[key] for key in todo if not (model_of[key] / "model.safetensors").exists()]
    if missing:  # before any work starts
        raise SystemExit(f"no fine-tuned model in {', '.join(map(str, missing))}: run `{how}` first (the plan keeps "
                         "the models)")
    out_file = results / ("inference_sweep_dense.json" if args.dense else "inference_sweep.json")
    rows = json.loads(out_file.read_text())["rows"] if out_file.exists() else []
    new, swept = [], {}
    refs = _learned_references(runs, tasks[0], args.long, seeds) if args.dense else {}
    rows = _with_references(rows, refs)  # also for pairs swept before (--reuse)
    for task, seed in todo:
        model_dir = model_of[(task, seed)]
        key = f"{task}-n{args.long}" if args.long is not None else task
        if args.reuse and sum(sweep_key(r) == key and r.get("seed", 0) == seed and r["model"] == str(model_dir)
                              for r in rows) == n_points(targets, windows, learned=not args.dense):
            print(f"{key} seed {seed}: swept already (--reuse)", flush=True)
            continue
        t_model = time.time()
        if args.long is not None:
            done = sweep_long(model_dir, task, args.long, seed, batch_size=batch_size, eval_samples=args.eval_samples,
                              dense=args.dense)
        else:
            done = sweep_task(model_dir, task, seed, max_length=args.max_length, batch_size=batch_size,
                              eval_samples=args.eval_samples, dense=args.dense)
        rows, new = merge_rows(rows, done), new + done
        rows = _with_references(rows, refs)
        prov = provenance()
        swept[f"{key}/seed{seed}"] = {"wall_s": round(time.time() - t_model, 1),
                                      **{k: prov[k] for k in ("created", "git_commit", "cpu", "cpu_isa", "torch_threads")}}
        write(out_file, rows, main_target, time.time() - t0, swept)  # after every model: a killed sweep keeps what it did
    # also when --reuse found everything swept: the summary is rebuilt (no wall time then: nothing was swept)
    write(out_file, rows, main_target, time.time() - t0 if new else None, swept)
    for r in new:
        knob = f"w={r['static_window']}" if r["policy"] == "static" else f"t={r['target_sparsity']}"
        print(f"{sweep_key(r):14s} s{r['seed']} {r['policy']:13s} {knob:6s} {r['metric']} {r['score']:.4f} "
              f"sparsity {r['sparsity_mean']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

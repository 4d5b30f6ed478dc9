"""The ablation grid at matched sparsity: which parts of DendriticBERT matter.

    python reproduce/run_ablations.py --preset small            # the grid of reproduce/configs/small/ablations.toml
    python reproduce/run_ablations.py --preset smoke --quick --output-dir /tmp/a

Variants that change phase 2 get their own phase 2 (from the shared phase-1 checkpoint) under
``<runs>/ablations/<variant>/phase2``; every variant then runs phase 3 with the main table's settings and seeds
(``reproduce/configs/<preset>/glue.toml``), one result file per (task, variant, seed) in
``reproduce/results/ablations/<task>/`` — resumable like the GLUE runner.  ``full`` and ``dense`` are read from
the main table's result files (same runs, not rerun).  ``summary.json``: ``{variant: {task: {"score",
"score_std", "sparsity", "pair_sparsity", "seeds"}}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "reproduce"))

from run_glue import DEFAULT_RESULTS as GLUE_RESULTS  # noqa: E402
from run_glue import QUICK_PHASE2, QUICK_PHASE3, QUICK_PRE, copy_records, ensure_pretraining, load_plan, run_one  # noqa: E402

from dendritic.provenance import atomic_write_json, provenance  # noqa: E402
from dendritic.training import load_phase_config, run_phase2  # noqa: E402
from dendritic.training.config import CONFIG_DIR, tomllib  # noqa: E402

DEFAULT_RESULTS = REPO / "reproduce" / "results" / "ablations"


# Phase-2 settings that leave the budget allocator's measurement unchanged: head sensitivity is measured once,
# in eval mode (hard masks, no Gumbel noise, no teacher), on the shared phase-1 checkpoint, so these variants
# reuse the main phase 2's budgets.json instead of spending L*H+1 evaluations to get the same numbers again.
# (no_gating and uniform_budget change the measurement or skip it, and measure their own.)
_ALLOCATOR_NEUTRAL = {"gumbel", "anneal", "temperature_start", "temperature_end", "distill", "distill_weight",
                      "distill_temperature"}


def variant_phase2(preset: str, runs: Path, variant: str, overrides: dict, quick: dict, main_phase2: Path) -> Path:
    out = runs / "ablations" / variant / "phase2"
    shared = main_phase2 / "budgets.json"
    if set(overrides) <= _ALLOCATOR_NEUTRAL and shared.exists() and not (out / "budgets.json").exists():
        budgets = json.loads(shared.read_text())
        atomic_write_json(out / "budgets.json", {**budgets, "shared_from": str(shared)})
    cfg = load_phase_config(2, preset, {**quick, **overrides, "output_dir": str(out), "init_from": str(runs / "phase1")})
    run_phase2(cfg)
    return out


def export_variant_records(runs: Path, results: Path) -> None:
    """Copy each finished variant phase 2's small records (log, config, budgets, done.json — no weights) to
    ``<results>/train/<variant>/phase2/``, beside the results they produced."""
    for done in sorted((runs / "ablations").glob("*/phase2/done.json")):
        copy_records(done.parent, results / "train" / done.parent.parent.name / "phase2")


def _collect(folder: Path, name: str, seeds: set[int] | None = None) -> dict:
    runs = [json.loads(f.read_text()) for f in sorted(folder.glob(f"{name}-seed*.json"))]
    runs = [r for r in runs if seeds is None or r["seed"] in seeds]
    if not runs:
        return {}
    scores = [r["score"] for r in runs]
    sp = [r["sparsity_mean"] for r in runs if r.get("sparsity_mean") is not None]
    pair = [r["pair_sparsity_mean"] for r in runs if r.get("pair_sparsity_mean") is not None]
    metrics = {k: float(np.mean([r["metrics"][k] for r in runs])) for k in runs[0]["metrics"]
               if all(k in r["metrics"] for r in runs)}
    return {"score": float(np.mean(scores)), "score_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            "metrics": metrics,
            "sparsity": float(np.mean(sp)) if sp else 0.0, "pair_sparsity": float(np.mean(pair)) if pair else 0.0,
            "seeds": sorted(r["seed"] for r in runs), "metric": runs[0]["metric"]}


def summarise(results: Path, glue_results: Path, tasks: list[str], variants: list[str],
              grid_tasks: list[str] | None = None) -> dict:
    """Per variant and task: mean ± std over seeds.  Every entry of a task — the ablated variants, and ``dense``
    and ``full`` (the main table's runs) — is restricted to the seeds all of them have finished, so all points of a
    task average the same seeds.  ``grid_tasks`` (the plan's grid, as opposed to its ``wide`` extra tasks) is
    recorded for the figures."""
    summary: dict = {}
    for task in tasks:
        seeds = {v: set(_collect(results / task, v).get("seeds", [])) for v in variants}
        seeds = {v: s for v, s in seeds.items() if s}
        if not seeds:
            continue  # no variant has run on this task yet
        for stem in ("dense", "dendritic"):  # the main table's runs, where it has this task
            if found := set(_collect(glue_results / task, stem).get("seeds", [])):
                seeds[stem] = found
        common = set.intersection(*seeds.values())
        for name, folder, stem in (("dense", glue_results, "dense"), ("full", glue_results, "dendritic"),
                                   *((v, results, v) for v in variants)):
            entry = _collect(folder / task, stem, common)
            if entry:
                summary.setdefault(name, {})[task] = entry
    if grid_tasks is not None:
        summary["grid_tasks"] = list(grid_tasks)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=None, help="subset of the plan's variants")
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: runs/<preset>)")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--glue-results-dir", default=None, help="where the main table's runs are (full, dense)")
    parser.add_argument("--quick", action="store_true", help="tiny runs (minutes), seed 0")
    parser.add_argument("--summary-only", action="store_true", help="rebuild summary.json from the result files; train nothing")
    args = parser.parse_args(argv)

    plan = tomllib.loads((CONFIG_DIR / args.preset / "ablations.toml").read_text())
    glue_plan = load_plan(args.preset)
    runs = Path(args.output_dir or f"runs/{args.preset}")
    results = Path(args.results_dir) if args.results_dir else (runs / "results" / "ablations" if args.quick else DEFAULT_RESULTS)
    glue_results = Path(args.glue_results_dir) if args.glue_results_dir else (runs / "results" if args.quick else GLUE_RESULTS)
    wide = plan.get("wide", {})  # variant -> further tasks it also runs on (beyond the grid's)
    tasks = args.tasks or plan["tasks"]
    # The summary always covers the whole plan (and any task asked for now), whatever subset this call runs.
    summary_tasks = list(dict.fromkeys([*plan["tasks"], *(t for ts in wide.values() for t in ts), *tasks]))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else plan["seeds"])
    variants = args.variants or list(plan["variants"])
    unknown = set(variants) - set(plan["variants"])
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; the plan has {list(plan['variants'])}")
    all_variants = list(plan["variants"])

    if args.summary_only:
        export_variant_records(runs, results)
        summary = summarise(results, glue_results, summary_tasks, all_variants, plan["tasks"])
        atomic_write_json(results / "summary.json", {**summary, "provenance": provenance()})
        return 0
    quick3, quick2, pre = (QUICK_PHASE3, QUICK_PHASE2, QUICK_PRE) if args.quick else ({}, {}, {})
    main_phase2 = ensure_pretraining(args.preset, runs, pre,
                                     records=runs / "results" / "train" / args.preset if args.quick else None)

    runs_to_do = [(task, v) for task in tasks for v in variants]
    if args.tasks is None:
        runs_to_do += [(task, v) for v in variants for task in wide.get(v, []) if task not in tasks]
    for seed in seeds:
        for task in dict.fromkeys(t for t, _ in runs_to_do):
            task_plan = glue_plan.get("task", {}).get(task, {})
            if not args.quick and seed not in task_plan.get("seeds", [seed]):
                continue  # same seeds as the main table (e.g. SST-2 runs seed 0 only)
            settings = {k: v for k, v in task_plan.items() if k != "seeds"}
            settings.update(quick3)
            for variant in (v for t, v in runs_to_do if t == task):
                spec = plan["variants"][variant]
                phase3 = dict(spec.get("phase3", {}))
                from_phase1 = phase3.pop("from_phase1", False)
                policy = phase3.pop("policy", "learned")
                model_overrides = dict(phase3.pop("model_overrides", {}))
                if policy == "static":
                    model_overrides["static_window"] = plan["static_window"][task]
                phase2_dir = main_phase2
                if "phase2" in spec:
                    phase2_dir = variant_phase2(args.preset, runs, variant, spec["phase2"], quick2, main_phase2)
                if from_phase1:
                    phase2_dir = runs / "phase1"
                run_one(args.preset, runs / "ablations" / variant, results, task, "dendritic", seed,
                        {**settings, **phase3, "model_overrides": model_overrides}, policy=policy,
                        tag=f"{variant}-seed{seed}", phase2_dir=phase2_dir)
                atomic_write_json(results / "summary.json",
                                  {**summarise(results, glue_results, summary_tasks, all_variants, plan["tasks"]), "provenance": provenance()})
    export_variant_records(runs, results)
    summary = summarise(results, glue_results, summary_tasks, all_variants, plan["tasks"])
    atomic_write_json(results / "summary.json", {**summary, "provenance": provenance()})
    for variant, per_task in summary.items():
        if isinstance(per_task, dict):
            print(variant, {t: round(v["score"], 4) for t, v in per_task.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

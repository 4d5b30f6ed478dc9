"""Dense vs DendriticBERT (vs the DSN baseline) on every GLUE task with data: the project's main job.

    python reproduce/run_glue.py --preset small                    # the whole plan, resumable
    python reproduce/run_glue.py --preset small --tasks wnli --quick --output-dir /tmp/q   # minutes

Phases 1 and 2 run first if their ``done.json`` is missing (``<runs>/phase1``, ``<runs>/phase2``).  Then every
(task, variant, seed) of ``reproduce/configs/<preset>/glue.toml`` runs phase 3 and writes one result JSON
(``<results>/<task>/<variant>-seed<k>.json``, atomically, with provenance); an existing result is skipped, so
the command can be stopped and rerun at will.  ``summary.json`` is rebuilt from the result files after every run.
Tasks without data (offline: MNLI, QQP, QNLI training) are reported in one line each and skipped — never faked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dendritic.provenance import RESULTS_SCHEMA_VERSION, atomic_write_json, provenance  # noqa: E402
from dendritic.training.config import CONFIG_DIR, load_phase_config, tomllib  # noqa: E402

DEFAULT_RESULTS = REPO / "reproduce" / "results" / "glue"

# `--quick` (every runner): a few steps on tiny subsamples — minutes, the same code paths.
QUICK_PHASE3 = {"train_samples": 32, "eval_samples": 24, "epochs": 1.0, "max_length": 64}
QUICK_PHASE2 = {"max_steps": 4, "save_steps": 2, "max_docs": 3, "seq_len": 32, "batch_size": 4, "sensitivity_batches": 1}
QUICK_PRE = {1: {k: v for k, v in QUICK_PHASE2.items() if k != "sensitivity_batches"}, 2: QUICK_PHASE2}


def load_plan(preset: str) -> dict:
    path = CONFIG_DIR / preset / "glue.toml"
    if not path.exists():
        raise FileNotFoundError(f"no GLUE plan {path}")
    return tomllib.loads(path.read_text())


def check_results_folder(results: Path) -> None:
    """Refuse a results folder written by another schema version (its files would be misread): every result file
    is checked, not just the first one found."""
    for f in sorted([*results.glob("*.json"), *results.glob("*/*.json")]):
        try:
            version = json.loads(f.read_text()).get("provenance", {}).get("schema_version")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise RuntimeError(f"{f} is not a results file of schema version {RESULTS_SCHEMA_VERSION} ({err}); "
                               "use another --results-dir or remove it") from err
        if version != RESULTS_SCHEMA_VERSION:
            raise RuntimeError(f"{f} has results schema version {version}, this code writes {RESULTS_SCHEMA_VERSION}; "
                               "use another --results-dir or remove the old results")


def ensure_pretraining(preset: str, runs: Path, overrides: dict[int, dict], records: Path | None = None) -> Path:
    """Phases 1 and 2 (each skipped when already done); returns the phase-2 folder.  Their small records (logs,
    configs, budgets) are copied to ``records`` (default ``reproduce/results/train/<preset>``)."""
    from dendritic.training import run_phase1, run_phase2

    p1 = load_phase_config(1, preset, {**overrides.get(1, {}), "output_dir": str(runs / "phase1")})
    run_phase1(p1)
    p2 = load_phase_config(2, preset, {**overrides.get(2, {}), "output_dir": str(runs / "phase2"), "init_from": str(runs / "phase1")})
    run_phase2(p2)
    export_training_records(runs, records or TRAIN_RESULTS / preset)
    return runs / "phase2"


TRAIN_RESULTS = REPO / "reproduce" / "results" / "train"
TRAINING_RECORDS = ("done.json", "log.jsonl", "resolved_config.json", "budgets.json", "config.json")


def export_training_records(runs: Path, dest: Path) -> None:
    """Copy the small, committable records of phases 1-2 (logs, configs, budgets — no weights) next to the results."""
    for phase in ("phase1", "phase2"):
        copy_records(runs / phase, dest / phase)


def copy_records(src: Path, dest: Path) -> None:
    """Copy a training folder's small records (``TRAINING_RECORDS``: no weights) that exist to ``dest``."""
    import shutil

    for name in TRAINING_RECORDS:
        if (src / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dest / name)


def run_one(preset: str, runs: Path, results: Path, task: str, variant: str, seed: int, settings: dict,
            *, target: float | None = None, policy: str = "learned", tag: str | None = None,
            phase2_dir: Path | None = None, keep_model: bool = False, init_from: Path | None = None) -> dict | None:
    """One (task, variant, seed) fine-tuning, or its existing result.  The starting checkpoint is phase 2's for
    DendriticBERT and phase 1's for the dense and DSN baselines unless ``init_from`` says otherwise."""
    from dendritic.data import GlueDataMissing, get_task
    from dendritic.training import run_phase3

    name = tag or f"{variant}-seed{seed}"
    out_file = results / task / f"{name}.json"
    if out_file.exists():
        existing = json.loads(out_file.read_text())
        _check_same_settings(out_file, existing.get("resolved_config", {}), settings, target)
        return existing
    if init_from is None:
        init_from = (phase2_dir or runs / "phase2") if variant == "dendritic" else runs / "phase1"
    overrides = {**settings, "task": task, "variant": variant, "seed": seed, "policy": policy,
                 "output_dir": str(runs / "glue" / task / name), "init_from": str(init_from)}
    if target is not None:
        overrides["target_sparsity"] = target
    cfg = load_phase_config(3, preset, overrides)
    get_task(task)  # an unknown task name is an error, not a skip
    started = time.time()
    try:  # only a missing GLUE split means "skip this task"; any other missing file is an error
        result = run_phase3(cfg, save_model=keep_model)
    except GlueDataMissing as e:  # no data for this task here (offline MNLI/QQP/QNLI-train)
        print(f"skipping {task}: {str(e).splitlines()[0]}", flush=True)
        return None
    import dataclasses

    record = {k: v for k, v in result.items() if k not in ("provenance",)}
    record.update(resolved_config=dataclasses.asdict(cfg), provenance=provenance(),
                  wall_time_s=round(time.time() - started, 1))
    atomic_write_json(out_file, record)
    return record


def _check_same_settings(path: Path, resolved: dict, settings: dict, target: float | None) -> None:
    """A finished result is reused only if it was made with the settings asked for now: a changed plan must not
    silently mix with old results."""
    wanted = {**settings, **({"target_sparsity": target} if target is not None else {})}
    differ = {k: (resolved.get(k), v) for k, v in wanted.items() if k in resolved and resolved.get(k) != v}
    if differ:
        raise RuntimeError(f"{path} was made with other settings ({differ}: (file, now)); use another --results-dir "
                           "or remove it to rerun")


# -- the summary --------------------------------------------------------------------------------------------------
def _mean_or_none(xs: list[float | None]) -> float | None:
    """Mean of a list that may hold None (a retention against a dense score of exactly 0, e.g. CoLA's MCC of a
    one-class model): None rather than a crash or a silently shorter mean."""
    return float(np.mean(xs)) if xs and all(x is not None for x in xs) else None


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None  # no spread from one seed


def summarise(results: Path, tasks: list[str]) -> dict:
    """``summary.json`` from the per-run files: per task dense/dendritic/dsn mean ± std over seeds, retention,
    achieved sparsity over the dev inputs (blocks and token pairs), agreement with the dense predictions."""
    from dendritic.metrics import primary_metric

    summary: dict = {}
    for task in tasks:
        runs = {f.stem: json.loads(f.read_text()) for f in sorted((results / task).glob("*-seed*.json"))}
        by = {v: {r["seed"]: r for k, r in runs.items() if k.startswith(f"{v}-seed")} for v in ("dense", "dendritic", "dsn")}
        # Compare on the seeds both variants have finished (a run in progress must not unbalance the means).
        paired = set(by["dense"]) & set(by["dendritic"])
        if not paired:
            continue
        by = {v: {s: r for s, r in runs_v.items() if s in paired} for v, runs_v in by.items()}
        dense_m, dense_s = _mean_std([r["score"] for r in by["dense"].values()])
        den_m, den_s = _mean_std([r["score"] for r in by["dendritic"].values()])
        dsn_m, dsn_s = _mean_std([r["score"] for r in by["dsn"].values()])
        per_input = [x for r in by["dendritic"].values() for x in r["per_input_sparsity"]]
        pair = [r["pair_sparsity_mean"] for r in by["dendritic"].values()]
        agreement = [
            float(np.mean(np.asarray(r["predictions"]) == np.asarray(by["dense"][s]["predictions"])))
            for s, r in by["dendritic"].items() if s in by["dense"] and task != "stsb"
        ]
        summary[task] = {
            "metric": primary_metric(task),
            "dense_mean": dense_m, "dense_std": dense_s,
            "dendritic_mean": den_m, "dendritic_std": den_s,
            "dsn_mean": dsn_m, "dsn_std": dsn_s,
            "retention": den_m / dense_m if dense_m else None,
            "sparsity_mean": float(np.mean(per_input)), "sparsity_std": float(np.std(per_input)),
            "pair_sparsity_mean": float(np.mean(pair)),
            "agreement_with_dense": float(np.mean(agreement)) if agreement else None,
            "seeds": sorted(set(by["dense"]) & set(by["dendritic"])),
            "block_size": next(iter(by["dendritic"].values()))["block_size"],
            "train_examples": next(iter(by["dendritic"].values()))["train_examples"],
            "dev_examples": next(iter(by["dendritic"].values()))["dev_examples"],
            # Parameters a variant uses: the dense model carries the (unused) policy modules, so they are not counted.
            "parameters": {v: next(iter(by[v].values()))["parameters"]
                           - (next(iter(by[v].values())).get("policy_parameters") or 0 if v == "dense" else 0)
                           for v in by if by[v]},
            "policy_parameters": next(iter(by["dendritic"].values())).get("policy_parameters"),
        }
    done = list(summary)
    if done:
        for key, keep in (("average", lambda t: True), ("average_without_wnli", lambda t: t != "wnli")):
            chosen = [t for t in done if keep(t)]
            if not chosen:
                continue
            dense = float(np.mean([summary[t]["dense_mean"] for t in chosen]))
            den = float(np.mean([summary[t]["dendritic_mean"] for t in chosen]))
            summary[key] = {"dense": dense, "dendritic": den, "retention": den / dense if dense else None,
                            "sparsity_mean": float(np.mean([summary[t]["sparsity_mean"] for t in chosen])),
                            "tasks": chosen,
                            "mean_task_retention": _mean_or_none([summary[t]["retention"] for t in chosen])}
    return summary


def summarise_tradeoff(results: Path, tasks: list[str] = ()) -> dict:
    """Rows of the trade-off runs, plus — for each trade-off task — the main table's seed-0 DendriticBERT run as
    the point at the main target (the same fine-tuning; ``source`` says which file a row comes from)."""
    files = sorted(results.glob("*/tradeoff-*.json")) + [f for t in tasks if (f := results / t / "dendritic-seed0.json").exists()]
    rows = []
    for f in files:
        r = json.loads(f.read_text())
        rows.append({**{k: r[k] for k in ("task", "policy", "target_sparsity", "score", "metric", "sparsity_mean",
                                          "pair_sparsity_mean", "seed")}, "source": f"{f.parent.name}/{f.name}"})
    return {"rows": sorted(rows, key=lambda r: (r["task"], r["target_sparsity"]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="smoke, small (offline default) or paper")
    parser.add_argument("--tasks", nargs="*", default=None, help="tasks to run (default: the plan's)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="seeds (default: the plan's)")
    parser.add_argument("--variants", nargs="*", default=None, help="dense, dendritic, dsn (default: the plan's)")
    parser.add_argument("--output-dir", default=None, help="checkpoints and logs (default: runs/<preset>)")
    parser.add_argument("--results-dir", default=None, help=f"result JSON (default: {DEFAULT_RESULTS.relative_to(REPO)}; "
                        "with --quick: <output-dir>/results)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on tiny subsamples, seed 0 (minutes; exercises the same code)")
    parser.add_argument("--tradeoff", action="store_true", help="also the accuracy-sparsity trade-off runs")
    parser.add_argument("--summary-only", action="store_true",
                        help="rebuild summary.json (and tradeoff.json) from the result files; train nothing")
    args = parser.parse_args(argv)

    plan = load_plan(args.preset)
    tasks = [t.lower() for t in (args.tasks or plan["tasks"])]
    runs = Path(args.output_dir or f"runs/{args.preset}")
    results = Path(args.results_dir) if args.results_dir else (runs / "results" if args.quick else DEFAULT_RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    check_results_folder(results)
    # The summary always covers every task of the plan that has results (a run restricted with --tasks must not
    # drop the others from summary.json), plus any task asked for outside the plan.
    summary_tasks = [t.lower() for t in plan["tasks"]] + [t for t in tasks if t not in plan["tasks"]]
    if args.summary_only:
        atomic_write_json(results / "summary.json", {**summarise(results, summary_tasks), "provenance": provenance()})
        if any(results.glob("*/tradeoff-*.json")):
            atomic_write_json(results / "tradeoff.json", {**summarise_tradeoff(results, plan.get("tradeoff", {}).get(
                "tasks", [])), "provenance": provenance()})
        return 0
    quick = QUICK_PHASE3 if args.quick else {}
    pre = QUICK_PRE if args.quick else {}
    print(f"GLUE plan ({args.preset}): tasks {tasks}; results -> {results}", flush=True)
    # Quick runs keep their training records beside their results, never in the committed tree.
    phase2 = ensure_pretraining(args.preset, runs, pre, records=results.parent / "train" / args.preset if args.quick else None)

    seeds_all = args.seeds if args.seeds is not None else ([0] if args.quick else plan["seeds"])
    variants = args.variants or plan["variants"]
    for seed in sorted(set(seeds_all)):
        for task in tasks:
            settings = dict(plan.get("task", {}).get(task, {}))
            task_seeds = settings.pop("seeds", seeds_all)
            if seed not in task_seeds:
                continue
            settings.update(quick)
            for variant in variants:
                run_one(args.preset, runs, results, task, variant, seed, settings, phase2_dir=phase2,
                        keep_model=(seed == 0 and variant == "dendritic"))
            atomic_write_json(results / "summary.json", {**summarise(results, summary_tasks), "provenance": provenance()})

    trade = plan.get("tradeoff", {})
    if args.tradeoff:
        main_target = load_phase_config(3, args.preset, {}).target_sparsity
        for task in trade.get("tasks", []):
            settings = {k: v for k, v in plan.get("task", {}).get(task, {}).items() if k != "seeds"}
            settings.update(quick)
            for target in trade.get("targets", []):
                if target == main_target:  # that point is the main table's seed-0 run: not trained twice
                    continue
                run_one(args.preset, runs, results, task, "dendritic", 0, settings, target=target,
                        tag=f"tradeoff-learned-{target}", phase2_dir=phase2)
                atomic_write_json(results / "tradeoff.json",
                                  {**summarise_tradeoff(results, trade.get("tasks", [])), "provenance": provenance()})

    summary = summarise(results, summary_tasks)
    atomic_write_json(results / "summary.json", {**summary, "provenance": provenance()})
    if "average" in summary:
        a = summary["average"]
        print(f"average over {a['tasks']}: dense {a['dense']:.4f}, dendritic {a['dendritic']:.4f}, "
              f"retention {a['retention']:.2%}, achieved sparsity {a['sparsity_mean']:.2%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One runner for every plan: train the checkpoints the runs start from, then every run whose result is missing, in
order, printing ``run k of N`` with an ETA from the throughput measured so far; summaries after every run.

Layout under a run folder ``D`` (default ``runs/<preset>``) and a results root ``R``::

    D/phase1, D/phase2, D/ablations/<variant>/phase2     the checkpoints runs start from (resumable phases)
    D/<group>/<task>/<name>/                              one fine-tuning (weights kept only where a figure needs them)
    R/<plan>/<task>/<name>.json                           one result per run, written atomically, with provenance
    R/<plan>/summary.json                                 rebuilt from the result files after every run
    R/train/<preset>/phase{1,2}/, R/ablations/train/...   the small records of the checkpoints (logs, configs, budgets)

A finished result is reused only if it was made with the settings asked for now (else: an error naming them).
Tasks without data here (offline: MNLI, QQP, QNLI training) are reported in one line each and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from dendritic.provenance import RESULTS_SCHEMA_VERSION, atomic_write_json, provenance
from dendritic.training import load_phase_config, run_phase1, run_phase2, run_phase3
from dendritic.training.data import GlueDataMissing, glue_available
from dendritic.training.long_docs import LONG_TASKS

from .plans import PRETRAINED, RUN_PREFIX, Pretrain, Run, Selection
from .summaries import (summarise_ablations, summarise_diagnostics, summarise_glue, summarise_long,
                        summarise_recipes, summarise_tradeoff)

__all__ = ["check_results_folder", "copy_records", "ensure_pretrain", "execute", "run_one", "write_summaries"]

TRAINING_RECORDS = ("done.json", "log.jsonl", "resolved_config.json", "budgets.json", "config.json")


def check_results_folder(results: Path) -> None:
    """Refuse a results folder written by another schema version (its files would be misread): every result file
    is checked, not just the first one found."""
    for f in sorted([*results.glob("*.json"), *results.glob("*/*.json")]):
        if f.name == "comparison.json":
            continue
        try:
            version = json.loads(f.read_text()).get("provenance", {}).get("schema_version")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise RuntimeError(f"{f} is not a results file of schema version {RESULTS_SCHEMA_VERSION} ({err}); "
                               "use another results folder or remove it") from err
        if version != RESULTS_SCHEMA_VERSION:
            raise RuntimeError(f"{f} has results schema version {version}, this code writes {RESULTS_SCHEMA_VERSION}; "
                               "use another results folder or remove the old results")


def copy_records(src: Path, dest: Path) -> None:
    """Copy a training folder's small records (``TRAINING_RECORDS``: no weights) that exist to ``dest``."""
    for name in TRAINING_RECORDS:
        if (src / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dest / name)


def _records_dest(key: str, results_root: Path, preset: str) -> Path:
    if key.startswith("ablations/"):  # ablations/<variant>/phase2 -> beside the ablation results
        return results_root / "ablations" / "train" / key.split("/")[1] / "phase2"
    return results_root / "train" / preset / key


def ensure_pretrain(key: str, table: dict[str, Pretrain], *, preset: str, run_dir: Path, results_root: Path,
                    config_dir: Path, done: set[str] | None = None) -> Path:
    """The checkpoint ``key`` (and the ones it starts from), trained if missing; its records copied beside the
    results.  Returns its folder."""
    done = set() if done is None else done
    spec = table[key]
    out = run_dir / key
    if key in done:
        return out
    overrides = {**spec.overrides, "output_dir": str(out)}
    if spec.init is not None:
        overrides["init_from"] = str(ensure_pretrain(spec.init, table, preset=preset, run_dir=run_dir,
                                                     results_root=results_root, config_dir=config_dir, done=done))
    cfg = load_phase_config(spec.phase, preset, overrides, config_dir=config_dir)
    if spec.budgets_from is not None:  # the allocator's measurement does not depend on this variant's settings
        shared = run_dir / spec.budgets_from / "budgets.json"
        if shared.exists() and not (out / "budgets.json").exists():
            atomic_write_json(out / "budgets.json", {**json.loads(shared.read_text()), "shared_from": str(shared)})
    (run_phase1 if spec.phase == 1 else run_phase2)(cfg)
    copy_records(out, _records_dest(key, results_root, preset))
    done.add(key)
    return out


def _dendritic_defaults() -> dict:
    """DendriticBERT's own model options (not BERT's) at their defaults — what a model override of one of them
    means when it is absent."""
    from transformers import BertConfig

    from dendritic.config import DendriticConfig

    own = DendriticConfig().to_dict()
    return {k: v for k, v in own.items() if k not in BertConfig().to_dict()}


def _effective(key: str, value, defaults: dict):
    """``model_overrides`` compared by effect: an override of a DendriticBERT option to its default is no change
    (``{"gumbel": True}`` is the same model as ``{}``); BERT's own options are kept as written (the pretrained
    model's value, not BertConfig's default, applies when they are absent).  Limitation: a run that starts from a
    checkpoint whose own config changed that option (e.g. a ``no_gumbel`` phase 2) reads an absent override as the
    checkpoint's value, so there ``{"gumbel": True}`` and ``{}`` do differ and this check would not tell them apart;
    no plan writes such a pair."""
    if key != "model_overrides" or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if not (k in defaults and defaults[k] == v)}


def _check_same_settings(path: Path, resolved: dict, wanted: dict) -> None:
    """A finished result is reused only if it was made with the settings asked for now: a changed plan must not
    silently mix with old results."""
    defaults = _dendritic_defaults() if "model_overrides" in wanted else {}
    differ = {k: (resolved.get(k), v) for k, v in wanted.items()
              if k in resolved and _effective(k, resolved.get(k), defaults) != _effective(k, v, defaults)}
    if differ:
        raise RuntimeError(f"{path} was made with other settings ({differ}: (file, now)); use another results "
                           "folder or remove it to rerun")


def run_one(run: Run, *, preset: str, run_dir: Path, results: Path, init_from: str, config_dir: Path,
            retrain: bool = False) -> dict | None:
    """One fine-tuning, or its existing result (``retrain``: train again all the same, e.g. because a later run
    starts from its model and the model is not in this run folder); None when the task has no data here."""
    out_file = results / run.task / f"{run.name}.json"
    if out_file.exists() and not retrain:
        existing = json.loads(out_file.read_text())
        _check_same_settings(out_file, existing.get("resolved_config", {}), run.wanted())
        return existing
    overrides = {**run.overrides(), "output_dir": str(run_dir / run.key), "init_from": init_from}
    cfg = load_phase_config(3, preset, overrides, config_dir=config_dir)
    started = time.time()
    try:  # only a missing GLUE split means "skip this task"; any other missing file is an error
        result = run_phase3(cfg, save_model=run.keep_model)
    except GlueDataMissing as e:
        print(f"skipping {run.task}: {str(e).splitlines()[0]}", flush=True)
        return None
    record = {k: v for k, v in result.items() if k != "provenance"}
    record.update(resolved_config=dataclasses.asdict(cfg), provenance=provenance(),
                  wall_time_s=round(time.time() - started, 1))
    atomic_write_json(out_file, record)
    return record


def write_summaries(plan, results_root: Path, sel: Selection) -> dict:
    """Rebuild the plan's summary files from its result files; returns the main summary."""
    kind = plan.kind
    folder = results_root / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "glue":
        summary = summarise_glue(folder, plan.summary_tasks(sel))
        if any(folder.glob("*/tradeoff-*.json")):
            atomic_write_json(folder / "tradeoff.json",
                              {**summarise_tradeoff(folder, plan.tradeoff_tasks), "provenance": provenance()})
    elif kind == "ablations":
        summary = summarise_ablations(folder, results_root / "glue", plan.all_tasks(sel), list(plan.variants),
                                      plan.tasks)
    elif kind == "diagnostics":
        summary = summarise_diagnostics(folder, plan.entries)
    elif kind == "long":
        tasks = [plan.task, *(e["task"] for e in plan.extra)]
        lengths = {plan.task: plan.lengths}
        for e in plan.extra:
            lengths.setdefault(e["task"], []).append(int(e["length"]))
        summary = summarise_long(folder, list(dict.fromkeys(tasks)), lengths)
    else:
        summary = summarise_recipes(folder, plan.tasks)
    atomic_write_json(folder / "summary.json", {**summary, "provenance": provenance()})
    return summary


def _resolve_init(run: Run, table: dict[str, Pretrain], *, preset: str, run_dir: Path, results_root: Path,
                  config_dir: Path, ready: set[str], needed: bool) -> str:
    """The folder (or model name) a run starts from; pretraining is trained on demand, another run's model must
    have been kept by that run (it comes first in the plan)."""
    if run.init == PRETRAINED:
        return PRETRAINED
    if run.init.startswith(RUN_PREFIX):
        folder = run_dir / run.init_run
        if needed and not (folder / "model.safetensors").exists():
            raise RuntimeError(f"{run.task} {run.name} starts from the fine-tuned model in {folder}, which is not "
                               "there (its result was reused from another run folder?): run without --reuse, or "
                               "remove that result so the run is trained again with its model kept")
        return str(folder)
    if not needed:
        return str(run_dir / run.init)  # a reused result: nothing to train for it
    return str(ensure_pretrain(run.init, table, preset=preset, run_dir=run_dir, results_root=results_root,
                               config_dir=config_dir, done=ready))


def _check_no_stale_results(runs: list[Run], missing: list[Run], results: Path) -> None:
    """A finished result is not reused when the run it started from is about to be trained anew (that run's result
    is absent, e.g. removed after its recipe changed): it may come from other weights.  One clear error before any
    work, naming both, instead of a silent mix — directly or through a chain of runs."""
    fresh = {r.key: r for r in missing}
    stale: list[tuple[Run, Run]] = []
    grew = True
    while grew:
        grew = False
        for r in runs:
            if r.init_run in fresh and r.key not in fresh:
                stale.append((r, fresh[r.init_run]))
                fresh[r.key] = r
                grew = True
    if stale:
        lines = [f"  {results / r.task / (r.name + '.json')} (starts from {base.task} {base.name}, whose result is absent)"
                 for r, base in stale]
        raise RuntimeError("these finished results start from runs that are to be trained anew, so they may come "
                           "from other weights; remove them too (or restore the results they started from):\n"
                           + "\n".join(lines))


def _eta(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def execute(plan, sel: Selection, *, preset: str, run_dir: Path, results_root: Path, config_dir: Path) -> dict:
    """Train what is missing for the selected runs of ``plan``; returns ``{"trained", "reused", "skipped"}``."""
    runs = plan.runs(sel)
    absent = sorted({r.task for r in runs if r.task not in LONG_TASKS and not glue_available(r.task)})
    for task in absent:  # offline: MNLI, QQP, QNLI training — said once, before any work, never faked
        print(f"skipping {task}: its GLUE training/dev files are not available here (offline data: see "
              "$DENDRITIC_DATA_DIR/README.md; with internet, data_source = \"hub\")", flush=True)
    skipped = sum(r.task in absent for r in runs)
    runs = [r for r in runs if r.task not in absent]
    results = results_root / plan.kind
    results.mkdir(parents=True, exist_ok=True)
    check_results_folder(results)
    table = plan.pretraining()
    missing = [r for r in runs if not (results / r.task / f"{r.name}.json").exists()]
    _check_no_stale_results(runs, missing, results)
    # A run whose result exists but whose kept model a run to be trained starts from, and which is not in this run
    # folder (e.g. a committed result reused with --reuse), is trained again (deterministic: the same result).
    retrain: list[Run] = []
    while True:
        wanted = {r.init_run for r in missing if r.init_run}
        more = [r for r in runs if r not in missing and r.key in wanted
                and not (run_dir / r.key / "model.safetensors").exists()]
        if not more:
            break
        missing += more
        retrain += more
    missing.sort(key=runs.index)
    print(f"{plan.kind} plan ({preset}): {len(runs)} runs, {len(missing)} to train; results -> {results}", flush=True)
    ready: set[str] = set()
    counts = {"trained": 0, "reused": 0, "skipped": skipped}
    work_done, time_spent = 0.0, 0.0
    remaining_work = sum(r.work() for r in missing)
    for k, run in enumerate(runs, 1):
        fresh = run in missing
        if fresh:
            eta = f"about {_eta(remaining_work * time_spent / work_done)} left" if work_done else "ETA after the first run"
            print(f"\n=== run {k} of {len(runs)}: {run.task} {run.name} (from {run.init}) — {eta}", flush=True)
        init = _resolve_init(run, table, preset=preset, run_dir=run_dir, results_root=results_root,
                             config_dir=config_dir, ready=ready, needed=fresh)
        t0 = time.time()
        record = run_one(run, preset=preset, run_dir=run_dir, results=results, init_from=init, config_dir=config_dir,
                         retrain=run in retrain)
        if record is None:
            counts["skipped"] += 1
        elif fresh:
            counts["trained"] += 1
            work_done += run.work()
            time_spent += time.time() - t0
            print(f"=== {run.task} {run.name}: {record['metric']} {record['score']:.4f}"
                  + (f", block sparsity {record['sparsity_mean']:.3f}" if record.get("sparsity_mean") else ""), flush=True)
        else:
            counts["reused"] += 1
        if fresh:
            remaining_work -= run.work()
            write_summaries(plan, results_root, sel)
    write_summaries(plan, results_root, sel)
    return counts

"""Summaries: pure functions of the per-run result files of one plan (rebuilt after every run and by
``--summary-only``).  Other programs read them: keep their keys.

* :func:`summarise_glue` → ``glue/summary.json``: per task dense/dendritic/dsn mean ± std over the seeds both
  dense and DendriticBERT have, retention, achieved sparsity, agreement with the dense predictions; GLUE averages.
* :func:`summarise_tradeoff` → ``glue/tradeoff.json``: one row per trade-off point.
* :func:`summarise_ablations` → ``ablations/summary.json``: per variant and task, mean ± std over common seeds.
* :func:`summarise_diagnostics` → ``diagnostics/summary.json``: each question beside its runs.
* :func:`summarise_recipes` → ``recipes/summary.json``: held-out scores per recipe and the winner per task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dendritic.provenance import result_fingerprint
from dendritic.training.data import get_task
from dendritic.training.metrics import primary_metric

__all__ = ["summarise_ablations", "summarise_diagnostics", "summarise_glue", "summarise_recipes", "summarise_tradeoff"]


def _is_regression(task: str) -> bool:
    """A task scored on a real-valued output (STS-B): its predictions have no class to agree on."""
    return get_task(task).num_labels == 1


# -- glue ------------------------------------------------------------------------------------------------------------
def _mean_or_none(xs: list[float | None]) -> float | None:
    """Mean of a list that may hold None (a retention against a dense score of exactly 0, e.g. CoLA's MCC of a
    one-class model): None rather than a crash or a silently shorter mean."""
    return float(np.mean(xs)) if xs and all(x is not None for x in xs) else None


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None  # no spread from one seed


def summarise_glue(results: Path, tasks: list[str]) -> dict:
    """``summary.json`` from the per-run files: per task dense/dendritic/dsn mean ± std over seeds, retention,
    achieved sparsity over the dev inputs (blocks and token pairs), agreement with the dense predictions."""
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
            _agreement(r, by["dense"][s])
            for s, r in by["dendritic"].items() if s in by["dense"] and not _is_regression(task)
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
            "train_examples": next(iter(by["dendritic"].values()))["train_examples"],  # DendriticBERT's
            "dense_train_examples": next(iter(by["dense"].values()))["train_examples"],  # may differ (v2: SST-2)
            "dev_examples": next(iter(by["dendritic"].values()))["dev_examples"],
            # Parameters a variant uses: the dense model carries the (unused) policy modules, so they are not counted.
            "parameters": {v: next(iter(by[v].values()))["parameters"]
                           - (next(iter(by[v].values())).get("policy_parameters") or 0 if v == "dense" else 0)
                           for v in by if by[v]},
            "policy_parameters": next(iter(by["dendritic"].values())).get("policy_parameters"),
            # Is the policy input-dependent (#13 part 2b)?  Share of block decisions that differ from the most common
            # one among inputs of the same length, and the per-input sparsity spread once length is fixed; means
            # over seeds (None for runs made before these were recorded).
            "input_dependence": _mean_or_none([(r.get("input_dependence") or {}).get("input_dependence")
                                               for r in by["dendritic"].values()]),
            "sparsity_spread_given_length": _mean_or_none([r.get("sparsity_spread_given_length")
                                                           for r in by["dendritic"].values()]),
        }
        entry = summary[task]
        entry["trivial_score"] = trivial_score(task, next(iter(by["dense"].values()))["labels"])
        entry["informative"], entry["informative_reason"] = _informative(task, entry)
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
        summary["headline"] = headline(summary, done)
    return summary


def trivial_score(task: str, labels: list) -> float:
    """The best score a constant prediction gets on these dev labels (majority class for accuracy, all-positive
    for MRPC's F1, 0 for MCC and for the correlations of STS-B, where a constant has none)."""
    from dendritic.training.data import get_task
    from dendritic.training.metrics import compute_glue_metrics

    spec = get_task(task)
    if spec.is_regression:
        return 0.0
    metric = primary_metric(task)
    return max(float(compute_glue_metrics(task, [c] * len(labels), labels)[metric]) for c in range(spec.num_labels))


def _informative(task: str, entry: dict) -> tuple[bool, str]:
    """A task informs the headline when its dense baseline clearly beats the trivial predictor: ≥ 3 seeds and a
    margin above 3 seed standard deviations.  WNLI never does (GLUE practice: its dev set is adversarial)."""
    if task == "wnli":
        return False, "dev set adversarial to training (GLUE practice keeps it out of averages)"
    if len(entry["seeds"]) < 3 or entry["dense_std"] is None:
        return False, f"{len(entry['seeds'])} seed(s): fewer than 3"
    margin = entry["dense_mean"] - entry["trivial_score"]
    if margin <= 3 * entry["dense_std"]:
        return False, (f"dense {entry['dense_mean']:.4f} vs trivial {entry['trivial_score']:.4f}: margin {margin:.4f} "
                       f"is not above 3 seed std ({3 * entry['dense_std']:.4f})")
    return True, f"dense beats the trivial predictor by {margin:.4f} > 3 seed std ({3 * entry['dense_std']:.4f})"


def headline(summary: dict, tasks: list[str]) -> dict:
    """The headline over the informative tasks: unweighted means, retention as the ratio of the means."""
    chosen = [t for t in tasks if summary[t]["informative"]]
    if not chosen:
        return {"tasks": [], "dense": None, "dendritic": None, "retention": None, "sparsity_mean": None,
                "agreement_mean": None, "min_task_retention": None}
    dense = float(np.mean([summary[t]["dense_mean"] for t in chosen]))
    den = float(np.mean([summary[t]["dendritic_mean"] for t in chosen]))
    agree = [summary[t]["agreement_with_dense"] for t in chosen if summary[t]["agreement_with_dense"] is not None]
    return {"tasks": chosen, "dense": dense, "dendritic": den, "retention": den / dense if dense else None,
            "sparsity_mean": float(np.mean([summary[t]["sparsity_mean"] for t in chosen])),
            "agreement_mean": float(np.mean(agree)) if agree else None,
            "min_task_retention": _min_or_none([summary[t]["retention"] for t in chosen])}


def _min_or_none(xs: list[float | None]) -> float | None:
    return float(min(xs)) if xs and all(x is not None for x in xs) else None


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


# -- ablations -------------------------------------------------------------------------------------------------------
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


def summarise_ablations(results: Path, glue_results: Path, tasks: list[str], variants: list[str],
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


# -- diagnostics -----------------------------------------------------------------------------------------------------
def summarise_diagnostics(results: Path, entries: dict[str, dict]) -> dict:
    """Each diagnostic question beside the scores of its runs."""
    out = {}
    for name, spec in entries.items():
        files = sorted((results / spec["task"]).glob(f"{name}-seed*.json"))
        recs = [json.loads(f.read_text()) for f in files]
        out[name] = {"question": spec["question"], "task": spec["task"], "variant": spec["variant"],
                     "policy": spec.get("policy", "learned"),
                     "init": spec["init"], "settings": spec.get("settings", {}), "reference": spec.get("reference", "glue"),
                     "runs": [{"seed": r["seed"], "score": r["score"], "metrics": r["metrics"],
                               "sparsity_mean": r.get("sparsity_mean"), "train_examples": r.get("train_examples"),
                               "wall_time_s": r.get("wall_time_s")} for r in recs]}
    return out


# -- recipes ---------------------------------------------------------------------------------------------------------
def _recipe_order(item: tuple[str, list[dict]]) -> tuple[float, float]:
    """A recipe's place in its task's rows: learning rate, then epochs (of its first result's resolved config)."""
    cfg = item[1][0]["resolved_config"]
    return cfg["learning_rate"], cfg["epochs"]


def summarise_recipes(results: Path, tasks: list[str]) -> dict:
    """Per task: every recipe's held-out score (mean over its seeds) and the best one — the dense baseline recipe of
    the GLUE plan.  Rows go by learning rate, then epochs; ties keep the first (the smaller learning rate, then the
    fewer epochs)."""
    out: dict = {}
    for task in tasks:
        by_recipe: dict[str, list[dict]] = {}
        for f in sorted((results / task).glob("dense-*-seed*.json")):
            by_recipe.setdefault(f.stem.rsplit("-seed", 1)[0], []).append(json.loads(f.read_text()))
        if not by_recipe:
            continue
        rows = []
        for name, rs in sorted(by_recipe.items(), key=_recipe_order):
            cfg = rs[0]["resolved_config"]
            scores = [r["score"] for r in rs]
            rows.append({"recipe": name, "learning_rate": cfg["learning_rate"], "epochs": cfg["epochs"],
                         "batch_size": cfg["batch_size"], "init_from": cfg["init_from"], "metric": rs[0]["metric"],
                         "score": float(np.mean(scores)), "seeds": sorted(r["seed"] for r in rs),
                         "metrics": {k: float(np.mean([r["metrics"][k] for r in rs])) for k in rs[0]["metrics"]},
                         "eval_examples": rs[0]["dev_examples"], "train_examples": rs[0]["train_examples"],
                         "wall_time_s": float(np.sum([r.get("wall_time_s", 0.0) for r in rs]))})
        best = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores
        out[task] = {"recipes": rows, "best": best["recipe"], "best_learning_rate": best["learning_rate"],
                     "best_init": best["init_from"], "best_score": best["score"], "eval_split": "train_holdout"}
        inits = {r["init_from"] for r in rows}
        if len(inits) > 1:  # the init comparison: the same learning rate from each starting checkpoint
            lr = next(r["learning_rate"] for r in rows if r["init_from"] != rows[0]["init_from"])
            out[task]["init_comparison"] = {"learning_rate": lr, **{Path(r["init_from"]).name: r["score"]
                                                                    for r in rows if r["learning_rate"] == lr}}
        sparsified = _sparsify_rows(results / task)
        if sparsified:
            out[task]["sparsify"] = sparsified
    return out


def _agreement(a: dict, b: dict) -> float:
    """Share of inputs on which two runs' predictions agree (classification results on the same inputs)."""
    return float(np.mean(np.asarray(a["predictions"]) == np.asarray(b["predictions"])))


def _vs_init_run(r: dict, folder: Path, classification: bool) -> dict | None:
    """A DendriticBERT result beside the dense run it was sparsified from (its ``init_from``, a result file in
    ``folder`` scored on the same inputs): that run's name and score, retention and agreement (None unless
    ``classification``: a regression has no class to agree on); None if that run's file is absent."""
    base_file = folder / f"{Path(str(r['resolved_config'].get('init_from', ''))).name}.json"
    if not base_file.exists():
        return None
    base = json.loads(base_file.read_text())
    return {"dense_run": base_file.stem, "dense_score": base["score"],
            "retention": r["score"] / base["score"] if base["score"] else None,
            "agreement": _agreement(r, base) if classification else None}


def _sparsify_rows(folder: Path) -> list[dict]:
    """The target search ([sparsify]): per DendriticBERT run, its held-out score beside the dense run it started from
    (same seed, same slice): retention, agreement of predictions, achieved block sparsity."""
    rows = []
    for f in sorted(folder.glob("dendritic-t*-seed*.json")):
        r = json.loads(f.read_text())
        vs = _vs_init_run(r, folder, classification=not _is_regression(r["task"]))
        if vs is None:
            continue
        rows.append({"run": f.stem, "target_sparsity": r["target_sparsity"], "seed": r["seed"], "metric": r["metric"],
                     "score": r["score"], **vs, "sparsity_mean": r["sparsity_mean"], "block_size": r.get("block_size"),
                     "wall_time_s": r.get("wall_time_s")})
    return sorted(rows, key=lambda x: (x["seed"], x["target_sparsity"]))



# -- long documents --------------------------------------------------------------------------------------------------
def _holdout_row(r: dict, task_dir: Path) -> dict:
    """One recipe candidate scored on held-out training windows.  A DendriticBERT candidate (sparsified from a dense
    candidate's model: its ``init_from``) also gets its achieved block sparsity, whether its training masks carried
    the relaxation's noise (``gumbel``), and its retention and prediction agreement vs that dense candidate, on the
    same held-out windows."""
    cfg = r["resolved_config"]
    overrides = cfg.get("model_overrides") or {}
    row = {"name": r["name"].rsplit("-n", 1)[0].removeprefix("holdout-"), "variant": r.get("variant", "dense"),
           "n": cfg.get("max_length"), "seed": r["seed"], "metric": r["metric"], "score": r["score"],
           "majority_score": r["metrics"].get("majority_rate"), "train_windows": r["train_examples"],
           "held_out_windows": r["dev_examples"], "epochs": cfg.get("epochs"), "learning_rate": cfg.get("learning_rate"),
           "pooling": overrides.get("classifier_pooling", "cls")}
    if row["variant"] == "dendritic":
        vs = _vs_init_run(r, task_dir, classification=True) or {}  # the long tasks are classifications
        row.update(sparsity=r.get("sparsity_mean"), target_sparsity=r.get("target_sparsity"),
                   gumbel=overrides.get("gumbel", True), dense_candidate=vs.get("dense_run"),
                   dense_score=vs.get("dense_score"), retention=vs.get("retention"), agreement=vs.get("agreement"))
    return row


def _timed_these_models(row: dict, runs: dict) -> bool:
    """Whether a latency row timed the models of the committed results: its ``models`` (each timed model's result
    fingerprint) match the results of its seed.  Rows timed before ``models`` was recorded carry none and are kept
    (each such committed row was checked against its results' creation times: timed after both were written, and
    before any retraining)."""
    models = row.get("models")
    if models is None:
        return True
    seed = row.get("seed", 0)
    return all(runs[v].get(seed) is not None and result_fingerprint(runs[v][seed]) == models.get(v)
               for v in ("dense", "dendritic"))


def summarise_long(results: Path, tasks: list[str], lengths_by_task: dict[str, list[int]]) -> dict:
    """``long/summary.json``: one row per (task, n, batch) — accuracy of dense and DendriticBERT over their paired
    seeds, retention, achieved block sparsity, agreement, the majority-class rate of the dev windows, and the latency
    of the trained seed-0 models on those windows (``latency.json``, when measured); ``mlm`` from ``mlm.json``."""
    latency = json.loads((results / "latency.json").read_text()) if (results / "latency.json").exists() else {}
    mlm = json.loads((results / "mlm.json").read_text()) if (results / "mlm.json").exists() else {}
    rows, unmatched = [], []  # unmatched: latency rows that timed other models than these results' (not shown)
    for task in tasks:
        for n in lengths_by_task.get(task, []):
            runs = {v: {r["seed"]: r for r in (json.loads(f.read_text())
                                               for f in sorted((results / task).glob(f"{v}-n{n}-seed*.json")))}
                    for v in ("dense", "dendritic")}
            paired = sorted(set(runs["dense"]) & set(runs["dendritic"]))
            if not paired:
                continue
            dense_m, dense_s = _mean_std([runs["dense"][s]["score"] for s in paired])
            den_m, den_s = _mean_std([runs["dendritic"][s]["score"] for s in paired])
            first = runs["dendritic"][paired[0]]
            agreement = [_agreement(runs["dendritic"][s], runs["dense"][s]) for s in paired]
            base = {"task": task, "n": n, "block_size": first["block_size"], "target_sparsity": first["target_sparsity"],
                    "achieved_sparsity": float(np.mean([runs["dendritic"][s]["sparsity_mean"] for s in paired])),
                    "metric": first["metric"], "majority_score": first["metrics"]["majority_rate"],
                    "dense_mean": dense_m, "dense_std": dense_s, "dendritic_mean": den_m, "dendritic_std": den_s,
                    "retention": den_m / dense_m if dense_m else None, "agreement": float(np.mean(agreement)),
                    "seeds": paired, "dev_windows": first["dev_examples"], "train_windows": first["train_examples"],
                    "input_dependence": float(np.mean([runs["dendritic"][s]["input_dependence"]["input_dependence"]
                                                       for s in paired]))}
            timed = [r for r in latency.get("rows", []) if r["task"] == task and r["n"] == n]
            unmatched += [{"task": task, "n": n, "batch": r["batch"], "seed": r.get("seed")}
                          for r in timed if not _timed_these_models(r, runs)]
            timed = [r for r in timed if _timed_these_models(r, runs)]
            for t in timed or [None]:
                rows.append({**base, "batch": t and t["batch"], "dense_sdpa_ms": t and t["dense_sdpa_ms"],
                             "dense_eager_ms": t and t.get("dense_eager_ms"), "dendritic_ms": t and t["dendritic_ms"],
                             "ratio_vs_sdpa": t and t["ratio_vs_sdpa"], "ratio_vs_eager": t and t.get("ratio_vs_eager"),
                             "ratio_vs_same_kernel_dense": t and t.get("ratio_vs_same_kernel_dense"),
                             "attention_share": t and t.get("attention_share"), "amdahl_bound": t and t.get("amdahl_bound"),
                             "latency_sparsity": t and t.get("achieved_sparsity"), "latency_seed": t and t.get("seed"),
                             "path": t and t.get("path"), "latency_measured": t and t.get("measured")})
    holdout = [_holdout_row(r, results / task)
               for task in tasks for f in sorted((results / task).glob("holdout-*.json"))
               for r in [{**json.loads(f.read_text()), "name": f.stem}]]
    return {"rows": rows, "mlm": mlm.get("rows", []), "holdout": holdout, "latency_of_other_models": unmatched,
            "latency_provenance": latency.get("provenance"), "mlm_provenance": mlm.get("provenance")}

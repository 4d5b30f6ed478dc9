"""GLUE: Table 1 (dense vs DendriticBERT), the PAI-style figure (scores, parameter efficiency), the accuracy-
sparsity trade-off and the per-input sparsity (gating at work).  Inputs: ``glue/summary.json``, the per-run files
``glue/<task>/<variant>-seed<k>.json``, ``glue/tradeoff.json`` and (optional) ``ablations/summary.json``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .common import (
    METRIC_LABEL,
    RUN_NAME,
    VARIANT_COLOR,
    VARIANTS,
    Output,
    grid_tasks,
    human,
    is_num,
    load_json,
    max_length,
    num,
    pct,
    pm,
    require,
    run_files,
    setting_text,
    task_key,
    task_label,
)

VARIANT_LABEL = {"dense": "dense (same model, full attention)", "dendritic": "DendriticBERT",
                 "dsn": "DSN (embeddings + mean pooling, no encoder)"}


def load_runs(glue: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """{task: {variant: {seed: record}}} from the per-run files (trade-off runs excluded)."""
    runs: dict = {}
    for f in sorted(glue.glob("*/*.json")):
        m = RUN_NAME.match(f.stem)
        if m:
            runs.setdefault(f.parent.name, {}).setdefault(m.group(1), {})[int(m.group(2))] = load_json(f)
    return runs


def task_tasks(summary: dict) -> list[str]:
    return sorted((t for t, v in summary.items() if isinstance(v, dict) and "dense_mean" in v), key=task_key)


def _settings(runs: dict, task: str, first: str = "dendritic") -> dict:
    """The fine-tuning settings of a task's runs of variant ``first`` (else the other), the same for every seed."""
    order = (first, "dense" if first == "dendritic" else "dendritic")
    recs = [r for v in order for _, r in sorted(runs.get(task, {}).get(v, {}).items())]
    return recs[0].get("resolved_config", {}) if recs else {}


def _train_cell(s: dict) -> str:
    """DendriticBERT's training examples, and the dense baseline's where they differ."""
    den, dense = s.get("train_examples", "–"), s.get("dense_train_examples")
    return f"{den} (dense {dense})" if dense is not None and dense != den else str(den)


def _data_text(cfg: dict) -> str:
    return f"{cfg.get('train_samples') or 'all'} train ex. × {cfg.get('epochs', '?')} epochs" if cfg else "?"


def _block_sizes(summary: dict, tasks: list[str]) -> str:
    return setting_text([summary[t].get("block_size") for t in tasks])


# -- Table 1 -------------------------------------------------------------------------------------------------------
def table1(out: Output) -> None:
    glue = out.results / "glue"
    path = glue / "summary.json"
    if not require(out, "Table 1 (table1_glue)", path):
        return
    summary = load_json(path)
    tasks = task_tasks(summary)
    if not tasks:
        out.skip("Table 1 (table1_glue)", "glue/summary.json has no task with both dense and dendritic runs")
        return
    runs = load_runs(glue)
    header = ["Task", "Metric", "Trivial", "Dense", "DendriticBERT", "DSN", "Retention %", "Block sparsity %",
              "Pair sparsity %", "Agreement %", "Seeds", "Block", "Train ex."]
    rows, csv_rows = [], []
    for t in tasks:
        s = summary[t]
        seeds = s.get("seeds") or []
        mark = "" if s.get("informative", True) else " †"
        rows.append([task_label(t) + mark, METRIC_LABEL.get(s["metric"], s["metric"]), pct(s.get("trivial_score")),
                     pm(s["dense_mean"], s["dense_std"]),
                     pm(s["dendritic_mean"], s["dendritic_std"]), pm(s.get("dsn_mean"), s.get("dsn_std")),
                     pct(s.get("retention")), pm(s.get("sparsity_mean"), s.get("sparsity_std")),
                     pct(s.get("pair_sparsity_mean")), pct(s.get("agreement_with_dense")), str(len(seeds)),
                     str(s.get("block_size", "–")), _train_cell(s)])
        csv_rows.append([t, s["metric"], s.get("trivial_score"), s.get("informative"), s["dense_mean"], s["dense_std"],
                         s["dendritic_mean"], s["dendritic_std"],
                         s.get("dsn_mean"), s.get("dsn_std"), s.get("retention"), s.get("sparsity_mean"),
                         s.get("sparsity_std"), s.get("pair_sparsity_mean"), s.get("agreement_with_dense"),
                         " ".join(str(x) for x in seeds), s.get("block_size"), s.get("train_examples"),
                         s.get("dev_examples")])
    n_task_rows = len(rows)
    head = summary.get("headline")
    if head and head.get("tasks"):
        rows.append([f"Headline ({len(head['tasks'])} informative)", "primary", "–", pct(head["dense"]),
                     pct(head["dendritic"]), "–", pct(head.get("retention")), pct(head.get("sparsity_mean")), "–",
                     pct(head.get("agreement_mean")), "–", "–", "–"])
        csv_rows.append(["headline", "primary", None, True, head["dense"], None, head["dendritic"], None, None, None,
                         head.get("retention"), head.get("sparsity_mean"), None, None, head.get("agreement_mean"),
                         "", None, None, None])
    for key, name in (("average", "Average"), ("average_without_wnli", "Average w/o WNLI")):
        a = summary.get(key)
        if not a:
            continue
        rows.append([f"{name} ({len(a['tasks'])})", "primary", "–", pct(a["dense"]), pct(a["dendritic"]), "–",
                     pct(a.get("retention")), pct(a.get("sparsity_mean")), "–", "–", "–", "–", "–"])
        csv_rows.append([key, "primary", None, None, a["dense"], None, a["dendritic"], None, None, None,
                         a.get("retention"), a.get("sparsity_mean"), None, None, None, "", None, None, None])

    cfgs = {t: _settings(runs, t) for t in tasks}
    presets = setting_text([c.get("preset") for c in cfgs.values()])
    # Phase 3 starts from the preset's phase-1/2 checkpoints; its own `model` field is unused, so name the model
    # by preset.
    names = {"smoke": "tiny random BERT", "small": "MiniLM-L6 (all-MiniLM-L6-v2)", "paper": "bert-base-uncased"}
    models = setting_text([names.get(c.get("preset"), c.get("preset")) for c in cfgs.values()])
    max_len = setting_text([c.get("max_length") for c in cfgs.values()])
    dense_cfgs = {t: _settings(runs, t, "dense") for t in tasks}
    train_desc = "; ".join(  # the dense baseline's data where it differs from DendriticBERT's
        f"{task_label(t)} {_data_text(cfgs[t])}" + (f" (dense: {_data_text(dense_cfgs[t])})"
                                                     if _data_text(dense_cfgs[t]) != _data_text(cfgs[t]) else "")
        for t in tasks)
    seeds_desc = ", ".join(f"{task_label(t)} {len(summary[t].get('seeds') or [])}" for t in tasks)
    avg_desc = []
    for key, name in (("average", "GLUE average"), ("average_without_wnli", "average without WNLI")):
        if summary.get(key):
            a = summary[key]
            avg_desc.append(f"{name} = unweighted mean of the primary metrics of "
                            f"{', '.join(task_label(t) for t in sorted(a['tasks'], key=task_key))}; its retention "
                            f"is the ratio of the averages (mean of per-task retentions "
                            f"{pct(a.get('mean_task_retention'))} %)")
    caption = [
        (f"Table 1. GLUE dev: dense vs DendriticBERT (block size {_block_sizes(summary, tasks)} tokens, max length "
         f"{max_len}, preset {presets}, model {models})."),
        ("Scores × 100, mean ± sample std over seeds; " + _starts(runs, tasks) + "; DSN = embeddings + mean pooling + "
         "classifier, no encoder layers; trivial = the best constant prediction's score on the dev labels (majority "
         "class; all-positive for F1; 0 for MCC and correlations)."),
        *(["† not informative (kept out of the headline): " + "; ".join(
            f"{task_label(t)}: {summary[t].get('informative_reason', '')}" for t in tasks
            if not summary[t].get("informative", True)) + "."] if any(not summary[t].get("informative", True)
                                                                       for t in tasks) else []),
        *([f"Headline = unweighted mean over the informative tasks ({', '.join(task_label(t) for t in head['tasks'])}"
           f"); retention = ratio of the means; every informative task's retention ≥ "
           f"{pct(head.get('min_task_retention'))} %."] if head and head.get("tasks") else []),
        f"Fine-tuning data: {train_desc}.",
        f"Seeds per task: {seeds_desc}.",
        ("Block sparsity = fraction of attention blocks skipped, mean ± std across dev inputs (all seeds pooled); "
         "pair sparsity = fraction of token pairs skipped; agreement = dendritic predictions equal to the dense "
         "model's of the same seed (not defined for STS-B)."),
        *[d + "." for d in avg_desc],
    ]
    csv_header = ["task", "metric", "trivial_score", "informative", "dense_mean", "dense_std", "dendritic_mean",
                  "dendritic_std", "dsn_mean",
                  "dsn_std", "retention", "sparsity_mean", "sparsity_std", "pair_sparsity_mean",
                  "agreement_with_dense", "seeds", "block_size", "train_examples", "dev_examples"]
    sources = [path] + run_files(glue)
    out.table("table1_glue", header, rows, caption, sources,
              "Table 1: GLUE dev scores, dense vs DendriticBERT vs DSN, retention, achieved sparsity",
              csv_header=csv_header, csv_rows=csv_rows, formats=("md", "csv", "tex"), rules_before=[n_task_rows])


# -- the main recipe vs the write-up's ------------------------------------------------------------------------------
V1_GLUE = Path("archive") / "v1-writeup-recipe" / "glue"


def table_glue_recipes(out: Output) -> None:
    """Per task, the main (v2) recipe's dense and DendriticBERT beside the write-up's (v1, archived): both recipes
    are rows of the same table (issue #13: the write-up's recipe stays a row)."""
    paths = {"main (v2)": out.results / "glue" / "summary.json", "write-up (v1)": out.results / V1_GLUE / "summary.json"}
    if not require(out, "GLUE recipes (table_glue_recipes)", *paths.values()):
        return
    summaries = {name: load_json(p) for name, p in paths.items()}
    tasks = sorted({t for s in summaries.values() for t in task_tasks(s)}, key=task_key)
    if not task_tasks(summaries["main (v2)"]):
        out.skip("GLUE recipes (table_glue_recipes)", "glue/summary.json has no task with both dense and dendritic runs")
        return
    header = ["Task", "Recipe", "Trivial", "Dense", "DendriticBERT", "Retention %", "Block sparsity %",
              "Agreement %", "Block size", "Seeds"]
    rows = []
    for t in tasks:
        for name, summary in summaries.items():
            s = summary.get(t)
            if not isinstance(s, dict) or "dendritic_mean" not in s:
                rows.append([task_label(t), name] + ["–"] * 7 + ["0"])
                continue
            mark = "" if s.get("informative", True) else " †"
            rows.append([task_label(t) + mark, name, pct(s.get("trivial_score")), pm(s["dense_mean"], s["dense_std"]),
                         pm(s["dendritic_mean"], s["dendritic_std"]), pct(s.get("retention")),
                         pm(s.get("sparsity_mean"), s.get("sparsity_std")), pct(s.get("agreement_with_dense")),
                         str(s.get("block_size", "–")), str(len(s.get("seeds") or []))])
    for name, summary in summaries.items():
        head = summary.get("headline") or {}
        if head.get("tasks"):
            rows.append([f"Headline ({', '.join(task_label(t) for t in sorted(head['tasks'], key=task_key))})", name,
                         "–", pct(head["dense"]), pct(head["dendritic"]), pct(head.get("retention")),
                         pct(head.get("sparsity_mean")), pct(head.get("agreement_mean")), "–", "–"])
    caption = [
        ("GLUE dev, the main recipe vs the write-up's.  Main (v2): dense fine-tuned from the original MiniLM weights "
         "with each task's recipe chosen on held-out training data; DendriticBERT sparsified from the same seed's "
         "fine-tuned dense model (distillation, scorer from its query/key projections, target 0.5).  Write-up (v1): "
         "dense from the phase-1 MLM checkpoint, DendriticBERT from phase 2, one learning rate, subsampled training "
         "sets, target 0.5 (reproduce/results/archive/v1-writeup-recipe/)."),
        ("Scores × 100, mean ± sample std over seeds; retention = DendriticBERT / dense; † = not informative, kept "
         "out of the headline (dense not clearly above the trivial predictor, fewer than 3 seeds, or WNLI; the "
         "reason per task is in Table 1 and the summaries); a headline covers that recipe's informative tasks."),
    ]
    out.table("table_glue_recipes", header, rows, caption, list(paths.values()),
              "GLUE: the main (v2) recipe vs the write-up's (v1), dense and DendriticBERT per task")


def table_recipe_search(out: Output) -> None:
    """The dense recipe search (issue #13, part 1): every candidate recipe's score on the held-out 10 % of the task's
    *training* split and the winner per task — the GLUE plan's dense recipes come from here, never from dev."""
    what = "dense recipe search (table_recipe_search)"
    path = out.results / "recipes" / "summary.json"
    if not require(out, what, path):
        return
    summary = {t: s for t, s in load_json(path).items() if isinstance(s, dict) and s.get("recipes")}
    if not summary:
        out.skip(what, "recipes/summary.json has no recipe runs yet")
        return
    header = ["Task", "Recipe", "Starts from", "Learning rate", "Epochs", "Batch", "Held-out score", "Seeds",
              "Train ex.", "Held-out ex.", "Minutes", "Chosen"]
    cols = ["task", "recipe", "init_from", "learning_rate", "epochs", "batch_size", "score", "seeds", "train_examples",
            "eval_examples", "wall_time_s", "chosen"]
    records = [{"task": t, **r, "chosen": r["recipe"] == s["best"]}
               for t, s in sorted(summary.items(), key=lambda kv: task_key(kv[0])) for r in s["recipes"]]
    rows = [[task_label(r["task"]), r["recipe"], Path(str(r["init_from"])).name, f"{r['learning_rate']:g}",
             num(r["epochs"], 1), str(r["batch_size"]), num(100 * r["score"], 1),
             ",".join(str(k) for k in r["seeds"]), str(r["train_examples"]), str(r["eval_examples"]),
             num(r["wall_time_s"] / 60, 1) if is_num(r.get("wall_time_s")) else "–", "**yes**" if r["chosen"] else ""]
            for r in records]
    caption = [("Dense fine-tuning recipes scored on a held-out 10 % slice of each task's training split (holdout seed "
                "1234, the same slice for every recipe; never dev), score × 100 in the task's primary metric (mean "
                "over seeds).  Chosen = the highest held-out score, compared unrounded (the first of equal ones: "
                "smaller learning rate, then fewer epochs); the GLUE plan (reproduce/configs/small/glue.toml) takes its dense recipe from "
                "the chosen row, except where its comment says otherwise.  Starts from: minilm = the original "
                "pretrained weights, phase1 = after the MLM warm-up on the speeches.  Minutes = wall time of the "
                "run(s) as recorded (the machine and its load differ between runs).")]
    out.table("table_recipe_search", header, rows, caption, [path], "dense recipe search on held-out training data",
              csv_header=cols, csv_rows=[[r.get(c) for c in cols] for r in records])


def _starts(runs: dict, tasks: list[str]) -> str:
    """Where dense and DendriticBERT start from, from the runs' own resolved configs."""
    def init(variant):
        seen = {Path(str(r.get("resolved_config", {}).get("init_from", "?"))).name.rsplit("-seed", 1)[0]
                for t in tasks for r in runs.get(t, {}).get(variant, {}).values()}
        return "/".join(sorted(seen)) or "?"

    words = {"minilm": "the original MiniLM weights", "phase1": "the phase-1 (MLM warm-up) model",
             "phase2": "the phase-2 (sparsity-aware MLM) model", "dense": "the same seed's fine-tuned dense model"}
    dense, dendritic = init("dense"), init("dendritic")
    return (f"dense = {words.get(dense, dense)} fine-tuned with full attention (the baseline); DendriticBERT = "
            f"{words.get(dendritic, dendritic)}" + (" sparsified with distillation from it" if dendritic == "dense"
                                                    else " fine-tuned with its masks"))


# -- PAI-style figure ----------------------------------------------------------------------------------------------
def pai_glue(out: Output) -> None:
    glue = out.results / "glue"
    path = glue / "summary.json"
    if not require(out, "PAI figure (pai_glue)", path):
        return
    summary = load_json(path)
    tasks = task_tasks(summary)
    if not tasks:
        out.skip("PAI figure (pai_glue)", "glue/summary.json has no complete task")
        return
    block = _block_sizes(summary, tasks)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 4.2), gridspec_kw={"width_ratios": [1.7, 1.0]})
    width = 0.27
    x = np.arange(len(tasks))
    for i, v in enumerate(VARIANTS):
        means = [summary[t].get(f"{v}_mean") for t in tasks]
        stds = [summary[t].get(f"{v}_std") for t in tasks]
        m = np.array([100 * a if is_num(a) else np.nan for a in means])
        e = np.array([100 * b if is_num(b) else 0.0 for b in stds])
        ax1.bar(x + (i - 1) * width, m, width, yerr=e, capsize=2, color=VARIANT_COLOR[v], label=VARIANT_LABEL[v],
                error_kw={"elinewidth": 0.8})
    ax1.set_xticks(x, [f"{task_label(t)}\n({METRIC_LABEL.get(summary[t]['metric'], summary[t]['metric'])})"
                       for t in tasks])
    ax1.set_ylabel("dev score × 100 (mean ± std over seeds)")
    ax1.set_title(f"Dev scores after fine-tuning (no checkpoint selection); block size {block}, "
                  f"max length {max_length(glue)}")
    ax1.axhline(0, color="black", linewidth=0.6)
    ax1.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=3, frameon=False)

    # parameter efficiency: mean score over the tasks where all three variants ran
    complete = [t for t in tasks if all(is_num(summary[t].get(f"{v}_mean")) for v in VARIANTS)
                and all(v in (summary[t].get("parameters") or {}) for v in VARIANTS)]
    if complete:
        offsets = {"dense": (6, 6), "dendritic": (6, -12), "dsn": (6, 4)}
        for v in VARIANTS:
            params = [summary[t]["parameters"][v] / 1e6 for t in complete]
            scores = [100 * summary[t][f"{v}_mean"] for t in complete]
            ax2.scatter(params, scores, s=14, alpha=0.5, color=VARIANT_COLOR[v], linewidths=0)
            p, s = float(np.mean(params)), float(np.mean(scores))
            ax2.scatter([p], [s], s=60, color=VARIANT_COLOR[v], edgecolor="black", linewidths=0.6, zorder=3,
                        label=f"{v}: {human(p * 1e6)} params")
            ax2.annotate(f"{s:.1f}", (p, s), textcoords="offset points", xytext=offsets[v], fontsize=7)
        pol = sorted({summary[t].get("policy_parameters") for t in complete if is_num(summary[t].get("policy_parameters"))})
        ax2.set_xlim(0, 1.15 * max(max(summary[t]["parameters"][v] for v in VARIANTS) for t in complete) / 1e6)
        ax2.set_xlabel("parameters, millions (dendritic: encoder + policy" + (f" {human(pol[-1])}" if pol else "") + ")")
        ax2.set_ylabel(f"mean dev score × 100 over {len(complete)} tasks")
        ax2.set_title("Parameter efficiency (large: task mean; small: per task)")
        ax2.legend(loc="lower right", frameon=True)
    else:
        ax2.set_axis_off()
        ax2.text(0.5, 0.5, "no task with dense, dendritic and DSN results", ha="center", va="center")
    fig.tight_layout()
    out.figure(fig, "pai_glue", [path],
               "PAI-style: dev scores per task (dense/dendritic/DSN, seed error bars) and score vs parameter count")


# -- accuracy–sparsity trade-off -----------------------------------------------------------------------------------
ABLATION_POINTS = {"full": ("full DendriticBERT", "D"), "training_free": ("training-free pooled-QK top-k", "s"),
                   "static": ("static mask", "^"), "random": ("random mask", "X")}


SWEEP_STYLE = {"learned": ("learned scorer", VARIANT_COLOR["dendritic"]), "training_free": ("training-free top-k", "C2"),
               "random": ("random", "C3"), "static": ("static window w=0..8", "C4")}
POINT_COLOR = {"full": VARIANT_COLOR["dendritic"], "training_free": "C2", "random": "C3", "static": "C4"}


def tradeoff(out: Output) -> None:
    """Trained trade-off points (one fine-tuning per target, learned policy), the ablations' trained variants at
    the main target, and — dashed — the inference-only sweep of four policies on the seed-0 fine-tuned model."""
    glue = out.results / "glue"
    path = glue / "tradeoff.json"
    sweep_path = out.results / "ablations" / "inference_sweep.json"
    if not path.exists() and not sweep_path.exists():
        require(out, "trade-off figure (tradeoff)", path)
        return
    rows = load_json(path).get("rows", []) if path.exists() else []
    sweep = load_json(sweep_path).get("rows", []) if sweep_path.exists() else []
    if not rows and not sweep:
        out.skip("trade-off figure (tradeoff)", "glue/tradeoff.json and ablations/inference_sweep.json have no rows")
        return
    sources = [p for p in (path, sweep_path) if p.exists()]
    summary = load_json(glue / "summary.json") if (glue / "summary.json").exists() else {}
    if summary:
        sources.append(glue / "summary.json")
    abl_path = out.results / "ablations" / "summary.json"
    ablations = load_json(abl_path) if abl_path.exists() else {}
    if ablations:
        sources.append(abl_path)
    trade_runs = sorted(glue.glob("*/tradeoff-*.json"))
    block = setting_text([load_json(f).get("block_size") for f in trade_runs]) if trade_runs else \
        (_block_sizes(summary, task_tasks(summary)) if summary else "?")
    max_len = setting_text([load_json(f).get("resolved_config", {}).get("max_length") for f in trade_runs]) \
        if trade_runs else max_length(glue)
    tasks = sorted({r["task"] for r in rows} | {r["task"] for r in sweep}, key=task_key)
    # Ablation points (and their dense line) only where the grid ran: a wide variant's other tasks use other seeds
    # than the trade-off runs' seed 0.
    on_grid = set(grid_tasks(ablations)) if ablations else set()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 5.6), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        pts = sorted((r for r in rows if r["task"] == t), key=lambda r: (r["policy"], r["target_sparsity"], r["seed"]))
        for policy in sorted({r["policy"] for r in pts}):
            sel = sorted((r for r in pts if r["policy"] == policy), key=lambda r: r["sparsity_mean"])
            ax.plot([100 * r["sparsity_mean"] for r in sel], [100 * r["score"] for r in sel], marker="o",
                    color=VARIANT_COLOR["dendritic"] if policy == "learned" else None,
                    label=f"trained, {policy} (targets {', '.join(format(r['target_sparsity'], 'g') for r in sel)})")
        for variant, (label, marker) in ABLATION_POINTS.items():
            rec = ablations.get(variant, {}).get(t) if t in on_grid else None
            if rec and is_num(rec.get("score")) and is_num(rec.get("sparsity")):
                ax.errorbar([100 * rec["sparsity"]], [100 * rec["score"]],
                            yerr=[100 * rec["score_std"]] if is_num(rec.get("score_std")) else None,
                            color=POINT_COLOR[variant], marker=marker, linestyle="none", capsize=2,
                            label=f"trained, {label} (ablation)")
        swept = [r for r in sweep if r["task"] == t]
        for policy, (label, color) in SWEEP_STYLE.items():
            sel = sorted((r for r in swept if r["policy"] == policy), key=lambda r: r["sparsity_mean"])
            if sel:
                ax.plot([100 * r["sparsity_mean"] for r in sel], [100 * r["score"] for r in sel], linestyle="--",
                        marker=".", linewidth=1, color=color, alpha=0.8, label=f"inference only, {label}")
        full_attn = [r for r in swept if r["policy"] == "none"]
        if full_attn:
            ax.plot([0.0], [100 * full_attn[0]["score"]], marker="*", markersize=9, linestyle="none", color="black",
                    label="inference only, same weights, full attention")
        # The dense reference on the same seeds as the points: the ablations' seeds, else seed 0 (the trade-off
        # runs' seed), else the main table's mean.
        abl_dense = ablations.get("dense", {}).get(t, {}) if t in on_grid else {}
        dense, dense_src = abl_dense.get("score"), f"seeds {', '.join(str(x) for x in abl_dense.get('seeds') or [])}"
        seed0 = glue / t / "dense-seed0.json"
        if not is_num(dense) and seed0.exists():
            dense, dense_src = load_json(seed0)["score"], "seed 0"
            sources.append(seed0)
        if not is_num(dense):
            dense = summary.get(t, {}).get("dense_mean") if summary else None
            dense_src = "Table 1 mean"
        if is_num(dense):
            ax.axhline(100 * dense, color=VARIANT_COLOR["dense"], linestyle="--", linewidth=1,
                       label=f"dense fine-tuned ({dense_src}) {100 * dense:.1f}")
        metric = (pts or swept)[0]["metric"]
        ax.set_title(f"{task_label(t)}: block size {block}, max length {max_len}", fontsize=9)
        ax.set_xlabel("achieved block sparsity on dev % (mean over inputs)")
        ax.set_ylabel(f"dev {METRIC_LABEL.get(metric, metric)} × 100")
        ax.legend(fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle("Accuracy–sparsity trade-off: trained points (solid, markers) and inference-only sweeps on the "
                 "seed-0 fine-tuned model (dashed)", fontsize=9)
    fig.tight_layout()
    out.figure(fig, "tradeoff", sources,
               "accuracy vs achieved block sparsity per task: trained trade-off runs, ablation variants, "
               "inference-only policy sweeps, dense as a line")


# -- per-input sparsity --------------------------------------------------------------------------------------------
def reachable_sparsity(length: np.ndarray, block: int, dense_cls_row: bool = True) -> np.ndarray:
    """The safety floor keeps the diagonal and the [CLS] key column (2·nb − 1 of nb² blocks), plus the [CLS] query
    row when ``dense_cls_row`` (the presets' default): 3·nb − 2 blocks.  Reachable sparsity: 1 − floor/nb²."""
    nb = np.ceil(length / block)
    floor = 3 * nb - 2 if dense_cls_row else 2 * nb - 1
    return 1.0 - np.minimum(floor, nb**2) / nb**2


def sparsity_per_input(out: Output) -> None:
    glue = out.results / "glue"
    files = run_files(glue, ("dendritic",))
    if not files:
        out.skip("per-input sparsity (sparsity_per_input)", "no glue/<task>/dendritic-seed<k>.json yet")
        return
    recs = [load_json(f) for f in files]
    data = {"task": [], "sparsity": [], "length": []}
    for r in recs:
        per, lengths = r.get("per_input_sparsity") or [], r.get("input_lengths") or []
        data["task"] += [r["task"]] * len(per)
        data["sparsity"] += [100 * x for x in per]
        data["length"] += list(lengths) if len(lengths) == len(per) else [np.nan] * len(per)
    import pandas as pd

    df = pd.DataFrame(data)
    if df.empty:
        out.skip("per-input sparsity (sparsity_per_input)", "the dendritic runs have no per_input_sparsity")
        return
    tasks = sorted(df["task"].unique(), key=task_key)
    df["Task"] = pd.Categorical([task_label(t) for t in df["task"]], [task_label(t) for t in tasks])
    blocks = sorted({r.get("block_size") for r in recs if r.get("block_size")})
    block = "/".join(str(b) for b in blocks) or "?"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 4.0), gridspec_kw={"width_ratios": [1.0, 1.2]})
    sns.violinplot(data=df, x="Task", y="sparsity", ax=ax1, cut=0, inner="quart", color=VARIANT_COLOR["dendritic"],
                   density_norm="width", linewidth=0.7)
    ax1.set_ylabel("achieved block sparsity % per dev input")
    ax1.set_xlabel("")
    ax1.set_title(f"Per-input sparsity of DendriticBERT (block size {block}, all seeds)")
    has_len = df["length"].notna()
    if has_len.any():
        sns.scatterplot(data=df[has_len], x="length", y="sparsity", hue="Task", ax=ax2, s=7, alpha=0.45,
                        linewidth=0)
        if len(blocks) == 1:
            n = np.arange(1, int(df.loc[has_len, "length"].max()) + 1)
            ax2.plot(n, 100 * reachable_sparsity(n, blocks[0]), color="black", linewidth=1,
                     label=f"reachable: 1 − (3nb−2)/nb² (floor incl. dense [CLS] row), b={blocks[0]}")
        ax2.set_xlabel("input length (tokens, incl. [CLS]/[SEP])")
        ax2.set_ylabel("achieved block sparsity %")
        ax2.set_title("Sparsity vs length (ceiling from the safety floor)")
        ax2.legend(fontsize=6, markerscale=2, loc="lower right")
    else:
        ax2.set_axis_off()
    fig.tight_layout()
    out.figure(fig, "sparsity_per_input", files,
               "distribution of achieved block sparsity across dev inputs per task, and against input length",
               formats=("png",))


FIGURES = [table1, table_glue_recipes, table_recipe_search, pai_glue, tradeoff, sparsity_per_input]

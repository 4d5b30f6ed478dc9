"""Ablations at matched sparsity.  Input: ``ablations/summary.json`` = {variant: {task: {score, score_std,
sparsity, seeds}}, "dense": {task: {...}}}; block size and settings from ``glue/summary.json`` when present."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .common import (METRIC_LABEL as METRIC, Output, grid_tasks, is_num, load_json, max_length, pct, pm, require,
                     task_key, task_label)

VARIANTS = ["full", "random", "static", "training_free", "no_distill", "no_reinit", "no_gating", "uniform_budget",
            "no_gumbel", "no_anneal", "no_phase2", "distill"]
LABEL = {"full": "full DendriticBERT", "random": "random mask", "static": "static mask",
         "training_free": "training-free top-k", "no_gating": "no gating", "uniform_budget": "uniform budget",
         "no_gumbel": "no Gumbel noise", "no_anneal": "no annealing", "no_phase2": "no phase 2",
         "distill": "+ distillation", "no_distill": "no distillation", "no_reinit": "scorer not from the model's QK"}


def _load(out: Output, what: str):
    path = out.results / "ablations" / "summary.json"
    if not require(out, what, path):
        return None, path
    data = load_json(path)
    variants = [v for v in VARIANTS if v in data] + sorted(v for v in data if v not in VARIANTS and v not in
                                                            ("dense", "provenance") and isinstance(data[v], dict))
    tasks = [t for t in grid_tasks(data) if any(t in data[v] for v in variants)]
    if not variants or not tasks:
        out.skip(what, "ablations/summary.json has no variant on the grid's tasks")
        return None, path
    return (data, variants, tasks), path


def _block(out: Output) -> str:
    """Block size and max length of the GLUE runs the ablations share their settings with."""
    g = out.results / "glue" / "summary.json"
    if not g.exists():
        return "block size: see the ablation config"
    s = load_json(g)
    block = "/".join(sorted({str(v["block_size"]) for v in s.values() if isinstance(v, dict) and "block_size" in v}))
    return f"block size {block or '?'} (as Table 1), max length {max_length(out.results / 'glue')}"


def ablations(out: Output) -> None:
    loaded, path = _load(out, "ablations figure (ablations)")
    if loaded is None:
        return
    data, variants, tasks = loaded
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 0.45 * len(variants) + 1.5) * len(tasks) / 1.3, 4.0),
                             squeeze=False)
    colors = dict(zip(variants, sns.color_palette("tab10", len(variants))))
    for ax, t in zip(axes[0], tasks):
        x = np.arange(len(variants))
        ys = [100 * data[v].get(t, {}).get("score", np.nan) if is_num(data[v].get(t, {}).get("score")) else np.nan
              for v in variants]
        es = [100 * data[v].get(t, {}).get("score_std") if is_num(data[v].get(t, {}).get("score_std")) else 0.0
              for v in variants]
        # Points, not bars: the differences are a few points, and a bar's length would start at an arbitrary 0.
        for xi, v in zip(x, variants):
            ax.errorbar([xi], [ys[xi]], yerr=[es[xi]] if es[xi] else None, marker="o", markersize=6, capsize=3,
                        color=colors[v], linestyle="none")
        for xi, v in zip(x, variants):
            sp = data[v].get(t, {}).get("sparsity")
            if is_num(sp) and is_num(ys[xi]):
                ax.annotate(f"{100 * sp:.0f}%", (xi, ys[xi] + es[xi]), textcoords="offset points", xytext=(0, 5),
                            ha="center", fontsize=6)
        dense = data.get("dense", {}).get(t, {}).get("score")
        if is_num(dense):
            ax.axhline(100 * dense, color="black", linestyle="--", linewidth=1, label=f"dense {100 * dense:.1f}")
            ax.legend(fontsize=6, loc="lower right")
        ax.set_xticks(x, [LABEL.get(v, v) for v in variants], rotation=60, ha="right", fontsize=6)
        shown = [y + sign * e for y, e in zip(ys, es) if is_num(y) and not np.isnan(y) for sign in (-1, 1)] \
            + ([100 * dense] if is_num(dense) else [])  # whole error bars in view
        if shown:
            ax.set_ylim(min(shown) - 1.0, max(shown) + 1.5)
        ax.set_ylabel("dev score × 100 (mean ± std over seeds)")
        ax.set_title(task_label(t))
    fig.suptitle(f"Ablations ({_block(out)}; labels: achieved block sparsity; "
                 "baseline: dense, dashed)", fontsize=9)
    fig.tight_layout()
    out.figure(fig, "ablations", [path], "ablation variants per task with seed error bars and the dense line")


def table_ablations(out: Output) -> None:
    loaded, path = _load(out, "ablations table (table_ablations)")
    if loaded is None:
        return
    data, variants, tasks = loaded
    # Tasks whose primary metric is not accuracy (MRPC: F1) also get their accuracy: near the all-positive
    # predictor, F1 hides differences that accuracy shows.
    acc_tasks = [t for t in tasks if any(data[v].get(t, {}).get("metric") not in (None, "accuracy") and
                                         is_num(data[v].get(t, {}).get("metrics", {}).get("accuracy")) for v in data
                                         if isinstance(data[v], dict))]
    header = ["Variant"] + [f"{task_label(t)} score" for t in tasks] + [f"{task_label(t)} acc" for t in acc_tasks] \
        + [f"{task_label(t)} sparsity %" for t in tasks] + ["Seeds"]
    rows, csv_rows = [], []
    for v in (["dense"] if "dense" in data else []) + variants:
        cells = [data[v].get(t, {}) for t in tasks]
        seeds = sorted({len(c.get("seeds") or []) if isinstance(c.get("seeds"), list) else c.get("seeds")
                        for c in cells if c and c.get("seeds") is not None})
        rows.append([LABEL.get(v, v)] + [pm(c.get("score"), c.get("score_std")) for c in cells]
                    + [pm(data[v].get(t, {}).get("metrics", {}).get("accuracy"), None) for t in acc_tasks]
                    + [pct(c.get("sparsity")) for c in cells] + ["/".join(str(s) for s in seeds) or "–"])
        for t, c in zip(tasks, cells):
            csv_rows.append([v, t, c.get("score"), c.get("score_std"), c.get("sparsity"),
                             " ".join(str(s) for s in c["seeds"]) if isinstance(c.get("seeds"), list) else c.get("seeds")])
    caption = [f"Ablations: dev score × 100 (mean ± std over seeds) and achieved block sparsity; {_block(out)}.", "Dense row: the same model fine-tuned with full attention (baseline)."]
    out.table("table_ablations", header, rows, caption, [path], "ablation scores and sparsity per task",
              csv_header=["variant", "task", "score", "score_std", "sparsity", "seeds"], csv_rows=csv_rows)


def table_diagnostics(out: Output) -> None:
    """One row per diagnostic run (``diagnostics/summary.json``): the question, what changed, the score, and the
    main table's dense / DendriticBERT means for the same task as the reference."""
    path = out.results / "diagnostics" / "summary.json"
    if not require(out, "diagnostics table (table_diagnostics)", path):
        return
    data = {k: v for k, v in load_json(path).items() if k != "provenance" and isinstance(v, dict)}
    glue_path = out.results / "glue" / "summary.json"
    glue = load_json(glue_path) if glue_path.exists() else {}
    sources = [path] + ([glue_path] if glue_path.exists() else [])

    def reference(d: dict) -> tuple[str, dict]:
        """(label, {dense_mean, dense_std, dendritic_mean, dendritic_std}) of the runs the diagnostic is read against:
        the main table's, or the dense/dendritic run files of another results folder."""
        where = d.get("reference", "glue")
        if where == "glue":
            return "Table 1", glue.get(d["task"], {})
        folder = out.results / where
        ref = {}
        for variant in ("dense", "dendritic"):
            files = sorted(folder.glob(f"{variant}-seed*.json"))
            sources.extend(files)
            scores = [load_json(f)["score"] for f in files]
            if scores:
                ref[f"{variant}_mean"] = float(np.mean(scores))
                ref[f"{variant}_std"] = float(np.std(scores, ddof=1)) if len(scores) > 1 else None
        return where, ref

    header = ["Run", "Task", "Model", "Starts from", "Changed settings", "Score × 100", "Seeds", "Reference runs",
              "Reference dense", "Reference DendriticBERT", "Question"]
    rows, csv_rows = [], []
    for name, d in data.items():
        scores = [r["score"] for r in d.get("runs", [])]
        if not scores:
            continue
        mean = float(np.mean(scores))
        std = float(np.std(scores, ddof=1)) if len(scores) > 1 else None
        changed = ", ".join(f"{k}={'all' if k == 'train_samples' and v == 0 else v}"
                            for k, v in sorted(d.get("settings", {}).items())) or "–"
        where, ref = reference(d)
        rows.append([name, task_label(d["task"]), d["variant"], d["init"], changed, pm(mean, std),
                     str(len(scores)), where, pm(ref.get("dense_mean"), ref.get("dense_std")),
                     pm(ref.get("dendritic_mean"), ref.get("dendritic_std")), d["question"]])
        csv_rows.append([name, d["task"], d["variant"], d["init"], changed, mean, std, len(scores), where,
                         ref.get("dense_mean"), ref.get("dendritic_mean")])
    if not rows:
        out.skip("diagnostics table (table_diagnostics)", "diagnostics/summary.json has no finished runs")
        return
    caption = ["Diagnostic runs: one question each; phase-3 settings of Table 1's task unless listed.",
               "Scores × 100 (mean ± std over seeds where more than one); reference = the dense and DendriticBERT "
               "runs the diagnostic is read against (Table 1, or an archived results folder under "
               "reproduce/results/)."]
    out.table("table_diagnostics", header, rows, caption, sources, "diagnostic runs beside the main table",
              csv_header=["run", "task", "variant", "init", "changed", "score", "score_std", "seeds", "reference",
                          "dense_mean", "dendritic_mean"], csv_rows=csv_rows)


def _average(entries: list[dict]) -> float | None:
    scores = [e.get("score") for e in entries]
    return float(np.mean(scores)) if scores and all(is_num(x) for x in scores) else None


def table_wide(out: Output) -> None:
    """A variant run on every GLUE task of the main table (the ablation plan's ``wide`` table) against the full
    method, per task and as the GLUE average formed as in Table 1 (unweighted mean of primary metrics; retention
    = ratio of the averages), on the seeds both have."""
    path = out.results / "ablations" / "summary.json"
    glue_path = out.results / "glue" / "summary.json"
    if not require(out, "wide ablation table (table_ablations_wide)", path, glue_path):
        return
    data = load_json(path)
    glue_tasks = sorted((t for t, v in load_json(glue_path).items() if isinstance(v, dict) and "dense_mean" in v),
                        key=task_key)
    wide = [v for v in data if v not in ("dense", "full", "provenance") and isinstance(data[v], dict)
            and glue_tasks and all(t in data[v] for t in glue_tasks)]
    if not wide:
        out.skip("wide ablation table (table_ablations_wide)", "no ablation variant has run on every GLUE task")
        return
    dense, full = data.get("dense", {}), data.get("full", {})
    header = ["Task", "Dense", "Full DendriticBERT", "Retention %", "Sparsity %"]
    for v in wide:
        header += [LABEL.get(v, v), "Retention %", "Sparsity %"]
    header += ["Seeds"]
    rows, csv_rows = [], []

    def cells(entries_dense, entries_by):  # -> score/retention/sparsity cells of full and each wide variant
        d = _average(entries_dense)
        out_cells = []
        for entries in entries_by:
            m = _average(entries)
            sp = [e.get("sparsity") for e in entries]
            out_cells += [m, m / d if (m is not None and d) else None,
                          float(np.mean(sp)) if sp and all(is_num(x) for x in sp) else None]
        return d, out_cells

    for t in glue_tasks:
        d, c = cells([dense.get(t, {})], [[full.get(t, {})], *[[data[v][t]] for v in wide]])
        stds = [full.get(t, {}).get("score_std")] + [data[v][t].get("score_std") for v in wide]
        row = [task_label(t), pm(d, dense.get(t, {}).get("score_std"))]
        for i in range(len(wide) + 1):
            row += [pm(c[3 * i], stds[i]), pct(c[3 * i + 1]), pct(c[3 * i + 2])]
        seeds = sorted({len(e.get("seeds") or []) for e in [full.get(t, {}), *[data[v][t] for v in wide]]})
        rows.append(row + ["/".join(map(str, seeds))])
        csv_rows.append([t, d, *c, " ".join(str(x) for x in full.get(t, {}).get("seeds", []))])
    n_task_rows = len(rows)
    for name, chosen in (("Average", glue_tasks), ("Average w/o WNLI", [t for t in glue_tasks if t != "wnli"])):
        d, c = cells([dense.get(t, {}) for t in chosen],
                     [[full.get(t, {}) for t in chosen], *[[data[v][t] for t in chosen] for v in wide]])
        row = [f"{name} ({len(chosen)})", pct(d)]
        for i in range(len(wide) + 1):
            row += [pct(c[3 * i]), pct(c[3 * i + 1]), pct(c[3 * i + 2])]
        rows.append(row + ["–"])
        csv_rows.append([name.lower().replace(" ", "_").replace("/", ""), d, *c, ""])
    caption = [f"Variants run on every GLUE task of Table 1, against the full method: dev score × 100 (mean ± std "
               f"over seeds), retention of the dense score and achieved block sparsity; {_block(out)}.",
               "Dense and full = Table 1's runs on the seeds the variant ran; averages formed as in Table 1 "
               "(unweighted mean of the primary metrics; retention = ratio of the averages)."]
    csv_header = ["task", "dense"] + [f"{v}_{k}" for v in ["full", *wide] for k in ("score", "retention", "sparsity")] + ["seeds"]
    out.table("table_ablations_wide", header, rows, caption, [path, glue_path],
              "variants run on every GLUE task vs the full method, with the GLUE average", csv_header=csv_header,
              csv_rows=csv_rows, rules_before=[n_task_rows])


def table_policy_matched(out: Output) -> None:
    """#13 part 2b — is the policy dynamic, and does it beat input-independent masks?  From the inference sweep's
    ``matched`` summary (every policy at the learned policy's achieved sparsity, per seed) and Table 1's
    input-dependence statistics."""
    glue_path = out.results / "glue" / "summary.json"
    glue = load_json(glue_path) if glue_path.exists() else {}
    _policy_matched(out, "table_policy_matched", out.results / "ablations" / "inference_sweep.json",
                    [glue_path] if glue else [], lambda key, seeds: glue.get(key, {}).get("input_dependence"),
                    models="each seed's DendriticBERT fine-tuned at target {target} (Table 1's models)",
                    swept="training-free and random: targets 0.3–0.9; static: windows 0–8 blocks",
                    dependence="Table 1's summary")


def table_long_policy_matched(out: Output) -> None:
    """#14 — the same question where skipping attention pays: the long-document DendriticBERT at each swept n, on
    its dev windows (``python -m reproduce.sweep_inference --long N``)."""
    def dependence(key: str, seeds: list[int]) -> float | None:
        # the swept seeds' own runs (the summary's mean can cover seeds the sweep has not evaluated)
        task, n = key.rsplit("-n", 1)
        runs = [out.results / "long" / task / f"dendritic-n{n}-seed{k}.json" for k in seeds]
        values = [(load_json(r).get("input_dependence") or {}).get("input_dependence") for r in runs if r.exists()]
        return sum(values) / len(values) if values and len(values) == len(seeds) and all(map(is_num, values)) else None

    run_files = sorted((out.results / "long").glob("*/dendritic-n*-seed*.json"))
    _policy_matched(out, "table_long_policy_matched", out.results / "long" / "inference_sweep.json",
                    run_files, dependence,
                    models="the long-document DendriticBERT (64-token blocks) fine-tuned at target {target}, on its dev "
                           "windows of n tokens",
                    swept="training-free and random: targets 0.5–0.9; static: windows 0–4 blocks",
                    dependence="the swept seeds' run files", name_what="long documents")


def table_long_dense_masks(out: Output) -> None:
    """#14 — what fine-tuning under masks buys: the same seed's *dense* long-document model, never fine-tuned under
    masks, under training-free / static / random masks at the sparsity its DendriticBERT reached
    (``python -m reproduce.sweep_inference --long N --dense``)."""
    _policy_matched(out, "table_long_dense_masks", out.results / "long" / "inference_sweep_dense.json", [],
                    lambda key, seeds: None,
                    models="the dense long-document model (never fine-tuned under masks; 64-token blocks) on its dev "
                           "windows of n tokens, against the same seed's DendriticBERT (sparsified from it at target "
                           "{target})",
                    swept="training-free and random: targets 0.5–0.9; static: windows 0–4 blocks",
                    dependence="–", name_what="long documents, the dense model under masks",
                    same_weights=("'learned' = the same seed's DendriticBERT as its run evaluated it (other weights: "
                                  "fine-tuned under its masks with distillation); every other column = the dense "
                                  "model's weights, the safety floor included."),
                    no_mask="No mask = the dense model itself (full attention).")


def _policy_matched(out: Output, name: str, path: Path, extra_sources: list[Path], dependence_of, *, models: str,
                    swept: str, dependence: str, name_what: str = "",
                    same_weights: str = "Same weights, same safety floor; only the learned policy was trained with them.",
                    no_mask: str = "No mask = the same weights with full attention.") -> None:
    what = f"learned vs other policies at matched sparsity ({name})"
    if not require(out, what, path):
        return
    data = load_json(path)
    matched = data.get("matched") or {}
    if not matched:
        out.skip(what, f"{out.rel(path)} has no matched summary (python -m reproduce.sweep_inference)")
        return
    sources = [path, *extra_sources]
    policies = ["none", "learned", "training_free", "static", "random"]
    header = ["task", "metric", "seeds", "block sparsity", "no mask", "learned", "training-free top-k",
              "static window", "random", "learned − training-free", "learned − static", "learned − random",
              "input dependence"]
    rows, csv_rows = [], []
    for t in sorted(matched, key=task_key):
        m = matched[t]

        def cell(policy):
            st = m.get(policy)
            return pm(st["mean"], st["std"]) if st else "– (outside its swept range)"

        def margin(policy):
            st = m.get("learned_minus", {}).get(policy)
            if not st:
                return "–"
            return f"{pm(st['mean'], st['std'])} ({st['beyond_noise'] or 'fewer than 3 seeds'})"

        dep = dependence_of(t, m["seeds"])
        rows.append([task_label(t), METRIC.get(m["metric"], m["metric"]), str(len(m["seeds"])),
                     pm(m["sparsity"]["mean"], m["sparsity"]["std"]), *[cell(p) for p in policies],
                     *[margin(p) for p in ("training_free", "static", "random")], pct(dep, 1) if is_num(dep) else "–"])
        csv_rows.append([t, m["metric"], " ".join(map(str, m["seeds"])), m["sparsity"]["mean"],
                         *[(m.get(p) or {}).get("mean") for p in policies],
                         *[(m.get("learned_minus", {}).get(p) or {}).get("mean") for p in ("training_free", "static", "random")],
                         *[(m.get("learned_minus", {}).get(p) or {}).get("beyond_noise") for p in ("training_free", "static", "random")],
                         dep])
    caption = [("Is the learned policy better than input-independent masks?  Inference only, on "
                f"{models.format(target=data.get('main_target', '?'))}: every "
                "policy's dev score (× 100, mean ± std over seeds) at the block sparsity the learned policy reaches "
                f"there, read off each policy's swept curve by linear interpolation ({swept}; no extrapolation).  "
                + same_weights),
               ("Margins are paired by seed; 'learned better/worse' = the mean margin exceeds twice its standard "
                f"error, else 'not separable'.  {no_mask}  Input dependence "
                f"({dependence}) = the share of block decisions that differ from each head's most common "
                "decision at the same input length.")]
    out.table(name, header, rows, caption, sources,
              "learned policy vs no mask, training-free, static and random masks at matched sparsity (inference sweep"
              + (f", {name_what})" if name_what else ")"),
              csv_header=["task", "metric", "seeds", "sparsity", *policies,
                          *[f"learned_minus_{p}" for p in ("training_free", "static", "random")],
                          *[f"verdict_{p}" for p in ("training_free", "static", "random")], "input_dependence"],
              csv_rows=csv_rows)


FIGURES = [ablations, table_ablations, table_wide, table_diagnostics, table_policy_matched, table_long_policy_matched,
           table_long_dense_masks]

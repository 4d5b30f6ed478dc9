"""Latency and kernel efficiency.  Inputs: ``latency/summary.json`` (kernel/layer/model rows against SDPA and HF
eager, with the Amdahl bound) and ``kernels/summary.json`` (block-sparse CPU kernel vs SDPA vs flex attention).

Reference lines (DESIGN.md, "The physics"): skipping a fraction ``s`` of attention blocks can at best take a
model from ``t`` to ``t·(1 − s·share)`` (Amdahl, ``share`` = attention's share of the FLOPs, ``n/(n + 6d)``);
At model level that bound *is* the ideal (linear layers cost the same whatever is skipped); ``t·(1 − s)`` is the
ideal of attention alone and appears only at kernel level."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .common import Output, is_num, load_json, num, pct, require, task_key, task_label

HIDDEN = {"minilm-l6": 384, "bert-base": 768}
LATENCY_COLS = ["level", "model", "backend", "n", "batch", "dtype", "block_size", "target_sparsity",
                "achieved_sparsity", "median_ms", "p90_ms", "ratio_vs_sdpa", "ratio_vs_eager", "amdahl_bound",
                "attention_share", "amdahl_fraction", "threads", "positions_extended", "policy_ms", "mask_ms",
                "kernel_ms"]


def _frame(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    return df


def _provenance_line(prov: dict) -> str:
    keys = ("device", "gpu", "cpu", "torch", "threads", "git_commit")
    parts = [f"{k} {str(prov[k])[:12] if k == 'git_commit' else prov[k]}" for k in keys if k in prov]
    if prov.get("git_dirty"):
        parts.append("(uncommitted changes)")
    return ", ".join(parts)


def _load_latency(out: Output, what: str):
    path = out.results / "latency" / "summary.json"
    if not require(out, what, path):
        return None, path
    data = load_json(path)
    df = _frame(data.get("rows", []), LATENCY_COLS)
    if df.empty:
        out.skip(what, "latency/summary.json has no rows")
        return None, path
    df["sparsity_facet"] = df["target_sparsity"].map(lambda x: f"target sparsity {x:g}" if is_num(x) else "dense")
    return (df, data.get("provenance", {})), path


def _share(row) -> float:
    if is_num(row.get("attention_share")):
        return float(row["attention_share"])
    d = HIDDEN.get(row.get("model"))
    return row["n"] / (row["n"] + 6 * d) if d else float("nan")


def latency_vs_n(out: Output) -> None:
    loaded, path = _load_latency(out, "latency vs n (latency_vs_n)")
    if loaded is None:
        return
    df, prov = loaded
    # Batch 1: the only batch the sweep covers at every n (larger batches are in the table).
    m = df[(df["level"] == "model") & (df["batch"] == 1)].sort_values(["model", "backend", "target_sparsity", "n"],
                                                                      na_position="first")
    if m.empty:
        out.skip("latency vs n (latency_vs_n)", "no model-level rows")
        return
    models = sorted(m["model"].dropna().unique())
    sparse_targets = sorted(t for t in m["target_sparsity"].dropna().unique() if t > 0)
    dense_rows = m[m["backend"].isin(["sdpa", "eager"])]
    targets = sparse_targets or [None]
    fig, axes = plt.subplots(len(models), len(targets), figsize=(4.2 * len(targets), 3.4 * len(models)),
                             squeeze=False, sharex=True)
    backends = sorted(m["backend"].dropna().unique())
    palette = dict(zip(backends, sns.color_palette("deep", len(backends))))
    for i, model in enumerate(models):
        for j, tgt in enumerate(targets):
            ax = axes[i][j]
            sel = m[(m["model"] == model) & ((m["target_sparsity"] == tgt) | m["backend"].isin(["sdpa", "eager"]))]
            for b in backends:
                rows = sel[sel["backend"] == b]
                if b in ("sdpa", "eager"):
                    rows = rows.groupby("n", as_index=False)["median_ms"].median()
                if rows.empty:
                    continue
                ax.plot(rows["n"], rows["median_ms"], marker="o", markersize=3, color=palette[b], label=b)
            sdpa = dense_rows[(dense_rows["model"] == model) & (dense_rows["backend"] == "sdpa")] \
                .groupby("n", as_index=False)["median_ms"].median()
            sparse = sel[~sel["backend"].isin(["sdpa", "eager"])]
            if tgt is not None and not sdpa.empty and not sparse.empty:
                ach = sparse.groupby("n")["achieved_sparsity"].mean()
                share = sparse.groupby("n").apply(lambda g: _share(g.iloc[0].to_dict()), include_groups=False)
                base = sdpa.set_index("n")["median_ms"].reindex(ach.index)
                ax.plot(ach.index, base * (1 - ach * share), color="black", linestyle="--",
                        label="ideal (Amdahl): SDPA·(1 − s·share), s achieved")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length n")
            ax.set_ylabel("median forward latency, ms")
            bs = sorted({int(b) for b in sparse["block_size"].dropna()}) if not sel.empty else []
            batch = sorted({int(b) for b in sel["batch"].dropna()})
            ax.set_title(f"{model}, {'' if tgt is None else f'target {tgt:g}, '}block {'/'.join(map(str, bs)) or '–'}, "
                         f"batch {'/'.join(map(str, batch))}", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle("End-to-end model latency vs sequence length (baselines: SDPA, HF eager) — " + _provenance_line(prov),
                 fontsize=8)
    fig.tight_layout()
    out.figure(fig, "latency_vs_n", [path],
               "model-level median latency vs n per backend (batch 1), with the ideal (Amdahl, 1 − s·share) line")


def speedup_vs_sparsity(out: Output) -> None:
    loaded, path = _load_latency(out, "speedup vs sparsity (speedup_vs_sparsity)")
    if loaded is None:
        return
    df, prov = loaded
    df = df[df["ratio_vs_sdpa"].notna() & df["achieved_sparsity"].notna() & ~df["backend"].isin(["sdpa", "eager"])]
    if df.empty:
        out.skip("speedup vs sparsity (speedup_vs_sparsity)", "no sparse rows with ratio_vs_sdpa")
        return
    levels = [lv for lv in ("kernel", "layer", "model") if lv in set(df["level"])]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    s = np.linspace(0, 1, 101)
    for ax, level in zip(axes[0], levels):
        sel = df[df["level"] == level].sort_values(["backend", "n", "achieved_sparsity"])
        sel = sel.assign(speedup=1.0 / sel["ratio_vs_sdpa"].astype(float),
                         length=sel["n"].map(lambda n: f"n={n}"),
                         run=[f"{m} · {b} · batch {bt}" for m, b, bt in zip(sel["model"], sel["backend"], sel["batch"])])
        sns.scatterplot(data=sel, x="achieved_sparsity", y="speedup", hue="length", style="run", ax=ax, s=25)
        ax.plot(s[:-5], 1 / (1 - s[:-5]), color="gray", linestyle=":", label="ideal 1/(1 − s)")
        if level == "model":
            for _, g in sel.groupby(["model", "n"]):
                share = _share(g.iloc[0].to_dict())
                if np.isfinite(share):
                    ax.plot(s, 1 / (1 - s * share), color="black", linestyle="--", linewidth=0.8)
            ax.plot([], [], color="black", linestyle="--", label="Amdahl 1/(1 − s·share), per model and n")
        ax.axhline(1.0, color="red", linewidth=0.8)
        ax.set_ylim(0, max(4.0, float(sel["speedup"].max()) * 1.1))
        ax.set_xlim(0, 1)
        ax.set_xlabel("achieved block sparsity s")
        ax.set_ylabel("speedup vs SDPA (1 / ratio_vs_sdpa)")
        bs = "/".join(str(int(b)) for b in sorted(sel["block_size"].dropna().unique()))
        ax.set_title(f"{level} level, block {bs}", fontsize=8)
        ax.legend(fontsize=5)
    fig.suptitle("Speedup over SDPA vs achieved sparsity (red: parity) — " + _provenance_line(prov), fontsize=8)
    fig.tight_layout()
    out.figure(fig, "speedup_vs_sparsity", [path], "speedup over SDPA vs achieved sparsity at kernel/layer/model level")


def policy_overhead(out: Output) -> None:
    loaded, path = _load_latency(out, "policy overhead (policy_overhead)")
    if loaded is None:
        return
    df, prov = loaded
    lay = df[(df["level"] == "layer") & df["policy_ms"].notna() & df["mask_ms"].notna() & df["kernel_ms"].notna()]
    if lay.empty:
        out.skip("policy overhead (policy_overhead)", "no layer rows with policy_ms/mask_ms/kernel_ms")
        return
    lay = lay.sort_values(["model", "backend", "target_sparsity", "n"])
    groups = sorted({(r.model, r.backend) for r in lay.itertuples()})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups), 3.6), squeeze=False)
    sdpa = df[(df["level"] == "layer") & (df["backend"] == "sdpa")]
    for ax, (model, backend) in zip(axes[0], groups):
        sel = lay[(lay["model"] == model) & (lay["backend"] == backend)]
        labels = [f"n={r.n}\ns={r.achieved_sparsity:.2f}" for r in sel.itertuples()]
        x = np.arange(len(sel))
        bottom = np.zeros(len(sel))
        for key, label, color in (("policy_ms", "scorer + gating", "#dd8452"), ("mask_ms", "mask build", "#55a868"),
                                  ("kernel_ms", "sparse attention kernel", "#4c72b0")):
            vals = sel[key].astype(float).to_numpy()
            ax.bar(x, vals, bottom=bottom, color=color, label=label)
            bottom += vals
        ref = [sdpa[(sdpa["model"] == model) & (sdpa["n"] == r.n) & (sdpa["batch"] == r.batch)]["median_ms"]
               for r in sel.itertuples()]
        ref = [float(v.median()) if len(v) else np.nan for v in ref]
        ax.scatter(x, ref, marker="_", s=300, color="black", zorder=3, label="SDPA attention (dense)")
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("ms per attention layer")
        bs = "/".join(str(int(b)) for b in sorted(sel["block_size"].dropna().unique()))
        ax.set_title(f"{model}, backend {backend}, block {bs}", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("Where a dendritic attention layer spends its time — " + _provenance_line(prov), fontsize=8)
    fig.tight_layout()
    out.figure(fig, "policy_overhead", [path],
               "layer level: scorer+gating / mask build / kernel time stacked, SDPA layer time as reference")


def table_latency(out: Output) -> None:
    loaded, path = _load_latency(out, "latency table (table_latency)")
    if loaded is None:
        return
    df, prov = loaded
    df = df[df["level"] != "glue"]  # the trained GLUE models' rows: table_latency_glue
    order = {"kernel": 0, "layer": 1, "model": 2}
    df = df.assign(_lv=df["level"].map(lambda v: order.get(v, 3)), _t=df["target_sparsity"].fillna(-1.0))
    df = df.sort_values(["_lv", "model", "n", "batch", "dtype", "_t", "backend"], kind="mergesort")
    cols = ["level", "model", "backend", "n", "batch", "dtype", "block_size", "target_sparsity", "achieved_sparsity",
            "median_ms", "p90_ms", "ratio_vs_sdpa", "ratio_vs_eager", "amdahl_bound", "attention_share", "threads"]
    header = ["level", "model", "backend", "n", "batch", "dtype", "block", "target s", "achieved s", "median ms",
              "p90 ms", "÷ SDPA", "÷ eager", "Amdahl bound", "attn share", "threads"]
    rows = [[num(r[c], 3) if is_num(r[c]) else ("–" if r[c] is None or r[c] != r[c] else str(r[c])) for c in cols]
            for r in df[cols].to_dict("records")]
    csv_rows = [[r[c] for c in cols] for r in df[cols].to_dict("records")]
    caption = [("Latency, median over repeats (ratios are time ÷ the baseline's time measured in the same run; < 1 "
                "is faster)."), "Baselines: SDPA (does not materialise n×n) and HF eager (materialises it).",
               "Amdahl bound as recorded by the benchmark (skipped attention × attention's share of the FLOPs).",
               "Machine: " + _provenance_line(prov) + _load_line(prov) + "."]
    out.table("table_latency", header, rows, caption, [path], "latency rows (kernel/layer/model) vs SDPA and eager",
              csv_header=cols, csv_rows=csv_rows)


def table_latency_glue(out: Output) -> None:
    """The accuracy setting: the trained GLUE models on their own dev inputs (``reproduce.bench.glue_latency``)."""
    what = "GLUE-model latency table (table_latency_glue)"
    path = out.results / "latency" / "summary.json"
    if not require(out, what, path):
        return
    data = load_json(path)
    rows = sorted((r for r in data.get("rows", []) if r.get("level") == "glue"),
                  key=lambda r: (task_key(r["task"]), r["batch"]))
    if not rows:
        out.skip(what, "latency/summary.json has no level = glue rows (python -m reproduce.bench.glue_latency)")
        return
    prov = data.get("glue_provenance", {})
    for r in rows:  # the best any skipping could do here: Amdahl with attention's FLOP share n / (n + 6d)
        d = next((v for k, v in HIDDEN.items() if str(r.get("model", "")).startswith(k)), None)
        n = r.get("mean_length")
        r["amdahl_bound"] = 1 - r["achieved_sparsity"] * n / (n + 6 * d) if d and is_num(n) else None
    cols = ["task", "batch", "block_size", "mean_length", "achieved_sparsity", "dense_sdpa_ms", "median_ms",
            "ratio_vs_sdpa", "amdahl_bound", "path", "policy_impl"]
    header = ["task", "batch", "block", "mean tokens", "block sparsity", "dense SDPA ms", "DendriticBERT ms",
              "÷ dense SDPA", "Amdahl bound", "attention path", "policy"]

    def cell(v):
        return num(v, 3) if is_num(v) else ", ".join(v) if isinstance(v, list) else str(v)

    table = [[task_label(r["task"]) if c == "task" else cell(r.get(c)) for c in cols] for r in rows]
    worst = max(rows, key=lambda r: r["ratio_vs_sdpa"])
    best = min(rows, key=lambda r: r["ratio_vs_sdpa"])
    caption = [("Accuracy-setting latency: the trained seed-0 GLUE models (the same models as Table 1's seed 0) on "
                "their own dev inputs, dynamic padding, max length 128; DendriticBERT with its default "
                "attention_backend (the path that ran is listed) vs its dense twin as a plain BertModel under SDPA; "
                "median of interleaved rounds, ratio = paired median of DendriticBERT ÷ dense (< 1 is faster)."),
               ("Amdahl bound = 1 − s · n / (n + 6d) at the mean length n (d = hidden size): the ratio a free "
                "policy and a perfect kernel would reach, since only attention's share of the FLOPs can be skipped."),
               (f"Range: ×{best['ratio_vs_sdpa']:.2f} ({task_label(best['task'])}, batch {best['batch']}) to "
                f"×{worst['ratio_vs_sdpa']:.2f} ({task_label(worst['task'])}, batch {worst['batch']})."),
               "Machine: " + _provenance_line(prov) + _load_line(prov) + "."]
    out.table("table_latency_glue", header, table, caption, [path],
              "latency of the trained GLUE models on their dev inputs vs dense SDPA (level = glue rows)",
              csv_header=cols, csv_rows=[[r.get(c) for c in cols] for r in rows])


def table_policy_cost(out: Output) -> None:
    """What the learned policy costs at inference vs the dense forward and dense attention (reproduce.bench.policy_cost)."""
    what = "policy cost table (table_policy_cost)"
    path = out.results / "latency" / "policy_cost.json"
    if not require(out, what, path):
        return
    data = load_json(path)
    rows = sorted(data.get("rows", []), key=lambda r: (r["block_size"], r["n"], r["batch"]))
    if not rows:
        out.skip(what, "latency/policy_cost.json has no rows")
        return
    cols = ["n", "block_size", "batch", "policy_impl", "achieved_sparsity", "policy_ms", "policy_python_ms",
            "dense_forward_ms", "dense_attention_ms", "policy_share_of_forward", "policy_share_of_attention",
            "forward_ratio_vs_sdpa", "attention_path", "layer_policy_hot_us", "layer_policy_after_forward_us",
            "layer_scorer_gemm_hot_us", "layer_scorer_gemm_after_forward_us"]
    header = ["n", "block", "batch", "policy", "block sparsity", "policy ms (all layers)", "Python modules ms",
              "dense forward ms", "dense attention ms", "policy ÷ forward %", "policy ÷ attention %",
              "whole forward ÷ dense SDPA", "attention path (auto)", "one layer's policy µs: warm",
              "… after a dense forward", "its scorer GEMM µs: warm", "… after a dense forward"]

    def cell(c, v):
        if v is None:  # files from before the whole-forward or the breakdown columns
            return "–"
        if c.endswith("_us"):
            return f"{v:.0f}"
        if c.startswith("policy_share"):
            return f"{100 * v:.1f}"
        if c == "attention_path":
            return "/".join(v)
        return num(v, 3) if isinstance(v, float) else str(v)

    table = [[cell(c, r.get(c)) for c in cols] for r in rows]
    short = [r for r in rows if r["n"] <= 128 and r.get("policy_impl") == "fused"]
    long_rows = [r for r in rows if r["n"] >= 512 and r.get("policy_impl") == "fused"]
    goal = []
    if short:
        w = max(short, key=lambda r: r["policy_share_of_forward"])
        goal.append(f"n ≤ 128: worst {100 * w['policy_share_of_forward']:.1f} % of the dense forward (block "
                    f"{w['block_size']}, batch {w['batch']}; goal ≤ 5 %)")
    if long_rows:
        w = max(long_rows, key=lambda r: r["policy_share_of_attention"])
        goal.append(f"n ≥ 512: worst {100 * w['policy_share_of_attention']:.1f} % of dense attention (n = {w['n']}, "
                    f"block {w['block_size']}, batch {w['batch']}; goal ≤ 5 %)")
    whole = [r for r in rows if r.get("forward_ratio_vs_sdpa") is not None]
    if whole:
        w = max(whole, key=lambda r: r["forward_ratio_vs_sdpa"])
        goal.append(f"whole forward: worst x{w['forward_ratio_vs_sdpa']:.2f} of dense SDPA (n = {w['n']}, block "
                    f"{w['block_size']}, batch {w['batch']}; goal 3 ≤ x1.05)")
    prov = data.get("provenance", {})
    caption = [("Policy cost at inference: scorer + gate + threshold + mask compaction of all layers (the fused "
                "C++ call the model makes; the Python modules beside it), vs the dense twin's whole forward and its "
                "attention alone (SDPA), and the whole DendriticBERT forward (attention_backend auto), MiniLM-L6 "
                "shapes, random weights, target 0.5 (not a trained model), interleaved medians; the last four columns: "
                "one layer's fused call and its scorer GEMM timed back to back (warm) and each right after a dense "
                "forward (what a layer's policy meets inside a model)."),
               "Goal (#15): " + ("; ".join(goal) if goal else "no fused rows") + ".",
               "Machine: " + _provenance_line(prov) + _load_line(prov) + "."]
    out.table("table_policy_cost", header, table, caption, [path], "policy cost vs the dense forward and attention",
              csv_header=cols, csv_rows=[[r.get(c) for c in cols] for r in rows])


# -- kernel efficiency (reproduce.bench.kernels) --------------------------------------------------------------------------
def _kernels(out: Output, what: str):
    path = out.results / "kernels" / "summary.json"
    if not require(out, what, path):
        return None, path
    data = load_json(path)
    rows = data.get("rows", [])
    if not rows:
        out.skip(what, "kernels/summary.json has no rows")
        return None, path
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "raw_ms"} for r in rows])
    df = df.sort_values(["B", "H", "d", "n", "block_size", "target_sparsity"], kind="mergesort").reset_index(drop=True)
    df["speedup_cpu"] = df["t_sdpa_ms"] / df["t_cpu_ms"]
    df["speedup_ideal"] = 1.0 / (1.0 - df["achieved_block_sparsity"])
    return (df, data), path


def _load_line(prov: dict) -> str:
    """The 1-min load average when timing started (a timing under load is labelled by it)."""
    load = prov.get("loadavg_start")
    return f"; 1-min load average at start {load[0]:.1f} on {prov.get('threads', '?')} threads (shared machine)" \
        if isinstance(load, list) and load else ""


def _kernel_caption(data: dict) -> str:
    prov = data.get("provenance", {})
    return f"{data.get('what', '')}; efficiency = {data.get('efficiency_definition', '?')}; " + \
        _provenance_line(prov) + _load_line(prov)


def kernel_efficiency(out: Output) -> None:
    loaded, path = _kernels(out, "kernel efficiency (kernel_efficiency)")
    if loaded is None:
        return
    df, data = loaded
    combos = sorted({(int(r.B), int(r.d)) for r in df.itertuples()})
    fig, axes = plt.subplots(2, len(combos), figsize=(3.6 * len(combos), 6.4), squeeze=False, sharey="row")
    blocks = sorted(df["block_size"].unique())
    palette = dict(zip(blocks, sns.color_palette("deep", len(blocks))))
    targets = sorted(df["target_sparsity"].unique())
    styles = dict(zip(targets, ["-", "--", ":", "-."]))
    for j, (B, d) in enumerate(combos):
        sel = df[(df["B"] == B) & (df["d"] == d)]
        for (bs, tgt), g in sel.groupby(["block_size", "target_sparsity"], sort=True):
            g = g.sort_values("n")
            lab = f"block {bs}, target {tgt:g}"
            axes[0][j].plot(g["n"], g["speedup_cpu"], marker="o", markersize=3, color=palette[bs],
                            linestyle=styles[tgt], label=lab)
            axes[0][j].plot(g["n"], g["speedup_ideal"], color=palette[bs], linestyle=styles[tgt], linewidth=0.7,
                            alpha=0.8)
            axes[1][j].plot(g["n"], g["efficiency"], marker="o", markersize=3, color=palette[bs],
                            linestyle=styles[tgt], label=lab)
        H = "/".join(str(h) for h in sorted(sel["H"].unique()))
        axes[0][j].set_title(f"B={B}, H={H}, head dim {d}", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length n")
            ax.axhline(1.0, color="red", linewidth=0.8)
    axes[0][0].set_ylabel("speedup of block-sparse CPU kernel over SDPA")
    axes[1][0].set_ylabel("efficiency (1 − s)·t_SDPA / t_kernel")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7,
               title="thin lines (top row): ideal speedup 1/(1 − s) of the same block size and target", title_fontsize=7)
    fig.suptitle("Block-sparse attention forward (fp32, CPU) vs dense SDPA; red: parity\n"
                 + _provenance_line(data.get("provenance", {})), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out.figure(fig, "kernel_efficiency", [path],
               "CPU block-sparse kernel: speedup over SDPA vs n (with ideal 1/(1−s)) and efficiency per block size")


def table_kernels(out: Output) -> None:
    loaded, path = _kernels(out, "kernel table (table_kernels)")
    if loaded is None:
        return
    df, data = loaded
    cols = ["B", "H", "n", "d", "block_size", "target_sparsity", "achieved_block_sparsity", "t_sdpa_ms", "t_cpu_ms",
            "t_flex_ms", "speedup_cpu", "speedup_ideal", "efficiency", "flex_over_cpu", "mask_build_ms", "rounds"]
    cols = [c for c in cols if c in df.columns]
    header = [{"block_size": "block", "target_sparsity": "target s", "achieved_block_sparsity": "achieved s",
               "t_sdpa_ms": "SDPA ms", "t_cpu_ms": "sparse ms", "t_flex_ms": "flex ms", "speedup_cpu": "speedup",
               "speedup_ideal": "ideal", "flex_over_cpu": "flex ÷ sparse", "mask_build_ms": "mask ms"}.get(c, c)
              for c in cols]
    recs = df[cols].to_dict("records")
    rows = [[num(r[c], 3) if isinstance(r[c], float) else str(r[c]) for c in cols] for r in recs]
    caption = ["Block-sparse attention kernel vs SDPA (time medians; speedup = t_SDPA / t_sparse, ideal = 1/(1 − s)).",
               _kernel_caption(data) + "."]
    skipped = data.get("skipped_for_time_budget") or []
    if skipped:
        caption.append(f"{len(skipped)} configurations were skipped for the time budget.")
    out.table("table_kernels", header, rows, caption, [path], "kernel benchmark rows", csv_header=cols,
              csv_rows=[[r[c] for c in cols] for r in recs])


# -- int8 linear layers with sparse attention (reproduce.bench.int8) --------------------------------------------------------
def table_int8(out: Output) -> None:
    """Latency split of int8 linear layers + sparse attention, and the trained models' scores in int8."""
    what = "int8 tables (table_int8, table_int8_accuracy)"
    path = out.results / "int8" / "summary.json"
    if not require(out, what, path):
        return
    data = load_json(path)
    lat = data.get("latency", {})
    rows = sorted(lat.get("rows", []), key=lambda r: (r["n"], r["batch"]))
    if not rows:
        out.skip("int8 latency table (table_int8)", "int8/summary.json has no latency rows")
    else:
        cols = ["n", "block_size", "batch", "achieved_sparsity", "sdpa_fp32_ms", "sdpa_int8_ms", "dendritic_fp32_ms",
                "dendritic_int8_ms", "quantisation", "sparsity_fp32", "sparsity_on_int8", "compound",
                "attention_path"]
        header = ["n", "block", "batch", "block sparsity", "SDPA fp32 ms", "SDPA int8 ms", "DendriticBERT fp32 ms",
                  "DendriticBERT int8 ms", "int8 SDPA ÷ fp32 SDPA", "DendriticBERT fp32 ÷ fp32 SDPA",
                  "DendriticBERT int8 ÷ int8 SDPA", "DendriticBERT int8 ÷ fp32 SDPA", "attention path"]

        def cell(c, v):
            if c == "attention_path":
                return "/".join(v)
            return num(v, 3) if isinstance(v, float) else str(v)

        best = min(rows, key=lambda r: r["compound"])
        prov = lat.get("provenance", {})
        caption = [("int8 dynamic quantisation (torch.ao) of the linear layers, the policy in fp32, combined with "
                    "sparse attention (attention_backend auto): MiniLM-L6 shapes, random weights, budget 0.5 "
                    "(not a trained model), interleaved medians; ratios are per-round medians, so the split "
                    "columns multiply only approximately.  Split of the saving: quantisation = int8 SDPA ÷ fp32 "
                    "SDPA; sparsity on top = DendriticBERT int8 ÷ int8 SDPA; compound = DendriticBERT int8 ÷ fp32 "
                    "SDPA."),
                   f"Best compound: x{best['compound']:.2f} of fp32 SDPA at n = {best['n']}, batch {best['batch']}.",
                   "Machine: " + _provenance_line(prov) + _load_line(prov) + "."]
        out.table("table_int8", header, [[cell(c, r[c]) for c in cols] for r in rows], caption, [path],
                  "int8 linear layers + sparse attention: latency split", csv_header=cols,
                  csv_rows=[[r[c] for c in cols] for r in rows])
    acc = data.get("accuracy", {})
    arows = sorted(acc.get("rows", []), key=lambda r: r["name"])
    if not arows:
        out.skip("int8 accuracy table (table_int8_accuracy)", "int8/summary.json has no accuracy rows")
        return
    header = ["model pair", "metric", "dev examples", "dense fp32", "dense int8", "DendriticBERT fp32",
              "DendriticBERT int8", "retention int8 (÷ dense fp32)", "retention fp32", "agreement int8 DendriticBERT "
              "with dense fp32", "block sparsity int8", "fp32 = committed predictions"]
    table = []
    for r in arows:
        s = r["scores"]
        table.append([r["name"], r["metric"], str(r["dev_examples"]), *(pct(s[k]) for k in
                      ("dense_fp32", "dense_int8", "dendritic_fp32", "dendritic_int8")),
                      pct(r["retention_int8"]), pct(r["retention_fp32"]),
                      pct(r["agreement_with_dense_fp32"]["dendritic_int8"]),
                      num(r["achieved_sparsity"]["dendritic_int8"], 3), pct(r["fp32_matches_committed"])])
    caption = [("The trained models of the run folder on their whole dev sets, linear layers in fp32 and in int8 "
                "(the policy stays fp32); retention = DendriticBERT int8 ÷ dense fp32.  The last column checks the "
                "harness: fp32 DendriticBERT predictions equal the committed result file's."),
               "Machine: " + _provenance_line(acc.get("provenance", {})) + "."]
    out.table("table_int8_accuracy", header, table, caption, [path], "int8 DendriticBERT scores on trained models")


FIGURES = [latency_vs_n, speedup_vs_sparsity, policy_overhead, table_latency, table_latency_glue, table_policy_cost,
           kernel_efficiency, table_kernels, table_int8]

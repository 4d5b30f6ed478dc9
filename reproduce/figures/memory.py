"""Peak memory vs sequence length.  Input: ``memory/summary.json`` (one fresh process per configuration)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .common import Output, is_num, load_json, num, require

COLS = ["model", "n", "batch", "backend", "target_sparsity", "achieved_sparsity", "peak_mb", "reduction_vs_eager",
        "ratio_vs_sdpa", "method"]


def _load(out: Output, what: str):
    path = out.results / "memory" / "summary.json"
    if not require(out, what, path):
        return None, None, path
    data = load_json(path)
    df = pd.DataFrame([{c: r.get(c) for c in COLS} for r in data.get("rows", [])], columns=COLS)
    if df.empty:
        out.skip(what, "memory/summary.json has no rows")
        return None, None, path
    df = df.assign(_t=df["target_sparsity"].fillna(-1.0))
    df = df.sort_values(["model", "batch", "n", "_t", "backend"], kind="mergesort").drop(columns="_t")
    return df, data.get("provenance", {}), path


def memory_vs_n(out: Output) -> None:
    df, _, path = _load(out, "memory vs n (memory_vs_n)")
    if df is None:
        return
    groups = sorted({(r.model, int(r.batch)) for r in df.itertuples()})
    fig, axes = plt.subplots(1, len(groups), figsize=(max(6.5, 4.6 * len(groups)), 3.9), squeeze=False)
    df = df.assign(label=[b if not is_num(t) or t == 0 else f"{b} (target {t:g})"
                          for b, t in zip(df["backend"], df["target_sparsity"])])
    labels = sorted(df["label"].unique())
    palette = dict(zip(labels, sns.color_palette("deep", len(labels))))
    for ax, (model, batch) in zip(axes[0], groups):
        sel = df[(df["model"] == model) & (df["batch"] == batch)]
        for lab in labels:
            g = sel[sel["label"] == lab].sort_values("n")
            if not g.empty:
                ax.plot(g["n"], g["peak_mb"], marker="o", markersize=3, color=palette[lab], label=lab)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel("peak memory, MB")
        methods = "/".join(sorted({str(m) for m in sel["method"].dropna()}))
        ax.set_title(f"{model}, batch {batch} (measured: {methods or '?'})", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("Peak memory vs sequence length\nbaselines: HF eager (materialises n×n) and SDPA (does not)", fontsize=9)
    fig.tight_layout()
    out.figure(fig, "memory_vs_n", [path], "peak memory vs n per backend and sparsity target")


def table_memory(out: Output) -> None:
    df, prov, path = _load(out, "memory table (table_memory)")
    if df is None:
        return
    recs = df[COLS].to_dict("records")
    header = ["model", "n", "batch", "backend", "target s", "achieved s", "peak MB", "reduction vs eager",
              "÷ SDPA", "method"]
    rows = [[num(r[c], 3) if isinstance(r[c], float) else ("–" if r[c] is None else str(r[c])) for c in COLS]
            for r in recs]
    caption = ["Peak memory per configuration (one fresh process each).",
               "reduction vs eager = 1 − peak / peak(HF eager); ÷ SDPA = peak / peak(SDPA), same run.",
               "Machine: " + ", ".join(f"{k} {v}" for k, v in sorted(prov.items()) if k in ("device", "gpu", "cpu", "torch")) + "."]
    out.table("table_memory", header, rows, caption, [path], "peak memory rows", csv_header=COLS,
              csv_rows=[[r[c] for c in COLS] for r in recs])


FIGURES = [memory_vs_n, table_memory]

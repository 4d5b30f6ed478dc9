"""Long documents (``results/long/summary.json``, ``python -m reproduce long``): accuracy and latency of the same
trained models on the same dev windows — one table (a row per length and timed batch size), the held-out MLM loss
table, and latency vs retention per n."""

from __future__ import annotations

import matplotlib.pyplot as plt

from .common import Output, is_num, load_json, num, pm, require


def _rows(out: Output, what: str):
    path = out.results / "long" / "summary.json"
    if not require(out, what, path):
        return None, path
    data = load_json(path)
    if not data.get("rows"):
        out.skip(what, "long/summary.json has no rows yet (no length has a finished dense/DendriticBERT pair)")
        return None, path
    return data, path


def _pct(x) -> str:
    return f"{100 * x:.1f}" if is_num(x) else "–"


def _ratio(x) -> str:
    return num(x, 3) if is_num(x) else "–"


def _latency_note(data: dict) -> str:
    prov = data.get("latency_provenance") or {}
    if not prov:
        return "Latency: not measured yet (`python -m reproduce.bench.long_latency` on idle cores)."
    per_n = {r["n"]: r["latency_measured"] for r in data.get("rows", []) if r.get("latency_measured")}
    if per_n:  # lengths timed in different runs (possibly on different machines): each says where
        return "Latency: seed-0 models on the first dev windows, interleaved medians; " + "; ".join(
            f"n = {n}: {_machine(m)}" for n, m in sorted(per_n.items())) + "."
    return ("Latency: seed-0 models on the first dev windows, interleaved medians; " + _machine(prov) + ".")


def _machine(prov: dict) -> str:
    load = prov.get("loadavg_start")
    load_text = f", 1-min load average at start {load[0]:.1f}" if isinstance(load, list) and load else ""
    isa = f" ({prov['cpu_isa']})" if prov.get("cpu_isa") else ""  # recorded since 2026-12-07
    return (f"machine {prov.get('cpu', '?')}{isa}, {prov.get('threads', '?')} threads{load_text}, "
            f"commit {str(prov.get('git_commit', '?'))[:12]}")


def table_long(out: Output) -> None:
    """Dense vs DendriticBERT on long windows: accuracy (mean ± std over paired seeds), retention, sparsity,
    agreement, and the end-to-end latency of the same trained models on the same dev windows."""
    what = "long-document table (table_long)"
    data, path = _rows(out, what)
    if data is None:
        return
    header = ["task", "n", "block", "target s", "achieved s", "majority", "dense", "DendriticBERT", "retention %",
              "agreement %", "input dep. %", "seeds", "batch", "SDPA ms", "dendritic ms", "÷ SDPA", "÷ eager",
              "Amdahl bound", "path"]
    cols = ["task", "n", "block_size", "target_sparsity", "achieved_sparsity", "majority_score", "dense_mean",
            "dense_std", "dendritic_mean", "dendritic_std", "retention", "agreement", "input_dependence", "seeds",
            "batch", "dense_sdpa_ms", "dendritic_ms", "ratio_vs_sdpa", "ratio_vs_eager", "amdahl_bound", "path"]
    rows, csv_rows = [], []
    for r in sorted(data["rows"], key=lambda r: (r["task"], r["n"], r.get("batch") or 0)):
        rows.append([r["task"], str(r["n"]), str(r["block_size"]), num(r["target_sparsity"], 2),
                     num(r["achieved_sparsity"], 3), _pct(r["majority_score"]), pm(r["dense_mean"], r["dense_std"]),
                     pm(r["dendritic_mean"], r["dendritic_std"]), _pct(r["retention"]), _pct(r["agreement"]),
                     _pct(r.get("input_dependence")), str(len(r["seeds"])), str(r.get("batch") or "–"),
                     num(r.get("dense_sdpa_ms"), 1) if is_num(r.get("dense_sdpa_ms")) else "–",
                     num(r.get("dendritic_ms"), 1) if is_num(r.get("dendritic_ms")) else "–",
                     _ratio(r.get("ratio_vs_sdpa")), _ratio(r.get("ratio_vs_eager")), _ratio(r.get("amdahl_bound")),
                     str(r.get("path") or "–")])
        csv_rows.append([r.get(c) if c != "seeds" else " ".join(map(str, r["seeds"])) for c in cols])
    caption = [
        "Long documents: windows of n tokens of the State of the Union addresses, Democratic vs Republican, split by "
        "address (sotu_party) or by president (sotu_party_president); accuracy in %, mean ± std over the seeds both "
        "variants finished; DendriticBERT sparsified from the same seed's dense model; retention = DendriticBERT ÷ "
        "dense; agreement = share of dev windows where both predict the same party; input dep. = share of block "
        "decisions that differ from the head's most common one at the same length; majority = the majority-class "
        "rate of the dev windows.",
        _latency_note(data),
    ]
    out.table("table_long", header, rows, caption, [path], "long-document accuracy + latency rows", csv_header=cols,
              csv_rows=csv_rows)


def table_long_mlm(out: Output) -> None:
    """Held-out masked-LM loss at length: dense vs DendriticBERT at each target sparsity."""
    what = "long-document MLM table (table_long_mlm)"
    path = out.results / "long" / "summary.json"
    if not require(out, what, path):
        return
    data = load_json(path)
    mlm = data.get("mlm") or []
    if not mlm:
        out.skip(what, "long/summary.json has no MLM rows yet")
        return
    header = ["n", "target s", "achieved s", "dense loss", "DendriticBERT loss", "Δ %"]
    cols = ["n", "target_sparsity", "achieved_sparsity", "dense_loss", "dendritic_loss"]
    rows = [[str(m["n"]), num(m["target_sparsity"], 2), num(m["achieved_sparsity"], 3), num(m["dense_loss"], 4),
             num(m["dendritic_loss"], 4), f"{100 * (m['dendritic_loss'] / m['dense_loss'] - 1):+.2f}"]
            for m in sorted(mlm, key=lambda m: (m["n"], m["target_sparsity"]))]
    caption = ["Held-out masked-LM loss on windows of the dev addresses (never trained on): the long warm-up (dense) "
               "vs the sparsity-aware phase 2 (DendriticBERT) at forced budgets; Δ = DendriticBERT ÷ dense − 1."]
    out.table("table_long_mlm", header, rows, caption, [path], "long-document held-out MLM loss rows", csv_header=cols,
              csv_rows=[[m.get(c) for c in cols] for m in mlm])


def table_long_holdout(out: Output) -> None:
    """The recipe candidates (dense, and DendriticBERT sparsified from a dense candidate): each trained on the training
    addresses minus a held-out fifth (whole addresses) and scored there — the recipes of the main runs are chosen from
    these, never from dev."""
    what = "long-document recipe-candidate table (table_long_holdout)"
    path = out.results / "long" / "summary.json"
    if not require(out, what, path):
        return
    holdout = load_json(path).get("holdout") or []
    if not holdout:
        out.skip(what, "long/summary.json has no held-out recipe runs yet")
        return
    header = ["n", "candidate", "variant", "pooling", "epochs", "learning rate", "seed", "train windows",
              "held-out windows", "majority %", "accuracy %", "Δ vs majority", "block sparsity %", "mask noise",
              "retention %", "agreement %"]
    cols = ["n", "name", "variant", "pooling", "epochs", "learning_rate", "seed", "train_windows", "held_out_windows",
            "majority_score", "score", "sparsity", "gumbel", "retention", "agreement"]
    ordered = sorted(holdout, key=lambda h: (h["n"], h.get("variant", "dense") != "dense", h["name"], h["seed"]))

    def dendritic_cells(h):  # DendriticBERT candidates: vs the dense candidate they were sparsified from
        if h.get("variant", "dense") != "dendritic":
            return ["–"] * 4
        return [_pct(h.get("sparsity")), "yes" if h.get("gumbel", True) else "no", _pct(h.get("retention")),
                _pct(h.get("agreement"))]

    rows = [[str(h["n"]), h["name"], h.get("variant", "dense"), h.get("pooling", "cls"), num(h["epochs"], 1),
             f"{h['learning_rate']:g}", str(h["seed"]), str(h["train_windows"]), str(h["held_out_windows"]),
             _pct(h["majority_score"]), _pct(h["score"]),
             f"{100 * (h['score'] - h['majority_score']):+.1f}" if is_num(h["majority_score"]) else "–",
             *dendritic_cells(h)]
            for h in ordered]
    caption = ["Recipe candidates for the long-document task (sotu_party), each trained on the training addresses "
               "minus a held-out fifth of them (whole addresses, holdout seed 1234) and scored on the held-out windows; "
               "the recipes of the main runs are chosen here, never on dev.  pooling: cls = BERT's pooler on [CLS], "
               "mean = mean of the last layer over the tokens.  DendriticBERT candidates are sparsified from a dense "
               "candidate's model (same split); retention and agreement are vs that model on the same held-out "
               "windows; mask noise = the relaxation's logistic noise on the training masks (perforation.py)."]
    out.table("table_long_holdout", header, rows, caption, [path], "long-document recipe candidates (dense and DendriticBERT)",
              csv_header=cols, csv_rows=[[h.get(c) for c in cols] for h in ordered])


def long_latency_vs_retention(out: Output) -> None:
    """Latency ÷ SDPA against retention, one point per (n, batch); the dashed line is parity with dense SDPA."""
    what = "long-document latency vs retention (long_latency_vs_retention)"
    data, path = _rows(out, what)
    if data is None:
        return
    timed = [r for r in data["rows"] if is_num(r.get("ratio_vs_sdpa")) and is_num(r.get("retention"))]
    if not timed:
        out.skip(what, "no long-document row has both a retention and a latency yet")
        return
    batches = sorted({r["batch"] for r in timed})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for r in sorted((r for r in timed if r["batch"] == batch), key=lambda r: r["n"]):
            marker = "o" if r["task"] == "sotu_party" else "s"
            ax.scatter(100 * r["retention"], r["ratio_vs_sdpa"], marker=marker, s=40, zorder=3)
            seeds = len(r.get("seeds") or [])
            ax.annotate(f"n={r['n']}, s={r['achieved_sparsity']:.2f}, {seeds} seed{'s' if seeds != 1 else ''}",
                        (100 * r["retention"], r["ratio_vs_sdpa"]),
                        textcoords="offset points", fontsize=7,  # labels of points at the right edge go left
                        **({"xytext": (-5, 4), "ha": "right"} if r["retention"] >= 0.99 else {"xytext": (5, 4)}))
            if is_num(r.get("amdahl_bound")):
                ax.plot([100 * r["retention"]] * 2, [r["amdahl_bound"], r["ratio_vs_sdpa"]], color="0.6", lw=0.8,
                        ls=":")
        ax.axhline(1.0, color="red", lw=0.8, ls="--")
        ax.axvline(99.0, color="0.5", lw=0.8, ls="--")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.set_xlabel("retention of the dense score, %")
        ax.set_ylabel("DendriticBERT latency ÷ dense SDPA")
    fig.suptitle("Same trained models, same dev windows: latency vs retention (red: parity with SDPA; grey: 99 % "
                 "retention; dotted: down to the Amdahl bound)", fontsize=8)
    fig.tight_layout()
    out.figure(fig, "long_latency_vs_retention", [path], "latency vs retention per n on long windows")


FIGURES = [table_long, table_long_mlm, table_long_holdout, long_latency_vs_retention]

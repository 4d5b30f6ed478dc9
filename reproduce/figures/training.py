"""Training: the phase-2 budget heatmap (sensitivity → allocated budget → achieved sparsity) and the training
curves.  Inputs: ``train/<preset>/phase2/budgets.json``, ``train/<preset>/phase{1,2}/log.jsonl``."""

from __future__ import annotations

import re
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .common import Output, load_json, load_jsonl

LAYER_KEY = re.compile(r"^sparsity/layer_(\d+)$")
HEAD_KEY = re.compile(r"^sparsity/layer_(\d+)[/_]head_(\d+)$")
LAST_LINES = 10  # achieved sparsity = mean over the last this-many logged steps


def presets(out: Output) -> list[str]:
    root = out.results / "train"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _stem(name: str, preset: str, all_presets: list[str]) -> str:
    return name if len(all_presets) == 1 else f"{name}_{preset}"


def _achieved(lines: list[dict], L: int, H: int) -> tuple[np.ndarray | None, str]:
    """(L, H) achieved sparsity from the last logged steps: per head when logged, else each layer's value."""
    recent = [r for r in lines if any(LAYER_KEY.match(k) or HEAD_KEY.match(k) for k in r)][-LAST_LINES:]
    if not recent:
        return None, ""
    grid = np.full((L, H), np.nan)
    per_head = any(HEAD_KEY.match(k) for k in recent[-1])
    for i in range(L):
        for j in range(H):
            keys = [f"sparsity/layer_{i}/head_{j}", f"sparsity/layer_{i}_head_{j}"] if per_head else \
                [f"sparsity/layer_{i}"]
            vals = [r[k] for r in recent for k in keys if k in r]
            if vals:
                grid[i, j] = float(np.mean(vals))
    steps = f"steps {recent[0]['step']}–{recent[-1]['step']}" if "step" in recent[0] else f"last {len(recent)} logs"
    return grid, ("per head" if per_head else "per layer (heads not logged separately)") + f", mean of {steps}"


def budget_heatmap(out: Output) -> None:
    names = presets(out)
    done = False
    for preset in names:
        p2 = out.results / "train" / preset / "phase2"
        bpath, lpath = p2 / "budgets.json", p2 / "log.jsonl"
        if not bpath.exists():
            continue
        done = True
        budgets = load_json(bpath)
        hb = np.asarray(budgets["head_budgets"], dtype=float)  # (L, H)
        L, H = hb.shape
        panels = []
        if budgets.get("sensitivity") is not None:
            panels.append(("head sensitivity (phase-1 model)", np.asarray(budgets["sensitivity"], dtype=float),
                           ".2g", "rocket_r"))
        title = (f"allocated sparsity budget ({budgets.get('method', '?')}; target "
                 f"{budgets.get('target_sparsity', float('nan')):.2f}, mean {hb.mean():.3f})")
        panels.append((title, hb, ".2f", "viridis"))
        sources = [bpath]
        if lpath.exists():
            grid, how = _achieved(load_jsonl(lpath), L, H)
            if grid is not None:
                panels.append((f"achieved block sparsity in training ({how})", grid, ".2f", "viridis"))
                sources.append(lpath)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 0.45 * L + 1.8), squeeze=False)
        for ax, (title, grid, fmt, cmap) in zip(axes[0], panels):
            kw = {"vmin": 0.0, "vmax": 1.0} if cmap == "viridis" else {}
            sns.heatmap(grid, ax=ax, annot=H <= 16, fmt=fmt, annot_kws={"fontsize": 5}, cmap=cmap, cbar=True,
                        linewidths=0.3, **kw)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_title(textwrap.fill(title, 48), fontsize=7)
        fig.suptitle(f"Phase-2 head budgets, preset {preset} (L={L}, H={H})")
        fig.tight_layout()
        out.figure(fig, _stem("budget_heatmap", preset, names), sources,
                   f"preset {preset}: layer × head sensitivity, allocated sparsity budget, achieved sparsity",
                   formats=("png",))
    if not done:
        out.skip("budget heatmap (budget_heatmap)", "missing train/<preset>/phase2/budgets.json")


def phase2_training(out: Output) -> None:
    names = presets(out)
    done = False
    for preset in names:
        lpath = out.results / "train" / preset / "phase2" / "log.jsonl"
        if not lpath.exists():
            continue
        lines = [r for r in load_jsonl(lpath) if "step" in r and "loss" in r]
        if not lines:
            continue
        done = True
        block = ""
        cfg_path = lpath.parent / "resolved_config.json"
        fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.4))

        def series(key: str, lines: list[dict] = lines) -> tuple[list, list]:
            sel = [r for r in lines if key in r]
            return [r["step"] for r in sel], [r[key] for r in sel]

        ax = axes[0]
        for key, label in (("loss", "total loss"), ("task_loss", "MLM loss"), ("sparsity_loss", "sparsity loss")):
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, label=label, linewidth=1)
        ax.set_title("loss")
        ax.set_xlabel("step")
        ax.legend()
        ax = axes[1]
        layer_keys = sorted({k for r in lines for k in r if LAYER_KEY.match(k)}, key=lambda k: int(LAYER_KEY.match(k)[1]))
        for k in layer_keys:
            xs, ys = series(k)
            ax.plot(xs, ys, linewidth=0.6, alpha=0.5, label=f"layer {LAYER_KEY.match(k)[1]}")
        for key, label, kw in (("sparsity/mean", "achieved (mean)", {"color": "black", "linewidth": 1.5}),
                               ("sparsity/target", "target", {"color": "red", "linestyle": "--", "linewidth": 1.2})):
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, label=label, **kw)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("block sparsity: achieved vs target")
        ax.set_xlabel("step")
        ax.legend(fontsize=5, ncol=2)
        for ax, key, title in ((axes[2], "temperature", "Gumbel-sigmoid temperature"),
                               (axes[3], "sparsity_weight", "sparsity weight λ")):
            xs, ys = series(key)
            ax.plot(xs, ys, color="black", linewidth=1)
            ax.set_title(title)
            ax.set_xlabel("step")
        sources = [lpath]
        if cfg_path.exists():
            cfg = load_json(cfg_path)
            block = f", block size {cfg.get('model_overrides', {}).get('block_size', 'preset default')}, " \
                    f"seq len {cfg.get('seq_len', '?')}"
            sources.append(cfg_path)
        fig.suptitle(f"Phase 2 (sparsity-aware MLM), preset {preset}{block}")
        fig.tight_layout()
        out.figure(fig, _stem("phase2_training", preset, names), sources,
                   f"preset {preset}: phase-2 loss, achieved vs target sparsity, temperature and λ over steps",
                   formats=("png",))
    if not done:
        out.skip("phase-2 training curves (phase2_training)", "missing train/<preset>/phase2/log.jsonl")


def phase1_training(out: Output) -> None:
    names = presets(out)
    done = False
    for preset in names:
        lpath = out.results / "train" / preset / "phase1" / "log.jsonl"
        if not lpath.exists():
            continue
        lines = [r for r in load_jsonl(lpath) if "step" in r and "loss" in r]
        if not lines:
            continue
        done = True
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        ax.plot([r["step"] for r in lines], [r["loss"] for r in lines], color="black", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("MLM loss")
        ax.set_title(f"Phase 1 (dense MLM warm-up), preset {preset}")
        fig.tight_layout()
        out.figure(fig, _stem("phase1_training", preset, names), [lpath], f"preset {preset}: phase-1 MLM loss",
                   formats=("png",))
    if not done:
        out.skip("phase-1 training curve (phase1_training)", "missing train/<preset>/phase1/log.jsonl")


FIGURES = [budget_heatmap, phase2_training, phase1_training]

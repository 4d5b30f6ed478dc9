"""python -m reproduce.make_figures: every figure/table from SYNTHETIC result files (built here, in tmp — never in
reproduce/results), twice, into two folders: tables byte-identical, every expected file present, and a missing
input skips its figure with one line instead of crashing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE = ["-m", "reproduce.make_figures"]

TASKS = {"rte": "accuracy", "mrpc": "f1", "wnli": "accuracy"}
SEEDS = [0, 1]
BLOCK = 4
L, H = 3, 4


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _run_record(task: str, variant: str, seed: int, rng: np.random.Generator) -> dict:
    dev = 20
    lengths = rng.integers(8, 70, size=dev).tolist()
    labels = rng.integers(0, 2, size=dev).tolist()
    preds = [y if rng.random() < 0.75 else 1 - y for y in labels]
    score = float(np.mean(np.asarray(preds) == np.asarray(labels)))
    dendritic = variant == "dendritic"
    per_input = [round(float(rng.uniform(0.2, 0.6)), 5) for _ in lengths] if dendritic else [0.0] * dev
    return {
        "task": task, "variant": variant, "policy": "learned", "seed": seed, "metric": TASKS[task], "score": score,
        "metrics": {TASKS[task]: score}, "block_size": BLOCK if variant != "dsn" else None,
        "parameters": {"dense": 22_713_000, "dendritic": 22_780_000, "dsn": 11_900_000}[variant],
        "policy_parameters": 67_000 if variant != "dsn" else 0, "target_sparsity": 0.5 if dendritic else 0.0,
        "sparsity_mean": float(np.mean(per_input)), "sparsity_std": float(np.std(per_input)),
        "pair_sparsity_mean": float(np.mean(per_input)) * 0.9, "per_input_sparsity": per_input,
        "input_lengths": lengths, "predictions": preds, "labels": labels, "train_examples": 100,
        "dev_examples": dev,
        "resolved_config": {"preset": "small", "model": "minilm", "task": task, "variant": variant, "seed": seed,
                            "epochs": 2.0, "train_samples": 100 if task != "wnli" else None, "max_length": 128},
        "provenance": {"schema_version": 1, "git_commit": "synthetic"},
    }


def _summary(runs: dict) -> dict:
    """The same shape as reproduce.summaries.summarise_glue (computed here independently, on the synthetic runs)."""
    out = {}
    for task, by in runs.items():
        def ms(v, by=by):
            xs = [r["score"] for r in by[v].values()]
            return float(np.mean(xs)), float(np.std(xs, ddof=1))
        (dm, ds), (em, es), (sm, ss) = ms("dense"), ms("dendritic"), ms("dsn")
        per = [x for r in by["dendritic"].values() for x in r["per_input_sparsity"]]
        out[task] = {"metric": TASKS[task], "dense_mean": dm, "dense_std": ds, "dendritic_mean": em,
                     "dendritic_std": es, "dsn_mean": sm, "dsn_std": ss, "retention": em / dm,
                     "sparsity_mean": float(np.mean(per)), "sparsity_std": float(np.std(per)),
                     "pair_sparsity_mean": float(np.mean(per)) * 0.9, "agreement_with_dense": 0.8, "seeds": SEEDS,
                     "block_size": BLOCK, "train_examples": 100, "dev_examples": 20,
                     "parameters": {v: next(iter(by[v].values()))["parameters"] for v in by},
                     "policy_parameters": 67_000, "trivial_score": 0.5, "informative": task != "wnli",
                     "informative_reason": "GLUE practice" if task == "wnli" else "beats the trivial predictor"}
    head = [t for t in runs if t != "wnli"]
    out["headline"] = {"tasks": head, "dense": float(np.mean([out[t]["dense_mean"] for t in head])),
                       "dendritic": float(np.mean([out[t]["dendritic_mean"] for t in head])),
                       "retention": float(np.mean([out[t]["dendritic_mean"] for t in head]))
                       / float(np.mean([out[t]["dense_mean"] for t in head])),
                       "sparsity_mean": 0.4, "agreement_mean": 0.8, "min_task_retention": 0.9}
    for key, keep in (("average", lambda t: True), ("average_without_wnli", lambda t: t != "wnli")):
        chosen = [t for t in runs if keep(t)]
        d = float(np.mean([out[t]["dense_mean"] for t in chosen]))
        e = float(np.mean([out[t]["dendritic_mean"] for t in chosen]))
        out[key] = {"dense": d, "dendritic": e, "retention": e / d, "tasks": chosen,
                    "sparsity_mean": float(np.mean([out[t]["sparsity_mean"] for t in chosen])),
                    "mean_task_retention": float(np.mean([out[t]["retention"] for t in chosen]))}
    out["provenance"] = {"schema_version": 1}
    return out


def build_fixtures(root: Path) -> None:
    from reproduce.summaries import summarise_recipes

    rng = np.random.default_rng(0)
    glue = root / "glue"
    runs: dict = {}
    for task in TASKS:
        for variant in ("dense", "dendritic", "dsn"):
            for seed in SEEDS:
                rec = _run_record(task, variant, seed, rng)
                runs.setdefault(task, {}).setdefault(variant, {})[seed] = rec
                _write(glue / task / f"{variant}-seed{seed}.json", rec)
    summary = _summary(runs)
    _write(glue / "summary.json", summary)
    # the write-up's recipe, archived: the same tasks 10 points lower (table_glue_recipes sets them side by side)
    v1 = {t: ({**v, "dense_mean": v["dense_mean"] - 0.1, "dendritic_mean": v["dendritic_mean"] - 0.1}
              if isinstance(v, dict) and "dense_mean" in v else v) for t, v in summary.items()}
    _write(root / "archive" / "v1-writeup-recipe" / "glue" / "summary.json", v1)
    trade = [{"task": t, "policy": "learned", "target_sparsity": s, "score": 0.7 - 0.2 * s * s, "metric": TASKS[t],
              "sparsity_mean": s * 0.9, "pair_sparsity_mean": s * 0.85, "seed": 0}
             for t in ("rte", "mrpc") for s in (0.3, 0.5, 0.7, 0.9)]
    _write(glue / "tradeoff.json", {"rows": trade, "provenance": {}})
    # the dense recipe search on held-out training data: two learning rates, and a longer candidate on one task
    for task, lr, epochs, score in (("rte", 2e-5, 5.0, 0.56), ("rte", 5e-5, 5.0, 0.54), ("mrpc", 2e-5, 5.0, 0.80),
                                    ("mrpc", 5e-5, 5.0, 0.82), ("mrpc", 5e-5, 10.0, 0.83)):
        stem = f"dense-lr{lr:g}" + ("" if epochs == 5.0 else f"-ep{epochs:g}")
        _write(root / "recipes" / task / f"{stem}-seed0.json", {
            "seed": 0, "score": score, "metric": TASKS[task], "metrics": {TASKS[task]: score}, "dev_examples": 40,
            "train_examples": 360, "wall_time_s": 120.0,
            "resolved_config": {"learning_rate": lr, "epochs": epochs, "batch_size": 16, "init_from": "minilm"}})
    _write(root / "recipes" / "summary.json", summarise_recipes(root / "recipes", ["rte", "mrpc"]))

    p2 = root / "train" / "small" / "phase2"
    sens = rng.uniform(0, 1, size=(L, H)).tolist()
    budgets = rng.uniform(0.3, 0.7, size=(L, H)).tolist()
    _write(p2 / "budgets.json", {"method": "sensitivity", "target_sparsity": 0.5, "sensitivity": sens,
                                 "head_budgets": budgets})
    lines = []
    for step in range(5, 105, 5):
        rec = {"step": step, "epoch": step / 100, "loss": 3.0 - step / 100, "task_loss": 2.8 - step / 100,
               "sparsity_loss": 0.1 / step, "sparsity/mean": min(0.5, step / 150), "sparsity/target": 0.5,
               "temperature": 1.0 - 0.009 * step, "sparsity_weight": min(10.0, step / 3)}
        rec.update({f"sparsity/layer_{i}": min(0.6, step / (120 + 20 * i)) for i in range(L)})
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"step": 100, "epoch": 1.0, "train_runtime": 12.0}))  # Trainer's final summary line
    (p2 / "log.jsonl").write_text("\n".join(lines) + "\n")
    (root / "train" / "small" / "phase1").mkdir(parents=True)
    (root / "train" / "small" / "phase1" / "log.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 5.0 - s / 50}) for s in range(5, 105, 5)) + "\n")

    lat = []
    for model, d in (("minilm-l6", 384), ("bert-base", 768)):
        for n in (512, 1024, 2048):
            share = n / (n + 6 * d)
            for level in ("kernel", "layer", "model"):
                base = {"level": level, "model": model, "n": n, "batch": 1, "dtype": "float16", "threads": 16,
                        "attention_share": share, "positions_extended": n > 512}
                sdpa = 0.001 * n * (1 + (level == "model") * 5)
                lat.append({**base, "backend": "sdpa", "block_size": None, "target_sparsity": None,
                            "achieved_sparsity": None, "median_ms": sdpa, "p90_ms": sdpa * 1.1, "ratio_vs_sdpa": 1.0,
                            "ratio_vs_eager": 0.7, "amdahl_bound": None, "amdahl_fraction": None})
                lat.append({**base, "backend": "eager", "block_size": None, "target_sparsity": None,
                            "achieved_sparsity": None, "median_ms": sdpa / 0.7, "p90_ms": sdpa / 0.6,
                            "ratio_vs_sdpa": 1 / 0.7, "ratio_vs_eager": 1.0, "amdahl_bound": None,
                            "amdahl_fraction": None})
                for s in (0.5, 0.75):
                    t = sdpa * (1 - 0.8 * s * (share if level == "model" else 1.0))
                    row = {**base, "backend": "dendritic-cupy", "block_size": 64, "target_sparsity": s,
                           "achieved_sparsity": s - 0.01, "median_ms": t, "p90_ms": t * 1.1,
                           "ratio_vs_sdpa": t / sdpa, "ratio_vs_eager": t * 0.7 / sdpa,
                           "amdahl_bound": 1 - s * share, "amdahl_fraction": s * share}
                    if level == "layer":
                        row.update(policy_ms=0.1 * t, mask_ms=0.05 * t, kernel_ms=0.85 * t)
                    lat.append(row)
    lat += [{"level": "glue", "task": t, "model": "minilm-l6 (trained, seed 0)", "batch": b, "block_size": 1,
             "achieved_sparsity": 0.5, "median_ms": 2.0 * b, "dense_sdpa_ms": 1.5 * b, "ratio_vs_sdpa": 4 / 3,
             "path": ["cpu"], "policy_impl": ["cpp"], "mean_length": 12.0, "rounds": 3, "threads": 2,
             "dtype": "float32"} for t in ("cola", "sst2") for b in (1, 32)]
    _write(root / "latency" / "summary.json", {"rows": lat, "provenance": {"gpu": "synthetic", "torch": "x"},
                                               "glue_provenance": {"cpu": "synthetic", "threads": 2,
                                                                   "loadavg_start": [0.1, 0.1, 0.1]}})

    cost = [{"model": "minilm-l6", "n": n, "block_size": b, "batch": 1, "layers": 6, "achieved_sparsity": 0.5,
             "rounds": 3, "policy_impl": "fused", "policy_ms": 0.02 * n, "policy_python_ms": 0.05 * n,
             "dense_forward_ms": n / 5, "dense_attention_ms": n / 20, "policy_share_of_forward": 0.1,
             "policy_share_of_attention": 0.4, "python_over_fused": 2.5, "dendritic_forward_ms": n / 4,
             "forward_ratio_vs_sdpa": 1.25, "attention_path": ["cpu"]} for n, b in ((128, 4), (512, 64))]
    _write(root / "latency" / "policy_cost.json", {"rows": cost, "provenance": {"cpu": "synthetic", "threads": 2,
                                                                                  "loadavg_start": [0.1, 0.1, 0.1]}})

    int8 = [{"n": n, "block_size": b, "batch": 1, "achieved_sparsity": 0.5, "sdpa_fp32_ms": n / 5,
             "sdpa_int8_ms": n / 8, "dendritic_fp32_ms": n / 6, "dendritic_int8_ms": n / 10, "quantisation": 0.625,
             "sparsity_fp32": 0.83, "sparsity_on_int8": 0.8, "compound": 0.5, "attention_path": ["masked_sdpa"]}
            for n, b in ((128, 4), (512, 64))]
    acc = [{"name": "long/sotu_party/n2048-seed0", "metric": "accuracy", "dev_examples": 150,
            "scores": {"dense_fp32": 0.7, "dense_int8": 0.69, "dendritic_fp32": 0.68, "dendritic_int8": 0.67},
            "retention_int8": 0.67 / 0.7, "retention_fp32": 0.68 / 0.7,
            "agreement_with_dense_fp32": {"dense_int8": 0.97, "dendritic_fp32": 0.9, "dendritic_int8": 0.88},
            "achieved_sparsity": {"dendritic_int8": 0.81}, "fp32_matches_committed": 1.0}]
    _write(root / "int8" / "summary.json", {
        "latency": {"rows": int8, "provenance": {"cpu": "synthetic", "threads": 2, "loadavg_start": [0.1, 0.1, 0.1]}},
        "accuracy": {"rows": acc, "provenance": {"cpu": "synthetic"}}})

    kern = [{"B": 1, "H": 12, "n": n, "d": d, "block_size": b, "target_sparsity": s, "achieved_block_sparsity": s,
             "t_sdpa_ms": n / 100, "t_cpu_ms": n / 100 * (1 - s) * 1.2, "t_flex_ms": n / 80,
             "efficiency": 1 / 1.2, "flex_over_cpu": 2.0, "mask_build_ms": 0.01, "mask_build_pct_of_sdpa": 0.1,
             "flex_compile_s": 1.0, "rounds": 3, "raw_ms": {"sdpa": [1.0], "cpu": [1.0], "flex": [1.0]},
             "loadavg_1min": 1.0}
            for n in (512, 1024) for d in (32, 64) for b in (32, 64) for s in (0.5, 0.75)]
    _write(root / "kernels" / "summary.json", {"what": "synthetic", "efficiency_definition": "(1 - s) * t_sdpa / t_cpu",
                                               "provenance": {"cpu": "synthetic", "threads": 2,
                                                              "loadavg_start": [1.0, 1.0, 1.0]},
                                               "rows": kern, "skipped_for_time_budget": []})

    gpu = [{"B": 8, "H": 12, "d": 64, "block": 64, "dtype": dt, "n": n, "target_sparsity": s, "achieved_sparsity": s,
            "ms": {"cupy": n / 100 * (1 - s), "cupy_mma": n / 300 * (1 - s), "cupy_simt_fp32": n / 60 * (1 - s),
                   "flex": n / 400 * (1 - s) + 0.5, "sdpa": n / 1000},
            "efficiency_cupy": 0.1, "efficiency_cupy_mma": 0.3, "efficiency_flex": 0.4, "notes": {}}
           for dt in ("fp16", "bf16") for n in (1024, 4096) for s in (0.0, 0.5)]
    _write(root / "gpu" / "summary.json", {"provenance": {"gpu": "synthetic", "sm": "9.0", "torch": "x",
                                                          "kernel_sha256": {"tc.cu": "0" * 64}},
                                           "timing": gpu, "model": [{"n": 2048, "dendritic_ms": 3.0,
                                                                     "ratio_vs_sdpa": 1.5}]})

    long_rows = [{"task": "sotu_party", "n": n, "block_size": 64, "target_sparsity": 0.75, "achieved_sparsity": 0.74,
                  "metric": "accuracy", "majority_score": 0.55, "dense_mean": 0.8, "dense_std": 0.01,
                  "dendritic_mean": 0.79, "dendritic_std": 0.02, "retention": 0.79 / 0.8, "agreement": 0.96,
                  "seeds": SEEDS, "input_dependence": 0.1, "batch": batch, "dense_sdpa_ms": n / 2,
                  "dendritic_ms": n / 3, "ratio_vs_sdpa": 2 / 3, "ratio_vs_eager": 0.2, "amdahl_bound": 0.6,
                  "path": "cpu"} for n in (1024, 2048) for batch in (1, 8)]
    _write(root / "long" / "summary.json", {
        "rows": long_rows, "mlm": [{"n": 2048, "target_sparsity": s, "achieved_sparsity": s - 0.01, "dense_loss": 2.0,
                                    "dendritic_loss": 2.0 + s / 10} for s in (0.5, 0.75, 0.9)],
        "holdout": [{"name": name, "n": 2048, "seed": 0, "metric": "accuracy", "score": score, "majority_score": 0.5,
                     "train_windows": 500, "held_out_windows": 120, "epochs": 2.0, "learning_rate": 5e-5,
                     "pooling": pooling} for name, pooling, score in (("all-2ep", "cls", 0.6), ("mean-2ep", "mean", 0.7))],
        "latency_provenance": {"cpu": "synthetic", "threads": 2, "loadavg_start": [0.1, 0.1, 0.1]},
        "mlm_provenance": {}})

    mem = [{"n": n, "batch": 1, "backend": b, "model": "bert-base", "target_sparsity": s,
            "achieved_sparsity": s, "peak_mb": n * (2.0 if b == "eager" else 1.0) * (1 - (s or 0) / 2),
            "reduction_vs_eager": None if b == "eager" else 0.5, "ratio_vs_sdpa": 1.0, "method": "cuda.max_memory_allocated"}
           for n in (512, 1024, 2048) for b, s in (("eager", None), ("sdpa", None), ("dendritic-cupy", 0.5))]
    _write(root / "memory" / "summary.json", {"rows": mem, "provenance": {"gpu": "synthetic"}})

    abl = {v: {t: {"score": 0.6 + 0.01 * i, "score_std": 0.02, "sparsity": 0.5, "seeds": SEEDS}
               for t in ("rte", "mrpc")}
           for i, v in enumerate(["full", "random", "static", "training_free", "no_gating", "uniform_budget",
                                  "no_gumbel", "no_anneal", "no_phase2", "distill"])}
    abl["dense"] = {t: {"score": 0.66, "score_std": 0.01, "sparsity": 0.0, "seeds": SEEDS} for t in ("rte", "mrpc")}
    for i, v in enumerate(abl):  # MRPC's primary metric is F1; its accuracy gets a column of its own
        abl[v]["mrpc"].update(metric="f1", metrics={"f1": abl[v]["mrpc"]["score"], "accuracy": 0.5 + 0.01 * i})
    # One variant also run on every task of the main table (the plan's `wide` table): WNLI has no other variant.
    for v, score in (("dense", 0.5), ("full", 0.45), ("no_gumbel", 0.55)):
        abl[v]["wnli"] = {"score": score, "score_std": 0.02, "sparsity": 0.0 if v == "dense" else 0.4, "seeds": SEEDS}
    abl["grid_tasks"] = ["rte", "mrpc"]  # recorded by the runner: the wide variant's WNLI is not a grid column
    _write(root / "ablations" / "summary.json", abl)
    sweep = [{"task": "rte", "policy": "none", "target_sparsity": None, "static_window": None, "metric": "accuracy",
              "score": 0.66, "sparsity_mean": 0.0, "pair_sparsity_mean": 0.0}]
    sweep += [{"task": "rte", "policy": pol, "target_sparsity": t, "static_window": None, "metric": "accuracy",
               "score": 0.66 - 0.1 * t * (i + 1), "sparsity_mean": 0.9 * t, "pair_sparsity_mean": 0.85 * t}
              for i, pol in enumerate(("learned", "training_free", "random")) for t in (0.3, 0.5, 0.7, 0.9)]
    sweep += [{"task": "rte", "policy": "static", "target_sparsity": None, "static_window": w, "metric": "accuracy",
               "score": 0.5 + 0.03 * w, "sparsity_mean": 0.7 - 0.1 * w, "pair_sparsity_mean": 0.6 - 0.1 * w}
              for w in range(5)]
    from reproduce.sweep_inference import matched_summary

    sweep = [{**r, "seed": seed, "score": r["score"] + 0.01 * seed * (r["policy"] == "learned")}
             for seed in (0, 1, 2) for r in sweep]  # the learned policy a point higher per seed
    _write(root / "ablations" / "inference_sweep.json", {"rows": sweep, "main_target": 0.5,
                                                         "matched": matched_summary(sweep, 0.5), "provenance": {}})
    long_sweep = [{**r, "task": "sotu_party", "n": 2048} for r in sweep if r.get("seed") == 0]  # one seed, n = 2048
    # Per-run files: the swept seed's input dependence (4 %) differs from the summary's mean over seeds (10 %).
    for seed, dep in ((0, 0.04), (1, 0.16)):
        _write(root / "long" / "sotu_party" / f"dendritic-n2048-seed{seed}.json",
               {"seed": seed, "input_dependence": {"input_dependence": dep}})
    _write(root / "long" / "inference_sweep.json", {"rows": long_sweep, "main_target": 0.5,
                                                    "matched": matched_summary(long_sweep, 0.5), "provenance": {}})
    # The dense model's sweep (--dense): no learned rows; the learned point is the DendriticBERT run's own evaluation.
    dense_sweep = [{**r, "variant": "dense", "learned_reference": {"score": 0.61, "sparsity_mean": 0.45, "run": "x"}}
                   for r in long_sweep if r["policy"] != "learned"]
    _write(root / "long" / "inference_sweep_dense.json", {"rows": dense_sweep, "main_target": 0.5,
                                                          "matched": matched_summary(dense_sweep, 0.5), "provenance": {}})
    _write(root / "diagnostics" / "summary.json", {
        "dense_from_phase2": {"question": "Is it the phase-2 weights?", "task": "rte", "variant": "dense",
                              "init": "phase2", "settings": {},
                              "runs": [{"seed": 0, "score": 0.61, "metrics": {"accuracy": 0.61}}]},
        "dendritic_3x_budget": {"question": "Is it the budget?", "task": "rte", "variant": "dendritic",
                                "init": "phase2", "settings": {"epochs": 3.0, "train_samples": 0},
                                "reference": "archive/rte-short",
                                "runs": [{"seed": 0, "score": 0.63, "metrics": {}}, {"seed": 1, "score": 0.65}]},
        "provenance": {}})
    for variant, scores in (("dense", (0.70, 0.74)), ("dendritic", (0.20,))):
        for seed, score in enumerate(scores):
            _write(root / "archive" / "rte-short" / f"{variant}-seed{seed}.json", {"score": score, "seed": seed})

    tokens = ["[CLS]", "the", "movie", "was", "not", "bad", "at", "all", ",", "really", "[SEP]"]
    nb = -(-len(tokens) // BLOCK)
    layers = {str(layer): {str(h): rng.integers(0, 2, size=(nb, nb)).tolist() for h in range(H)} for layer in range(L)}
    _write(root / "masks" / "examples.json", {"examples": [
        {"task": "sst2", "sentence": "the movie was not bad at all, really", "tokens": tokens, "block_size": BLOCK,
         "layers": layers}]})


EXPECTED = [
    "table1_glue.md", "table1_glue.csv", "table1_glue.tex", "pai_glue.png", "pai_glue.pdf", "tradeoff.png",
    "tradeoff.pdf", "sparsity_per_input.png", "budget_heatmap.png", "phase2_training.png", "phase1_training.png",
    "latency_vs_n.png", "speedup_vs_sparsity.png", "policy_overhead.png", "table_latency.md", "table_latency.csv",
    "table_latency_glue.md", "table_latency_glue.csv", "table_policy_cost.md", "table_policy_cost.csv",
    "kernel_efficiency.png", "table_kernels.md", "memory_vs_n.png", "table_memory.md", "ablations.png",
    "table_ablations.md", "table_ablations.csv", "table_ablations_wide.md", "table_ablations_wide.csv",
    "table_diagnostics.md", "table_diagnostics.csv", "table_policy_matched.md", "table_policy_matched.csv",
    "table_long_policy_matched.md", "table_long_policy_matched.csv", "table_long_dense_masks.md",
    "table_long_dense_masks.csv", "example_masks.png", "table_gpu.md", "table_gpu.csv",
    "table_long.md", "table_long.csv", "table_long_mlm.md", "table_long_holdout.md", "table_long_holdout.csv",
    "long_latency_vs_retention.png", "table_glue_recipes.md",
    "table_glue_recipes.csv", "table_recipe_search.md", "table_recipe_search.csv", "table_int8.md", "table_int8.csv", "table_int8_accuracy.md", "MANIFEST.md",
]


def _make(results: Path, out: Path) -> str:
    proc = subprocess.run([sys.executable, *MAKE, "--results", str(results), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    build_fixtures(root / "results")
    procs = [subprocess.Popen([sys.executable, *MAKE, "--results", str(root / "results"), "--out", str(root / name)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
             for name in ("a", "b")]  # the two builds side by side: same inputs, separate processes
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    return root, logs


def test_every_expected_file_is_written(two_runs):
    root, logs = two_runs
    missing = [f for f in EXPECTED if not (root / "a" / f).exists()]
    assert not missing, f"missing {missing}\n{logs[0]}"
    assert not [line for line in logs[0].splitlines() if line.startswith("skipped")], logs[0]
    manifest = (root / "a" / "MANIFEST.md").read_text()
    for f in EXPECTED[:-1]:
        assert f"`{f}`" in manifest


def test_tables_are_byte_identical(two_runs):
    root, _ = two_runs
    tables = sorted(p.name for p in (root / "a").iterdir() if p.suffix in (".md", ".csv", ".tex"))
    assert len(tables) >= 10
    for name in tables:
        a, b = (root / "a" / name).read_bytes(), (root / "b" / name).read_bytes()
        if name == "MANIFEST.md":  # names its own output folder in the command line
            a, b = a.replace(str(root / "a").encode(), b"OUT"), b.replace(str(root / "b").encode(), b"OUT")
        assert a == b, name


def test_images_are_byte_identical(two_runs):
    root, _ = two_runs
    images = sorted(p.name for p in (root / "a").iterdir() if p.suffix in (".png", ".pdf"))
    differ = [n for n in images if (root / "a" / n).read_bytes() != (root / "b" / n).read_bytes()]
    assert not differ, differ


def test_table1_content(two_runs):
    root, _ = two_runs
    md = (root / "a" / "table1_glue.md").read_text()
    assert "block size 4" in md and "max length 128" in md and "preset small" in md
    assert "RTE" in md and "Average w/o WNLI (2)" in md
    summary = json.loads((root / "results" / "glue" / "summary.json").read_text())
    assert f"{100 * summary['rte']['dense_mean']:.1f} ± {100 * summary['rte']['dense_std']:.1f}" in md
    assert "| WNLI † |" in md and "† not informative (kept out of the headline): WNLI: GLUE practice" in md
    assert f"| Headline (2 informative) | primary | – | {100 * summary['headline']['dense']:.1f} |" in md
    csv_lines = (root / "a" / "table1_glue.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,metric,trivial_score,informative,dense_mean")
    assert len(csv_lines) == 1 + len(TASKS) + 3  # tasks, headline, two averages


def test_glue_recipes_table(two_runs):
    root, _ = two_runs
    md = (root / "a" / "table_glue_recipes.md").read_text()
    summary = json.loads((root / "results" / "glue" / "summary.json").read_text())
    rte = [line for line in md.splitlines() if line.startswith("| RTE |")]
    assert [line.split("|")[2].strip() for line in rte] == ["main (v2)", "write-up (v1)"]
    d = summary["rte"]
    assert f"| {100 * d['dense_mean']:.1f} ± {100 * d['dense_std']:.1f} |" in rte[0]
    assert f"| {100 * (d['dense_mean'] - 0.1):.1f} ± {100 * d['dense_std']:.1f} |" in rte[1]
    assert "| WNLI † |" in md and sum(line.startswith("| Headline") for line in md.splitlines()) == 2


def test_recipe_search_table(two_runs):
    """Every held-out recipe is a row, in order of learning rate then epochs, and exactly the summary's best one per
    task is marked chosen."""
    root, _ = two_runs
    md = (root / "a" / "table_recipe_search.md").read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines() if line.startswith(("| RTE", "| MRPC"))]
    assert [(r[0], r[1]) for r in rows] == [("MRPC", "dense-lr2e-05"), ("MRPC", "dense-lr5e-05"),
                                            ("MRPC", "dense-lr5e-05-ep10"), ("RTE", "dense-lr2e-05"),
                                            ("RTE", "dense-lr5e-05")]
    assert [(r[1], r[6]) for r in rows if r[-1] == "**yes**"] == [("dense-lr5e-05-ep10", "83.0"), ("dense-lr2e-05", "56.0")]
    assert "held-out" in md and "never dev" in md


def test_gpu_table_shows_the_mma_kernel_when_timed(two_runs):
    root, _ = two_runs
    lines = (root / "a" / "table_gpu.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| dtype"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert "mma ms" in cells and "eff mma" in cells
    row = next(line for line in lines if line.startswith("| fp16") and "| 4096 | 0.500 |" in line)
    values = [c.strip() for c in row.strip("|").split("|")]
    assert float(values[cells.index("mma ms")]) == pytest.approx(4096 / 300 * 0.5, rel=1e-3)


def test_policy_cost_table_states_the_goal_per_regime(two_runs):
    root, _ = two_runs
    table = (root / "a" / "table_policy_cost.md").read_text()
    assert "n ≤ 128: worst 10.0 % of the dense forward" in table
    assert "n ≥ 512: worst 40.0 % of dense attention (n = 512, block 64" in table
    assert "| 128 | 4 | 1 | fused |" in table
    assert "whole forward: worst x1.25 of dense SDPA" in table and "| 1.250 | cpu |" in table


def test_glue_latency_rows_have_their_own_table(two_runs):
    root, _ = two_runs
    glue = (root / "a" / "table_latency_glue.md").read_text()
    assert glue.count("| CoLA |") == 2 and glue.count("| SST-2 |") == 2 and "1.333" in glue
    assert "load average at start 0.1" in glue
    assert "| glue |" not in (root / "a" / "table_latency.md").read_text()  # not mixed into the n-sweep table


def test_policy_matched_table(two_runs):
    root, _ = two_runs
    text = (root / "a" / "table_policy_matched.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| RTE |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3" and cells[3] == "45.0 ± 0.0"  # 3 seeds; the learned policy's sparsity at target 0.5
    assert cells[5] == "62.0 ± 1.0"  # learned: 0.66 - 0.05 (+ a point per seed)
    assert cells[6] == "56.0 ± 0.0" and "learned better" in cells[9]  # training-free: 0.66 - 2 × 0.05
    # The long-document table: the same summary per (task, n); one seed, so no verdict; input dependence from
    # the swept seed's own run file, not long/summary.json's mean over every seed of that n.
    text = (root / "a" / "table_long_policy_matched.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sotu_party-n2048 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1" and cells[5] == "61.0" and "fewer than 3 seeds" in cells[9] and cells[12] == "4.0"
    assert "long-document DendriticBERT" in text
    # The dense model under masks, against the same seed's DendriticBERT at the sparsity that one reached.
    text = (root / "a" / "table_long_dense_masks.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sotu_party-n2048 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "45.0" and cells[4] == "66.0" and cells[5] == "61.0" and cells[6] == "56.0"
    assert "never fine-tuned under masks" in text and "the dense model itself" in text


def test_ablation_table_content(two_runs):
    root, _ = two_runs
    md = (root / "a" / "table_ablations.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Variant"))
    assert "| MRPC acc |" in header and "RTE acc" not in header  # accuracy only where the metric is not accuracy
    assert "| dense | 66.0 ± 1.0 | 66.0 ± 1.0 | 60.0 |" in md


def test_wide_ablation_table(two_runs):
    root, _ = two_runs
    grid = (root / "a" / "table_ablations.md").read_text()
    assert "WNLI" not in grid  # only one ablated variant ran there: not a grid column
    md = (root / "a" / "table_ablations_wide.md").read_text()
    assert "no Gumbel noise" in md and "random mask" not in md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| Task")}
    assert rows["RTE"] == ["66.0 ± 1.0", "60.0 ± 2.0", "90.9", "50.0", "66.0 ± 2.0", "100.0", "50.0", "2"]
    # averages as in Table 1: unweighted means of the task scores, retention = ratio of the averages
    assert rows["Average (3)"][:6] == ["60.7", "55.0", "90.7", "46.7", "62.3", "102.7"]
    assert rows["Average w/o WNLI (2)"][:3] == ["66.0", "60.0", "90.9"]


def test_diagnostics_table_content(two_runs):
    root, _ = two_runs
    md = (root / "a" / "table_diagnostics.md").read_text()
    summary = json.loads((root / "results" / "glue" / "summary.json").read_text())
    assert "Is it the phase-2 weights?" in md and "epochs=3.0, train_samples=all" in md
    assert "64.0 ± 1.4" in md  # mean ± std of the two seeds 0.63, 0.65
    assert f"{100 * summary['rte']['dense_mean']:.1f} ± {100 * summary['rte']['dense_std']:.1f}" in md
    # A diagnostic read against an archived folder gets that folder's runs as its reference.
    row = next(line for line in md.splitlines() if line.startswith("| dendritic_3x_budget"))
    assert "archive/rte-short" in row and "72.0 ± 2.8" in row and "| 20.0 |" in row


def test_missing_inputs_skip_cleanly(tmp_path):
    results = tmp_path / "results"
    build_fixtures(results)
    for sub in ("latency", "memory", "masks", "ablations", "diagnostics"):
        for f in sorted((results / sub).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (results / sub).rmdir()
    (results / "glue" / "tradeoff.json").unlink()
    log = _make(results, tmp_path / "out")
    for name in ("latency_vs_n", "memory_vs_n", "example_masks", "ablations", "tradeoff", "table_latency",
                 "table_diagnostics"):
        assert sum(f"({name})" in line and line.startswith("skipped") for line in log.splitlines()) == 1, log
        assert not any((tmp_path / "out").glob(f"{name}.*"))
    assert (tmp_path / "out" / "table1_glue.md").exists()
    assert (tmp_path / "out" / "kernel_efficiency.png").exists()
    assert "Not generated" in (tmp_path / "out" / "MANIFEST.md").read_text()


def test_empty_results_folder(tmp_path):
    log = _make(tmp_path / "nothing", tmp_path / "out")
    assert "Traceback" not in log
    assert (tmp_path / "out" / "MANIFEST.md").exists()
    assert not any(p.suffix in (".png", ".pdf", ".csv", ".tex") for p in (tmp_path / "out").iterdir())


def test_table1_is_copied_into_the_readme_markers(two_runs, tmp_path):
    root, _ = two_runs
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- table1:start -->\nold table\n<!-- table1:end -->\nafter\n")
    proc = subprocess.run([sys.executable, *MAKE, "--results", str(root / "results"), "--out", str(tmp_path / "o"),
                           "--only", "table1", "--readme", str(readme)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = readme.read_text()
    table = (tmp_path / "o" / "table1_glue.md").read_text().rstrip()
    assert "old table" not in text and f"<!-- table1:start -->\n{table}\n<!-- table1:end -->\nafter\n" in text
    assert text.startswith("# title\n\nbefore\n")
    first = text
    subprocess.run([sys.executable, *MAKE, "--results", str(root / "results"), "--out", str(tmp_path / "o"),
                    "--only", "table1", "--readme", str(readme)], check=True, capture_output=True, timeout=120, cwd=REPO)
    assert readme.read_text() == first  # idempotent


def test_only_leaves_the_whole_manifest_alone(two_runs, tmp_path):
    """--only rebuilds its figures but not MANIFEST.md: a partial run cannot list the folder's other files."""
    root, _ = two_runs
    (tmp_path / "o").mkdir()
    manifest = tmp_path / "o" / "MANIFEST.md"
    manifest.write_text((root / "a" / "MANIFEST.md").read_text())
    before = manifest.read_text()
    proc = subprocess.run([sys.executable, *MAKE, "--results", str(root / "results"), "--out", str(tmp_path / "o"),
                           "--only", "table_recipe_search"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "o" / "table_recipe_search.md").exists() and manifest.read_text() == before
    assert "`table1_glue.md`" in before and "left as it was" in proc.stdout


def test_committed_tables_match_the_committed_results(tmp_path):
    """The tables in figures/ and Table 1 in the README are what `nox -s figures` makes from the committed result
    files (figures are not compared: their bytes depend on the matplotlib build)."""
    _make(REPO / "reproduce" / "results", tmp_path)
    committed = sorted(p for p in (REPO / "figures").iterdir() if p.suffix in (".md", ".csv", ".tex") and p.name != "MANIFEST.md")
    assert committed, "no committed tables"
    stale = [p.name for p in committed if not (tmp_path / p.name).exists() or (tmp_path / p.name).read_bytes() != p.read_bytes()]
    assert not stale, f"figures/ tables differ from what the committed results give: {stale} (run `nox -s figures`)"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    embedded = readme.split("<!-- table1:start -->\n", 1)[1].split("\n<!-- table1:end -->", 1)[0]
    assert embedded == (tmp_path / "table1_glue.md").read_text(encoding="utf-8").rstrip()

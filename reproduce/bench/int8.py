"""Compound savings (issue #15, goal 8): int8 dynamic quantisation of the linear layers with sparse attention.

Two measurements, each writing its half of ``reproduce/results/int8/summary.json`` (the other half is kept):

``latency`` — MiniLM-L6 shapes, random weights (they do not change the work), budget 0.5, fp32 policy: four
candidates timed INTERLEAVED in the same rounds on the same inputs (:func:`dendritic.bench.interleaved`):

* ``sdpa_fp32`` — the dense model as a plain ``transformers.BertModel`` under SDPA (the baseline of every ratio);
* ``sdpa_int8`` — the same with its linear layers int8 (:func:`dendritic.quantization.quantize_int8`);
* ``dendritic_fp32`` — DendriticBERT as a user runs it (``attention_backend="auto"``);
* ``dendritic_int8`` — the same with its non-policy linear layers int8.

The split of the saving: ``quantisation`` = T(sdpa_int8) / T(sdpa_fp32), ``sparsity_on_int8`` =
T(dendritic_int8) / T(sdpa_int8), ``compound`` = T(dendritic_int8) / T(sdpa_fp32) (per-round ratios, medians).
4-token blocks at n = 128 (the GLUE models' setting), 64-token blocks from n = 512.  Time it on idle cores: the load
average at the start of every configuration is recorded.

``accuracy`` — the trained models kept in a run folder: the long-document models
(``<run-dir>/long/<task>/{dense,dendritic}-n<n>-seed<k>``) and the GLUE models (``<run-dir>/glue/<task>/{dense,
dendritic}-seed<k>``) that exist.  Each is evaluated on its whole dev set in fp32 and int8; the row gives the four
scores, ``retention`` = score(DendriticBERT int8) / score(dense fp32) (the goal's quantity), the agreement of each
variant's predictions with the fp32 dense model's, and whether the fp32 predictions reproduce the committed result
file's (they must: same model, same inputs).

    python -m reproduce.bench.int8 latency --threads 2          # ~4 min on 2 idle cores
    python -m reproduce.bench.int8 accuracy --run-dir runs/small  # forward passes only; minutes per model pair
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dendritic.bench import dense_twin, interleaved, load_average, paired_ratio, shaped_model
from dendritic.provenance import atomic_write_json, provenance
from dendritic.quantization import quantize_int8

from ..paths import RESULTS

OUT = RESULTS / "int8" / "summary.json"
CANDIDATES = ("sdpa_fp32", "sdpa_int8", "dendritic_fp32", "dendritic_int8")


# -- latency ---------------------------------------------------------------------------------------------------------
def measure_latency(n: int, block_size: int, batch: int, rounds: int) -> dict:
    model = shaped_model("small", n, block_size=block_size, attention_backend="auto")
    model.set_head_budgets(torch.full_like(model.head_budgets, 0.5))
    twin = dense_twin(model, "sdpa")
    models = {"sdpa_fp32": twin, "sdpa_int8": quantize_int8(twin),
              "dendritic_fp32": model, "dendritic_int8": quantize_int8(model)}
    g = torch.Generator().manual_seed(n * 7 + block_size)
    ids = torch.randint(1000, 20000, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    with torch.inference_mode():
        outs = {name: m(input_ids=ids, attention_mask=mask) for name, m in models.items()}
        times = interleaved({name: (lambda m=m: m(input_ids=ids, attention_mask=mask)) for name, m in models.items()},
                            rounds)
    err = {name: float((outs[name].last_hidden_state - outs[ref].last_hidden_state).abs().max())
           for name, ref in (("sdpa_int8", "sdpa_fp32"), ("dendritic_int8", "dendritic_fp32"))}
    return {
        "model": "minilm-l6 (random weights)", "n": n, "block_size": block_size, "batch": batch, "rounds": rounds,
        "budget": 0.5, "achieved_sparsity": float(outs["dendritic_int8"].block_sparsity.mean()),
        "attention_path": sorted(set(outs["dendritic_int8"].attention_path)),
        **{f"{name}_ms": statistics.median(times[name]) * 1e3 for name in CANDIDATES},
        "quantisation": paired_ratio(times["sdpa_int8"], times["sdpa_fp32"]),
        "sparsity_fp32": paired_ratio(times["dendritic_fp32"], times["sdpa_fp32"]),
        "sparsity_on_int8": paired_ratio(times["dendritic_int8"], times["sdpa_int8"]),
        "compound": paired_ratio(times["dendritic_int8"], times["sdpa_fp32"]),
        "max_abs_diff_int8_vs_fp32": err,
    }


def run_latency(args) -> dict:
    configs = [(n, 4 if n <= 128 else 64, B) for n in args.lengths for B in args.batches]
    rows, t0 = [], time.time()
    prov = {**provenance(), "loadavg_start": load_average(), "threads": torch.get_num_threads(),
            "command": " ".join(["python -m reproduce.bench.int8", *sys.argv[1:]])}
    for i, (n, b, B) in enumerate(configs):
        load = load_average()
        row = {**measure_latency(n, b, B, args.rounds), "loadavg_start": load}
        rows.append(row)
        prov.update(loadavg_end=load_average(), wall_s=round(time.time() - t0, 1))
        _write(args.out, "latency", {"rows": rows, "provenance": prov})
        print(f"[{i + 1}/{len(configs)}] n={n} block={b} B={B}: int8 SDPA x{row['quantisation']:.2f}, DendriticBERT "
              f"fp32 x{row['sparsity_fp32']:.2f}, int8 DendriticBERT x{row['compound']:.2f} of fp32 SDPA "
              f"(x{row['sparsity_on_int8']:.2f} of int8 SDPA; s={row['achieved_sparsity']:.2f}, "
              f"{'/'.join(row['attention_path'])})", flush=True)
    return {"rows": rows, "provenance": prov}


# -- accuracy --------------------------------------------------------------------------------------------------------
def _pairs(run_dir: Path) -> list[tuple[str, Path, Path, Path]]:
    """(name, dense folder, DendriticBERT folder, committed result of the DendriticBERT run) of every kept pair."""
    out = []
    for sparse in sorted(run_dir.glob("long/*/dendritic-n*-seed*")) + sorted(run_dir.glob("glue/*/dendritic-seed*")):
        dense = sparse.with_name(sparse.name.replace("dendritic-", "dense-", 1))
        if (sparse / "model.safetensors").exists() and (dense / "model.safetensors").exists():
            plan = sparse.parent.parent.name  # "long" or "glue"
            out.append((f"{plan}/{sparse.parent.name}/{sparse.name[len('dendritic-'):]}", dense, sparse,
                        RESULTS / plan / sparse.parent.name / f"{sparse.name}.json"))
    return out


def _dev(plan: str, task: str, n: int | None, tokenizer, max_length: int):
    if plan == "long":
        from dendritic.training.long_docs import long_task_datasets

        return long_task_datasets(task, tokenizer, n)["validation"]
    from dendritic.training.data import load_glue, tokenize_glue

    return tokenize_glue(load_glue(task, splits=("validation",))["validation"], tokenizer, task, max_length)


def _score(plan: str, task: str, predictions, labels) -> tuple[str, float]:
    if plan == "long":
        from dendritic.training.long_docs import compute_long_metrics

        return "accuracy", compute_long_metrics(predictions, labels)["accuracy"]
    from dendritic.training.metrics import compute_glue_metrics, primary_metric

    metric = primary_metric(task)
    return metric, compute_glue_metrics(task, predictions, labels)[metric]


def measure_accuracy(name: str, dense_dir: Path, sparse_dir: Path, committed: Path, *, batch_size: int,
                     max_length: int) -> dict:
    from transformers import AutoTokenizer

    from dendritic.modeling import DendriticBertForSequenceClassification
    from dendritic.training.phases import evaluate_glue

    plan, task, tag = name.split("/")
    n = int(tag.split("-")[0][1:]) if plan == "long" else None
    tokenizer = AutoTokenizer.from_pretrained(sparse_dir)
    dev = _dev(plan, task, n, tokenizer, max_length)
    preds, sparsity = {}, {}
    for variant, folder in (("dense", dense_dir), ("dendritic", sparse_dir)):
        fp32 = DendriticBertForSequenceClassification.from_pretrained(folder).eval()
        for dtype, model in (("fp32", fp32), ("int8", quantize_int8(fp32))):
            res = evaluate_glue(model, dev, tokenizer, batch_size)
            preds[f"{variant}_{dtype}"] = np.asarray(res["predictions_raw"])
            sparsity[f"{variant}_{dtype}"] = res["sparsity_mean"]
            print(f"  {name} {variant} {dtype}: done", flush=True)
    labels = list(dev["label"])
    metric, scores = None, {}
    for key, p in preds.items():
        metric, scores[key] = _score(plan, task, p, labels)
    regression = preds["dense_fp32"].dtype.kind == "f"

    def agree(a, b):
        return float(np.mean(np.abs(a - b) <= 1e-4)) if regression else float(np.mean(a == b))

    reference = json.loads(committed.read_text()) if committed.exists() else None
    return {
        "name": name, "plan": plan, "task": task, "n": n, "seed": int(tag.rsplit("seed", 1)[1]), "metric": metric,
        "dev_examples": len(dev), "scores": scores, "achieved_sparsity": sparsity,
        "retention_int8": scores["dendritic_int8"] / scores["dense_fp32"] if scores["dense_fp32"] else None,
        "retention_fp32": scores["dendritic_fp32"] / scores["dense_fp32"] if scores["dense_fp32"] else None,
        "agreement_with_dense_fp32": {k: agree(p, preds["dense_fp32"]) for k, p in preds.items() if k != "dense_fp32"},
        "fp32_matches_committed": (agree(preds["dendritic_fp32"], np.asarray(reference["predictions"]))
                                   if reference else None),
        "committed_result": str(committed) if reference else None,
    }


def run_accuracy(args) -> dict:
    run_dir = args.run_dir
    pairs = _pairs(run_dir)
    if args.only:
        pairs = [p for p in pairs if any(p[0].startswith(o) for o in args.only)]
    if not pairs:  # before any work
        raise SystemExit(f"no kept (dense, dendritic) model pair under {run_dir}/long or {run_dir}/glue: run "
                         "`python -m reproduce long` or `python -m reproduce glue` first")
    old = _read(args.out).get("accuracy", {}).get("rows", [])
    names = {p[0] for p in pairs}
    rows = [r for r in old if r["name"] not in names]
    prov = {**provenance(), "threads": torch.get_num_threads(), "run_dir": str(run_dir)}
    for i, (name, dense_dir, sparse_dir, committed) in enumerate(pairs):
        print(f"[{i + 1}/{len(pairs)}] {name}", flush=True)
        row = measure_accuracy(name, dense_dir, sparse_dir, committed, batch_size=args.batch_size,
                               max_length=args.max_length)
        rows.append(row)
        _write(args.out, "accuracy", {"rows": rows, "provenance": prov})
        s = row["scores"]
        print(f"  dense fp32 {s['dense_fp32']:.4f} int8 {s['dense_int8']:.4f}; DendriticBERT fp32 "
              f"{s['dendritic_fp32']:.4f} int8 {s['dendritic_int8']:.4f}: retention (int8 DendriticBERT / fp32 dense) "
              f"{row['retention_int8']:.3f}, fp32 predictions = committed on {row['fp32_matches_committed']}", flush=True)
    return {"rows": rows, "provenance": prov}


# -- files -----------------------------------------------------------------------------------------------------------
def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, part: str, value: dict) -> None:
    atomic_write_json(path, {**_read(path), part: value})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.bench.int8", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("latency", "accuracy"))
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048], help="latency: sequence lengths")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="latency: batch sizes")
    p.add_argument("--rounds", type=int, default=9, help="latency: interleaved rounds")
    p.add_argument("--run-dir", type=Path, default=Path("runs/small"), help="accuracy: the plans' run folder")
    p.add_argument("--only", nargs="*", default=None, help="accuracy: names to keep, by prefix (e.g. long/sotu_party/n1024)")
    p.add_argument("--batch-size", type=int, default=8, help="accuracy: evaluation batch")
    p.add_argument("--max-length", type=int, default=128, help="accuracy: GLUE max length")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for name in ("lengths", "batches"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} must be positive")
    if args.rounds < 1 or args.batch_size < 1:
        p.error("--rounds and --batch-size must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    (run_latency if args.what == "latency" else run_accuracy)(args)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

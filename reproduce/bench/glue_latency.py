"""Latency at the accuracy setting: the trained GLUE models (seed 0 of the GLUE plan's run folder) on their own dev
inputs, with dynamic padding, batch 1 and 32 — DendriticBERT as it runs by default (``attention_backend="auto"``;
the path it took is recorded) against the dense model it is compared with, as a plain ``transformers.BertModel``
under SDPA.  INTERLEAVED rounds (:func:`dendritic.bench.interleaved`), every candidate of a round on the same batch.

Rows (``level = "glue"``) are merged into ``reproduce/results/latency/summary.json`` (rows of other levels kept):
task, batch, block size, achieved sparsity, medians, ratio_vs_sdpa, the attention path and the policy
implementation.  Time it on idle cores (the load average is recorded).

    python -m reproduce.bench.glue_latency --run-dir runs/small          # after `python -m reproduce glue`
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dendritic.bench import dense_twin, interleaved, load_average, median_p90, paired_ratio
from dendritic.modeling import DendriticBertForSequenceClassification
from dendritic.provenance import atomic_write_json, provenance
from dendritic.training.data import get_task, load_glue, tokenize_glue

from ..paths import RESULTS
from ..plans import load_plan


def _batches(task: str, tokenizer, batch: int, count: int, max_length: int) -> list[dict]:
    from transformers import DataCollatorWithPadding

    dev = tokenize_glue(load_glue(task, splits=("validation",))["validation"], tokenizer, task, max_length)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dev.column_names]
    collate = DataCollatorWithPadding(tokenizer)
    out = []
    for start in range(0, min(len(dev), batch * count), batch):
        rows = dev[start:start + batch]
        out.append(dict(collate([{c: rows[c][i] for c in cols} for i in range(len(rows["input_ids"]))])))
    return out


def measure(task: str, run_dir: Path, *, batches: list[int], rounds: int, max_length: int) -> list[dict]:
    from transformers import AutoTokenizer

    folder = run_dir / "glue" / task
    sparse_dir, dense_dir = folder / "dendritic-seed0", folder / "dense-seed0"
    for d in (sparse_dir, dense_dir):
        if not (d / "model.safetensors").exists():
            raise SystemExit(f"no trained model in {d}: run `python -m reproduce glue --tasks {task} --seeds 0` first")
    tokenizer = AutoTokenizer.from_pretrained(sparse_dir)
    sparse = DendriticBertForSequenceClassification.from_pretrained(sparse_dir).eval().bert
    dense = dense_twin(DendriticBertForSequenceClassification.from_pretrained(dense_dir).eval().bert, "sdpa")
    sparse.prepare_backends("cpu")
    rows = []
    for B in batches:
        groups = _batches(get_task(task).name, tokenizer, B, rounds, max_length)

        def cycling(fn):
            calls = {"k": 0}

            def run():
                out = fn(groups[calls["k"] % len(groups)])
                calls["k"] += 1
                return out
            return run

        with torch.inference_mode():
            first = sparse(**groups[0])
            achieved = float(torch.tensor([float(sparse(**g).block_sparsity.mean()) for g in groups]).mean())
            times = interleaved({"sdpa": cycling(lambda g: dense(**g)), "dendritic": cycling(lambda g: sparse(**g))},
                                rounds)
        rows.append({"level": "glue", "task": task, "model": "minilm-l6 (trained, seed 0)", "batch": B,
                     "block_size": sparse.config.block_size, "achieved_sparsity": achieved,
                     "median_ms": median_p90(times["dendritic"])[0] * 1e3,
                     "dense_sdpa_ms": median_p90(times["sdpa"])[0] * 1e3,
                     "ratio_vs_sdpa": paired_ratio(times["dendritic"], times["sdpa"]),
                     "path": sorted(set(first.attention_path)), "policy_impl": sorted(set(first.policy_impl)),
                     "mean_length": float(torch.tensor([float(g["attention_mask"].sum(-1).float().mean())
                                                       for g in groups]).mean()),
                     "rounds": rounds, "threads": torch.get_num_threads(), "dtype": "float32"})
        r = rows[-1]
        print(f"{task} B={B}: dense sdpa {r['dense_sdpa_ms']:.2f} ms, DendriticBERT {r['median_ms']:.2f} ms "
              f"(x{r['ratio_vs_sdpa']:.2f}, path {r['path']}, s={achieved:.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--run-dir", type=Path, default=None, help="the GLUE plan's run folder (default: runs/<preset>)")
    p.add_argument("--tasks", nargs="*", default=None, help="default: the plan's tasks with kept models")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", type=Path, default=RESULTS / "latency" / "summary.json")
    args = p.parse_args(argv)
    plan = load_plan("glue", args.preset)
    run_dir = args.run_dir or Path("runs") / args.preset
    tasks = args.tasks or [t for t in plan.tasks if (run_dir / "glue" / t / "dendritic-seed0" / "model.safetensors").exists()]
    payload = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    kept = [r for r in payload.get("rows", []) if not (r.get("level") == "glue" and r.get("task") in tasks)]
    glue_prov = {**provenance(), "loadavg_start": load_average(), "threads": torch.get_num_threads()}
    rows, t0 = [], time.time()
    for task in tasks:
        rows += measure(task, run_dir, batches=args.batches, rounds=args.rounds, max_length=args.max_length)
        glue_prov.update(loadavg_end=load_average(), wall_s=round(time.time() - t0, 1))
        payload.update(rows=kept + rows, glue_provenance=glue_prov)
        atomic_write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

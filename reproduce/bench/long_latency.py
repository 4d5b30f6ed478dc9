"""Latency of the TRAINED long-document models on the SAME dev windows their accuracy was measured on.

For each length n of the long plan (``reproduce/configs/<preset>/long.toml``) it loads the seed-``--seed`` models of
that plan's run folder — DendriticBERT (``dendritic-n<n>-seed<k>``, its own learned policy deciding the masks per
window) and the dense model it was sparsified from (``dense-n<n>-seed<k>``) — and times the encoder forward on the
dev windows, batch 1 and 8, INTERLEAVED (:func:`dendritic.bench.interleaved`): DendriticBERT on the ``cpu`` kernel vs
the dense model as a plain ``transformers.BertModel`` under SDPA and eager attention.  In the same rounds:

* the dense model with its attention core replaced by an identity → ``attention_share`` = 1 − T_no_attention / T_sdpa,
  and the Amdahl bound 1 − s × share at the achieved sparsity s of the timed windows;
* DendriticBERT with every head's budget at 0 (the same kernel with nothing skipped) → ``ratio_vs_same_kernel_dense``:
  the saving from sparsity alone, beside the saving vs SDPA (part of which can be the kernel itself).

The forward is checked against the ``reference`` backend (same masks) before timing; the load average at the start is
recorded (a number measured on busy cores says so), and so is which training run made each timed model (``models``:
the fingerprint of its result), so that the summary never pairs a retrained model with older timings.  The classifier head (one linear layer on [CLS]) is not timed.

    python -m reproduce.bench.long_latency --run-dir runs/small          # after `python -m reproduce long`
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dendritic.bench import (check_model_against_reference, dense_twin, eager_fits, interleaved, load_average,
                             median_p90, paired_ratio)
from dendritic.modeling import DendriticBertForSequenceClassification
from dendritic.provenance import atomic_write_json, provenance, result_fingerprint
from dendritic.training.long_docs import long_task_datasets

from ..paths import CONFIGS
from ..plans import load_plan

NO_ATTENTION = "bench_no_attention"


def trained_model_id(model_dir: Path) -> str | None:
    """Which training run made the checkpoint in ``model_dir``: the fingerprint of its result (``done.json``, the
    record the committed result file is written from).  The long summary attaches a latency row to the accuracy rows
    only when these match the committed results — a retrained model is never shown beside its predecessor's timings."""
    import json

    done = model_dir / "done.json"
    return result_fingerprint(json.loads(done.read_text())) if done.exists() else None


def _no_attention(module, query, key, value, attention_mask, **kwargs):
    return value.transpose(1, 2).contiguous(), None


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(NO_ATTENTION, _no_attention)


def measure(task: str, n: int, run_dir: Path, *, seed: int, batches: list[int], rounds: int, windows: int,
            eager_max_gib: float) -> list[dict]:
    folder = run_dir / "long" / task
    sparse_dir, dense_dir = folder / f"dendritic-n{n}-seed{seed}", folder / f"dense-n{n}-seed{seed}"
    for d in (sparse_dir, dense_dir):
        if not (d / "model.safetensors").exists():
            raise SystemExit(f"no trained model in {d}: run `python -m reproduce long` first (it keeps the seed-{seed} "
                             "models)")
    models = {"dense": trained_model_id(dense_dir), "dendritic": trained_model_id(sparse_dir)}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sparse_dir)
    dev = long_task_datasets(task, tokenizer, n)["validation"]
    sparse = DendriticBertForSequenceClassification.from_pretrained(sparse_dir).eval().bert
    sparse.set_attention_backend("cpu")
    dense_model = DendriticBertForSequenceClassification.from_pretrained(dense_dir).eval().bert
    twins = {impl: dense_twin(dense_model, impl) for impl in ("sdpa", "eager", NO_ATTENTION)}
    zero = torch.zeros_like(sparse.head_budgets)
    H = sparse.config.num_attention_heads
    rows = []
    for B in batches:
        ids = torch.tensor(dev["input_ids"][: max(B, windows)], dtype=torch.long)  # the dev windows, in order
        groups = [ids[i:i + B] for i in range(0, len(ids) - B + 1, B)] or [ids[:B]]

        def cycling(fn):
            """Each candidate is called once per round: its k-th call gets the k-th group of windows, so every
            candidate of a round runs on the same windows."""
            calls = {"k": 0}

            def run():
                out = fn(groups[calls["k"] % len(groups)])
                calls["k"] += 1
                return out
            return run

        with torch.inference_mode():
            check = check_model_against_reference(sparse, groups[0], "cpu")
            achieved = float(torch.tensor([float(sparse(g).block_sparsity.mean()) for g in groups]).mean())
            fns = {"sdpa": cycling(lambda x: twins["sdpa"](x)), NO_ATTENTION: cycling(lambda x: twins[NO_ATTENTION](x)),
                   "dendritic": cycling(lambda x: sparse(x)),
                   "same_kernel_dense": cycling(lambda x: sparse(x, head_budgets=zero))}
            if eager_fits(B, H, n, eager_max_gib):
                fns["eager"] = cycling(lambda x: twins["eager"](x))
            names = list(fns)
            times = interleaved(fns, rounds)
        share = float(torch.tensor([1 - a / b for a, b in zip(times[NO_ATTENTION], times["sdpa"])]).median())
        row = {"task": task, "n": n, "batch": B, "seed": seed, "block_size": sparse.config.block_size,
               "achieved_sparsity": achieved, "windows_timed": min(len(groups), rounds) * B, "rounds": rounds,
               "dense_sdpa_ms": median_p90(times["sdpa"])[0] * 1e3, "dendritic_ms": median_p90(times["dendritic"])[0] * 1e3,
               "dense_eager_ms": median_p90(times["eager"])[0] * 1e3 if "eager" in times else None,
               "same_kernel_dense_ms": median_p90(times["same_kernel_dense"])[0] * 1e3,
               "ratio_vs_sdpa": paired_ratio(times["dendritic"], times["sdpa"]),
               "ratio_vs_eager": paired_ratio(times["dendritic"], times["eager"]) if "eager" in times else None,
               "ratio_vs_same_kernel_dense": paired_ratio(times["dendritic"], times["same_kernel_dense"]),
               "attention_share": share if 0 < share < 1 else None,
               "amdahl_bound": 1 - achieved * share if 0 < share < 1 else None,
               "path": "sparse (cpu kernel)", "correctness": check, "timed": [n for n in names], "models": models}
        rows.append(row)
        print(f"{task} n={n} B={B}: dense sdpa {row['dense_sdpa_ms']:.0f} ms, DendriticBERT {row['dendritic_ms']:.0f} ms "
              f"(x{row['ratio_vs_sdpa']:.2f}; bound x{row['amdahl_bound'] or float('nan'):.2f} at s={achieved:.2f})",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--run-dir", type=Path, default=None, help="the long plan's run folder (default: runs/<preset>)")
    p.add_argument("--out", type=Path, default=None, help="default: <run-dir>/results/long/latency.json")
    p.add_argument("--config-dir", type=Path, default=CONFIGS)
    p.add_argument("--lengths", type=int, nargs="*", default=None, help="default: the plan's")
    args = p.parse_args(argv)
    plan = load_plan("long", args.preset, args.config_dir)
    run_dir = args.run_dir or Path("runs") / args.preset
    out = args.out or run_dir / "results" / "long" / "latency.json"
    run(plan, args.lengths or plan.lengths, run_dir, out)
    return 0


def _measured(prov: dict) -> dict:
    """Where and under what load a row was timed (rows of several runs share one file): ``cpu_isa`` is what the CPU
    offers, ``kernel_path`` the code path the ``cpu`` kernel took (they differ only under ``DENDRITIC_CPU_ISA``)."""
    return {k: prov.get(k) for k in ("cpu", "cpu_isa", "kernel_path", "threads", "loadavg_start", "created",
                                     "git_commit")}


def run(plan, lengths: list[int], run_dir: Path, out: Path) -> dict:
    """Measure ``lengths`` of ``plan`` (settings from its ``[latency]`` table) and write ``out``; rows of other
    lengths already in ``out`` are kept."""
    import json

    _register()
    cfg = plan.latency
    torch.set_num_threads(int(cfg.get("threads", torch.get_num_threads())))
    kept = []
    if out.exists():  # rows of other lengths stay, each with the machine and load it was measured under
        old = json.loads(out.read_text())
        kept = [{**r, "measured": r.get("measured") or _measured(old["provenance"])}
                for r in old["rows"] if r["n"] not in lengths]
    from dendritic.kernels.cpu import cpu_isa

    payload = {"rows": kept, "provenance": {**provenance(), "loadavg_start": load_average(),
                                          "kernel_path": cpu_isa(torch.float32),
                                          "threads": torch.get_num_threads(), "settings": cfg}}
    t0 = time.time()
    for n in lengths:
        loadavg = load_average()
        rows = measure(plan.task, n, run_dir, seed=int(cfg.get("seed", 0)),
                       batches=[int(b) for b in cfg.get("batches", [1, 8])],
                       rounds=int(cfg.get("rounds", 5)), windows=int(cfg.get("windows", 8)),
                       eager_max_gib=float(cfg.get("eager_max_gib", 6.0)))
        payload["rows"] += [{**r, "measured": _measured({**payload["provenance"], "loadavg_start": loadavg})}
                            for r in rows]
        payload["provenance"].update(loadavg_end=load_average(), wall_s=round(time.time() - t0, 1))
        atomic_write_json(out, payload)
    return payload


if __name__ == "__main__":
    raise SystemExit(main())

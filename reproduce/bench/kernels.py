"""Kernel efficiency table: the "cpu" block-sparse kernel against dense SDPA and compiled FlexAttention.

For each config (B, n, d, block size, target sparsity) it times dense ``F.scaled_dot_product_attention``, the
``cpu`` backend and (n <= --flex-max-n) the ``flex`` backend INTERLEAVED — round r runs sdpa, cpu, flex back to
back — and reports medians over rounds, because this class of machine drifts by ±25 % over minutes; interleaving
lets the drift hit every backend alike.  Efficiency = (1 − s)·T_sdpa / T_cpu with s the achieved block sparsity
(1.0 = time exactly proportional to kept work at SDPA's speed).  It also times mask compaction
(``dendritic.kernels.layout.dense_to_block_mask`` on a random (B, H, nb, nb) keep mask) as a % of T_sdpa.

Writes ``reproduce/results/kernels/summary.json`` atomically, with provenance (git commit, versions, CPU, threads,
load average before/after: a loaded machine makes the numbers noise).

    python -m reproduce.bench.kernels                 # full grid (about 10 minutes on 2 idle cores)
    python -m reproduce.bench.kernels --quick         # a few configs, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dendritic.bench import block_mask_for_sparsity, interleaved, load_average, make_inputs, timed
from dendritic.kernels import block_sparse_attention
from dendritic.kernels.layout import dense_to_block_mask
from dendritic.provenance import atomic_write_json, provenance

from ..paths import RESULTS

OUT = RESULTS / "kernels" / "summary.json"
H = 12  # heads (BERT-base / MiniLM)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument(
        "--batch8-lengths",
        type=int,
        nargs="*",
        default=[512, 1024],
        help="lengths also run at B=8 (block 64, both head dims)",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per config (median reported)")
    p.add_argument("--flex-max-n", type=int, default=4096, help="time flex only up to this n (it compiles per shape)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--time-budget", type=float, default=840.0, help="stop starting configs after this many seconds")
    p.add_argument("--quick", action="store_true", help="n=512/1024, block 64, d=64 only, 3 rounds")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.block_sizes, args.head_dims, args.batch8_lengths, args.rounds = (
            [512, 1024],
            [64],
            [64],
            [],
            3,
        )
    return args


def bench_provenance() -> dict:
    """The shared provenance record plus what this table's numbers depend on (kernel code path, threads)."""
    from dendritic.kernels.cpu import cpu_isa

    return {**provenance(), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_kernel_path": cpu_isa(torch.float32), "threads": torch.get_num_threads(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def run_config(B, n, d, bs, s, rounds, with_flex):
    q, k, v, kv_num_blocks, kv_indices, achieved = make_inputs(B, H, n, d, bs, s)
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "cpu": lambda: block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size=bs, backend="cpu"),
    }
    if with_flex:
        fns["flex"] = lambda: block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size=bs, backend="flex")
    t_compile = timed(fns["flex"]) if with_flex else None  # first flex call compiles (excluded from timing)
    # Correctness once: cpu against flex (same mask) when flex runs, else finiteness.
    out = fns["cpu"]()
    assert not out.isnan().any()
    if with_flex:
        torch.testing.assert_close(out, fns["flex"](), rtol=1e-4, atol=1e-4)
    times = interleaved(fns, rounds)  # one warm-up round, then `rounds` interleaved rounds
    # Mask compaction on a random keep mask of this shape.
    nb = -(-n // bs)
    keep = block_mask_for_sparsity(B, H, nb, s, seed=1)
    t_mask = statistics.median(timed(lambda: dense_to_block_mask(keep)) for _ in range(max(rounds, 5)))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    row = {
        "B": B,
        "H": H,
        "n": n,
        "d": d,
        "block_size": bs,
        "target_sparsity": s,
        "achieved_block_sparsity": round(achieved, 4),
        "t_sdpa_ms": med["sdpa"] * 1e3,
        "t_cpu_ms": med["cpu"] * 1e3,
        "t_flex_ms": med["flex"] * 1e3 if with_flex else None,
        "efficiency": (1 - achieved) * med["sdpa"] / med["cpu"],
        "flex_over_cpu": med["flex"] / med["cpu"] if with_flex else None,
        "mask_build_ms": t_mask * 1e3,
        "mask_build_pct_of_sdpa": 100 * t_mask / med["sdpa"],
        "flex_compile_s": t_compile,
        "rounds": rounds,
        "raw_ms": {name: [round(t * 1e3, 3) for t in ts] for name, ts in times.items()},
    }
    return row


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [
        (1, n, d, bs, s)
        for n in args.lengths
        for d in args.head_dims
        for bs in args.block_sizes
        for s in args.sparsities
    ] + [(8, n, d, 64, s) for n in args.batch8_lengths for d in args.head_dims for s in args.sparsities]
    meta = bench_provenance()
    meta["loadavg_start"] = load_average()
    t_start, rows, skipped = time.time(), [], []
    with torch.inference_mode():
        for i, (B, n, d, bs, s) in enumerate(configs):
            if time.time() - t_start > args.time_budget:
                skipped.append({"B": B, "n": n, "d": d, "block_size": bs, "target_sparsity": s})
                continue
            row = run_config(B, n, d, bs, s, args.rounds, with_flex=n <= args.flex_max_n)
            row["loadavg_1min"] = load_average()[0]
            rows.append(row)
            flex = f"flex/cpu {row['flex_over_cpu']:.2f}" if row["flex_over_cpu"] else ""
            print(
                f"[{i + 1}/{len(configs)}] B={B} n={n} d={d} b={bs} s={row['achieved_block_sparsity']:.2f}: "
                f"sdpa {row['t_sdpa_ms']:.1f} ms, cpu {row['t_cpu_ms']:.1f} ms, eff {row['efficiency']:.2f} {flex}",
                flush=True,
            )
    meta["loadavg_end"] = load_average()
    meta["wall_s"] = time.time() - t_start
    payload = {
        "what": "block-sparse attention forward, fp32: medians of interleaved sdpa/cpu/flex rounds",
        "efficiency_definition": "(1 - achieved_block_sparsity) * t_sdpa / t_cpu",
        "provenance": meta,
        "rows": rows,
        "skipped_for_time_budget": skipped,
    }
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out} ({len(rows)} configs, {len(skipped)} skipped, {meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

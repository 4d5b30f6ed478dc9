"""Fit the cost model of ``attention_backend="auto"``: the block-sparse ``cpu`` kernel vs masked dense SDPA.

Over a grid of shapes (n, block size, kept fraction, batch, head dim; H = 12, fp32, random masks with the safety floor)
both paths are timed INTERLEAVED on the same inputs (after a check that they agree), then the log of their time
ratio is fitted by least squares on the shape (``dendritic.kernels.dispatch`` documents the regressors).

The coefficients go to ``dendritic/kernels/dispatch_costs.json`` (package data, read by ``"auto"``), every timed row
and the fit's quality — how often the model picks the faster path, and the worst time lost when it does not — to
``reproduce/results/dispatch/summary.json``.  Time it on idle cores (the load average is recorded).

    python -m reproduce.bench.dispatch            # ~10 min on 2 idle cores
    python -m reproduce.bench.dispatch --quick    # a few shapes (tests; does not touch the package's cost file)
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

from dendritic.bench import block_mask_for_sparsity, interleaved, load_average
from dendritic.kernels import block_sparse_attention
from dendritic.kernels.dispatch import COST_FILE, features, predict_log_ratio
from dendritic.kernels.layout import dense_to_block_mask
from dendritic.kernels.masked_sdpa import masked_sdpa_attention
from dendritic.provenance import atomic_write_json, provenance

from ..paths import RESULTS

H = 12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 16, 64],
                   help="block sizes (1-4: the GLUE models' blocks; 16-64: long inputs)")
    p.add_argument("--keeps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="target kept fractions")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-call-s", type=float, default=0.6, help="skip shapes whose calls take longer than this")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a few shapes; writes only --out (not the package's cost file)")
    p.add_argument("--refit", type=Path, default=None, help="fit again from the rows of this summary.json (no timing)")
    p.add_argument("--out", type=Path, default=RESULTS / "dispatch" / "summary.json")
    p.add_argument("--cost-file", type=Path, default=COST_FILE)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.blocks, args.keeps, args.batches, args.head_dims, args.rounds = [64, 256], [4, 64], [0.5], [1], [32], 3
    return args


def time_shape(B: int, n: int, d: int, bs: int, keep: float, rounds: int) -> dict:
    g = torch.Generator().manual_seed(n * 31 + bs)
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))
    nb = -(-n // bs)
    mask = block_mask_for_sparsity(B, H, nb, 1.0 - keep, seed=n + bs)
    kvn, kvi = dense_to_block_mask(mask)
    kept = float(mask.float().mean())
    # Each path as the model calls it: the kernel on the compact layout (indices valid by construction, not
    # re-checked), masked SDPA on the dense block mask the policy already holds.
    fns = {"cpu": lambda: block_sparse_attention(q, k, v, kvn, kvi, block_size=bs, backend="cpu", check_values=False),
           "masked_sdpa": lambda: masked_sdpa_attention(q, k, v, None, None, block_size=bs, key_padding_mask=None,
                                                        scale=d ** -0.5, block_mask=mask)}
    reference = block_sparse_attention(q, k, v, kvn, kvi, block_size=bs, backend="reference")
    for fn in fns.values():  # the same function
        torch.testing.assert_close(fn(), reference, rtol=1e-4, atol=1e-4)
    times = interleaved(fns, rounds)
    return {"B": B, "H": H, "n": n, "d": d, "block_size": bs, "kept": kept,
            **{f"{p}_ms": statistics.median(ts) * 1e3 for p, ts in times.items()}}


def fit(rows: list[dict]) -> dict:
    """Least squares of log(T_sparse / T_dense) on the shape regressors."""
    X = np.asarray([features(r["B"], r["n"], r["d"], r["block_size"], r["kept"]) for r in rows])
    y = np.log([r["cpu_ms"] / r["masked_sdpa_ms"] for r in rows])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return {"log_ratio": [float(c) for c in coef]}


def evaluate(coeffs: dict, rows: list[dict]) -> dict:
    """How well the fitted rule picks the faster path on the timed shapes."""
    right, regret = 0, []
    for r in rows:
        pick = "cpu" if predict_log_ratio(coeffs, r["B"], r["n"], r["d"], r["block_size"], r["kept"]) < 0 else "masked_sdpa"
        best = min(r["cpu_ms"], r["masked_sdpa_ms"])
        r["auto_choice"] = pick
        r["auto_over_best"] = r[f"{pick}_ms"] / best
        right += r[f"{pick}_ms"] == best
        regret.append(r["auto_over_best"])
    return {"shapes": len(rows), "picks_faster": right, "worst_time_over_best": max(regret) if regret else None,
            "median_time_over_best": statistics.median(regret) if regret else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    payload = {"rows": [], "provenance": {**provenance(), "loadavg_start": load_average(), "threads": torch.get_num_threads(),
                                          "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}}
    t0 = time.time()
    slow: set[tuple] = set()
    if args.refit is not None:  # a new cost-model form on rows already timed
        old = json.loads(args.refit.read_text())
        payload["rows"], payload["provenance"] = old["rows"], {**old["provenance"], "refit": True}
        args.head_dims = args.batches = args.lengths = []
    with torch.inference_mode():
        for d in args.head_dims:
            for B in args.batches:
                for n in args.lengths:
                    for bs in (b for b in args.blocks if b <= n):
                        for keep in args.keeps:
                            if (B, d, bs) in slow:
                                continue
                            row = time_shape(B, n, d, bs, keep, args.rounds)
                            payload["rows"].append(row)
                            if max(row["cpu_ms"], row["masked_sdpa_ms"]) / 1e3 > args.max_call_s:
                                slow.add((B, d, bs))
                            print(f"B={B} d={d} n={n} b={bs} kept={row['kept']:.2f}: cpu {row['cpu_ms']:.2f} ms, "
                                  f"masked sdpa {row['masked_sdpa_ms']:.2f} ms", flush=True)
    from dendritic.kernels.cpu import cpu_isa

    coeffs = fit(payload["rows"])
    payload["fit"] = {"coefficients": coeffs, **evaluate(coeffs, payload["rows"])}
    payload["provenance"].update(loadavg_end=load_average(), wall_s=round(time.time() - t0, 1))
    atomic_write_json(args.out, payload)
    if not args.quick:
        costs = json.loads(args.cost_file.read_text()) if args.cost_file.exists() else {}
        costs["cpu"] = {**coeffs, "fitted_by": "python -m reproduce.bench.dispatch", "shapes": len(payload["rows"]),
                        "kernel_path": cpu_isa(torch.float32),
                        "cpu": payload["provenance"]["cpu"], "threads": torch.get_num_threads(),
                        "loadavg_start": payload["provenance"]["loadavg_start"], "created": payload["provenance"]["created"]}
        atomic_write_json(args.cost_file, costs)
    f = payload["fit"]
    print(f"fit: picks the faster path on {f['picks_faster']}/{f['shapes']} shapes; worst {f['worst_time_over_best']:.2f}x "
          f"the faster path's time; wrote {args.out}" + ("" if args.quick else f" and {args.cost_file}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

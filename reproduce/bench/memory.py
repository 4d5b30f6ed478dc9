"""Peak-memory sweep on the CPU: one FRESH subprocess per configuration, peak RSS of one encoder forward over a
baseline taken in that same process just before it.

Backends: DendriticBERT with the ``cpu`` kernel at target sparsity 0.5 and 0.75 (block size 64), and the same
weights dense (a ``transformers.BertModel`` twin, :func:`dendritic.bench.dense_twin`) under HF ``eager`` (materialises the n×n probabilities) and ``sdpa``.
Random weights with MiniLM-L6 shapes (``small`` preset; weights do not change the memory a forward needs); n > 512
uses a latency-only config with ``max_position_embeddings = n`` (``positions_extended``).

Method (in each child process, fp32, inference mode):

1. build the model and the inputs, run one warm-up forward of the same shape (one-time allocations — thread pools,
   the kernel library, oneDNN — are not charged to the forward), ``gc.collect()``;
2. reset the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``) and read the baseline ``VmRSS``;
3. one forward; ``peak_mb`` = ``VmHWM`` − baseline (``/proc/self/status``).

The child runs with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every buffer above 64 KiB by ``mmap`` and
returns it on free, so the baseline holds no freed-but-cached heap from the warm-up and the high-water mark counts
what the forward really holds at once.  Where ``clear_refs`` is unavailable the child falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (whose peak then includes the warm-up; ``method`` says which).  A
second forward under ``torch.profiler`` (``profile_memory=True``) gives the allocator's view: the highest "Total
Allocated" over the forward minus its value at the start (``profiler_peak_mb``; None if the profiler gives none).

Priority order (the budget cuts from the end): n=512 B=32 first (the write-up's "38 % lower peak memory than HF
eager" claim), then B=1, B=8 and B=32 over n; eager is skipped where its n×n buffers would not fit.

    python -m reproduce.bench.memory            # default sweep (~10 min)
    python -m reproduce.bench.memory --quick    # n=256, B=1: seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ..paths import REPO, RESULTS

OUT = RESULTS / "memory" / "summary.json"
MODELS = {"minilm-l6": "small", "bert-base": "paper"}
STANDARD_POSITIONS = 512
MIB = 1 << 20
METHOD = ("fresh subprocess per configuration; warm-up forward of the same shape; peak_mb = RSS high-water mark of "
          "one forward minus RSS just before it (row 'method' names the counter); glibc MALLOC_MMAP_THRESHOLD_=65536")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75], help="targets for the cpu backend")
    p.add_argument("--models", nargs="+", default=["minilm-l6"], choices=list(MODELS))
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--eager-max-gib", type=float, default=8.0, help="skip eager when its n×n buffers exceed this")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop starting configurations after this (default 900 s; --quick: 120 s)")
    p.add_argument("--no-profiler", action="store_true", help="skip the torch.profiler allocator view")
    p.add_argument("--quick", action="store_true", help="n=256, B=1, block 32, s=0.5 only")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec: run one configuration in this process
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.batches, args.sparsities, args.models = [256], [1], [0.5], ["minilm-l6"]
        args.block_size = 32  # 8 blocks: sparsity is reachable above the safety floor
    if args.time_budget_s is None:  # an explicit budget wins, also with --quick (tests on slow machines)
        args.time_budget_s = 120.0 if args.quick else 900.0
    return args


# -- child: one configuration -----------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 64  # the reset took effect


def _profiler_peak_mb(forward) -> float | None:
    """Peak of the CPU allocator's "Total Allocated" during ``forward()``, over its value at the start, in MiB."""
    import tempfile

    import torch

    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            forward()
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
    except (RuntimeError, OSError, KeyError, ValueError):  # the profiler's memory view is optional
        return None
    mem = sorted((e["ts"], e["args"]) for e in events if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {}))
    if not mem:
        return None
    totals = [a["Total Allocated"] for _, a in mem]
    start = totals[0] - mem[0][1].get("Bytes", 0)  # allocated before the first event
    return (max(totals) - start) / MIB


def run_child(spec: dict) -> dict:
    import resource

    import torch

    from dendritic.bench import dense_twin, shaped_model

    torch.set_num_threads(spec["threads"])
    n, B = spec["n"], spec["batch"]
    model = shaped_model(MODELS[spec["model"]], n, block_size=spec["block_size"])
    cfg = model.config
    controls = {}
    if spec["backend"] in ("eager", "sdpa"):
        model = dense_twin(model, spec["backend"])  # the same weights under HF's own attention
        gc.collect()
    else:
        controls = {"attention_backend": spec["backend"],
                    "head_budgets": torch.full_like(model.head_budgets, spec["target_sparsity"])}
    ids = torch.randint(0, cfg.vocab_size, (B, n), generator=torch.Generator().manual_seed(0))  # (B, n)
    with torch.inference_mode():
        out = model(ids, **controls)  # warm-up, same shape
        achieved = float(out.block_sparsity.mean()) if controls else 0.0
        del out
        gc.collect()
        if _reset_hwm():
            method = "VmHWM - VmRSS (/proc/self/status) after clear_refs=5, MALLOC_MMAP_THRESHOLD_=65536"
            base_kib = _status_kib("VmRSS")
            model(ids, **controls)
            peak_kib = _status_kib("VmHWM")
        else:
            method = "ru_maxrss after - VmRSS before (peak includes the warm-up forward)"
            base_kib = _status_kib("VmRSS")
            model(ids, **controls)
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        gc.collect()
        prof_mb = None if spec["no_profiler"] else _profiler_peak_mb(lambda: model(ids, **controls))
    return {"peak_mb": (peak_kib - base_kib) / 1024, "baseline_mb": base_kib / 1024, "achieved_sparsity": achieved,
            "method": method, "profiler_peak_mb": prof_mb, "positions_extended": n > STANDARD_POSITIONS,
            "threads": torch.get_num_threads()}


# -- parent: plan, spawn, collect -------------------------------------------------------------------------------------
def plan(args) -> list[tuple[str, int, int]]:
    """(model, n, batch) in priority order."""
    order = []
    if 512 in args.lengths and 32 in args.batches:
        order.append((512, 32))
    for b in (1, 8, 32):
        if b in args.batches:
            order += [(n, b) for n in args.lengths if (n, b) not in order]
    return [(m, n, b) for m in args.models for n, b in order]


def backends(args) -> list[tuple[str, float]]:
    return [("eager", 0.0), ("sdpa", 0.0)] + [("cpu", s) for s in args.sparsities]


def spawn(spec: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-m", "reproduce.bench.memory", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed for {spec} (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    import torch

    from dendritic.bench import eager_fits, load_average
    from dendritic.provenance import atomic_write_json, provenance

    torch.set_num_threads(args.threads)
    t0 = time.time()
    payload = {"rows": [], "skipped": [],
               "provenance": {**provenance(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                              "threads": args.threads, "loadavg_start": load_average(),
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
               "method": METHOD}
    for model, n, B in plan(args):
        group = []
        for backend, s in backends(args):
            desc = {"model": model, "n": n, "batch": B, "backend": backend, "target_sparsity": s}
            if backend == "eager" and not eager_fits(B, 12, n, args.eager_max_gib):
                payload["skipped"].append({**desc, "reason": "memory (--eager-max-gib)"})
                continue
            if time.time() - t0 > args.time_budget_s:
                payload["skipped"].append({**desc, "reason": "time budget"})
                continue
            spec = {**desc, "block_size": args.block_size, "threads": args.threads, "no_profiler": args.no_profiler}
            res = spawn(spec)
            group.append({**desc, "block_size": args.block_size if backend == "cpu" else None, **res})
            print(f"{model} n={n} B={B} {backend} s={res['achieved_sparsity']:.2f}: peak {res['peak_mb']:.1f} MB "
                  f"(profiler {res['profiler_peak_mb'] and round(res['profiler_peak_mb'], 1)} MB)", flush=True)
        ref = {r["backend"]: r["peak_mb"] for r in group if r["backend"] in ("eager", "sdpa")}
        for r in group:
            r["reduction_vs_eager"] = 1.0 - r["peak_mb"] / ref["eager"] if ref.get("eager") else None
            r["ratio_vs_sdpa"] = r["peak_mb"] / ref["sdpa"] if ref.get("sdpa") else None
        payload["rows"].extend(group)
        payload["provenance"]["wall_s"] = round(time.time() - t0, 1)
        atomic_write_json(args.out, payload)
    print(f"wrote {args.out}: {len(payload['rows'])} rows, {len(payload['skipped'])} skipped, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Run an experiment plan and compare its fresh results with the committed reference.

    python -m reproduce glue --preset small                  # Table 1: every missing run, then the comparison
    python -m reproduce glue --quick --tasks wnli            # smoke preset, minutes; must match its reference exactly
    python -m reproduce glue --tradeoff                      # also the accuracy–sparsity trade-off runs
    python -m reproduce ablations --variants static no_gumbel
    python -m reproduce diagnostics --runs dense_from_phase2
    python -m reproduce recipes --tasks rte                  # dense recipes scored on held-out training data
    python -m reproduce long --tasks 2048 --runs holdout-all-4ep-n2048-seed0   # one dense-recipe candidate
    python -m reproduce glue --reuse                         # continue the committed results in place (no comparison)
    python -m reproduce glue --reuse --summary-only          # rebuild the committed summaries from their result files

Fresh results go to ``<run-dir>/results/<plan>/`` (run folder default ``runs/<preset>``; a rerun resumes there) and
end with a table comparing every result with ``reproduce/results/...`` (``…/quick/...`` for ``--quick``), written to
``<run-dir>/results/<plan>/comparison.json``; the exit status is 1 when a cell lies outside its tolerance
(:mod:`reproduce.compare`).  ``--reuse`` writes into the committed results instead, skipping finished runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The smoke preset (--quick) must reproduce its committed reference bit for bit on any x86-64 CPU with AVX2: before
# torch loads, its code paths are pinned to AVX2 (ATen's kernels, MKL, oneDNN and the project's own CPU kernel) —
# an AVX-512 machine would otherwise sum in other orders.  One thread is set below.  Only where not set already.
if "--quick" in sys.argv or "smoke" in sys.argv:
    for _name, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
                          ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("DENDRITIC_CPU_ISA", "avx2"), ("OMP_NUM_THREADS", "1")):
        os.environ.setdefault(_name, _value)

from dendritic.provenance import atomic_write_json

from .compare import compare, format_table
from .paths import CONFIGS, reference_results, relative
from .plans import PLAN_KINDS, Selection, load_plan
from .runner import ensure_pretrain, execute, write_summaries


def long_steps(plan, lengths: list[int], *, run_dir: Path, results_root: Path, preset: str, config_dir: Path,
               latency: bool) -> None:
    """After the long plan's runs: the held-out MLM evaluation and (on idle cores) the latency of the trained models,
    for the selected lengths (rows of other lengths already in the files are kept)."""
    import json

    from .bench.long_latency import run as measure_latency
    from .long_mlm import mlm_eval

    folder = results_root / "long"

    def missing(name: str) -> bool:
        path = folder / name
        return not path.exists() or not set(lengths) <= {r["n"] for r in json.loads(path.read_text())["rows"]}

    if missing("mlm.json"):
        phase2 = ensure_pretrain("long/phase2", plan.pretraining(), preset=preset, run_dir=run_dir,
                                 results_root=results_root, config_dir=config_dir)
        mlm_eval(plan, lengths, run_dir / "long/phase1", phase2, folder / "mlm.json")
    if latency and missing("latency.json"):
        measure_latency(plan, lengths, run_dir, folder / "latency.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", choices=list(PLAN_KINDS), help="which plan of reproduce/configs/<preset>/ to run")
    p.add_argument("--preset", default="small", choices=["smoke", "small", "paper"],
                   help="small: MiniLM-L6, offline (default); smoke: a tiny random BERT (tests); paper: BERT-base, hub + GPU")
    p.add_argument("--quick", action="store_true", help="the smoke preset (same as --preset smoke): minutes")
    p.add_argument("--tasks", nargs="*", default=None, help="tasks to run (default: the plan's)")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="seeds (default: the plan's)")
    p.add_argument("--variants", nargs="*", default=None, help="glue: dense/dendritic/dsn; ablations: variant names")
    p.add_argument("--runs", nargs="*", default=None,
                   help="diagnostics, recipes, long: names of the plan's runs (default: all); long: only these runs "
                        "(and the dense models they start from), without the MLM evaluation and latency steps")
    p.add_argument("--tradeoff", action="store_true", help="glue: also the accuracy–sparsity trade-off runs")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and fresh results (default: runs/<preset>)")
    p.add_argument("--reuse", action="store_true",
                   help="results go to the committed reproduce/results tree, finished runs are kept (no comparison)")
    p.add_argument("--summary-only", action="store_true", help="rebuild the summaries from the result files; train nothing")
    p.add_argument("--no-compare", action="store_true", help="skip the comparison with the committed reference")
    p.add_argument("--no-latency", action="store_true",
                   help="long: skip the latency step (time it later, on idle cores: python -m reproduce.bench.long_latency)")
    p.add_argument("--config-dir", type=Path, default=CONFIGS, help="plans and phase configs (default: reproduce/configs)")
    args = p.parse_args(argv)
    if args.quick:
        if args.preset not in ("small", "smoke"):
            p.error("--quick is the smoke preset; do not combine it with --preset paper")
        args.preset = "smoke"
    if args.runs and args.plan not in ("diagnostics", "recipes", "long"):
        p.error("--runs applies to the diagnostics, recipes and long plans only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = load_plan(args.plan, args.preset, args.config_dir)  # a bad plan fails here, before any work
    sel = Selection(tasks=args.tasks, seeds=args.seeds, variants=args.variants, names=args.runs, tradeoff=args.tradeoff)
    plan.runs(sel)  # a bad selection (unknown task, variant, run) fails here too
    if args.preset == "smoke":  # one thread (and AVX2 code paths, above): the quick reference matches exactly
        import torch

        torch.set_num_threads(1)
    run_dir = args.run_dir or Path("runs") / args.preset
    reference = reference_results(args.preset)
    results_root = reference if args.reuse else run_dir / "results"
    if args.summary_only:
        write_summaries(plan, results_root, sel)
        print(f"summaries rebuilt in {relative(results_root / plan.kind)}")
        return 0
    counts = execute(plan, sel, preset=args.preset, run_dir=run_dir, results_root=results_root,
                     config_dir=args.config_dir)
    if plan.kind == "long" and not args.runs:  # --runs: those runs only (e.g. dense-recipe candidates)
        long_steps(plan, plan.selected_lengths(sel), run_dir=run_dir, results_root=results_root, preset=args.preset,
                   config_dir=args.config_dir, latency=not args.no_latency)
        write_summaries(plan, results_root, sel)
    print(f"\n{plan.kind}: {counts['trained']} trained, {counts['reused']} reused, {counts['skipped']} skipped (no data)")
    if args.reuse or args.no_compare:
        return 0
    result = compare(results_root / plan.kind, reference / plan.kind, exact=args.preset == "smoke")
    atomic_write_json(results_root / plan.kind / "comparison.json", result)
    print(f"\nComparison with the committed reference ({relative(reference / plan.kind)}):")
    print(format_table(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

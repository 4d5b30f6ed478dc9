"""Diagnostic fine-tuning runs: one question each, defined in ``reproduce/configs/<preset>/diagnostics.toml``.

    python reproduce/run_diagnostics.py --preset small            # every run of the plan, resumable
    python reproduce/run_diagnostics.py --preset small --runs dense_from_phase2

A diagnostic is a phase-3 run of the main table's settings for its task with one thing changed — the starting
checkpoint (``init``: phase1 or phase2), the mask ``policy`` (learned, static, random, training_free) and/or a
few ``settings`` (``train_samples = 0`` means the whole training split).  Results: ``reproduce/results/diagnostics/<task>/<name>-seed<k>.json`` (same schema and
provenance as the GLUE runs) and ``summary.json`` with each question beside its scores.  Finished runs are
skipped, as in the GLUE runner.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "reproduce"))

from run_glue import QUICK_PHASE3, QUICK_PRE, ensure_pretraining, load_plan, run_one  # noqa: E402

from dendritic.provenance import atomic_write_json, provenance  # noqa: E402
from dendritic.training.config import CONFIG_DIR, tomllib  # noqa: E402

DEFAULT_RESULTS = REPO / "reproduce" / "results" / "diagnostics"


def summarise(results: Path, plan: dict) -> dict:
    out = {}
    for name, spec in plan["runs"].items():
        files = sorted((results / spec["task"]).glob(f"{name}-seed*.json"))
        recs = [json.loads(f.read_text()) for f in files]
        out[name] = {"question": spec["question"], "task": spec["task"], "variant": spec["variant"],
                     "policy": spec.get("policy", "learned"),
                     "init": spec["init"], "settings": spec.get("settings", {}), "reference": spec.get("reference", "glue"),
                     "runs": [{"seed": r["seed"], "score": r["score"], "metrics": r["metrics"],
                               "sparsity_mean": r.get("sparsity_mean"), "train_examples": r.get("train_examples"),
                               "wall_time_s": r.get("wall_time_s")} for r in recs]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--runs", nargs="*", default=None, help="names of the plan's runs (default: all)")
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: runs/<preset>)")
    parser.add_argument("--results-dir", default=None, help=f"default: {DEFAULT_RESULTS.relative_to(REPO)}; "
                        "with --quick: <output-dir>/results/diagnostics")
    parser.add_argument("--quick", action="store_true", help="tiny runs (minutes), seed 0; the same code")
    args = parser.parse_args(argv)

    plan = tomllib.loads((CONFIG_DIR / args.preset / "diagnostics.toml").read_text())
    glue_plan = load_plan(args.preset)
    runs = Path(args.output_dir or f"runs/{args.preset}")
    results = Path(args.results_dir) if args.results_dir else \
        (runs / "results" / "diagnostics" if args.quick else DEFAULT_RESULTS)
    names = args.runs or list(plan["runs"])
    unknown = set(names) - set(plan["runs"])
    if unknown:
        raise SystemExit(f"unknown diagnostic runs {sorted(unknown)}; the plan has {list(plan['runs'])}")
    phase2 = ensure_pretraining(args.preset, runs, QUICK_PRE if args.quick else {},
                                records=runs / "results" / "train" / args.preset if args.quick else None)
    for name in names:
        spec = plan["runs"][name]
        if spec["variant"] not in ("dense", "dendritic") or spec["init"] not in ("phase1", "phase2"):
            raise SystemExit(f"{name}: variant must be dense or dendritic and init phase1 or phase2")
        task = spec["task"]
        settings = {k: v for k, v in glue_plan.get("task", {}).get(task, {}).items() if k != "seeds"}
        settings.update(spec.get("settings", {}))
        if args.quick:
            settings.update(QUICK_PHASE3)
        init = phase2 if spec["init"] == "phase2" else runs / "phase1"
        for seed in [0] if args.quick else spec.get("seeds", [0]):
            print(f"diagnostic {name} ({task}, {spec['variant']} from {spec['init']}, seed {seed}): {spec['question']}",
                  flush=True)
            run_one(args.preset, runs / "diagnostics" / name, results, task, spec["variant"], seed, settings,
                    policy=spec.get("policy", "learned"), tag=f"{name}-seed{seed}", phase2_dir=phase2, init_from=init)
            atomic_write_json(results / "summary.json", {**summarise(results, plan), "provenance": provenance()})
    summary = summarise(results, plan)
    atomic_write_json(results / "summary.json", {**summary, "provenance": provenance()})
    for name, entry in summary.items():
        print(name, [round(r["score"], 4) for r in entry["runs"]], "-", entry["question"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

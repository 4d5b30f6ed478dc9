"""Command line: ``python -m dendritic.training {phase1,phase2,phase3,train} --preset NAME --output-dir DIR``.

Settings come from ``<config-dir>/<preset>/phase<N>.toml`` (default ``reproduce/configs``, the repository's experiment
configs, relative to the working directory; or ``$DENDRITIC_CONFIG_DIR``); ``--set key=value`` overrides any field (values
parsed as JSON where possible: ``--set max_steps=100 --set distill=true``).  A rerun resumes from the last
checkpoint and skips finished phases; ``--no-resume`` starts the phase's training from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .config import PHASES, load_phase_config


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dendritic.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["phase1", "phase2", "phase3", "train"])
    parser.add_argument("--preset", default="smoke", help="config preset: smoke, small or paper (default: smoke)")
    parser.add_argument("--output-dir", default=None, help="output folder (default: runs/<preset>/<command>)")
    parser.add_argument("--task", default=None, help="GLUE task for phase 3 (default: the config's)")
    parser.add_argument("--init-from", default=None, help="checkpoint folder to start from (phases 2 and 3)")
    parser.add_argument("--config", default=None, help="a TOML file instead of <config-dir>/<preset>/phase<N>.toml")
    parser.add_argument("--config-dir", default=None, help="folder of <preset>/phase<N>.toml files (default: "
                        "$DENDRITIC_CONFIG_DIR or reproduce/configs under the working directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = parser.parse_args(argv)

    from .phases import run_all, run_phase1, run_phase2, run_phase3

    sets = _parse_sets(args.set)
    resume = not args.no_resume
    out = args.output_dir or f"runs/{args.preset}/{args.command}"
    if args.command == "train":
        # Each --set goes to every phase whose config has that field.
        per_phase = {n: {k: v for k, v in sets.items() if k in {f.name for f in dataclasses.fields(cls)}}
                     for n, cls in PHASES.items()}
        unknown = set(sets) - set().union(*per_phase.values())
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}")
        result = run_all(args.preset, out, task=args.task or "wnli", overrides=per_phase, resume=resume,
                         config_dir=args.config_dir)
        print(json.dumps({k: {"wall_time_s": v.get("wall_time_s")} for k, v in result.items()}))
        return 0
    phase = int(args.command[-1])
    overrides = {**sets, "output_dir": out}
    if args.init_from:
        overrides["init_from"] = args.init_from
    if args.task and phase == 3:
        overrides["task"] = args.task
    cfg = load_phase_config(phase, args.preset, overrides, args.config, config_dir=args.config_dir)
    result = {1: run_phase1, 2: run_phase2, 3: run_phase3}[phase](cfg, resume=resume)
    summary = {k: result[k] for k in ("wall_time_s", "global_step", "score", "metric", "sparsity_mean") if k in result}
    print(json.dumps(summary))
    Path(out).mkdir(parents=True, exist_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fresh results against the committed reference: one row per (result file, quantity), the new value, the
reference, the stated tolerance and whether the new value lies within it.

Tolerances (the reference is what ``reproduce/results/…`` holds for the preset):

* ``exact`` (the smoke preset, ``--quick``): the same seed and data must give the same score, achieved sparsity and
  per-example predictions — bit for bit.  This also proves the pipeline deterministic across machines.
* ``seed-spread`` (the small and paper presets): training in fp32 on another CPU, BLAS or thread count takes a
  different path after the first rounding difference, so a rerun is held to the spread the reference itself shows
  across seeds: |new − ref| ≤ max(2 × the seed standard deviation of the same task and variant, 0.01) for the score,
  and ≤ 0.02 for the achieved block sparsity.  On the machine the reference came from, reruns are bit-identical.

A result file with no counterpart in the reference (a task or run the reference lacks) is listed as "no
reference" and does not fail the comparison; a reference without a fresh counterpart is simply not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["compare", "format_table"]

_SCORE_FLOOR, _SPARSITY_TOL = 0.01, 0.02


def _stem(name: str) -> str:
    return name.rsplit("-seed", 1)[0]


def _seed_std(reference_task: Path, name: str) -> float | None:
    scores = [json.loads(f.read_text())["score"] for f in sorted(reference_task.glob(f"{_stem(name)}-seed*.json"))]
    return float(np.std(scores, ddof=1)) if len(scores) > 1 else None


def compare(fresh: Path, reference: Path, *, exact: bool) -> dict:
    """Compare every per-run result file ``<task>/<name>.json`` under ``fresh`` with the same file under
    ``reference``.  Returns ``{"ok", "mode", "rows", "fresh", "reference"}``."""
    rows = []
    for f in sorted(fresh.glob("*/*.json")):
        rel = f.relative_to(fresh)
        ref_file = reference / rel
        new = json.loads(f.read_text())
        if not ref_file.exists():
            rows.append({"cell": str(rel.with_suffix("")), "quantity": "score", "new": new.get("score"),
                         "reference": None, "tolerance": None, "within": None, "status": "no reference"})
            continue
        old = json.loads(ref_file.read_text())
        if exact:
            tolerances = {"score": 0.0, "sparsity_mean": 0.0}
        else:
            std = _seed_std(ref_file.parent, rel.stem)
            tolerances = {"score": max(2 * std, _SCORE_FLOOR) if std is not None else 2 * _SCORE_FLOOR,
                          "sparsity_mean": _SPARSITY_TOL}
        for quantity, tol in tolerances.items():
            a, b = new.get(quantity), old.get(quantity)
            if a is None and b is None:
                continue
            within = a is not None and b is not None and math.isfinite(a) and abs(a - b) <= tol
            rows.append({"cell": str(rel.with_suffix("")), "quantity": quantity, "new": a, "reference": b,
                         "tolerance": tol, "within": bool(within), "status": "ok" if within else "OUTSIDE"})
        if exact and "predictions" in old:
            same = new.get("predictions") == old["predictions"]
            rows.append({"cell": str(rel.with_suffix("")), "quantity": "predictions", "new": None, "reference": None,
                         "tolerance": 0, "within": same, "status": "ok" if same else "OUTSIDE"})
    compared = [r for r in rows if r["within"] is not None]
    return {"ok": all(r["within"] for r in compared), "mode": "exact" if exact else "seed-spread",
            "compared": len(compared), "rows": rows, "fresh": str(fresh), "reference": str(reference)}


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def format_table(result: dict) -> str:
    """The comparison as a plain-text table (printed at the end of every reproduce command)."""
    head = ["cell", "quantity", "new", "reference", "|Δ|", "tolerance", "status"]
    body = []
    for r in result["rows"]:
        delta = abs(r["new"] - r["reference"]) if isinstance(r["new"], float | int) and isinstance(r["reference"], float | int) else None
        body.append([r["cell"], r["quantity"], _fmt(r["new"]), _fmt(r["reference"]), _fmt(delta), _fmt(r["tolerance"]),
                     r["status"]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    verdict = ("all within tolerance" if result["ok"] else "SOME CELLS OUTSIDE TOLERANCE") + \
        f" ({result['compared']} compared, mode {result['mode']}; reference {result['reference']})"
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body), verdict])

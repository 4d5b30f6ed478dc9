"""The paper's table of contents: one session per phase, table and figure.

Every session runs in the one project environment (`bash scripts/bootstrap.sh` makes `.venv`; run nox from it:
`.venv/bin/nox -s NAME`) — no session installs torch again.  Expensive sessions are `default=False`; arguments
after `--` go to the underlying command (e.g. `nox -s train -- --preset small --output-dir runs/small`).
Offline data: `DENDRITIC_DATA_DIR` (default `../shared/data` beside the repository).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

REPO = Path(__file__).resolve().parent
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"

ENV = {
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
    "DENDRITIC_DATA_DIR": os.environ.get("DENDRITIC_DATA_DIR", str(REPO.parent / "shared" / "data")),
    "PYTHONUNBUFFERED": "1",
}
PY = sys.executable  # the interpreter nox runs under: the project environment


def _python(session: nox.Session, *args: str) -> None:
    session.run(PY, *args, *session.posargs, env=ENV)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Test suite: model equivalence, kernels vs references (CPU, NVRTC, CUDA shim), training, data, reliability."""
    session.run(PY, "-m", "pytest", "-q", *session.posargs, env=ENV)


@nox.session(python=False, default=False)
def phase1(session: nox.Session) -> None:
    """Phase 1: masked-LM warm-up, dense attention, policy frozen (`-- --preset small --output-dir DIR`)."""
    _python(session, "-m", "dendritic.training", "phase1")


@nox.session(python=False, default=False)
def phase2(session: nox.Session) -> None:
    """Phase 2: masked LM + sparsity loss, Gumbel annealing, budgets, policy lr and clipping."""
    _python(session, "-m", "dendritic.training", "phase2")


@nox.session(python=False, default=False)
def phase3(session: nox.Session) -> None:
    """Phase 3: GLUE fine-tuning of one task (`-- --task rte --init-from DIR/phase2`)."""
    _python(session, "-m", "dendritic.training", "phase3")


@nox.session(python=False, default=False)
def train(session: nox.Session) -> None:
    """All three phases in order under DIR/phase1, DIR/phase2, DIR/phase3."""
    _python(session, "-m", "dendritic.training", "train")


@nox.session(python=False, default=False)
def reproduce_glue(session: nox.Session) -> None:
    """Table 1 + PAI figure + trade-off: dense vs DendriticBERT vs DSN on every GLUE task with data (resumable)."""
    if session.posargs:  # e.g. `-- --tasks wnli --quick --output-dir DIR`
        _python(session, "reproduce/run_glue.py")
    else:
        session.run(PY, "reproduce/run_glue.py", "--tradeoff", env=ENV)
    session.run(PY, "reproduce/make_figures.py", env=ENV)


@nox.session(python=False, default=False)
def bench_latency(session: nox.Session) -> None:
    """Latency sweep (kernel / layer / model) vs SDPA and eager, with the Amdahl bound; re-plots."""
    _python(session, "reproduce/bench_latency.py")
    session.run(PY, "reproduce/make_figures.py", env=ENV)


@nox.session(python=False, default=False)
def bench_memory(session: nox.Session) -> None:
    """Peak-memory sweep, one fresh subprocess per configuration; re-plots."""
    _python(session, "reproduce/bench_memory.py")
    session.run(PY, "reproduce/make_figures.py", env=ENV)


@nox.session(python=False, default=False)
def ablations(session: nox.Session) -> None:
    """Ablation grid at matched sparsity (full, random, static, training-free, no gating, ...) + policy sweep."""
    _python(session, "reproduce/run_ablations.py")
    if not session.posargs:  # the inference-only sweep reads the small preset's kept seed-0 models
        session.run(PY, "reproduce/sweep_inference.py", env=ENV)
    session.run(PY, "reproduce/make_figures.py", env=ENV)


@nox.session(python=False, default=False)
def diagnostics(session: nox.Session) -> None:
    """Diagnostic runs, one question each (e.g. STS-B: is it the masks, the phase-2 weights or the budget?)."""
    _python(session, "reproduce/run_diagnostics.py")
    session.run(PY, "reproduce/make_figures.py", env=ENV)


@nox.session(python=False)
def figures(session: nox.Session) -> None:
    """Every figure and table, regenerated from the committed result files only (deterministic); Table 1 -> README."""
    _python(session, "reproduce/make_figures.py", "--readme", "README.md")


@nox.session(python=False, default=False)
def gpu_check(session: nox.Session) -> None:
    """On any CUDA machine: GPU tests + cupy vs reference + timing table, one JSON."""
    _python(session, "reproduce/gpu_check.py")

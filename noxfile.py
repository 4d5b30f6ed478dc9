"""The paper's table of contents: one session per phase, per result input, and one for the figures.

Every session runs in the one project environment (`bash scripts/bootstrap.sh` makes `.venv`; run nox from it:
`.venv/bin/nox -s NAME`) — no session installs torch again.  Expensive sessions are `default=False`; arguments
after `--` go to the underlying command (e.g. `nox -s reproduce_glue -- --tasks wnli --quick`).

* Experiments (`reproduce_glue`, `reproduce_long`, `ablations`, `diagnostics`, `recipes`) write FRESH results under `runs/<preset>/`
  and end with a table comparing them with the committed `reproduce/results/...`; they fail when a cell lies outside
  its tolerance.  `-- --reuse` continues the committed results in place instead.
* Benchmarks (`bench_*`) and exports write their result file under `reproduce/results/...` and queue `figures`.
* `figures` regenerates every figure and table from the committed result files, once per nox call.
* `paper` runs every result session (`requires=`), then the figures.

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


def _module(session: nox.Session, module: str, *args: str) -> None:
    session.run(PY, "-m", module, *args, *session.posargs, env=ENV)


def _result_input(session: nox.Session, module: str, *args: str) -> None:
    """A benchmark or export that writes one result file; the figures follow once, after every session of the call."""
    _module(session, module, *args)
    session.notify("figures", posargs=[])


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Test suite: model equivalence, kernels vs references (CPU, NVRTC, CUDA shim), training, data, reliability."""
    session.run(PY, "-m", "pytest", "-q", *session.posargs, env=ENV)


# -- training phases -------------------------------------------------------------------------------------------------
@nox.session(python=False, default=False)
def phase1(session: nox.Session) -> None:
    """Phase 1: masked-LM warm-up, dense attention, policy frozen (`-- --preset small --output-dir DIR`)."""
    _module(session, "dendritic.training", "phase1")


@nox.session(python=False, default=False)
def phase2(session: nox.Session) -> None:
    """Phase 2: masked LM + sparsity loss, Gumbel annealing, budgets, policy lr and clipping."""
    _module(session, "dendritic.training", "phase2")


@nox.session(python=False, default=False)
def phase3(session: nox.Session) -> None:
    """Phase 3: GLUE fine-tuning of one task (`-- --task rte --init-from DIR/phase2`)."""
    _module(session, "dendritic.training", "phase3")


@nox.session(python=False, default=False)
def train(session: nox.Session) -> None:
    """All three phases in order under DIR/phase1, DIR/phase2, DIR/phase3."""
    _module(session, "dendritic.training", "train")


# -- experiments: fresh results, compared with the committed reference ----------------------------------------------
@nox.session(python=False, default=False)
def reproduce_glue(session: nox.Session) -> None:
    """Table 1 + trade-off: dense vs DendriticBERT vs DSN on every GLUE task with data; compared with the reference."""
    _module(session, "reproduce", "glue", *([] if session.posargs else ["--tradeoff"]))


@nox.session(python=False, default=False)
def ablations(session: nox.Session) -> None:
    """Ablation grid at matched sparsity (random, static, training-free, no gating, ...); compared with the reference."""
    _module(session, "reproduce", "ablations")


@nox.session(python=False, default=False)
def diagnostics(session: nox.Session) -> None:
    """Diagnostic runs, one question each (e.g. STS-B: is it the masks, the phase-2 weights or the budget?)."""
    _module(session, "reproduce", "diagnostics")


@nox.session(python=False, default=False)
def reproduce_long(session: nox.Session) -> None:
    """Long documents: accuracy, MLM loss and latency of the same trained models on the same windows (n = 1024/2048)."""
    _module(session, "reproduce", "long")


@nox.session(python=False, default=False)
def recipes(session: nox.Session) -> None:
    """Dense fine-tuning recipes scored on held-out training data (never dev); compared with the reference."""
    _module(session, "reproduce", "recipes")


# -- result inputs of figures -----------------------------------------------------------------------------------------
@nox.session(python=False, default=False)
def sweep_inference(session: nox.Session) -> None:
    """Inference-only policy sweep on the kept DendriticBERT models (after `reproduce_glue`; `-- --long 2048`: the
    long-document model, after `reproduce_long`)."""
    _result_input(session, "reproduce.sweep_inference")


@nox.session(python=False, default=False)
def export_masks(session: nox.Session) -> None:
    """Example block masks of the kept seed-0 SST-2 model on real dev sentences (after `reproduce_glue`)."""
    args = [] if session.posargs else ["--model", "runs/small/glue/sst2/dendritic-seed0", "--task", "sst2"]
    _result_input(session, "reproduce.export_masks", *args)


@nox.session(python=False, default=False)
def bench_latency(session: nox.Session) -> None:
    """Latency sweep (kernel / layer / model) vs SDPA and eager, with the Amdahl bound."""
    _result_input(session, "reproduce.bench.latency")


@nox.session(python=False, default=False)
def bench_memory(session: nox.Session) -> None:
    """Peak-memory sweep, one fresh subprocess per configuration."""
    _result_input(session, "reproduce.bench.memory")


@nox.session(python=False, default=False)
def bench_kernels(session: nox.Session) -> None:
    """Kernel efficiency table: the cpu kernel vs SDPA and FlexAttention, interleaved."""
    _result_input(session, "reproduce.bench.kernels")


@nox.session(python=False, default=False)
def bench_train_step(session: nox.Session) -> None:
    """Phase-2 vs phase-1 training-step time."""
    _result_input(session, "reproduce.bench.train_step")


@nox.session(python=False, default=False)
def bench_int8(session: nox.Session) -> None:
    """int8 linear layers + sparse attention: the latency split (idle cores), then the kept trained models in int8."""
    session.notify("figures", posargs=[])
    _module(session, "reproduce.bench.int8", "latency")
    _module(session, "reproduce.bench.int8", "accuracy")


@nox.session(python=False, default=False)
def gpu_check(session: nox.Session) -> None:
    """On any CUDA machine: GPU tests + cupy vs fp64 reference + timing table of the package's backends, one JSON."""
    _result_input(session, "reproduce.bench.gpu_check")


# -- figures ------------------------------------------------------------------------------------------------------------
@nox.session(python=False)
def figures(session: nox.Session) -> None:
    """Every figure and table, regenerated from the committed result files only (deterministic); Table 1 -> README."""
    _module(session, "reproduce.make_figures", "--readme", "README.md")


@nox.session(python=False, default=False,
             requires=["reproduce_glue", "reproduce_long", "ablations", "diagnostics", "sweep_inference", "export_masks",
                       "bench_latency",
                       "bench_memory", "bench_kernels", "bench_train_step"])
def paper(session: nox.Session) -> None:
    """Every result session of the paper in order (hours on 2 cores), then the figures once."""
    session.notify("figures", posargs=[])

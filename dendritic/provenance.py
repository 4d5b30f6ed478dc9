"""Provenance for every result file, and atomic writes (a kill never leaves a half-written JSON)."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

# The folder holding the package: the repository root in a source checkout (git commit, default data location).
SOURCE_ROOT = Path(__file__).resolve().parents[1]
RESULTS_SCHEMA_VERSION = 1  # bump when result files change shape; runners refuse folders of another version


def result_fingerprint(record: dict) -> str:
    """A short digest of what a trained model did on its evaluation split — score, mean block sparsity, each input's
    sparsity and every prediction — the same for a run's ``done.json`` and the result file a plan writes from it.
    A benchmark of a checkpoint records it, so that a summary can tell whether the timed model is the one whose
    accuracy it reports (a deterministic retrain that reproduces all of these counts as the same model)."""
    import hashlib

    keys = (record["score"], record.get("sparsity_mean"), record.get("per_input_sparsity"), record["predictions"])
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=SOURCE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (empty where there is none, e.g. macOS), read once."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the end of the first processor's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_vector_isa() -> str:
    """The widest x86 vector extension the CPU reports (``avx512f`` / ``avx2`` / ``baseline``): the ``cpu`` kernel's
    and the fused policy's code path follow it, so timings from CPUs of one model name but another ISA differ
    (AMD EPYC hosts come with and without AVX-512).  What the CPU offers, not the path a run took: the kernel's own
    choice, which ``DENDRITIC_CPU_ISA`` can override, is ``dendritic.kernels.cpu.cpu_isa()``."""
    flags = _cpuinfo().get("flags")
    if flags is None:
        return "unknown"
    flags = set(flags.split())
    return next((isa for isa in ("avx512f", "avx2") if isa in flags), "baseline")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """Who/what/where made a result: commit, versions, hardware, threads, time."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("torch", "transformers", "datasets", "evaluate", "accelerate", "cupy-cuda13x", "dendritic-bert")},
        "cpu": cpu_model(),
        "cpu_isa": cpu_vector_isa(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def atomic_write_json(path: str | Path, data) -> Path:
    """Write JSON to a temp file in the same folder, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")

"""Where the experiments keep things — the one place that knows the repository layout."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "reproduce" / "configs"  # <preset>/<plan>.toml and <preset>/phase<N>.toml
RESULTS = REPO / "reproduce" / "results"  # the committed reference results
FIGURES = REPO / "figures"

# The committed reference results of each preset: the small preset's are the artifact's tables; the smoke preset's
# (``--quick``) are a tiny reference that a rerun must match exactly; the paper preset's need a GPU and the hub.
_REFERENCE = {"small": RESULTS, "smoke": RESULTS / "quick", "paper": RESULTS / "paper"}


def reference_results(preset: str) -> Path:
    """The committed result root of ``preset`` (``reproduce/results`` for small, ``…/quick`` for smoke)."""
    if preset not in _REFERENCE:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(_REFERENCE)}")
    return _REFERENCE[preset]


def relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (for messages and result files)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)

"""The three training phases on `transformers.Trainer` (see :mod:`dendritic.training.phases`)."""

from .config import Phase1Config, Phase2Config, Phase3Config, load_phase_config
from .phases import run_all, run_phase1, run_phase2, run_phase3

__all__ = ["Phase1Config", "Phase2Config", "Phase3Config", "load_phase_config", "run_all", "run_phase1",
           "run_phase2", "run_phase3"]

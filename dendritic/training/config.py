"""Typed, validated configs for the three training phases, loaded from TOML with command-line overrides.

Files live under ``reproduce/configs/<preset>/phase{1,2,3}.toml``; every run writes its resolved config as
``resolved_config.json`` next to its outputs.  Each field's meaning is in the dataclass docstrings.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "reproduce" / "configs"


@dataclass
class Phase1Config:
    """Phase 1: masked-LM warm-up with dense attention; the policy modules are initialised and frozen.

    model: "random" (a fresh BERT of the preset's shapes), "minilm" (the offline all-MiniLM-L6-v2 package),
        a local folder or a hub id (e.g. "bert-base-uncased").
    model_overrides: DendriticConfig fields (block_size, target_sparsity, ...) applied on top of the preset.
    """

    preset: str = "smoke"
    model: str = "random"
    model_overrides: dict = field(default_factory=dict)
    output_dir: str = "runs/smoke/phase1"
    seed: int = 0
    max_steps: int = 20
    batch_size: int = 8
    seq_len: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    max_docs: int | None = None  # MLM documents to read (None = all)
    held_out_fraction: float = 0.02
    logging_steps: int = 5
    save_steps: int = 10
    save_total_limit: int = 2
    data_source: str = "auto"  # "auto" | "local" | "hub"
    data_dir: str | None = None

    def validate(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be > 0 (or -1: train for `epochs`, phase 3), got {self.max_steps}")
        for name in ("batch_size", "seq_len", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must lie in (0, 1), got {self.learning_rate}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        if self.data_source not in ("auto", "local", "hub"):
            raise ValueError(f"data_source must be auto, local or hub, got {self.data_source!r}")


@dataclass
class Phase2Config(Phase1Config):
    """Phase 2: masked LM + λ(t)·sparsity loss, Gumbel-sigmoid masks annealed soft → hard.

    init_from: the phase-1 output folder.
    λ(t) ramps linearly from 0 to ``sparsity_weight`` over the first ``sparsity_ramp_ratio`` of the steps (a
    curriculum, not a switch).  The temperature decays geometrically from ``temperature_start`` to
    ``temperature_end`` over the run (``anneal = false``: held at ``temperature_start``).  The policy has its own
    learning rate and its own gradient-norm clip; the rest of the model is clipped separately at ``max_grad_norm``.
    budget: "sensitivity" (allocator from measured head sensitivity) or "uniform".
    distill: add KL(dense phase-1 teacher ‖ sparse student) on the MLM logits, weighted ``distill_weight``.
    """

    init_from: str = "runs/smoke/phase1"
    target_sparsity: float = 0.5
    policy_learning_rate: float = 1e-3
    policy_max_grad_norm: float = 0.5
    sparsity_weight: float = 10.0
    sparsity_ramp_ratio: float = 0.3
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    anneal: bool = True
    gumbel: bool = True
    gating: bool = True
    budget: str = "sensitivity"
    budget_spread: float = 0.5
    sensitivity_batches: int = 2
    distill: bool = False
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    collapse_tolerance: float = 0.15  # |achieved − target| sparsity above which the run is flagged as collapsing

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.target_sparsity < 1:
            raise ValueError(f"target_sparsity must lie in [0, 1), got {self.target_sparsity}")
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("temperatures must satisfy 0 < temperature_end <= temperature_start")
        if self.budget not in ("sensitivity", "uniform"):
            raise ValueError(f"budget must be 'sensitivity' or 'uniform', got {self.budget!r}")
        if not 0 <= self.sparsity_ramp_ratio <= 1:
            raise ValueError(f"sparsity_ramp_ratio must lie in [0, 1], got {self.sparsity_ramp_ratio}")


@dataclass
class Phase3Config(Phase2Config):
    """Phase 3: GLUE fine-tuning of everything from ``init_from`` (the phase-2 folder for ``variant =
    "dendritic"``, the phase-1 folder for the dense baseline), the sparsity loss held at ``sparsity_weight`` and
    the temperature at ``temperature_end``; evaluation uses hard masks.

    policy: "learned" or an ablation baseline ("random", "static", "training_free").
    train_samples: subsample of the training split (None = all), deterministic in ``seed``.
    """

    task: str = "wnli"
    variant: str = "dendritic"  # "dendritic" | "dense" | "dsn" (embeddings + mean pooling, no encoder)
    policy: str = "learned"
    epochs: float = 3.0
    max_steps: int = -1  # -1: run ``epochs``
    train_samples: int | None = None
    group_by_length: bool = True  # batches of similar length: less padding, same examples
    eval_samples: int | None = None
    max_length: int = 128
    eval_batch_size: int = 64
    sparsity_ramp_ratio: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.variant not in ("dendritic", "dense", "dsn"):
            raise ValueError(f"variant must be 'dendritic', 'dense' or 'dsn', got {self.variant!r}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")


PHASES = {1: Phase1Config, 2: Phase2Config, 3: Phase3Config}


def _coerce(cls, key: str, value: str):
    """Parse a command-line override ``key=value`` into the type of ``cls``'s field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"unknown setting {key!r} for {cls.__name__}; known: {sorted(fields)}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # a bare string


def load_phase_config(phase: int, preset: str, overrides: dict | None = None, config_file: str | None = None):
    """The phase's config: dataclass defaults < ``reproduce/configs/<preset>/phase<N>.toml`` (or ``config_file``)
    < ``overrides`` (dict of field -> value; strings are parsed as JSON where possible)."""
    cls = PHASES[phase]
    path = Path(config_file) if config_file else CONFIG_DIR / preset / f"phase{phase}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no config file {path}; presets with configs: {sorted(p.name for p in CONFIG_DIR.iterdir())}")
    values = tomllib.loads(path.read_text())
    values["preset"] = preset
    for key, value in (overrides or {}).items():
        values[key] = _coerce(cls, key, value) if isinstance(value, str) else value
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown} in {path} / overrides for {cls.__name__}")
    config = cls(**values)
    config.validate()
    return config


def save_resolved(config, output_dir: str | Path) -> Path:
    """Write the resolved config as JSON next to the run's outputs."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resolved_config.json"
    path.write_text(json.dumps({"class": type(config).__name__, **dataclasses.asdict(config)}, indent=2, sort_keys=True))
    return path

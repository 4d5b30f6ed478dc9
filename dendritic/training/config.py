"""Typed, validated configs for the three training phases, loaded from TOML with command-line overrides.

Each phase's config holds exactly the fields that phase reads, and validates itself on construction::

    TrainingConfig            what every phase's Trainer reads (steps, batch, learning rate, seed, data source ...)
    ├─ MLMConfig              + the masked-LM data (sequence length, masking rate, documents, held-out share)
    │  ├─ Phase1Config        + the starting model (random / minilm / a folder or hub id)
    │  └─ Phase2Config        + PolicyTrainingConfig + budgets, Gumbel annealing, λ ramp, distillation
    └─ PolicyTrainingConfig   + the policy's learning rate, clip, sparsity weight and target, starting checkpoint
       └─ Phase3Config        + the GLUE task, variant, mask policy, epochs, subsamples, evaluation split

Experiment files are ``<config_dir>/<preset>/phase{1,2,3}.toml``; ``config_dir`` defaults to ``$DENDRITIC_CONFIG_DIR``,
else ``reproduce/configs`` under the working directory (the repository's experiment configs, when run from its
root).  Every run writes its resolved config as ``resolved_config.json`` next to its outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["PHASES", "MLMConfig", "Phase1Config", "Phase2Config", "Phase3Config", "PolicyTrainingConfig",
           "TrainingConfig", "default_config_dir", "load_phase_config", "save_resolved", "tomllib"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class TrainingConfig:
    """Settings every phase's ``transformers.Trainer`` reads.

    max_steps: optimizer steps (phase 3: -1 = train for ``epochs``).
    data_source: "auto" | "local" | "hub" (see :mod:`dendritic.training.data`); data_dir: the offline data folder.
    """

    preset: str = "smoke"
    output_dir: str = "runs/smoke/phase"
    gradient_checkpointing: bool = False  # recompute each layer in the backward pass: long inputs fit in memory
    seed: int = 0
    max_steps: int = 20
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    save_steps: int = 10
    save_total_limit: int = 2
    data_source: str = "auto"
    data_dir: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _check(self.max_steps > 0 or self.max_steps == -1,
               f"max_steps must be > 0 (or -1: train for `epochs`, phase 3), got {self.max_steps}")
        for name in ("batch_size", "logging_steps", "save_steps"):
            _check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _check(0 < self.learning_rate < 1, f"learning_rate must lie in (0, 1), got {self.learning_rate}")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        _check(self.data_source in ("auto", "local", "hub"), f"data_source must be auto, local or hub, got {self.data_source!r}")


@dataclass
class MLMConfig(TrainingConfig):
    """Masked-LM data: documents split by document into train/held-out, then cut into ``seq_len``-token blocks
    (``seq_len`` beyond the model's positions needs ``model_overrides.max_position_embeddings`` in phase 1)."""

    seq_len: int = 64
    mlm_probability: float = 0.15
    max_docs: int | None = None  # MLM documents to read (None = all)
    held_out_fraction: float = 0.02
    # "random": a seeded ``held_out_fraction`` of the documents; "sotu_address": the address split of the long-document
    # task (dendritic.training.long_docs), so no dev address of that task is ever trained on.
    mlm_split: str = "random"

    def validate(self) -> None:
        super().validate()
        _check(self.mlm_split in ("random", "sotu_address"), f"mlm_split must be random or sotu_address, got {self.mlm_split!r}")
        _check(self.max_steps > 0, f"max_steps must be > 0 for masked-LM training, got {self.max_steps}")
        _check(self.seq_len > 2, f"seq_len must be > 2, got {self.seq_len}")
        _check(0 < self.mlm_probability < 1, f"mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        _check(0 < self.held_out_fraction < 1, f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")


@dataclass
class Phase1Config(MLMConfig):
    """Phase 1: masked-LM warm-up with dense attention; the policy modules are initialised and frozen.

    model: "random" (a fresh BERT of the preset's shapes), "minilm" (the offline all-MiniLM-L6-v2 package),
        a local folder or a hub id (e.g. "bert-base-uncased").
    model_overrides: DendriticConfig fields (block_size, ...) applied on top of the preset.
    """

    model: str = "random"
    model_overrides: dict = field(default_factory=dict)


@dataclass
class PolicyTrainingConfig(TrainingConfig):
    """What phases 2 and 3 share: a starting checkpoint, the policy's own learning rate and gradient clip, and the
    sparsity loss λ·(batch-mean keep fraction − budget)² toward ``target_sparsity``.

    init_from: the checkpoint folder to start from (phase 2: phase 1's; phase 3: phase 2's, phase 1's, or
        "minilm" for the original pretrained weights).
    collapse_tolerance: |achieved − target| sparsity above which the run is flagged as collapsing.
    """

    init_from: str = "runs/smoke/phase1"
    model_overrides: dict = field(default_factory=dict)
    target_sparsity: float = 0.5
    policy_learning_rate: float = 1e-3
    policy_max_grad_norm: float = 0.5
    sparsity_weight: float = 10.0
    temperature_end: float = 0.1
    collapse_tolerance: float = 0.15

    def validate(self) -> None:
        super().validate()
        _check(isinstance(self.target_sparsity, (int, float)) and 0 <= self.target_sparsity < 1,
               f"target_sparsity must lie in [0, 1), got {self.target_sparsity}")
        _check(self.policy_learning_rate >= 0, f"policy_learning_rate must be >= 0, got {self.policy_learning_rate}")
        _check(self.temperature_end > 0, f"temperature_end must be > 0, got {self.temperature_end}")
        _check(self.sparsity_weight >= 0, f"sparsity_weight must be >= 0, got {self.sparsity_weight}")


@dataclass
class Phase2Config(PolicyTrainingConfig, MLMConfig):
    """Phase 2: masked LM + λ(t)·sparsity loss, Gumbel-sigmoid masks annealed soft → hard.

    λ(t) ramps linearly from 0 to ``sparsity_weight`` over the first ``sparsity_ramp_ratio`` of the steps (a
    curriculum, not a switch).  The temperature decays geometrically from ``temperature_start`` to
    ``temperature_end`` over the run (``anneal = false``: held at ``temperature_start``).  The policy has its own
    learning rate and its own gradient-norm clip; the rest of the model is clipped separately at ``max_grad_norm``.
    budget: "sensitivity" (allocator from measured head sensitivity) or "uniform".
    distill: add KL(dense phase-1 teacher ‖ sparse student) on the MLM logits, weighted ``distill_weight``.
    """

    sparsity_ramp_ratio: float = 0.3
    temperature_start: float = 1.0
    anneal: bool = True
    gumbel: bool = True
    gating: bool = True
    budget: str = "sensitivity"
    budget_spread: float = 0.5
    sensitivity_batches: int = 2
    distill: bool = False
    distill_weight: float = 1.0
    distill_temperature: float = 2.0

    def validate(self) -> None:
        super().validate()
        _check(0 < self.temperature_end <= self.temperature_start,
               "temperatures must satisfy 0 < temperature_end <= temperature_start")
        _check(self.budget in ("sensitivity", "uniform"), f"budget must be 'sensitivity' or 'uniform', got {self.budget!r}")
        _check(0 <= self.sparsity_ramp_ratio <= 1, f"sparsity_ramp_ratio must lie in [0, 1], got {self.sparsity_ramp_ratio}")
        _check(self.sensitivity_batches > 0, f"sensitivity_batches must be > 0, got {self.sensitivity_batches}")


@dataclass
class Phase3Config(PolicyTrainingConfig):
    """Phase 3: GLUE fine-tuning of everything from ``init_from``, the sparsity loss held at ``sparsity_weight`` and
    the temperature at ``temperature_end``; evaluation uses hard masks.

    variant: "dendritic", "dense" (same model, full attention) or "dsn" (embeddings + mean pooling, no encoder).
    policy: "learned" or an ablation baseline ("random", "static", "training_free").
    train_samples / eval_samples: deterministic subsamples (seeded with ``seed``; None or 0 = all).
    eval_split: "validation" scores on the GLUE dev split (the reported numbers); "train_holdout" trains on the
        training split minus a fixed ``holdout_fraction`` slice (drawn with ``holdout_seed``, not the run's seed, so
        every recipe sees the same slice) and scores on that slice — for choosing recipes without looking at dev.

    Sparsifying a fine-tuned model ("sparsify after fine-tuning": ``init_from`` = a dense run's kept model):
    reinit_policy: start the scorer from the starting checkpoint's own (fine-tuned) query/key projections.
    temperature_start: anneal the Gumbel temperature geometrically from here to ``temperature_end`` over the run
        (None: held at ``temperature_end``).
    distill: add distillation from the starting checkpoint run densely (the teacher): KL on logits softened by
        ``distill_temperature`` (squared error for regression), weighted ``distill_weight``.
    """

    task: str = "wnli"
    variant: str = "dendritic"
    policy: str = "learned"
    epochs: float = 3.0
    max_steps: int = -1
    train_samples: int | None = None
    eval_samples: int | None = None
    group_by_length: bool = True  # batches of similar length: less padding, same examples
    max_length: int = 128
    eval_batch_size: int = 64
    eval_split: str = "validation"
    holdout_fraction: float = 0.1
    holdout_seed: int = 1234
    reinit_policy: bool = False
    temperature_start: float | None = None
    distill: bool = False
    distill_weight: float = 1.0
    distill_temperature: float = 2.0

    def validate(self) -> None:
        super().validate()
        _check(self.temperature_start is None or self.temperature_start >= self.temperature_end,
               "temperature_start must be >= temperature_end (or unset: held at temperature_end)")
        _check(not self.distill or self.variant == "dendritic", "distill applies to variant = 'dendritic' only")
        _check(self.variant in ("dendritic", "dense", "dsn"), f"variant must be 'dendritic', 'dense' or 'dsn', got {self.variant!r}")
        _check(self.policy in ("learned", "random", "static", "training_free"),
               f"policy must be one of learned, random, static, training_free; got {self.policy!r}")
        _check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        _check(self.max_length > 2, f"max_length must be > 2, got {self.max_length}")
        _check(self.eval_split in ("validation", "train_holdout"),
               f"eval_split must be 'validation' or 'train_holdout', got {self.eval_split!r}")
        _check(0 < self.holdout_fraction < 1, f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")


PHASES = {1: Phase1Config, 2: Phase2Config, 3: Phase3Config}


def default_config_dir() -> Path:
    """``$DENDRITIC_CONFIG_DIR``, else ``reproduce/configs`` under the working directory."""
    return Path(os.environ.get("DENDRITIC_CONFIG_DIR", "reproduce/configs"))


def _coerce(cls, key: str, value: str):
    """Parse a command-line override ``key=value`` into the type of ``cls``'s field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"unknown setting {key!r} for {cls.__name__}; known: {sorted(fields)}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # a bare string


def load_phase_config(phase: int, preset: str, overrides: dict | None = None, config_file: str | Path | None = None,
                      *, config_dir: str | Path | None = None):
    """The phase's config: dataclass defaults < ``<config_dir>/<preset>/phase<N>.toml`` (or ``config_file``)
    < ``overrides`` (dict of field -> value; strings are parsed as JSON where possible).  Raises ``ValueError`` for
    an unknown or invalid setting and ``FileNotFoundError`` for a missing file, before any work starts."""
    cls = PHASES[phase]
    root = Path(config_dir) if config_dir is not None else default_config_dir()
    path = Path(config_file) if config_file else root / preset / f"phase{phase}.toml"
    if not path.exists():
        known = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise FileNotFoundError(f"no config file {path}; presets with configs in {root}: {known}")
    values = tomllib.loads(path.read_text())
    values["preset"] = preset
    for key, value in (overrides or {}).items():
        values[key] = _coerce(cls, key, value) if isinstance(value, str) else value
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown} in {path} / overrides for {cls.__name__}")
    return cls(**values)


def save_resolved(config, output_dir: str | Path) -> Path:
    """Write the resolved config as JSON next to the run's outputs."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resolved_config.json"
    path.write_text(json.dumps({"class": type(config).__name__, **dataclasses.asdict(config)}, indent=2, sort_keys=True))
    return path

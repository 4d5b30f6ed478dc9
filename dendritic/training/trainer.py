"""`DendriticTrainer`: `transformers.Trainer` plus the sparsity objective.

What it adds, and where:

* ``compute_loss`` — task loss + λ(t)·sparsity loss (+ optional distillation from a dense teacher: KL on the
  temperature-softened logits, or the squared error of a regression output).  The
  sparsity loss is the squared gap, per layer and head, between the batch-mean relaxed keep fraction and the
  head's budget: the *batch mean* is held to the budget, so the gate may move individual inputs.
* ``create_optimizer`` — two parameter groups: the policy (scorer, gate, threshold offset) at its own learning
  rate, everything else at the model's; the schedule scales both.
* :class:`PolicyCallback` — per step: the Gumbel temperature (geometric soft → hard) and λ (linear ramp); before
  each optimizer step: gradient clipping of the policy *alone* (and, separately, of the rest); on each log: the
  collapse guard (achieved vs target sparsity).
* :class:`JsonlLogger` — every log record (loss, per-layer achieved sparsity, temperature, λ) as one JSON line.

Everything else — progress bars, checkpoints (safetensors), resume, mixed precision, DDP/torchrun — is Trainer's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..modeling import base_model


def temperature_at(step: int, total: int, start: float, end: float, anneal: bool) -> float:
    """Geometric decay from ``start`` to ``end`` over ``total`` steps (held at ``start`` without annealing)."""
    if not anneal or total <= 1:
        return start
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return float(start * (end / start) ** frac)


def sparsity_weight_at(step: int, total: int, weight: float, ramp_ratio: float) -> float:
    """λ(t): linear ramp from 0 to ``weight`` over the first ``ramp_ratio`` of the run, then constant."""
    ramp = ramp_ratio * total
    if ramp <= 0:
        return weight
    return float(weight * min(step / ramp, 1.0))


def sparsity_loss(keep_fraction: torch.Tensor, keep_target: torch.Tensor) -> torch.Tensor:
    """Mean over layers and heads of (batch-mean relaxed keep fraction − budget)².  Both (L, B, H)."""
    return ((keep_fraction.mean(dim=1) - keep_target.mean(dim=1)) ** 2).mean()


class DendriticTrainer(Trainer):
    """Trainer with the sparsity loss, a policy parameter group and optional distillation."""

    def __init__(self, *args, policy_learning_rate: float | None = None, teacher=None, distill_weight: float = 0.0,
                 distill_temperature: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy_learning_rate = policy_learning_rate
        self.teacher = teacher.eval() if teacher is not None else None
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.sparsity_weight = 0.0  # set each step by PolicyCallback
        self._stats: dict[str, list[float]] = {}

    # -- optimisation ------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.policy_learning_rate is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        policy = {id(p) for p in base_model(model).policy_parameters()}
        decay = set(self.get_decay_parameter_names(model))
        groups = {"decay": [], "no_decay": [], "policy": []}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            groups["policy" if id(p) in policy else "decay" if name in decay else "no_decay"].append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": groups["decay"], "weight_decay": self.args.weight_decay},
                {"params": groups["no_decay"], "weight_decay": 0.0},
                {"params": groups["policy"], "weight_decay": 0.0, "lr": self.policy_learning_rate},
            ],
            lr=self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        return self.optimizer

    # -- the objective -----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        dendritic = getattr(outputs, "keep_fraction", None) is not None
        if dendritic:
            sp_loss = sparsity_loss(outputs.keep_fraction, outputs.keep_target)
            loss = loss + self.sparsity_weight * sp_loss
            self._record("sparsity_loss", float(sp_loss.detach()))
            for layer, value in enumerate(outputs.block_sparsity.mean(dim=1).tolist()):
                self._record(f"sparsity/layer_{layer}", value)
            self._record("sparsity/mean", float(outputs.block_sparsity.mean()))
            self._record("sparsity/target", float(1.0 - outputs.keep_target.mean()))
            self._record("sparsity/input_std", float(outputs.block_sparsity.mean(dim=0).std()) if outputs.block_sparsity.shape[1] > 1 else 0.0)
        if self.teacher is not None and self.distill_weight > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            T = self.distill_temperature
            selected = inputs["labels"] != -100 if "labels" in inputs and outputs.logits.dim() == 3 else None
            s, t = outputs.logits, teacher_logits
            if selected is not None:  # MLM: distil on the masked positions only
                s, t = s[selected], t[selected]
            if s.shape[-1] == 1:  # regression (STS-B): match the teacher's prediction
                kd = torch.nn.functional.mse_loss(s.float(), t.float())
            else:
                kd = torch.nn.functional.kl_div(
                    torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), log_target=True, reduction="batchmean"
                ) * T * T
            loss = loss + self.distill_weight * kd
            self._record("distill_loss", float(kd.detach()))
        self._record("task_loss", float(outputs.loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The extra output fields (masks, per-layer stats) are not predictions: keep only loss and logits,
        # but record the achieved sparsity of every evaluation batch.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        if getattr(outputs, "block_sparsity", None) is not None:
            self._record("eval_block_sparsity", float(outputs.block_sparsity.mean()))
        labels = inputs.get("labels")
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, outputs.logits.detach(), labels

    # -- logging -----------------------------------------------------------------------------------------------
    def _record(self, key: str, value: float) -> None:
        self._stats.setdefault(key, []).append(value)

    def pop_stats(self, prefix: str = "") -> dict[str, float]:
        stats = {k: sum(v) / len(v) for k, v in self._stats.items() if k.startswith(prefix) and v}
        for k in stats:
            self._stats.pop(k)
        return stats

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(k.startswith("eval_") for k in logs)
        extra = self.pop_stats("eval_") if is_eval else {k: v for k, v in self.pop_stats().items() if not k.startswith("eval_")}
        logs = {**logs, **{k.replace("/", "_") if is_eval else k: round(v, 6) for k, v in extra.items()}}
        model = getattr(self.model, "module", self.model)
        if not is_eval and getattr(model.config, "dendritic", False):  # dense/DSN runs have no policy schedules
            logs["sparsity_weight"] = self.sparsity_weight
            logs["temperature"] = base_model(self.model).temperature
        super().log(logs, start_time)


def is_collapse(achieved: float, target: float, tolerance: float) -> bool:
    """Achieved sparsity far from the (reachable) target, or stuck at all-kept / all-cut when the target is not.
    A batch of inputs too short to skip anything has target 0: keeping everything is then on target."""
    stuck_dense = achieved < 0.02 <= target
    stuck_cut = achieved > 0.98 >= target
    return stuck_dense or stuck_cut or abs(achieved - target) > tolerance


def _logged_collapse_events(log_path: Path | None) -> list[dict]:
    if log_path is None or not Path(log_path).exists():
        return []
    events: dict[int, dict] = {}
    for line in Path(log_path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if "collapse_warning" in record:
            events[record["collapse_warning"]["step"]] = record["collapse_warning"]
    return [events[k] for k in sorted(events)]


class PolicyCallback(TrainerCallback):
    """Temperature and λ schedules, policy-only gradient clipping, and the collapse guard."""

    def __init__(self, trainer: DendriticTrainer, *, temperature_start: float, temperature_end: float, anneal: bool,
                 sparsity_weight: float, ramp_ratio: float, policy_max_grad_norm: float, base_max_grad_norm: float,
                 collapse_tolerance: float, log_path: Path | None = None):
        self.trainer = trainer
        self.t0, self.t1, self.anneal = temperature_start, temperature_end, anneal
        self.weight, self.ramp = sparsity_weight, ramp_ratio
        self.policy_clip, self.base_clip = policy_max_grad_norm, base_max_grad_norm
        self.collapse_tolerance = collapse_tolerance
        self.log_path = log_path
        # A resumed run starts with the events its earlier part logged (each step once: the part of a killed
        # run after its last checkpoint is trained again and logs again).
        self.collapse_events: list[dict] = _logged_collapse_events(log_path)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        total = max(state.max_steps, 1)
        base_model(self.trainer.model).set_temperature(temperature_at(state.global_step, total, self.t0, self.t1, self.anneal))
        self.trainer.sparsity_weight = sparsity_weight_at(state.global_step, total, self.weight, self.ramp)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = self.trainer.model
        policy = base_model(model).policy_parameters()
        policy_ids = {id(p) for p in policy}
        rest = [p for p in model.parameters() if id(p) not in policy_ids and p.grad is not None]
        if self.policy_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in policy if p.grad is not None], self.policy_clip)
        if self.base_clip > 0:
            torch.nn.utils.clip_grad_norm_(rest, self.base_clip)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "sparsity/mean" not in logs or "sparsity/target" not in logs:
            return
        achieved, target = logs["sparsity/mean"], logs["sparsity/target"]
        ramped = state.global_step >= self.ramp * max(state.max_steps, 1)
        if ramped and is_collapse(achieved, target, self.collapse_tolerance):
            event = {"step": state.global_step, "achieved": achieved, "target": target}
            self.collapse_events = [e for e in self.collapse_events if e["step"] != event["step"]] + [event]
            print(f"\n!!! sparsity policy off target (possible collapse): {json.dumps(event)}\n", flush=True)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps({"collapse_warning": event}) + "\n")


class JsonlLogger(TrainerCallback):
    """Append every log record (with step and epoch) to ``path`` as one JSON line (main process only)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **{k: v for k, v in logs.items() if _is_number(v)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))

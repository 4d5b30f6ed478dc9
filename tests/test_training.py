"""Training: the three smoke phases end to end, schedules, budgets, kill-and-resume, and two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dendritic.budget import allocate_budgets, retarget_budgets
from dendritic.training.config import load_phase_config
from dendritic.training.trainer import is_collapse, sparsity_weight_at, temperature_at

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_schedules():
    assert temperature_at(0, 100, 1.0, 0.1, True) == pytest.approx(1.0)
    assert temperature_at(99, 100, 1.0, 0.1, True) == pytest.approx(0.1)
    assert temperature_at(50, 100, 1.0, 0.1, False) == 1.0
    mids = [temperature_at(s, 100, 1.0, 0.1, True) for s in range(100)]
    assert all(a > b for a, b in zip(mids, mids[1:]))  # strictly annealed soft -> hard
    assert sparsity_weight_at(0, 100, 10.0, 0.3) == 0.0  # ramped in, not switched on
    assert sparsity_weight_at(15, 100, 10.0, 0.3) == pytest.approx(5.0)
    assert sparsity_weight_at(80, 100, 10.0, 0.3) == 10.0


def test_collapse_events_survive_a_resume(tmp_path):
    """done.json lists the collapse events of the whole run, also when it was killed and resumed: the earlier
    part's events come back from log.jsonl, each step once (the steps after the last checkpoint log twice)."""
    from dendritic.training.trainer import _logged_collapse_events

    log = tmp_path / "log.jsonl"
    events = [{"step": 50, "achieved": 0.0, "target": 0.3}, {"step": 60, "achieved": 0.1, "target": 0.3}]
    lines = [json.dumps({"step": 40, "loss": 1.0}), *(json.dumps({"collapse_warning": e}) for e in events),
             json.dumps({"collapse_warning": {**events[1], "achieved": 0.11}}), '{"collapse_warn']  # rerun step, cut line
    log.write_text("\n".join(lines) + "\n")
    assert _logged_collapse_events(log) == [events[0], {**events[1], "achieved": 0.11}]
    assert _logged_collapse_events(tmp_path / "missing.jsonl") == []


def test_same_checkpoint_folder_spellings():
    from dendritic.training.phases import _same_folder

    assert _same_folder("runs/small/phase2", "/somewhere/else/runs/small/phase2")  # relative vs absolute
    assert not _same_folder("runs/small/phase2", "runs/small/ablations/no_gumbel/phase2")  # another phase 2
    assert not _same_folder("runs/small/phase1", "runs/small/phase2")


def test_collapse_guard():
    assert not is_collapse(0.49, 0.5, 0.15)
    assert is_collapse(0.2, 0.5, 0.15)  # off target
    assert is_collapse(0.0, 0.1, 0.15) and is_collapse(0.99, 0.9, 0.15)  # stuck all-kept / all-cut
    assert not is_collapse(0.0, 0.0, 0.15)  # inputs too short to skip anything: nothing to cut is on target


def test_budget_allocator_keeps_the_mean_and_protects_sensitive_heads():
    sens = torch.tensor([[0.5, 0.01, 0.2], [0.05, 0.9, 0.0]])
    budgets = torch.tensor(allocate_budgets(sens, 0.5))
    assert float(budgets.mean()) == pytest.approx(0.5, abs=1e-5)
    assert budgets[1, 1] == budgets.min()  # most sensitive head: least sparsity
    assert budgets[1, 2] == budgets.max()
    moved = torch.tensor(retarget_budgets(budgets.tolist(), 0.7))
    assert float(moved.mean()) == pytest.approx(0.7, abs=1e-5)
    with pytest.raises(ValueError, match="sensitivity"):
        allocate_budgets(torch.tensor([[float("nan")]]), 0.5)


def test_config_files_and_overrides():
    cfg = load_phase_config(2, "small", {"max_steps": "7", "distill": "true"})
    assert cfg.max_steps == 7 and cfg.distill is True and cfg.preset == "small"
    with pytest.raises(ValueError, match="unknown setting"):
        load_phase_config(1, "smoke", {"no_such_field": 1})
    with pytest.raises(ValueError, match="target_sparsity"):
        load_phase_config(2, "smoke", {"target_sparsity": 1.5})
    with pytest.raises(FileNotFoundError):
        load_phase_config(1, "nope")


def _run(args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "dendritic.training", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    proc = _run(["train", "--preset", "smoke", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_train_smoke_writes_checkpoints_and_logs(smoke_run):
    for phase in ("phase1", "phase2", "phase3"):
        folder = smoke_run / phase
        assert (folder / "model.safetensors").exists(), phase
        assert (folder / "done.json").exists()
        assert (folder / "resolved_config.json").exists()
        # weights as safetensors only; the resume checkpoints are gone once the phase is done (the kill-and-resume
        # test below checks they are written while it runs)
        assert not list(folder.glob("**/pytorch_model*"))
        assert not list(folder.glob("checkpoint-*"))
    lines = [json.loads(x) for x in (smoke_run / "phase2" / "log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "sparsity/mean" in x]
    assert train_lines and all("temperature" in x and "sparsity_weight" in x for x in train_lines)
    assert any(k.startswith("sparsity/layer_") for k in train_lines[-1])
    temps = [x["temperature"] for x in train_lines]
    assert temps == sorted(temps, reverse=True) and temps[-1] < temps[0]
    budgets = json.loads((smoke_run / "phase2" / "budgets.json").read_text())
    assert budgets["method"] == "sensitivity" and len(budgets["sensitivity"]) == 2
    done3 = json.loads((smoke_run / "phase3" / "done.json").read_text())
    assert 0.0 < done3["sparsity_mean"] < 1.0 and done3["metric"] == "accuracy"
    # the phase-3 model carries the phase-2 budgets (a buffer saved with the weights, not a config field)
    from safetensors.torch import load_file

    phase2 = load_file(smoke_run / "phase2" / "model.safetensors")["bert.head_budgets"]
    phase3 = load_file(smoke_run / "phase3" / "model.safetensors")["bert.head_budgets"]
    assert torch.allclose(phase2, phase3, atol=1e-6)
    assert torch.allclose(phase2, torch.tensor(budgets["head_budgets"]), atol=1e-6)
    assert "head_budgets" not in json.loads((smoke_run / "phase3" / "config.json").read_text()) or \
        json.loads((smoke_run / "phase3" / "config.json").read_text())["head_budgets"] is None


def test_finished_phase_is_not_rerun(smoke_run):
    before = (smoke_run / "phase1" / "done.json").read_text()
    proc = _run(["phase1", "--preset", "smoke", "--output-dir", str(smoke_run / "phase1")])
    assert proc.returncode == 0 and "already complete" in proc.stdout
    assert (smoke_run / "phase1" / "done.json").read_text() == before


def test_finished_phase_with_other_settings_is_refused(smoke_run):
    """A changed config must not silently reuse (or resume) a run made with other settings."""
    before = (smoke_run / "phase1" / "done.json").read_text()
    proc = _run(["phase1", "--preset", "smoke", "--set", "learning_rate=0.123", "--output-dir", str(smoke_run / "phase1")])
    assert proc.returncode != 0 and "other settings" in proc.stderr and "learning_rate" in proc.stderr
    assert (smoke_run / "phase1" / "done.json").read_text() == before


def test_dense_fine_tuning_logs_no_policy_schedules(smoke_run, tmp_path):
    out = tmp_path / "dense"
    proc = _run(["phase3", "--preset", "smoke", "--set", "variant=dense", "--set", "max_steps=4", "--set", "logging_steps=2",
                 "--init-from", str(smoke_run / "phase1"), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert train_lines and not any("temperature" in x or "sparsity_weight" in x for x in train_lines)


def _final_eval_loss(folder: Path) -> float:
    return json.loads((folder / "done.json").read_text())["eval"]["eval_loss"]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    args = ["phase1", "--preset", "smoke", "--set", "max_steps=24", "--set", "save_steps=4"]
    ref = _run([*args, "--output-dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dendritic.training", *args, "--output-dir", str(killed)],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(killed.glob("checkpoint-8")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("checkpoint-*")), "no checkpoint was written before the kill"
    assert not (killed / "done.json").exists(), "the run finished before it could be killed"

    resumed = _run([*args, "--output-dir", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert json.loads((killed / "done.json").read_text())["global_step"] == 24
    assert _final_eval_loss(killed) == pytest.approx(_final_eval_loss(tmp_path / "ref"), abs=1e-4)


def test_two_process_training_ranks_agree(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    script = tmp_path / "ddp.py"
    script.write_text(
        "import hashlib, sys, torch, torch.distributed as dist\n"
        "from dendritic.training import load_phase_config, run_phase1\n"
        "import dendritic.training.phases as ph\n"
        "seen = {}\n"
        "orig = ph._finish\n"
        "def spy(trainer, *a, **k):\n"
        "    seen['m'] = trainer.model\n"
        "    return orig(trainer, *a, **k)\n"
        "ph._finish = spy\n"
        "cfg = load_phase_config(1, 'smoke', {'output_dir': sys.argv[1], 'max_steps': 4, 'save_steps': 100, 'batch_size': 4})\n"
        "run_phase1(cfg, resume=False)\n"
        "flat = torch.cat([p.detach().flatten() for p in seen['m'].parameters()])\n"
        "digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()\n"
        "rank = dist.get_rank() if dist.is_initialized() else -1\n"
        "world = dist.get_world_size() if dist.is_initialized() else 1\n"
        "open(f'{sys.argv[1]}/rank{rank}.txt', 'w').write(f'{world} {digest}')\n"
    )
    out = tmp_path / "ddp"
    out.mkdir()
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(script), str(out)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (out / "rank0.txt").read_text().split(), (out / "rank1.txt").read_text().split()
    assert r0[0] == r1[0] == "2"  # really two processes in one process group
    assert r0[1] == r1[1]  # identical weights on both ranks


def test_fast_backends_predict_like_the_reference_on_a_trained_checkpoint(smoke_run):
    """The trained phase-3 checkpoint on its task's dev set: the `cpu` kernel and the `auto` dispatch give the
    predictions and per-input sparsity of the `reference` backend (dense math with the mask) — so a score measured
    with a fast backend is the score of the model."""
    import numpy as np
    from transformers import AutoTokenizer

    from dendritic import DendriticBertForSequenceClassification
    from dendritic.training.data import load_glue, tokenize_glue
    from dendritic.training.phases import evaluate_glue

    folder = smoke_run / "phase3"
    task = json.loads((folder / "resolved_config.json").read_text())["task"]
    model = DendriticBertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dev = tokenize_glue(load_glue(task, splits=("validation",))["validation"], tokenizer, task)
    runs = {}
    for backend in ("reference", "cpu", "auto"):
        model.bert.set_attention_backend(backend)
        runs[backend] = evaluate_glue(model, dev, tokenizer, batch_size=16)
    ref = runs["reference"]
    assert len(ref["predictions"]) == len(dev) and 0.0 < np.mean(ref["per_input_sparsity"]) < 1.0
    for backend in ("cpu", "auto"):
        assert runs[backend]["predictions"] == ref["predictions"], backend
        assert runs[backend]["per_input_sparsity"] == ref["per_input_sparsity"], backend  # the same masks
        assert runs[backend]["attention_backend"] == backend

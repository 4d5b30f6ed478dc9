"""The GLUE and ablation runners end to end on the smoke preset (`--quick`): the code paths of the main job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "reproduce" / script), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900)


def test_quick_glue_and_ablations(tmp_path):
    glue = _run("run_glue.py", "--preset", "smoke", "--quick", "--tasks", "wnli", "mnli", "--output-dir", str(tmp_path))
    assert glue.returncode == 0, glue.stderr[-3000:]
    assert "skipping mnli" in glue.stdout  # no data offline: said in one line, never faked
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    wnli = summary["wnli"]
    assert set(wnli["parameters"]) == {"dense", "dendritic", "dsn"}
    assert wnli["parameters"]["dense"] < wnli["parameters"]["dendritic"]  # the policy is counted for dendritic only
    assert 0.0 < wnli["sparsity_mean"] < 1.0 and wnli["seeds"] == [0]
    assert summary["average"]["tasks"] == ["wnli"]
    run = json.loads((tmp_path / "results" / "wnli" / "dendritic-seed0.json").read_text())
    assert {"resolved_config", "provenance", "per_input_sparsity", "predictions"} <= set(run)
    assert len(run["per_input_sparsity"]) == run["dev_examples"]

    # A rerun reuses every finished result (nothing is trained again).
    again = _run("run_glue.py", "--preset", "smoke", "--quick", "--tasks", "wnli", "--output-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "results" / "wnli" / "dendritic-seed0.json").read_text())["provenance"] == run["provenance"]
    # The trade-off: one fine-tuning per target, except the main target, which is the main table's seed-0 run.
    trade = _run("run_glue.py", "--preset", "smoke", "--quick", "--tasks", "wnli", "--tradeoff", "--output-dir", str(tmp_path))
    assert trade.returncode == 0, trade.stderr[-3000:]
    rows = json.loads((tmp_path / "results" / "tradeoff.json").read_text())["rows"]
    assert [(r["target_sparsity"], r["source"]) for r in rows] == [
        (0.3, "wnli/tradeoff-learned-0.3.json"), (0.5, "wnli/dendritic-seed0.json"), (0.7, "wnli/tradeoff-learned-0.7.json")]
    assert not (tmp_path / "results" / "wnli" / "tradeoff-learned-0.5.json").exists()
    # A run restricted to other tasks keeps the finished ones in summary.json (it once rewrote it without them).
    other = _run("run_glue.py", "--preset", "smoke", "--quick", "--tasks", "mnli", "--output-dir", str(tmp_path))
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads((tmp_path / "results" / "summary.json").read_text())["average"]["tasks"] == ["wnli"]
    # --summary-only rebuilds the same summary from the files alone.
    before = json.loads((tmp_path / "results" / "summary.json").read_text())
    (tmp_path / "results" / "summary.json").unlink()
    rebuilt = _run("run_glue.py", "--preset", "smoke", "--quick", "--summary-only", "--output-dir", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    after = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert {k: v for k, v in after.items() if k != "provenance"} == {k: v for k, v in before.items() if k != "provenance"}

    abl = _run("run_ablations.py", "--preset", "smoke", "--quick", "--output-dir", str(tmp_path),
               "--variants", "static", "no_gating", "no_gumbel")
    assert abl.returncode == 0, abl.stderr[-3000:]
    ablations = json.loads((tmp_path / "results" / "ablations" / "summary.json").read_text())
    assert {"dense", "full", "static", "no_gating", "no_gumbel"} <= set(ablations)
    # The allocator's measurement is shared where a variant cannot change it, and made afresh where it can.
    main_budgets = json.loads((tmp_path / "phase2" / "budgets.json").read_text())
    shared = json.loads((tmp_path / "ablations" / "no_gumbel" / "phase2" / "budgets.json").read_text())
    own = json.loads((tmp_path / "ablations" / "no_gating" / "phase2" / "budgets.json").read_text())
    assert shared["head_budgets"] == main_budgets["head_budgets"] and "shared_from" in shared
    assert "shared_from" not in own
    assert 0.0 <= ablations["static"]["wnli"]["sparsity"] < 1.0
    assert ablations["full"]["wnli"]["seeds"] == ablations["static"]["wnli"]["seeds"] == [0]
    # A variant of the plan's `wide` table also runs on its further tasks; the others do not.
    assert ablations["no_gumbel"]["rte"]["seeds"] == [0]  # (no full/dense here: the quick GLUE run had WNLI only)
    assert "rte" not in ablations["static"]
    # A call for a subset (here: a summary for one task and variant) keeps the whole plan in summary.json.
    again = _run("run_ablations.py", "--preset", "smoke", "--quick", "--output-dir", str(tmp_path), "--summary-only",
                 "--tasks", "wnli", "--variants", "static")
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = json.loads((tmp_path / "results" / "ablations" / "summary.json").read_text())
    assert {k: v for k, v in rebuilt.items() if k != "provenance"} == {k: v for k, v in ablations.items() if k != "provenance"}
    diag = _run("run_diagnostics.py", "--preset", "smoke", "--quick", "--output-dir", str(tmp_path))
    assert diag.returncode == 0, diag.stderr[-3000:]
    diagnostics = json.loads((tmp_path / "results" / "diagnostics" / "summary.json").read_text())
    assert set(diagnostics) >= {"dense_from_phase2", "dendritic_all_train"}
    d2 = json.loads((tmp_path / "results" / "diagnostics" / "wnli" / "dense_from_phase2-seed0.json").read_text())
    assert Path(d2["resolved_config"]["init_from"]) == tmp_path / "phase2" and d2["variant"] == "dense"
    assert d2["sparsity_mean"] == 0.0 and len(diagnostics["dense_from_phase2"]["runs"]) == 1

    # Quick runs never write into the committed results tree.
    assert not (REPO / "reproduce" / "results" / "train" / "smoke").exists()


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "reproduce" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_summary_averages_the_same_seeds_everywhere(tmp_path):
    """Every entry of a task (ablated variants, dense, full) averages the seeds all of them have: a variant run on
    more seeds than the others must not be compared with fewer."""
    abl = _load_script("run_ablations")
    results, glue = tmp_path / "ablations", tmp_path / "glue"

    def write(folder: Path, stem: str, seed: int, score: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}-seed{seed}.json").write_text(json.dumps(
            {"seed": seed, "score": score, "metric": "f1", "metrics": {"f1": score}, "sparsity_mean": 0.5,
             "pair_sparsity_mean": 0.4}))

    for seed in (0, 1, 2):
        write(results / "mrpc", "no_gumbel", seed, 0.7 + 0.1 * seed)  # seeds 0-2 ...
        write(results / "stsb", "no_gumbel", seed, 0.5 + 0.1 * seed)
        for task in ("mrpc", "stsb"):
            write(glue / task, "dense", seed, 0.8 + 0.01 * seed)
            write(glue / task, "dendritic", seed, 0.6 + 0.01 * seed)
    write(results / "mrpc", "random", 0, 0.65)  # ... but random only seed 0
    summary = abl.summarise(results, glue, ["mrpc", "stsb", "cola"], ["random", "no_gumbel"], ["mrpc"])
    assert summary["grid_tasks"] == ["mrpc"]
    for name in ("dense", "full", "random", "no_gumbel"):
        assert summary[name]["mrpc"]["seeds"] == [0], name
    assert summary["no_gumbel"]["mrpc"]["score"] == 0.7 and summary["no_gumbel"]["mrpc"]["score_std"] is None
    assert summary["no_gumbel"]["stsb"]["seeds"] == summary["full"]["stsb"]["seeds"] == [0, 1, 2]
    assert abs(summary["no_gumbel"]["stsb"]["score"] - 0.6) < 1e-9
    assert "stsb" not in summary["random"] and "cola" not in summary["dense"]  # nothing ran there


def test_inference_sweep_of_one_task_keeps_the_others():
    sweep = _load_script("sweep_inference")
    old = [{"task": "mrpc", "policy": "none", "score": 0.8}, {"task": "sst2", "policy": "none", "score": 0.1}]
    new = [{"task": "sst2", "policy": "none", "score": 0.9}, {"task": "sst2", "policy": "random", "score": 0.7}]
    merged = sweep.merge_rows(old, new, ["sst2"])
    assert merged == [old[0], *new]  # SST-2's old row replaced, MRPC's kept

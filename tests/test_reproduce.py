"""The experiment runner end to end on the smoke preset (``python -m reproduce <plan> --quick``): fresh results in a
run folder, reuse of finished runs, summaries, and the comparison with the committed quick reference — which must
match exactly (same seed, same data, one thread)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce.compare import compare

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
QUICK_REFERENCE = REPO / "reproduce" / "results" / "quick"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reproduce", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=900)


def _drop_provenance(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "provenance"}


def test_quick_plans_match_their_committed_reference(tmp_path):
    committed_before = sorted(p.relative_to(REPO) for p in (REPO / "reproduce" / "results").rglob("*") if p.is_file())
    glue = _run("glue", "--quick", "--tasks", "wnli", "mnli", "--run-dir", str(tmp_path))
    assert glue.returncode == 0, glue.stdout[-3000:] + glue.stderr[-3000:]
    assert "skipping mnli" in glue.stdout  # no data offline: said in one line, never faked
    assert "run 1 of 3" in glue.stdout and "Comparison with the committed reference" in glue.stdout
    results = tmp_path / "results" / "glue"
    comparison = json.loads((results / "comparison.json").read_text())
    assert comparison["ok"] and comparison["mode"] == "exact"
    assert {r["cell"] for r in comparison["rows"]} == {"wnli/dense-seed0", "wnli/dendritic-seed0", "wnli/dsn-seed0"}
    assert all(r["status"] == "ok" for r in comparison["rows"])  # every run has its reference, bit for bit
    summary = json.loads((results / "summary.json").read_text())
    wnli = summary["wnli"]
    assert set(wnli["parameters"]) == {"dense", "dendritic", "dsn"}
    assert wnli["parameters"]["dense"] < wnli["parameters"]["dendritic"]  # the policy is counted for dendritic only
    assert 0.0 < wnli["sparsity_mean"] < 1.0 and wnli["seeds"] == [0]
    run = json.loads((results / "wnli" / "dendritic-seed0.json").read_text())
    assert {"resolved_config", "provenance", "per_input_sparsity", "predictions"} <= set(run)
    assert len(run["per_input_sparsity"]) == run["dev_examples"]

    # A rerun reuses every finished result (nothing is trained again).
    again = _run("glue", "--quick", "--tasks", "wnli", "--run-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 trained, 3 reused" in again.stdout
    assert json.loads((results / "wnli" / "dendritic-seed0.json").read_text())["provenance"] == run["provenance"]
    # The trade-off: one fine-tuning per target, except the main target, which is the main table's seed-0 run.
    trade = _run("glue", "--quick", "--tasks", "wnli", "--tradeoff", "--run-dir", str(tmp_path))
    assert trade.returncode == 0, trade.stdout[-3000:] + trade.stderr[-3000:]
    rows = json.loads((results / "tradeoff.json").read_text())["rows"]
    assert [(r["target_sparsity"], r["source"]) for r in rows] == [
        (0.3, "wnli/tradeoff-learned-0.3.json"), (0.5, "wnli/dendritic-seed0.json"), (0.7, "wnli/tradeoff-learned-0.7.json")]
    assert not (results / "wnli" / "tradeoff-learned-0.5.json").exists()
    # --summary-only rebuilds the same summary from the files alone.
    before = json.loads((results / "summary.json").read_text())
    (results / "summary.json").unlink()
    rebuilt = _run("glue", "--quick", "--summary-only", "--run-dir", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert _drop_provenance(json.loads((results / "summary.json").read_text())) == _drop_provenance(before)

    abl = _run("ablations", "--quick", "--run-dir", str(tmp_path), "--variants", "static", "no_gating", "no_gumbel")
    assert abl.returncode == 0, abl.stdout[-3000:] + abl.stderr[-3000:]
    ablations = json.loads((tmp_path / "results" / "ablations" / "summary.json").read_text())
    assert json.loads((tmp_path / "results" / "ablations" / "comparison.json").read_text())["ok"]
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
    assert ablations["no_gumbel"]["rte"]["seeds"] == [0]
    assert "rte" not in ablations["static"]

    diag = _run("diagnostics", "--quick", "--run-dir", str(tmp_path))
    assert diag.returncode == 0, diag.stdout[-3000:] + diag.stderr[-3000:]
    diagnostics = json.loads((tmp_path / "results" / "diagnostics" / "summary.json").read_text())
    assert set(diagnostics) >= {"dense_from_phase2", "dendritic_all_train"}
    d2 = json.loads((tmp_path / "results" / "diagnostics" / "wnli" / "dense_from_phase2-seed0.json").read_text())
    assert Path(d2["resolved_config"]["init_from"]) == tmp_path / "phase2" and d2["variant"] == "dense"
    assert d2["sparsity_mean"] == 0.0 and len(diagnostics["dense_from_phase2"]["runs"]) == 1

    # Fresh runs never write into the committed results tree.
    after = sorted(p.relative_to(REPO) for p in (REPO / "reproduce" / "results").rglob("*") if p.is_file())
    assert after == committed_before


def test_quick_long_plan(tmp_path):
    """The long-document plan end to end on the smoke preset, one length: long warm-up and phase 2, a dense and a
    sparsified run, the MLM evaluation and the latency of the same models on the same windows — and its results
    equal the committed quick reference."""
    proc = _run("long", "--quick", "--tasks", "96", "--run-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results" / "long"
    comparison = json.loads((results / "comparison.json").read_text())
    assert comparison["ok"] and {r["cell"] for r in comparison["rows"]} == {
        "sotu_party/dense-n96-seed0", "sotu_party/dendritic-n96-seed0"}
    summary = json.loads((results / "summary.json").read_text())
    rows = summary["rows"]
    assert {(r["n"], r["batch"]) for r in rows} == {(96, 1), (96, 2)}  # one row per timed batch size
    for r in rows:
        assert r["majority_score"] > 0.5 and r["seeds"] == [0] and 0 <= r["achieved_sparsity"] < 1
        assert r["dense_sdpa_ms"] > 0 and r["dendritic_ms"] > 0 and r["ratio_vs_same_kernel_dense"] > 0
    assert {m["n"] for m in summary["mlm"]} == {96} and all(m["dense_loss"] > 0 for m in summary["mlm"])
    run = json.loads((results / "sotu_party" / "dendritic-n96-seed0.json").read_text())
    assert run["resolved_config"]["init_from"].endswith("long/sotu_party/dense-n96-seed0")  # sparsified from dense
    assert run["resolved_config"]["distill"] and run["resolved_config"]["max_length"] == 96

    # The inference-only policy sweep on the kept DendriticBERT (same dev windows): every policy point, one curve key.
    from reproduce.sweep_inference import main as sweep, n_points, LONG_TARGETS, LONG_WINDOWS

    assert sweep(["--preset", "smoke", "--long", "96", "--seeds", "0", "--output-dir", str(tmp_path),
                  "--results-dir", str(tmp_path / "sweep"), "--eval-samples", "12"]) == 0
    swept = json.loads((tmp_path / "sweep" / "inference_sweep.json").read_text())
    assert len(swept["rows"]) == n_points(LONG_TARGETS, LONG_WINDOWS) and {r["n"] for r in swept["rows"]} == {96}
    (learned,) = [r for r in swept["rows"] if r["policy"] == "learned" and r["target_sparsity"] == 0.5]
    assert swept["main_target"] == 0.5 and list(swept["matched"]) == ["sotu_party-n96"]
    assert abs(learned["sparsity_mean"] - run["sparsity_mean"]) < 0.02  # its own budgets: the run's evaluation
    none = next(r for r in swept["rows"] if r["policy"] == "none")
    assert none["sparsity_mean"] == 0.0 and none["dev_examples"] == run["dev_examples"]
    # The same masks on the dense model it was sparsified from (never fine-tuned under masks; no learned policy).
    assert sweep(["--preset", "smoke", "--long", "96", "--seeds", "0", "--output-dir", str(tmp_path), "--dense",
                  "--results-dir", str(tmp_path / "sweep"), "--eval-samples", "12"]) == 0
    dense_sweep = json.loads((tmp_path / "sweep" / "inference_sweep_dense.json").read_text())
    dense_rows = dense_sweep["rows"]
    # matched at the same seed's DendriticBERT: its own evaluation (score, sparsity) is the learned point
    (m,) = dense_sweep["matched"].values()
    assert m["learned"]["mean"] == run["score"] and m["sparsity"]["mean"] == run["sparsity_mean"]
    assert all(r["learned_reference"]["score"] == run["score"] for r in dense_rows)
    assert len(dense_rows) == n_points(LONG_TARGETS, LONG_WINDOWS, learned=False)
    assert {r["variant"] for r in dense_rows} == {"dense"} and "learned" not in {r["policy"] for r in dense_rows}
    assert all(r["model"].endswith("dense-n96-seed0") for r in dense_rows)
    masked = [r for r in dense_rows if r["policy"] == "training_free"]
    assert all(r["sparsity_mean"] > 0 for r in masked)  # the dense model's masks are really switched on
    assert len(json.loads((tmp_path / "sweep" / "inference_sweep.json").read_text())["rows"]) == len(swept["rows"])
    with pytest.raises(SystemExit, match="lengths are"):
        sweep(["--preset", "smoke", "--long", "97", "--output-dir", str(tmp_path)])


def test_comparison_fails_outside_tolerance(tmp_path):
    """A cell outside its tolerance fails the comparison; a run the reference lacks is listed, not failed."""
    fresh, ref = tmp_path / "fresh", tmp_path / "ref"

    def write(root: Path, name: str, score: float, preds=(0, 1)) -> None:
        (root / "rte").mkdir(parents=True, exist_ok=True)
        (root / "rte" / f"{name}.json").write_text(json.dumps(
            {"score": score, "sparsity_mean": 0.5, "predictions": list(preds)}))

    for seed, score in enumerate((0.60, 0.64, 0.62)):
        write(ref, f"dense-seed{seed}", score)
    write(fresh, "dense-seed0", 0.60)
    assert compare(fresh, ref, exact=True)["ok"]
    write(fresh, "dense-seed1", 0.64 + 0.05)  # 2 x seed std = 0.04: outside
    result = compare(fresh, ref, exact=False)
    assert not result["ok"]
    assert [r["cell"] for r in result["rows"] if r["status"] == "OUTSIDE"] == ["rte/dense-seed1"]
    write(fresh, "dense-seed1", 0.64 + 0.03)  # inside the seed spread, but not exact
    assert compare(fresh, ref, exact=False)["ok"] and not compare(fresh, ref, exact=True)["ok"]
    write(fresh, "dense-seed1", 0.64, preds=(1, 1))  # same score, other predictions: not exact
    assert not compare(fresh, ref, exact=True)["ok"]
    write(fresh, "dense-seed1", 0.64)
    write(fresh, "dendritic-seed0", 0.5)  # no reference: listed, does not fail
    result = compare(fresh, ref, exact=True)
    assert result["ok"] and any(r["status"] == "no reference" for r in result["rows"])


@pytest.mark.parametrize("args,message", [
    (["glue", "--quick", "--tasks", "squad"], "unknown GLUE task 'squad'"),
    (["ablations", "--quick", "--variants", "nope"], "unknown variants ['nope']"),
    (["diagnostics", "--quick", "--runs", "nope"], "unknown diagnostic runs ['nope']"),
    (["glue", "--quick", "--runs", "x"], "--runs applies to the diagnostics, recipes and long plans only"),
])
def test_bad_selection_fails_before_any_work(tmp_path, args, message):
    proc = _run(*args, "--run-dir", str(tmp_path))
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "phase1").exists()  # nothing trained


def test_ablation_summary_averages_the_same_seeds_everywhere(tmp_path):
    """Every entry of a task (ablated variants, dense, full) averages the seeds all of them have: a variant run on
    more seeds than the others must not be compared with fewer."""
    from reproduce.summaries import summarise_ablations

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
    summary = summarise_ablations(results, glue, ["mrpc", "stsb", "cola"], ["random", "no_gumbel"], ["mrpc"])
    assert summary["grid_tasks"] == ["mrpc"]
    for name in ("dense", "full", "random", "no_gumbel"):
        assert summary[name]["mrpc"]["seeds"] == [0], name
    assert summary["no_gumbel"]["mrpc"]["score"] == 0.7 and summary["no_gumbel"]["mrpc"]["score_std"] is None
    assert summary["no_gumbel"]["stsb"]["seeds"] == summary["full"]["stsb"]["seeds"] == [0, 1, 2]
    assert abs(summary["no_gumbel"]["stsb"]["score"] - 0.6) < 1e-9
    assert "stsb" not in summary["random"] and "cola" not in summary["dense"]  # nothing ran there


def test_inference_sweep_of_one_task_keeps_the_others():
    from reproduce.sweep_inference import merge_rows

    old = [{"task": "mrpc", "policy": "none", "score": 0.8}, {"task": "sst2", "policy": "none", "score": 0.1},
           {"task": "sst2", "seed": 1, "policy": "none", "score": 0.2}]
    new = [{"task": "sst2", "seed": 0, "policy": "none", "score": 0.9},
           {"task": "sst2", "seed": 0, "policy": "random", "score": 0.7}]
    merged = merge_rows(old, new)
    assert merged == [old[0], old[2], *new]  # SST-2 seed 0's old row (no seed: seed 0) replaced; MRPC, seed 1 kept


def test_dense_inference_sweep_needs_a_length(capsys):
    from reproduce.sweep_inference import main as sweep

    with pytest.raises(SystemExit):
        sweep(["--preset", "smoke", "--dense"])  # the GLUE dense models: refused before any work
    assert "--dense sweeps the long plan's dense models" in capsys.readouterr().err


def test_inference_sweep_keeps_how_earlier_sweeps_were_made(tmp_path):
    """A sweep of another length records its own provenance and keeps the earlier sweep's: a file written before the
    per-sweep records keeps its last provenance under ``earlier``; records of pairs no longer in the file go."""
    from reproduce.sweep_inference import write

    out = tmp_path / "inference_sweep.json"
    row = lambda n, seed=0: {"task": "sotu_party", "n": n, "seed": seed, "policy": "none",  # noqa: E731
                             "target_sparsity": None, "sparsity_mean": 0.0, "score": 0.7, "metric": "accuracy"}
    out.write_text(json.dumps({"rows": [row(2048)], "provenance": {"wall_s": 918.6, "git_commit": "abc"}}))
    write(out, [row(2048), row(1024)], 0.75, 60.0, {"sotu_party-n1024/seed0": {"wall_s": 59.0}})
    prov = json.loads(out.read_text())["provenance"]
    assert prov["wall_s"] == 60.0 and prov["swept"] == {"sotu_party-n1024/seed0": {"wall_s": 59.0}}
    assert prov["earlier"] == {"wall_s": 918.6, "git_commit": "abc"}  # the n = 2048 sweep's, not erased
    write(out, [row(2048), row(1024), row(1024, seed=1)], 0.75, 30.0, {"sotu_party-n1024/seed1": {"wall_s": 29.0}})
    prov = json.loads(out.read_text())["provenance"]
    assert set(prov["swept"]) == {"sotu_party-n1024/seed0", "sotu_party-n1024/seed1"}
    assert prov["earlier"]["wall_s"] == 918.6
    write(out, [row(2048)], 0.75, None, {})  # the n = 1024 rows dropped: their records go with them
    assert json.loads(out.read_text())["provenance"]["swept"] == {}


def _sweep_rows(task, seed, learned, static_scores, random_shift=0.0):
    """One model's sweep: learned at targets 0.3/0.5, a static curve, a random curve."""
    rows = [{"task": task, "seed": seed, "policy": "none", "target_sparsity": None, "sparsity_mean": 0.0,
             "score": 0.80, "metric": "accuracy"}]
    rows += [{"task": task, "seed": seed, "policy": "learned", "target_sparsity": t, "sparsity_mean": s,
              "score": y, "metric": "accuracy"} for t, s, y in ((0.3, 0.30, 0.80), (0.5, 0.50, learned))]
    rows += [{"task": task, "seed": seed, "policy": "static", "target_sparsity": None, "sparsity_mean": s,
              "score": y, "metric": "accuracy"} for s, y in zip((0.4, 0.6), static_scores)]
    rows += [{"task": task, "seed": seed, "policy": "random", "target_sparsity": t, "sparsity_mean": t,
              "score": 0.6 + random_shift, "metric": "accuracy"} for t in (0.55, 0.7)]  # range misses 0.5
    return rows


def test_policies_compared_at_the_learned_policys_sparsity():
    from reproduce.sweep_inference import interpolate, matched_summary

    assert interpolate([(0.2, 1.0), (0.6, 0.0)], 0.5) == pytest.approx(0.25)
    assert interpolate([(0.6, 0.0), (0.2, 1.0)], 0.2) == pytest.approx(1.0)
    assert interpolate([(0.2, 1.0), (0.6, 0.0)], 0.7) is None  # never extrapolated
    rows = [r for seed, y in ((0, 0.78), (1, 0.785), (2, 0.79)) for r in _sweep_rows("sst2", seed, y, (0.72, 0.68))]
    rows += [r for seed, y in ((0, 0.70), (1, 0.76), (2, 0.69)) for r in _sweep_rows("cola", seed, y, (0.74, 0.70))]
    m = matched_summary(rows, 0.5)
    sst2, cola = m["sst2"], m["cola"]
    assert sst2["seeds"] == [0, 1, 2] and sst2["sparsity"]["mean"] == pytest.approx(0.5)
    assert sst2["static"]["mean"] == pytest.approx(0.70)  # midway between 0.72 at 0.4 and 0.68 at 0.6
    assert sst2["random"] is None and "random" not in sst2["learned_minus"]  # 0.5 lies outside its curve
    assert sst2["learned_minus"]["static"]["mean"] == pytest.approx(0.085)
    assert sst2["learned_minus"]["static"]["beyond_noise"] == "learned better"
    assert sst2["learned_minus"]["none"]["beyond_noise"] == "learned worse"  # masks cost 1-2 points, every seed
    assert cola["learned_minus"]["static"]["beyond_noise"] == "not separable"  # -0.02, +0.04, -0.03
    two = matched_summary([r for r in rows if r["task"] == "sst2" and r["seed"] < 2], 0.5)
    assert two["sst2"]["learned_minus"]["static"]["beyond_noise"] is None  # fewer than 3 seeds: no verdict


def test_a_task_may_run_more_seeds_than_the_plan():
    """`[task.<t>] seeds` replaces the plan's seeds for that task (CoLA: 5), and --seeds restricts both."""
    from reproduce.plans import GluePlan, Selection

    plan = GluePlan(preset="t", tasks=["cola", "rte"], seeds=[0, 1], variants=["dense"],
                    task={"cola": {"seeds": [0, 1, 2]}}, variant={}, tradeoff_tasks=[], tradeoff_targets=[],
                    main_target=0.5)
    names = lambda sel: sorted((r.task, r.seed) for r in plan.runs(sel))  # noqa: E731
    assert names(Selection()) == [("cola", 0), ("cola", 1), ("cola", 2), ("rte", 0), ("rte", 1)]
    assert names(Selection(seeds=[1, 2])) == [("cola", 1), ("cola", 2), ("rte", 1)]
    assert plan.task_seeds("rte") == [0, 1] and plan.task_seeds("cola", [2, 7]) == [2]


def test_every_committed_plan_loads():
    """Every plan file of every preset is a valid typed plan (unknown keys, tasks, variants fail here)."""
    from reproduce.plans import PLAN_KINDS, Selection, load_plan

    found = 0
    for preset_dir in sorted((REPO / "reproduce" / "configs").iterdir()):
        for kind in PLAN_KINDS:
            if (preset_dir / f"{kind}.toml").exists():
                plan = load_plan(kind, preset_dir.name)
                empty_ok = kind == "diagnostics" and not plan.entries  # a plan with no questions (yet)
                assert plan.runs(Selection(tradeoff=True)) or empty_ok, (preset_dir.name, kind)
                found += 1
    assert found >= 8


def test_recipe_init_comparison_runs_and_summary(tmp_path):
    """[init_comparison] adds, per listed task, the chosen learning rate from the other checkpoint (its own run
    name); the summary puts the two held-out scores side by side and the best recipe names its checkpoint."""
    from reproduce.plans import RecipePlan, Selection
    from reproduce.summaries import summarise_recipes

    cfg = tmp_path / "small"
    cfg.mkdir()
    for name in ("phase1", "phase2", "phase3"):  # the phase configs the plan validates against
        (cfg / f"{name}.toml").write_text((REPO / "reproduce/configs/small" / f"{name}.toml").read_text())
    (cfg / "recipes.toml").write_text(
        'tasks = ["rte", "mrpc"]\nseeds = [0]\nlearning_rates = [2e-5, 5e-5]\ninit = "minilm"\n'
        '[common]\neval_split = "train_holdout"\n[init_comparison]\ninit = "phase1"\nlearning_rates = { rte = 2e-5 }\n')
    plan = RecipePlan.load("small", tmp_path)
    runs = plan.runs(Selection())
    assert [(r.task, r.name, r.init) for r in runs if r.init != "minilm"] == [("rte", "dense-phase1-lr2e-05-seed0", "phase1")]
    assert len(runs) == 5

    def write(task: str, stem: str, lr: float, init: str, score: float) -> None:
        (tmp_path / "res" / task).mkdir(parents=True, exist_ok=True)
        (tmp_path / "res" / task / f"{stem}-seed0.json").write_text(json.dumps(
            {"seed": 0, "score": score, "metric": "accuracy", "metrics": {"accuracy": score}, "dev_examples": 10,
             "train_examples": 90, "resolved_config": {"learning_rate": lr, "epochs": 5.0, "batch_size": 16,
                                                       "init_from": init}}))

    write("rte", "dense-lr2e-05", 2e-5, "minilm", 0.56)
    write("rte", "dense-lr5e-05", 5e-5, "minilm", 0.54)
    write("rte", "dense-phase1-lr2e-05", 2e-5, "runs/small/phase1", 0.58)
    write("mrpc", "dense-lr2e-05", 2e-5, "minilm", 0.8)
    summary = summarise_recipes(tmp_path / "res", ["rte", "mrpc"])
    assert summary["rte"]["init_comparison"] == {"learning_rate": 2e-5, "minilm": 0.56, "phase1": 0.58}
    assert summary["rte"]["best"] == "dense-phase1-lr2e-05" and summary["rte"]["best_init"] == "runs/small/phase1"
    assert "init_comparison" not in summary["mrpc"]
    with pytest.raises(ValueError, match="init_comparison"):
        (cfg / "recipes.toml").write_text((cfg / "recipes.toml").read_text().replace('init = "phase1"', 'init = "minilm"'))
        RecipePlan.load("small", tmp_path)


def test_recipe_candidates_run_and_compete(tmp_path):
    """[[candidate]]: a further dense recipe of one task, run as dense-<name>-seed<k> with its settings over the
    task's, scored on the same held-out slice and in the same contest; bad entries fail at load, naming the cause."""
    from reproduce.plans import RecipePlan, Selection
    from reproduce.summaries import summarise_recipes

    cfg = tmp_path / "small"
    cfg.mkdir()
    for name in ("phase1", "phase2", "phase3"):
        (cfg / f"{name}.toml").write_text((REPO / "reproduce/configs/small" / f"{name}.toml").read_text())
    base = ('tasks = ["cola", "rte"]\nseeds = [0, 1]\nlearning_rates = [2e-5, 5e-5]\ninit = "minilm"\n'
            '[common]\neval_split = "train_holdout"\n[task.cola]\nepochs = 3.0\nbatch_size = 32\n')
    cand = '[[candidate]]\ntask = "cola"\nname = "{name}"\nsettings = {{ learning_rate = 5e-5, epochs = 6.0 }}\n'
    (cfg / "recipes.toml").write_text(base + cand.format(name="lr5e-05-ep6"))
    plan = RecipePlan.load("small", tmp_path)
    runs = plan.runs(Selection())
    extra = [r for r in runs if "ep6" in r.name]
    assert [(r.task, r.name, r.seed) for r in extra] == [("cola", "dense-lr5e-05-ep6-seed0", 0),
                                                          ("cola", "dense-lr5e-05-ep6-seed1", 1)]
    assert extra[0].settings["epochs"] == 6.0 and extra[0].settings["batch_size"] == 32  # over the task's settings
    assert extra[0].settings["eval_split"] == "train_holdout" and extra[0].init == "minilm"
    assert len(runs) == 2 * 2 * 2 + 2
    assert not [r for r in plan.runs(Selection(tasks=["rte"])) if "ep6" in r.name]  # --tasks restricts them too
    assert [r.name for r in plan.runs(Selection(seeds=[1], names=["dense-lr5e-05-ep6-seed1"]))] == [
        "dense-lr5e-05-ep6-seed1"]

    for bad, match in [(cand.format(name="lr5e-05"), "repeat"), (cand.format(name="a b"), "name"),
                       (cand.format(name="x") + cand.format(name="x"), "repeat"),
                       (cand.format(name="x").replace('"cola"', '"mrpc"'), "not among the searched tasks"),
                       (cand.format(name="x").replace("epochs", "epoch"), "epoch"),
                       ('[[candidate]]\ntask = "cola"\nname = "x"\n', "missing")]:
        (cfg / "recipes.toml").write_text(base + bad)
        with pytest.raises(ValueError, match=match):
            RecipePlan.load("small", tmp_path)

    def write(stem: str, lr: float, epochs: float, score: float) -> None:
        (tmp_path / "res" / "cola").mkdir(parents=True, exist_ok=True)
        (tmp_path / "res" / "cola" / f"{stem}-seed0.json").write_text(json.dumps(
            {"seed": 0, "score": score, "metric": "mcc", "metrics": {"mcc": score}, "dev_examples": 10,
             "train_examples": 90, "resolved_config": {"learning_rate": lr, "epochs": epochs, "batch_size": 32,
                                                       "init_from": "minilm"}}))

    write("dense-lr2e-05", 2e-5, 3.0, 0.10)
    write("dense-lr5e-05", 5e-5, 3.0, 0.32)
    write("dense-lr5e-05-ep6", 5e-5, 6.0, 0.36)
    write("dense-lr2e-05-ep10", 2e-5, 10.0, 0.30)
    summary = summarise_recipes(tmp_path / "res", ["cola"])["cola"]
    assert [r["recipe"] for r in summary["recipes"]] == ["dense-lr2e-05", "dense-lr2e-05-ep10", "dense-lr5e-05",
                                                         "dense-lr5e-05-ep6"]
    assert summary["best"] == "dense-lr5e-05-ep6" and "init_comparison" not in summary


def test_long_plan_holdout_candidates(tmp_path):
    """[[holdout]]: dense recipe candidates scored on held-out training addresses, run first, named by candidate,
    restricted by --seeds and --tasks (lengths); a bad entry fails at load."""
    from reproduce.plans import LongPlan, Selection

    cfg = tmp_path / "small"
    cfg.mkdir()
    for name in ("phase1", "phase2", "phase3"):
        (cfg / f"{name}.toml").write_text((REPO / "reproduce/configs/small" / f"{name}.toml").read_text())
    base = (REPO / "reproduce/configs/small/long.toml").read_text().split("[[holdout]]", 1)[0]
    base = re.sub(r"\[variant\.dense\.by_length\]\n[^\[]*", "", base)  # the plan's own per-length recipe: set below
    holdout = ('[[holdout]]\nname = "all-2ep"\nlength = 1024\nseeds = [0, 1]\n'
               'settings = { train_samples = 0, epochs = 2.0, holdout_fraction = 0.2 }\n')
    (cfg / "long.toml").write_text(base + holdout)
    plan = LongPlan.load("small", tmp_path)
    runs = plan.runs(Selection(seeds=[1]))
    first = runs[0]
    assert first.name == "holdout-all-2ep-n1024-seed1" and first.variant == "dense" and first.init == "long/phase1"
    assert first.settings["eval_split"] == "train_holdout" and first.settings["epochs"] == 2.0
    assert first.settings["max_length"] == 1024 and first.settings["holdout_fraction"] == 0.2
    assert not [r for r in runs[1:] if r.name.startswith("holdout-")]  # seed 0's candidate left out by --seeds
    assert not [r for r in plan.runs(Selection(tasks=["2048"])) if r.name.startswith("holdout-")]
    (cfg / "long.toml").write_text(base + holdout.replace("length = 1024", "length = 999"))
    with pytest.raises(ValueError, match="holdout"):
        LongPlan.load("small", tmp_path)
    # a name may come back at another length (its runs are named by length), not twice at the same one
    (cfg / "long.toml").write_text(base + holdout + holdout.replace("1024", "2048"))
    names = [r.name for r in LongPlan.load("small", tmp_path).runs(Selection(seeds=[0])) if r.name.startswith("holdout-")]
    assert names == ["holdout-all-2ep-n1024-seed0", "holdout-all-2ep-n2048-seed0"]
    (cfg / "long.toml").write_text(base + holdout + holdout)
    with pytest.raises(ValueError, match="unique per length"):
        LongPlan.load("small", tmp_path)
    # a DendriticBERT candidate: sparsified from a dense candidate's model (kept for it), on that candidate's split
    dend = ('[[holdout]]\nname = "nonoise"\nvariant = "dendritic"\nfrom = "all-2ep"\nlength = 1024\nseeds = [1]\n'
            'settings = { model_overrides = { gumbel = false } }\n')
    (cfg / "long.toml").write_text(base + holdout + dend)
    runs = {r.name: r for r in LongPlan.load("small", tmp_path).runs(Selection(seeds=[1], names=["holdout-nonoise-n1024-seed1"]))}
    assert set(runs) == {"holdout-all-2ep-n1024-seed1", "holdout-nonoise-n1024-seed1"}  # --runs brings its dense model
    cand, base_run = runs["holdout-nonoise-n1024-seed1"], runs["holdout-all-2ep-n1024-seed1"]
    assert cand.variant == "dendritic" and cand.init == "run:long/sotu_party/holdout-all-2ep-n1024-seed1"
    assert base_run.keep_model and cand.settings["eval_split"] == "train_holdout"
    assert cand.settings["holdout_fraction"] == 0.2 and cand.settings["model_overrides"] == {"gumbel": False}
    assert cand.settings["target_sparsity"] == 0.75  # the dendritic variant's settings underneath
    for bad in (dend.replace('from = "all-2ep"\n', ""),  # a dendritic candidate names its dense model
                dend.replace('"all-2ep"', '"missing"'),
                dend.replace("seeds = [1]", "seeds = [2]"),  # seeds its dense candidate does not train
                dend.replace("{ model_overrides = { gumbel = false } }", "{ holdout_fraction = 0.3 }")):
        (cfg / "long.toml").write_text(base + holdout + bad)
        with pytest.raises(ValueError, match="holdout"):
            LongPlan.load("small", tmp_path)
    # a recipe chosen per length: [variant.dense.by_length] over [variant.dense] settings, for that length only
    per_length = base.replace("[variant.dendritic]", "[variant.dense.by_length]\n2048 = { epochs = 4.0 }\n[variant.dendritic]")
    (cfg / "long.toml").write_text(per_length)
    epochs = {r.settings["max_length"]: r.settings["epochs"] for r in LongPlan.load("small", tmp_path).runs(Selection(seeds=[0]))
              if r.variant == "dense"}
    assert epochs == {1024: 2.0, 2048: 4.0}
    (cfg / "long.toml").write_text(per_length.replace("2048 = {", "4096 = {"))
    with pytest.raises(ValueError, match="by_length"):
        LongPlan.load("small", tmp_path)


def test_long_plan_runs_selects_runs_and_what_they_start_from():
    """--runs on the long plan: the named runs plus the dense models they start from; an unknown name fails, listing
    the selectable ones."""
    from reproduce.plans import LongPlan, Selection

    plan = LongPlan.load("small")
    runs = plan.runs(Selection(tasks=["2048"], seeds=[0], names=["dendritic-n2048-seed0"]))
    assert [r.name for r in runs] == ["dense-n2048-seed0", "dendritic-n2048-seed0"]
    runs = plan.runs(Selection(tasks=["2048"], seeds=[0], names=["dense-n2048-seed0"]))
    assert [r.name for r in runs] == ["dense-n2048-seed0"]
    with pytest.raises(ValueError, match="unknown long runs"):
        plan.runs(Selection(tasks=["2048"], seeds=[0], names=["dense-n4096-seed0"]))


def test_long_summary_lists_holdout_runs(tmp_path):
    from reproduce.summaries import summarise_long

    rec = {"seed": 0, "metric": "accuracy", "score": 0.61, "metrics": {"accuracy": 0.61, "majority_rate": 0.506},
           "train_examples": 1106, "dev_examples": 265,
           "resolved_config": {"max_length": 1024, "epochs": 2.0, "learning_rate": 5e-5}}
    (tmp_path / "sotu_party").mkdir()
    (tmp_path / "sotu_party" / "holdout-all-2ep-n1024-seed0.json").write_text(json.dumps(rec))
    out = summarise_long(tmp_path, ["sotu_party"], {"sotu_party": [1024]})
    assert out["rows"] == [] and out["holdout"] == [
        {"name": "all-2ep", "variant": "dense", "n": 1024, "seed": 0, "metric": "accuracy", "score": 0.61,
         "majority_score": 0.506, "train_windows": 1106, "held_out_windows": 265, "epochs": 2.0, "learning_rate": 5e-5,
         "pooling": "cls"}]
    # a DendriticBERT candidate: retention and agreement vs the dense candidate it was sparsified from, same windows
    base = {**rec, "variant": "dense", "score": 0.60, "predictions": [0, 1, 1, 0]}
    dend = {**rec, "variant": "dendritic", "score": 0.57, "predictions": [0, 1, 0, 0], "sparsity_mean": 0.8,
            "target_sparsity": 0.75, "resolved_config": {**rec["resolved_config"], "model_overrides": {"gumbel": False},
                                                         "init_from": "runs/small/long/sotu_party/holdout-b-n1024-seed0"}}
    (tmp_path / "sotu_party" / "holdout-b-n1024-seed0.json").write_text(json.dumps(base))
    (tmp_path / "sotu_party" / "holdout-nonoise-n1024-seed0.json").write_text(json.dumps(dend))
    rows = {h["name"]: h for h in summarise_long(tmp_path, ["sotu_party"], {"sotu_party": [1024]})["holdout"]}
    got = rows["nonoise"]
    assert got["variant"] == "dendritic" and got["gumbel"] is False and got["dense_candidate"] == "holdout-b-n1024-seed0"
    assert got["retention"] == pytest.approx(0.95) and got["agreement"] == pytest.approx(0.75) and got["sparsity"] == 0.8


def test_long_summary_pairs_latency_only_with_the_models_it_timed(tmp_path):
    """A latency row is shown beside the accuracy rows only if it timed the models of those results (``models``:
    each timed model's result fingerprint); a retrained model gets no latency until it is timed again, even with
    the same score and predictions.  Rows that predate ``models`` are kept."""
    from dendritic.provenance import result_fingerprint
    from reproduce.summaries import summarise_long

    def result(variant, n, created, score):
        return {"seed": 0, "variant": variant, "metric": "accuracy", "score": score, "block_size": 64,
                "target_sparsity": 0.75, "sparsity_mean": 0.8, "metrics": {"majority_rate": 0.6},
                "predictions": [0, 1, 1], "dev_examples": 3, "train_examples": 9,
                "input_dependence": {"input_dependence": 0.01}, "provenance": {"created": created}}

    (tmp_path / "sotu_party").mkdir()
    for n in (1024, 2048):
        for variant, score in (("dense", 0.68), ("dendritic", 0.66)):
            (tmp_path / "sotu_party" / f"{variant}-n{n}-seed0.json").write_text(
                json.dumps(result(variant, n, f"new-{variant}-{n}", score)))
    timing = {"task": "sotu_party", "batch": 1, "seed": 0, "dense_sdpa_ms": 10.0, "dendritic_ms": 7.0,
              "ratio_vs_sdpa": 0.7}
    models = {v: result_fingerprint(json.loads((tmp_path / "sotu_party" / f"{v}-n1024-seed0.json").read_text()))
              for v in ("dense", "dendritic")}
    retrained = {**result(None, 2048, "older", 0.66), "sparsity_mean": 0.79}  # same score and predictions
    stale = {**models, "dendritic": result_fingerprint(retrained)}
    rows = [{**timing, "n": 1024, "models": models}, {**timing, "n": 2048, "models": stale}]
    (tmp_path / "latency.json").write_text(json.dumps({"rows": rows, "provenance": {}}))
    summary = summarise_long(tmp_path, ["sotu_party"], {"sotu_party": [1024, 2048]})
    out = {r["n"]: r for r in summary["rows"]}
    assert out[1024]["ratio_vs_sdpa"] == 0.7 and out[1024]["batch"] == 1
    assert out[2048]["ratio_vs_sdpa"] is None and out[2048]["batch"] is None  # timed another model: not shown
    assert summary["latency_of_other_models"] == [{"task": "sotu_party", "n": 2048, "batch": 1, "seed": 0}]
    rows[1].pop("models")  # timed before `models` was recorded: kept
    (tmp_path / "latency.json").write_text(json.dumps({"rows": rows, "provenance": {}}))
    out = {r["n"]: r for r in summarise_long(tmp_path, ["sotu_party"], {"sotu_party": [1024, 2048]})["rows"]}
    assert out[2048]["ratio_vs_sdpa"] == 0.7


def test_recipe_sparsify_runs_summary_and_retrain(tmp_path, monkeypatch):
    """[sparsify]: the GLUE plan's dense recipe run is kept and sparsified at each target on the same held-out slice;
    --runs selects runs plus what they start from; a reused dense result whose model is not in the run folder is
    trained again (the runner); the summary sets each target's score beside its dense run."""
    from reproduce import runner
    from reproduce.plans import RecipePlan, Selection
    from reproduce.summaries import summarise_recipes

    cfg = tmp_path / "small"
    cfg.mkdir()
    for name in ("phase1", "phase2", "phase3", "glue"):
        (cfg / f"{name}.toml").write_text((REPO / "reproduce/configs/small" / f"{name}.toml").read_text())
    (cfg / "recipes.toml").write_text(
        'tasks = ["cola", "rte"]\nseeds = [0]\nlearning_rates = [2e-5, 5e-5]\ninit = "minilm"\n'
        '[common]\neval_split = "train_holdout"\n[sparsify]\ntargets = [0.5, 0.7]\ntasks = ["cola"]\n')
    plan = RecipePlan.load("small", tmp_path)
    runs = plan.runs(Selection(names=["dendritic-t0.7-seed0"]))
    assert [(r.task, r.name, r.keep_model) for r in runs] == [("cola", "dense-lr5e-05-seed0", True),
                                                              ("cola", "dendritic-t0.7-seed0", False)]
    den = runs[1]
    assert den.init == "run:recipes/cola/dense-lr5e-05-seed0" and den.settings["eval_split"] == "train_holdout"
    assert den.settings["target_sparsity"] == 0.7 and den.settings["model_overrides"] == {"block_size": 1}
    with pytest.raises(ValueError, match="unknown recipe runs"):
        plan.runs(Selection(names=["dendritic-t0.9-seed0"]))

    # The runner: the dense result exists (reused) but its model does not -> trained again, then the sparsified run.
    results, run_dir = tmp_path / "results", tmp_path / "runs"
    calls = []

    def fake_run_one(run, *, preset, run_dir, results, init_from, config_dir, retrain=False):
        calls.append((run.name, retrain))
        folder = run_dir / run.group / run.task / run.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_text("w")
        score = 0.30 if run.variant == "dense" else 0.27
        rec = {"provenance": {"schema_version": 1}, "seed": 0, "task": run.task, "score": score, "metric": "matthews_correlation", "metrics": {},
               "dev_examples": 10, "train_examples": 90, "predictions": [1, 0, 1, 1], "sparsity_mean": 0.68,
               "target_sparsity": run.settings.get("target_sparsity"), "block_size": 1,
               "resolved_config": {"learning_rate": run.settings["learning_rate"], "epochs": 3.0, "batch_size": 32,
                                   "init_from": init_from}}
        if run.variant == "dendritic":
            rec["predictions"] = [1, 0, 0, 1]
        (results / run.task).mkdir(parents=True, exist_ok=True)
        (results / run.task / f"{run.name}.json").write_text(json.dumps(rec))
        return rec

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    monkeypatch.setattr(runner, "write_summaries", lambda *a, **k: {})
    (results / "recipes" / "cola").mkdir(parents=True)
    (results / "recipes" / "cola" / "dense-lr5e-05-seed0.json").write_text(  # a reused result, no model
        json.dumps({"provenance": {"schema_version": 1}}))
    runner.execute(plan, Selection(names=["dendritic-t0.7-seed0"]), preset="small", run_dir=run_dir,
                   results_root=results, config_dir=tmp_path)
    assert calls == [("dense-lr5e-05-seed0", True), ("dendritic-t0.7-seed0", False)]
    calls.clear()  # now the model is there: nothing is retrained for the other target
    runner.execute(plan, Selection(names=["dendritic-t0.5-seed0"]), preset="small", run_dir=run_dir,
                   results_root=results, config_dir=tmp_path)
    assert calls == [("dense-lr5e-05-seed0", False), ("dendritic-t0.5-seed0", False)]

    rows = summarise_recipes(results / "recipes", ["cola"])["cola"]["sparsify"]
    assert [(r["target_sparsity"], r["dense_run"]) for r in rows] == [(0.5, "dense-lr5e-05-seed0"),
                                                                     (0.7, "dense-lr5e-05-seed0")]
    assert rows[1]["retention"] == pytest.approx(0.9) and rows[1]["agreement"] == 0.75


def test_backend_check_on_a_saved_classifier(tmp_path):
    """reproduce.check_backends on a saved smoke-size classifier with real dev inputs (WNLI): the fast backends give
    the reference backend's predictions, and the paths that ran are recorded."""
    import torch
    from transformers import AutoTokenizer

    from dendritic.config import DendriticConfig
    from dendritic.modeling import DendriticBertForSequenceClassification
    from dendritic.training.phases import minilm_path
    from reproduce.check_backends import check

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = DendriticConfig.from_preset("smoke", vocab_size=tokenizer.vocab_size, block_size=4,
                                         max_position_embeddings=128, num_labels=2)
    folder = tmp_path / "dendritic-seed0"
    DendriticBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    row = check(folder, "wnli", 0, batch_size=32, max_length=128)
    assert row["dev_examples"] == 71 and row["paths"]["cpu"] == ["cpu"] and row["paths"]["reference"] == ["reference"]
    for backend in ("cpu", "masked_sdpa", "auto"):
        assert row[f"{backend}_vs_reference"]["equal_predictions"] == 1.0
        assert row[f"{backend}_vs_reference"]["max_abs_logit_diff"] < 1e-4
    assert len(set(row["score"].values())) == 1

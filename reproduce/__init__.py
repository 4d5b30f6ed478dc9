"""The experiments of the DendriticBERT artifact: plans (typed TOML files) → runs → result files → summaries →
a comparison with the committed reference; figures and tables are pure functions of the result files.

    python -m reproduce glue --preset small           # Table 1 (fresh results, then compared with the committed ones)
    python -m reproduce glue --quick --tasks wnli     # the smoke preset: minutes; must match its reference exactly
    python -m reproduce ablations | diagnostics | recipes
    python -m reproduce.make_figures                   # every figure and table from reproduce/results
    python -m reproduce.bench.latency | .kernels | .memory | .train_step | .gpu_check

Layers (one-way): ``dendritic`` (kernels ← model ← training) ← ``reproduce`` (plans, runner, summaries, benches);
``reproduce.figures`` imports neither: it reads result files only.
"""

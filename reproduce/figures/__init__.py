"""Figure and table builders, one module per family, each a pure function of result files:

    glue       Table 1, PAI-style scores + parameter efficiency, accuracy–sparsity trade-off, per-input sparsity
    training   phase-2 budget heatmap, phase-1/2 training curves
    latency    latency vs n, speedup vs sparsity, policy overhead, latency table, kernel efficiency + table
    memory     peak memory vs n + table
    ablations  ablation bars + table
    masks      example block masks on dev sentences
    gpu        GPU kernel timing table (gpu_check)
    long       long documents: accuracy + latency of the same trained models on the same windows, MLM loss

Every builder takes an :class:`~reproduce.figures.common.Output` and either writes its files or prints one
"skipped" line when an input does not exist yet.
"""

from . import ablations, glue, gpu, latency, long, masks, memory, training

FIGURES = [*glue.FIGURES, *training.FIGURES, *latency.FIGURES, *memory.FIGURES, *ablations.FIGURES, *masks.FIGURES,
           *gpu.FIGURES, *long.FIGURES]

"""GPU tables from ``results/gpu/summary.json`` (``nox -s gpu_check`` on a CUDA machine): the block-sparse kernels
vs SDPA and FlexAttention, and the end-to-end model vs its dense twin."""

from __future__ import annotations

from .common import Output, load_json, num, require


def _machine(data: dict) -> str:
    p = data.get("provenance", {})
    shas = ", ".join(f"{k} {v[:12]}" for k, v in sorted(p.get("kernel_sha256", {}).items()))
    return (f"{p.get('gpu', '?')} (sm {p.get('sm', '?')}), torch {p.get('torch', '?')}, CUDA {p.get('torch_cuda', '?')}, "
            f"CuPy {p.get('cupy', '?')}, commit {p.get('git_commit', '?')}; kernel sources (sha256) {shas}")


def table_gpu(out: Output) -> None:
    """Kernel timing on the GPU: one row per (dtype, B, n, sparsity); efficiency = (1 − s)·T_SDPA / T."""
    path = out.results / "gpu" / "summary.json"
    if not require(out, "GPU kernel table (table_gpu)", path):
        return
    data = load_json(path)
    rows = [r for r in data.get("timing", []) if isinstance(r, dict) and "ms" in r]
    if not rows:
        out.skip("GPU kernel table (table_gpu)", "gpu/summary.json has no timing rows")
        return
    # The register-tile kernel ("cupy_mma") has columns only in files that timed it.
    mma = any("cupy_mma" in r["ms"] for r in rows)
    names = ("cupy", *(("cupy_mma",) if mma else ()), "cupy_simt_fp32", "flex", "sdpa")
    effs = ("efficiency_cupy", *(("efficiency_cupy_mma",) if mma else ()), "efficiency_flex")
    header = ["dtype", "B", "H", "d", "block", "n", "achieved s", "cupy ms", *(["mma ms"] if mma else []),
              "SIMT fp32 ms", "flex ms", "SDPA ms", "eff cupy", *(["eff mma"] if mma else []), "eff flex", "cupy ÷ flex"]
    cols = ["dtype", "B", "H", "d", "block", "n", "achieved_sparsity", *(f"{b}_ms" for b in names), *effs,
            "flex_over_cupy"]
    recs = []
    for r in rows:
        ms = r["ms"]
        rec = {c: r.get(c) for c in ("dtype", "B", "H", "d", "block", "n", "achieved_sparsity", *effs)}
        rec.update({f"{b}_ms": ms.get(b) for b in names})
        rec["flex_over_cupy"] = ms["flex"] / ms["cupy"] if "flex" in ms and "cupy" in ms else None
        recs.append(rec)
    text_rows = [[num(rec[c], 3) if isinstance(rec[c], float) else ("" if rec[c] is None else str(rec[c]))
                  for c in cols] for rec in recs]
    model = [m for m in data.get("model", []) if isinstance(m, dict) and "dendritic_ms" in m]
    caption = [
        "Block-sparse attention on the GPU: the package's `cupy` backend (tensor-core WMMA forward for fp16/bf16"
        + (", and `mma`: the register-tile mma.m16n8k16 forward" if mma else "") + "), "
        "the SIMT kernel on fp32 copies, compiled FlexAttention with the same BlockMask, dense SDPA; CUDA-event "
        "medians; random block masks with the diagonal/[CLS] floor. efficiency = (1 − s)·T_SDPA / T "
        "(1.0 = skipped blocks turned into time as fast as SDPA computes kept ones); cupy ÷ flex > 1 = cupy faster.",
        f"Machine: {_machine(data)}.",
    ]
    if model:
        worst = max(m["ratio_vs_sdpa"] for m in model)
        best = min(m["ratio_vs_sdpa"] for m in model)
        caption.append(f"End to end (random weights, block 64, fp16, B = 1, {len(model)} configurations, "
                       f"n = {min(m['n'] for m in model)}–{max(m['n'] for m in model)}): DendriticBERT on `cupy` "
                       f"takes {best:.1f}–{worst:.1f}× its dense twin under SDPA.")
    for rerun in data.get("reruns", []):
        caption.append(f"Steps {', '.join(rerun.get('steps', []))} are from a later run on the same machine class "
                       f"(provenance in the file's `reruns`).")
    out.table("table_gpu", header, text_rows, caption, [path], "GPU kernel timing rows", csv_header=cols,
              csv_rows=[[rec[c] for c in cols] for rec in recs])


FIGURES = [table_gpu]

"""Every GPU check in one unattended run: any CUDA machine runs ``python -m reproduce.bench.gpu_check``
(``nox -s gpu_check``).

1. the ``gpu``-marked tests (pytest), pass/fail counts;
2. correctness of the "cupy" backend against an fp64 reference on a grid of dtypes, head dims, block sizes, lengths;
3. backward: dQ, dK, dV of the backward kernel against fp64 autograd, and loss curves of a small attention
   regressor trained with hard masks on the "cupy" backend vs the "reference" backend (same init, data, masks);
4. a timing table — the package's backends as the model calls them (``block_sparse_attention(..., backend=...)``:
   "cupy" and "flex", the latter torch.compile'd FlexAttention with the same BlockMask) vs SDPA (dense) vs eager
   dense (materialised n x n) — over n, sparsity, dtype and batch, with CUDA events, warm-up and medians,
   and the efficiency (1 - s) * T_sdpa / T_cupy (1.0 = the block-sparse kernel turns skipped blocks into time
   saved exactly as fast as dense SDPA computes the kept ones); the SIMT kernel on fp32 copies beside the
   tensor-core one;
5. the end-to-end model (fp16, block 64) vs its dense twin under SDPA at n = 2048 .. 8192;
   and one profiled forward (top operators by CUDA and CPU time);
6. one JSON with provenance, written atomically (and copied to ``$OUT`` when that is set).

Everything is bounded by ``--budget-s``: the timing grid runs cheapest first and skips what would not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import torch

from dendritic.bench import cuda_median_ms, eager_attention
from dendritic.provenance import atomic_write_json
from dendritic.provenance import provenance as base_provenance

from ..paths import REPO, RESULTS

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
STEPS = ("tests", "correctness", "backward", "training", "timing", "model", "model_profile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=RESULTS / "gpu" / "summary.json")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget for the whole script (s)")
    p.add_argument("--test-timeout-s", type=float, default=120.0, help="limit for the pytest run (s)")
    p.add_argument("--skip-tests", action="store_true", help="skip step 1 (the gpu-marked tests)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-call-s", type=float, default=0.5, help="skip a backend whose single call exceeds this")
    p.add_argument("--eager-max-gb", type=float, default=24.0, help="skip eager when its n x n tensors exceed this")
    p.add_argument("--backends", nargs="+", default=["cupy", "cupy_mma", "cupy_simt_fp32", "flex", "sdpa", "eager"])
    p.add_argument("--steps", nargs="+", default=None, choices=STEPS,
                   help="run only these steps (default: all); with --update the others are kept from --out")
    p.add_argument("--update", action="store_true",
                   help="start from the existing --out file: replace the steps run now and append this run's "
                        "provenance, arguments and steps to its 'reruns' list")
    return p.parse_args(argv)


# -- provenance ------------------------------------------------------------------------------------------------------


def _run(cmd) -> str:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
    except Exception as e:  # noqa: BLE001 — provenance is best effort, recorded as such
        return f"unavailable ({type(e).__name__})"


def provenance() -> dict:
    """The shared provenance record plus the GPU, CUDA and kernel-source facts the timings depend on."""
    from dendritic.kernels.cupy_backend import CUDA_DIR, KERNELS

    info = {
        **base_provenance(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "kernel_sha256": {spec["source"]: hashlib.sha256((CUDA_DIR / spec["source"]).read_bytes()).hexdigest()
                          for spec in KERNELS.values()},
        "nvidia_smi": _run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
        ),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["sm"] = f"{p.major}.{p.minor}"
        info["multiprocessors"] = p.multi_processor_count
        info["memory_gib"] = round(p.total_memory / 2**30, 1)
    try:
        import cupy

        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        info["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as e:  # noqa: BLE001
        info["cupy"] = f"unavailable: {e}"
    return info


# -- 1. gpu-marked tests ---------------------------------------------------------------------------------------------


def run_gpu_tests(timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "--continue-on-collection-errors", str(REPO / "tests")]  # fmt: skip
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
            rc, log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, log = (
                "timeout",
                (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout),
            )
        result = {"returncode": rc, "wall_s": round(time.perf_counter() - t0, 1), "log_tail": log[-4000:]}
        if xml.is_file():
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            result.update(counts)
            result["failed_tests"] = [
                f"{case.get('classname')}::{case.get('name')}"
                for case in suite.iter("testcase")
                if case.find("failure") is not None or case.find("error") is not None
            ]
    return result


# -- 2. correctness grid ---------------------------------------------------------------------------------------------


def correctness_grid() -> list[dict]:
    """Every forward variant against fp64: fp32 on the SIMT kernel, fp16/bf16 on each tensor-core kernel
    ("tc" WMMA, "mma" register tiles); the row's ``kernel`` names the one that ran."""
    from dendritic.kernels.checks import check_against_fp64, make_case
    from dendritic.kernels.cupy_backend import TC_KERNELS, forward_variant

    rows = []
    for dtype_name in ("fp32", "fp16", "bf16"):
        kernels = TC_KERNELS if forward_variant(DTYPES[dtype_name]) != "simt" else ("simt",)
        for kernel in kernels:
            for d in (32, 64, 128):
                for bs in (16, 32, 64):
                    for n, kf, pad in ((97, 0.3, 0.3), (1025, 0.6, 0.0), (2000, 1.0, 0.2)):
                        case = make_case(2, 4, n, d, bs, kf, dtype=DTYPES[dtype_name], pad_frac=pad, seed=n + d + bs)
                        e = check_against_fp64(*case, bs, None if kernel == "simt" else kernel)
                        ok = (e["all_finite"] and e["err"] <= e["allowed"] and e["lse_err"] <= 1e-3
                              and e["lse_empty_ok"])
                        errs = {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in e.items()}
                        rows.append({"dtype": dtype_name, "kernel": kernel, "d": d, "block": bs, "n": n, "keep": kf,
                                     "pad": pad, "ok": ok, **errs})
    return rows


def backward_grid() -> list[dict]:
    """dQ, dK, dV of the backward kernel against fp64 autograd (flash-attention's rule: within 2x PyTorch's own
    error in the dtype, plus a small floor)."""
    from dendritic.kernels import block_sparse_attention
    from dendritic.kernels.checks import FLOOR, make_case, token_mask

    rows = []
    for dtype_name in ("fp32", "fp16", "bf16"):
        dtype = DTYPES[dtype_name]
        for d, bs in ((32, 16), (64, 32), (64, 64), (128, 64)):
            for n in (97, 1025):
                q, k, v, nkb, idx, pad = make_case(1, 4, n, d, bs, 0.5, dtype=dtype, pad_frac=0.2, seed=n + d)
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                dout = torch.randn_like(q)
                out = block_sparse_attention(q, k, v, nkb, idx, block_size=bs, key_padding_mask=pad, backend="cupy")
                got = torch.autograd.grad(out, (q, k, v), dout)
                tok = token_mask(nkb, idx, bs, n, pad)

                def ref(dt):
                    qd, kd, vd = (t.detach().to(dt).requires_grad_() for t in (q, k, v))
                    live = tok.any(-1, keepdim=True)
                    logits = (qd @ kd.transpose(-1, -2)) * d**-0.5
                    probs = torch.softmax(logits.masked_fill(~tok, float("-inf")).masked_fill(~live, 0.0), -1) * live
                    return torch.autograd.grad(probs @ vd, (qd, kd, vd), dout.to(dt))

                exact, own = ref(torch.float64), ref(dtype)
                row = {"dtype": dtype_name, "d": d, "block": bs, "n": n}
                for name, g, r, o in zip(("dq", "dk", "dv"), got, exact, own):
                    err, allowed = float((g.double() - r).abs().max()), float(2 * (o.double() - r).abs().max()) + 10 * FLOOR[dtype]
                    row[f"{name}_err"], row[f"{name}_allowed"] = float(f"{err:.3g}"), float(f"{allowed:.3g}")
                row["ok"] = all(row[f"{x}_err"] <= row[f"{x}_allowed"] for x in ("dq", "dk", "dv"))
                rows.append(row)
    return rows


def training_curves(steps: int = 60) -> list[dict]:
    """Training with hard masks through the backward kernel: a one-layer attention regressor (fp32 master weights,
    q/k/v cast to the kernel's dtype) trained with Adam from the same initialisation, data and fixed block masks
    on the ``cupy`` backend and on the ``reference`` backend (dense masked math under autograd, same dtype); both
    loss curves and their largest relative gap.  The model itself trains through the relaxed (soft-mask) path, so
    this is the kernel's share of a hard-mask training step, isolated."""
    from dendritic.kernels import block_sparse_attention
    from dendritic.kernels.checks import make_case

    rows = []
    B, H, n, d, bs, width = 4, 2, 256, 32, 16, 64
    for dtype_name in ("fp32", "bf16", "fp16"):
        dtype = DTYPES[dtype_name]
        _, _, _, nkb, idx, pad = make_case(B, H, n, d, bs, 0.5, dtype=torch.float32, pad_frac=0.1, seed=7)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, n, width, generator=g).cuda()
        target = torch.randn(B, n, width, generator=g).cuda()
        curves = {}
        for backend in ("cupy", "reference"):
            torch.manual_seed(0)
            qkv, proj = torch.nn.Linear(width, 3 * H * d).cuda(), torch.nn.Linear(H * d, width).cuda()
            opt = torch.optim.Adam([*qkv.parameters(), *proj.parameters()], lr=3e-3)
            losses = []
            for _ in range(steps):
                q, k, v = qkv(x).view(B, n, 3, H, d).permute(2, 0, 3, 1, 4).to(dtype).contiguous().unbind(0)
                out = block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), nkb, idx, block_size=bs,
                                             key_padding_mask=pad, backend=backend)
                loss = torch.nn.functional.mse_loss(proj(out.float().transpose(1, 2).reshape(B, n, H * d)), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
            curves[backend] = losses
        gap = max(abs(a - b) / abs(b) for a, b in zip(curves["cupy"], curves["reference"]))
        rows.append({"dtype": dtype_name, "steps": steps, "B": B, "H": H, "n": n, "d": d, "block": bs,
                     "loss_cupy": [round(v, 5) for v in curves["cupy"]],
                     "loss_reference": [round(v, 5) for v in curves["reference"]],
                     "max_rel_gap": float(f"{gap:.3g}"),
                     "loss_drop": round(curves["reference"][0] - curves["reference"][-1], 5)})
        print(f"train {dtype_name}: loss {curves['cupy'][0]:.4f} -> {curves['cupy'][-1]:.4f} (cupy), "
              f"{curves['reference'][-1]:.4f} (reference); max relative gap {gap:.3g}", flush=True)
    return rows


def model_timing(args, deadline: float) -> list[dict]:
    """End to end: DendriticBERT (MiniLM-L6 and BERT-base shapes, random weights, block 64, fp16) on the cupy backend
    vs its dense twin (transformers BertModel, SDPA) at n = 2048 .. 8192, B = 1; CUDA events, medians."""
    from dendritic.bench import cuda_median_ms, dense_twin, shaped_model

    rows = []
    for preset in ("small", "paper"):
        for n in (2048, 4096, 8192):
            for s in (0.5, 0.75, 0.9):
                if time.perf_counter() > deadline:
                    rows.append({"preset": preset, "n": n, "target_sparsity": s, "skipped": "time budget"})
                    continue
                try:
                    model = shaped_model(preset, n, block_size=64, attention_backend="cupy").cuda().half()
                    twin = dense_twin(model, "sdpa").cuda().half()
                    ids = torch.randint(0, 30000, (1, n), device="cuda")
                    budgets = torch.full_like(model.head_budgets, s)
                    with torch.inference_mode():
                        achieved = float(model(ids, head_budgets=budgets).block_sparsity.mean())
                        t_sparse = cuda_median_ms(lambda m=model: m(ids, head_budgets=budgets), warmup=2, repeats=5)
                        t_dense = cuda_median_ms(lambda t=twin: t(ids), warmup=2, repeats=5)
                    rows.append({"preset": preset, "n": n, "target_sparsity": s, "achieved_sparsity": achieved,
                                 "dendritic_ms": round(t_sparse, 3), "dense_sdpa_ms": round(t_dense, 3),
                                 "ratio_vs_sdpa": round(t_sparse / t_dense, 4), "dtype": "fp16", "B": 1})
                    print(f"model {preset} n={n} s={achieved:.2f}: cupy {t_sparse:.2f} ms vs sdpa {t_dense:.2f} ms",
                          flush=True)
                    del model, twin
                    torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001 — recorded per row, the others still run
                    rows.append({"preset": preset, "n": n, "target_sparsity": s,
                                 "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return rows


def model_profile(n: int = 2048, sparsity: float = 0.75) -> dict:
    """Where the end-to-end model's time goes on the GPU: one profiled forward (MiniLM-L6 shapes, fp16, block 64,
    cupy backend, B = 1) after warm-up; the top operators by self CUDA time and by CPU time, as text tables."""
    from torch.profiler import ProfilerActivity, profile

    from dendritic.bench import shaped_model

    model = shaped_model("small", n, block_size=64, attention_backend="cupy").cuda().half()
    ids = torch.randint(0, 30000, (1, n), device="cuda")
    budgets = torch.full_like(model.head_budgets, sparsity)
    with torch.inference_mode():
        for _ in range(3):
            model(ids, head_budgets=budgets)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(ids, head_budgets=budgets)
            torch.cuda.synchronize()
    table = prof.key_averages()
    return {"preset": "small", "n": n, "target_sparsity": sparsity, "B": 1, "dtype": "fp16",
            "by_cuda_time": table.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60),
            "by_cpu_time": table.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60)}


# -- 3. timing -------------------------------------------------------------------------------------------------------


def timing_table(args, deadline: float) -> list[dict]:
    import torch.nn.functional as F

    from dendritic.kernels import block_sparse_attention, validate_inputs
    from dendritic.kernels.cupy_backend import cupy_attention_forward
    from dendritic.kernels.layout import dense_to_block_mask, random_block_mask

    H, d, bs = args.heads, args.head_dim, args.block_size
    scale = d**-0.5
    rows, slow = [], {}  # slow: backend -> smallest work B*n*n at which one call exceeded max_call_s
    combos = [(B, dt, n) for dt in args.dtypes for B in args.batches for n in sorted(args.lengths)]
    for B, dtype_name, n in combos:
        dtype = DTYPES[dtype_name]
        nb = -(-n // bs)
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(B, H, n, d, generator=g).to("cuda", dtype) for _ in range(3))
        dense_ms = {}
        for sparsity in args.sparsities:
            if time.perf_counter() > deadline:
                rows.append(
                    {"B": B, "dtype": dtype_name, "n": n, "target_sparsity": sparsity, "skipped": "time budget"}
                )
                continue
            keep = random_block_mask(B, H, nb, 1.0 - sparsity, generator=g)  # (B, H, nb, nb) incl. the floor
            kv_num_blocks, kv_indices = (t.cuda() for t in dense_to_block_mask(keep))
            achieved = round(1.0 - keep.float().mean().item(), 4)
            validate_inputs(q, k, v, kv_num_blocks, kv_indices, bs, None, check_values=True)
            row = {"B": B, "H": H, "d": d, "block": bs, "dtype": dtype_name, "n": n, "target_sparsity": sparsity,
                   "achieved_sparsity": achieved, "ms": {}, "notes": {}}  # fmt: skip
            # As the model calls them: the mask was checked once above (validate_inputs), no host reads per call.
            backend = partial(block_sparse_attention, q, k, v, kv_num_blocks, kv_indices, block_size=bs,
                              key_padding_mask=None, scale=scale, check_values=False)
            q32, k32, v32 = (t.float() for t in (q, k, v))
            fns = {
                "cupy": partial(backend, backend="cupy"),  # the package's backends, as the model calls them
                # the register-tile tensor-core forward (opt-in until measured here), same inputs and outputs
                "cupy_mma": lambda: cupy_attention_forward(q, k, v, kv_num_blocks, kv_indices, block_size=bs,
                                                           key_padding_mask=None, scale=scale, kernel="mma")[0],
                # the SIMT kernel (fp32 inputs): what the tensor-core kernel replaces for fp16/bf16
                "cupy_simt_fp32": partial(block_sparse_attention, q32, k32, v32, kv_num_blocks, kv_indices,
                                          block_size=bs, key_padding_mask=None, scale=scale, backend="cupy",
                                          check_values=False),
                "sdpa": partial(F.scaled_dot_product_attention, q, k, v, scale=scale),
                "eager": partial(eager_attention, q, k, v, scale),
            }
            if "flex" in args.backends:
                fns["flex"] = partial(backend, backend="flex")
                try:
                    fns["flex"]()  # compiles for this shape, outside the timing
                except Exception as e:  # noqa: BLE001 — recorded, never replaced by another backend
                    row["notes"]["flex"] = f"error: {type(e).__name__}: {str(e)[:300]}"
                    fns.pop("flex", None)
            # Correctness before timing: cupy against flex (same BlockMask) and, when dense, against SDPA; the
            # register-tile kernel against the default one.
            checks = [("cupy", "flex", "flex")] if "flex" in fns else []
            checks += [("cupy", "sdpa", "sdpa")] if keep.all() else []
            checks += [("cupy_mma", "cupy", "cupy")] if "cupy_mma" in args.backends else []
            for mine, label, other in checks:
                try:
                    diff = (fns[mine]().float() - fns[other]().float()).abs().max().item()
                    row[f"max_abs_diff_{mine}_{label}"] = float(f"{diff:.3g}")
                except Exception as e:  # noqa: BLE001
                    row["notes"][f"check_{mine}_{label}"] = f"error: {type(e).__name__}: {str(e)[:300]}"
            for name in args.backends:
                if name not in fns:
                    continue
                if name in ("sdpa", "eager") and name in dense_ms:  # dense baselines ignore the mask: time once
                    row["ms"][name] = dense_ms[name]
                    continue
                if name == "eager" and 3 * B * H * n * n * q.element_size() > args.eager_max_gb * 2**30:
                    row["notes"][name] = "skipped: n x n tensors over --eager-max-gb"
                    continue
                if name in slow and slow[name] <= B * n * n:
                    row["notes"][name] = f"skipped: a smaller shape already took over {args.max_call_s}s per call"
                    continue
                if time.perf_counter() > deadline:
                    row["notes"][name] = "skipped: time budget"
                    continue
                try:
                    t0 = time.perf_counter()
                    fns[name]()
                    torch.cuda.synchronize()
                    if name != "flex" and time.perf_counter() - t0 > args.max_call_s:
                        slow[name] = B * n * n
                    ms = cuda_median_ms(fns[name], warmup=args.warmup, repeats=args.repeats)
                    row["ms"][name] = round(ms, 4)
                    if name in ("sdpa", "eager"):
                        dense_ms[name] = row["ms"][name]
                    if ms / 1e3 > args.max_call_s:
                        slow[name] = min(slow.get(name, B * n * n), B * n * n)
                except torch.cuda.OutOfMemoryError:
                    row["notes"][name] = "skipped: out of memory"
                    torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001
                    row["notes"][name] = f"error: {type(e).__name__}: {str(e)[:300]}"
            ms, s = row["ms"], row["achieved_sparsity"]
            if "cupy" in ms and "sdpa" in ms:
                row["efficiency_cupy"] = round((1 - s) * ms["sdpa"] / ms["cupy"], 4)
                row["speedup_cupy_vs_sdpa"] = round(ms["sdpa"] / ms["cupy"], 4)
            if "cupy_mma" in ms and "sdpa" in ms:
                row["efficiency_cupy_mma"] = round((1 - s) * ms["sdpa"] / ms["cupy_mma"], 4)
            if "flex" in ms and "sdpa" in ms:
                row["efficiency_flex"] = round((1 - s) * ms["sdpa"] / ms["flex"], 4)
            flops = 4 * B * H * n * n * d * (1 - s)  # kept QK^T and PV multiply-adds x 2
            if "cupy" in ms:
                row["cupy_tflops"] = round(flops / (ms["cupy"] * 1e-3) / 1e12, 2)
            rows.append(row)
            print(_format_row(row), flush=True)
        torch.cuda.empty_cache()
    return rows


def _format_row(r: dict) -> str:
    if "skipped" in r:
        return f"B={r['B']} {r['dtype']} n={r['n']:>5} s={r['target_sparsity']:.2f}  skipped: {r['skipped']}"
    ms = r["ms"]

    def cell(name):
        return f"{ms[name]:9.3f}" if name in ms else f"{'-':>9}"

    return (
        f"B={r['B']} {r['dtype']} n={r['n']:>5} s={r['achieved_sparsity']:.2f}"
        f"  cupy {cell('cupy')}  mma {cell('cupy_mma')}  flex {cell('flex')}  sdpa {cell('sdpa')}"
        f"  eager {cell('eager')} ms  eff_cupy {r.get('efficiency_cupy', '-')}  eff_mma {r.get('efficiency_cupy_mma', '-')}"
        f"  eff_flex {r.get('efficiency_flex', '-')}"
    )


# -- 4. output -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    this_run = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "provenance": provenance(),
    }
    if args.update:
        if not args.out.is_file():
            raise SystemExit(f"--update: {args.out} does not exist")
        summary = json.loads(args.out.read_text())
        this_run["steps"] = args.steps or list(STEPS)
        summary.setdefault("reruns", []).append(this_run)  # the same dict: save() fills in its wall_s
    else:
        summary = this_run

    def save():
        this_run["wall_s"] = round(time.perf_counter() - t_start, 1)  # the summary itself, or its 'reruns' entry
        atomic_write_json(args.out, summary)
        if os.environ.get("OUT") and Path(os.environ["OUT"]).resolve() != args.out.parent.resolve():
            shutil.copy(args.out, Path(os.environ["OUT"]) / "summary.json")

    if not torch.cuda.is_available():  # nothing measured: no result file (the committed one stays as it is)
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    steps = [("correctness", correctness_grid), ("backward", backward_grid), ("training", training_curves)]
    if not args.skip_tests:
        steps.insert(
            0, ("tests", lambda: run_gpu_tests(min(args.test_timeout_s, max(10.0, deadline - time.perf_counter()))))
        )
    steps.append(("timing", lambda: timing_table(args, deadline - 60.0)))
    steps.append(("model", lambda: model_timing(args, deadline - 20.0)))
    steps.append(("model_profile", model_profile))
    if args.steps:
        steps = [(name, step) for name, step in steps if name in args.steps]
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            summary[name] = step()
        except Exception:  # noqa: BLE001 — one broken step must not lose the others' results
            summary[name] = {"error": traceback.format_exc()[-3000:]}
        summary[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] done in {summary[f'{name}_wall_s']} s", flush=True)
        save()

    tests = summary.get("tests", {})
    corr = summary.get("correctness", [])
    n_ok = sum(r["ok"] for r in corr) if isinstance(corr, list) else 0
    print("\n=== summary ===")
    if tests:
        print(f"gpu tests: {tests.get('passed')} passed, {tests.get('failures')} failed, {tests.get('errors')} errors, "
              f"{tests.get('skipped')} skipped (rc {tests.get('returncode')})")  # fmt: skip
    if isinstance(corr, list):
        worst = max(corr, key=lambda r: r["err"] / r["allowed"]) if corr else None
        print(
            f"correctness: {n_ok}/{len(corr)} ok; worst err/allowed {worst['err'] / worst['allowed']:.3f} {worst}"
            if worst
            else ""
        )
    else:
        print(f"correctness: {corr}")
    timing = summary.get("timing", [])
    if isinstance(timing, list):
        for r in timing:
            print(_format_row(r))
    else:
        print(f"timing: {timing}")
    print(f"wrote {args.out} in {this_run['wall_s']} s")
    ok = isinstance(corr, list) and n_ok == len(corr) and (not tests or tests.get("returncode") == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

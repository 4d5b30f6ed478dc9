"""Latency sweep at three levels — kernel, layer, model — each against dense SDPA and HF-eager baselines timed in the
same run, with the Amdahl bound on every model row.

Levels (fp32, CPU, inference mode):

* ``kernel`` — attention alone, q/k/v (B, 12, n, d) random: ``block_sparse_attention`` per backend (``cpu``,
  ``flex``; ``reference`` only for n <= --reference-max-n) on a random block mask with the safety floor (diagonal +
  block-0 column), vs ``F.scaled_dot_product_attention`` (``sdpa``) and attention that materialises the n×n
  probabilities like HF's eager path (``eager``).  Rows also store ``ideal_ms`` = (1 − s)·T_sdpa.
* ``layer`` — one ``DendriticSelfAttention`` forward (layer 0 of the model below, eval mode) including scorer,
  gate, threshold and mask compaction, vs layer 0 of the dense twin (HF ``BertSelfAttention``, same weights) under
  ``sdpa`` and ``eager``.  Breakdown, timed in the same rounds: ``policy_ms`` (``block_policy``:
  scorer + gate + perforation), ``mask_ms`` (``dense_to_block_mask``), ``kernel_ms`` (``block_sparse_attention``).
* ``model`` — a full ``DendriticBertModel`` forward (backends ``cpu``, ``flex``) vs its dense twins: plain
  ``transformers.BertModel`` instances with the SAME weights under ``attn_implementation`` = ``"eager"`` and
  ``"sdpa"`` (:func:`dendritic.bench.dense_twin`).

Models have random weights with the shapes of MiniLM-L6 (``small`` preset: 6 layers, hidden 384, 12 heads, d=32)
and BERT-base (``paper`` preset: 12 layers, hidden 768, 12 heads, d=64): weights do not change the work done.
Block size 64 by default (kernel-friendly; recorded per row).  Achieved sparsity is what ran — the model's
``block_sparsity`` output (mean over layers and batch), the layer's policy, or the kernel's random mask — never the
target.  Lengths beyond 512 use a latency-only config with ``max_position_embeddings = n`` (rows say
``positions_extended: true``).

Method: every configuration is checked once before timing (the sparse forward against the same model on the
``reference`` backend — same masks in eval mode; whole batches, or the first sequence at large n);
then one warm-up round and ``rounds`` INTERLEAVED rounds (every backend of a configuration once per round, order
rotated) — median and p90 per backend, ratios per round (T_x / T_sdpa, T_x / T_eager) then their median.

Attention share (model rows): in the same rounds the dense model also runs with its attention core replaced by an
identity (a registered transformers attention function returning V: Q/K/V/output projections, FFN, norms, masks
all still run; QKᵀ, softmax and PV do not).  ``attention_share`` = median over rounds of 1 − T_no_attention /
T_sdpa — the part of the dense SDPA forward that block sparsity can remove.  ``amdahl_bound`` = 1 − s × share (the
smallest reachable ratio_vs_sdpa at achieved sparsity s), ``amdahl_fraction`` = (1 − ratio_vs_sdpa) /
(1 − amdahl_bound): the fraction of the reachable saving realised (None when s × share = 0).  A measured share
outside (0, 1) — timing noise on a loaded machine — is kept as ``attention_share_invalid`` and yields no bound.

The default sweep is bounded by ``--time-budget-s``: configurations run in priority order (model level B=1 for
MiniLM then BERT-base, all n; kernel and layer B=1; then B=8; then B=32 where n <= --batch32-max-n) and a
configuration whose estimated time does not fit the remaining budget is skipped and listed under ``skipped``.
Results are rewritten (atomically) after every configuration.

    python -m reproduce.bench.latency                  # default sweep, ~20 min on 2 idle cores
    python -m reproduce.bench.latency --quick          # smoke grid, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from dendritic.bench import (block_mask_for_sparsity, check_against_reference, check_model_against_reference,
                             dense_twin, eager_attention, eager_fits, interleaved, load_average, median_p90, paired_ratio,
                             shaped_model)
from dendritic.config import DendriticConfig
from dendritic.kernels import block_sparse_attention
from dendritic.kernels.layout import dense_to_block_mask
from dendritic.modeling import DendriticBertModel
from dendritic.provenance import atomic_write_json, provenance

from ..paths import RESULTS

OUT = RESULTS / "latency" / "summary.json"
MODELS = {"minilm-l6": "small", "bert-base": "paper"}  # result name -> DendriticConfig preset (shapes only)
NO_ATTENTION = "bench_no_attention"  # registered attention function: identity on V (for the attention share)


def _no_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention replaced by identity: returns V as (B, n, H, dh), the layout attention functions return."""
    return value.transpose(1, 2).contiguous(), None


AttentionInterface.register(NO_ATTENTION, _no_attention)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--levels", nargs="+", default=["model", "kernel", "layer"], choices=["model", "kernel", "layer"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9], help="target sparsities")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch32-max-n", type=int, default=512, help="B=32 only up to this n (where it is cheap)")
    p.add_argument("--backends", nargs="+", default=["auto", "cpu", "flex"], choices=["auto", "cpu", "flex", "masked_sdpa"],
                   help="sparse backends ('auto': the model's per-call choice; not at kernel level)")
    p.add_argument("--reference-max-n", type=int, default=1024, help="time the reference backend (kernel level) up to n")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7, help="most interleaved rounds per configuration")
    p.add_argument("--min-rounds", type=int, default=3, help="fewest rounds (slow configurations drop to this)")
    p.add_argument("--config-target-s", type=float, default=45.0, help="rounds are cut so a configuration takes ~this")
    p.add_argument("--eager-max-gib", type=float, default=6.0, help="skip eager when its n×n buffers exceed this")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (recorded)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop starting configurations after this (default 1200 s; --quick: 120 s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke grid: MiniLM, n=256, block 32, s in {0, 0.5}, B=1, cpu backend only")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.lengths, args.sparsities, args.batches = ["minilm-l6"], [256], [0.0, 0.5], [1]
        args.backends = ["auto", "cpu"]  # flex compiles per shape (seconds): the smoke grid leaves it out
        args.block_size, args.rounds, args.min_rounds = 32, 3, 3
    if args.time_budget_s is None:  # an explicit budget wins, also with --quick (tests on slow machines)
        args.time_budget_s = 120.0 if args.quick else 1200.0
    if args.min_rounds > args.rounds:
        p.error("--min-rounds must not exceed --rounds")
    return args


# -- plan ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    level: str
    model: str
    n: int
    batch: int


def plan(args) -> list[Config]:
    """Configurations in priority order (the budget cuts from the end)."""
    out: list[Config] = []

    def add(level, batches, max_n=None):
        if level not in args.levels:
            return
        for b in batches:
            if b not in args.batches:
                continue
            for model in args.models:
                for n in args.lengths:
                    if max_n is None or n <= max_n:
                        out.append(Config(level, model, n, b))

    add("model", [1])
    add("kernel", [1])
    add("layer", [1])
    for level in ("model", "kernel", "layer"):
        add(level, [8])
    for level in ("model", "kernel", "layer"):
        add(level, [32], args.batch32_max_n)
    return out


class Budget:
    """Wall-clock budget with a per-level cost model: seconds per call ≈ c_level × work, work ∝ FLOPs of a forward."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.time(), seconds
        self.rate: dict[str, float] = {}

    def remaining(self) -> float:
        return self.seconds - (time.time() - self.t0)

    def per_call(self, level: str, work: float) -> float | None:
        return self.rate[level] * work if level in self.rate else None

    def observe(self, level: str, work: float, mean_call_s: float) -> None:
        self.rate[level] = max(self.rate.get(level, 0.0), mean_call_s / work)  # conservative: the slowest seen


def work(cfg: Config, hidden: int, layers: int) -> float:
    """Relative FLOPs of one dense forward at this level: attention 4n²d + (layer, model) linear 24nd² per layer."""
    n, d = cfg.n, hidden
    att = 4 * n * n * d
    if cfg.level == "kernel":
        return cfg.batch * att
    per_layer = att + (8 * n * d * d if cfg.level == "layer" else 24 * n * d * d)
    return cfg.batch * per_layer * (1 if cfg.level == "layer" else layers)


# -- models ----------------------------------------------------------------------------------------------------------
_model_cache: dict = {}


def get_model(name: str, n: int, block_size: int) -> tuple[DendriticBertModel, dict, bool]:
    """A random-weight DendriticBertModel with the named shapes (eval mode), its dense twins (HF ``BertModel``, same
    weights) under sdpa / eager / no attention, and whether positions were extended beyond 512."""
    key = (name, max(n, 512), block_size)
    if key not in _model_cache:
        _model_cache.clear()  # one model at a time (BERT-base is 440 MB)
        model = shaped_model(MODELS[name], n, block_size=block_size)
        twins = {impl: dense_twin(model, impl) for impl in ("sdpa", "eager", NO_ATTENTION)}
        _model_cache[key] = (model, twins, model.config.max_position_embeddings > 512)
    return _model_cache[key]


def budgets_at(model: DendriticBertModel, s: float) -> torch.Tensor:
    """(L, H) budgets of target sparsity ``s`` for every head, passed per call (the model is not changed)."""
    return torch.full_like(model.head_budgets, float(s))


# -- one configuration per level: returns (fns, meta per candidate, group-level extras) ------------------------------
def sparse_keys(args):
    return [(backend, s) for backend in args.backends for s in args.sparsities]


def kernel_config(args, c: Config, hidden: int, H: int):
    d, bs, n, B = hidden // H, args.block_size, c.n, c.batch
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))  # (B, H, n, d)
    nb = -(-n // bs)
    fns, meta = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}, {"sdpa": {}}
    if eager_fits(B, H, n, args.eager_max_gib):
        fns["eager"], meta["eager"] = (lambda: eager_attention(q, k, v)), {}
    backends = [b for b in args.backends if b != "auto"] + (["reference"] if n <= args.reference_max_n else [])
    for s in args.sparsities:
        keep = block_mask_for_sparsity(B, H, nb, s, seed=1)  # (B, H, nb, nb) random, floor included
        kvn, kvi = dense_to_block_mask(keep)
        achieved = 1.0 - keep.float().mean().item()
        for backend in backends:
            fn = (lambda b=backend, kvn=kvn, kvi=kvi: block_sparse_attention(q, k, v, kvn, kvi, block_size=bs, backend=b))
            out = fn()  # the first flex call compiles here, outside the timing
            check = check_against_reference(out, q, k, v, kvn, kvi, block_size=bs) if backend != "reference" else None
            fns[(backend, s)] = fn
            meta[(backend, s)] = {"achieved_sparsity": achieved, "correctness": check}
    return fns, meta, {}


def layer_config(args, c: Config, model: DendriticBertModel, twins: dict):
    cfg, attn = model.config, model.encoder.layer[0].attention.self
    B, n, bs = c.batch, c.n, args.block_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, n, cfg.hidden_size, generator=g)  # (B, n, hidden)
    shape = (B, n, -1, attn.attention_head_size)
    q, k, v = (proj(x).view(shape).transpose(1, 2).contiguous() for proj in (attn.query, attn.key, attn.value))
    key_padding = torch.ones(B, n, dtype=torch.bool)

    fns, meta = {"sdpa": (lambda: twins["sdpa"].encoder.layer[0].attention.self(x))}, {"sdpa": {}}
    if eager_fits(B, cfg.num_attention_heads, n, args.eager_max_gib):
        fns["eager"], meta["eager"] = (lambda: twins["eager"].encoder.layer[0].attention.self(x)), {}
    for s in args.sparsities:
        budgets = budgets_at(model, s)
        call = lambda b=args.backends[0], budgets=budgets: model.policy_call(attention_backend=b, head_budgets=budgets)  # noqa: E731
        policy = attn.block_policy(x, q, k, key_padding, call())
        kvn, kvi = dense_to_block_mask(policy.hard)
        achieved = policy.block_sparsity.mean().item()
        fns[("policy", s)] = (lambda call=call: attn.block_policy(x, q, k, key_padding, call()))
        fns[("mask", s)] = (lambda hard=policy.hard: dense_to_block_mask(hard))
        for backend in args.backends:
            run = (lambda b=backend, budgets=budgets: attn(x, policy_call=model.policy_call(attention_backend=b, head_budgets=budgets)))
            ref = attn(x, policy_call=model.policy_call(attention_backend="reference", head_budgets=budgets))[0]
            probe = model.policy_call(attention_backend=backend, head_budgets=budgets)
            out = attn(x, policy_call=probe)[0]  # the first flex call compiles here, outside the timing
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
            path = probe.paths[0]  # what ran ("auto" resolved)
            fns[(backend, s)] = run
            fns[("kernel", backend, s)] = (lambda b=path, kvn=kvn, kvi=kvi: block_sparse_attention(
                q, k, v, kvn, kvi, block_size=bs, key_padding_mask=key_padding, backend=b, scale=attn.scaling))
            meta[(backend, s)] = {"achieved_sparsity": achieved, "path": path,
                                  "correctness": {"checked": "layer output vs the reference backend, full",
                                                  "max_abs_err": float((out - ref).abs().max())}}
    return fns, meta, {}


def model_config(args, c: Config, model: DendriticBertModel, twins: dict):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (c.batch, c.n), generator=g)  # (B, n)

    fns = {"sdpa": (lambda: twins["sdpa"](ids)), NO_ATTENTION: (lambda: twins[NO_ATTENTION](ids))}
    meta = {"sdpa": {}}
    if eager_fits(c.batch, cfg.num_attention_heads, c.n, args.eager_max_gib):
        fns["eager"], meta["eager"] = (lambda: twins["eager"](ids)), {}
    zero = budgets_at(model, 0.0)
    for backend in dict.fromkeys(b for b, _ in sparse_keys(args) if b not in ("auto", "masked_sdpa")):
        # the same kernel with nothing skipped beyond what the floor forces: the saving from sparsity alone
        fns[("same_kernel_dense", backend)] = (lambda b=backend: model(ids, attention_backend=b, head_budgets=zero))
    for backend, s in sparse_keys(args):
        budgets = budgets_at(model, s)
        check = check_model_against_reference(model, ids, backend, head_budgets=budgets)
        with torch.inference_mode():
            paths = model(ids[:1], attention_backend=backend, head_budgets=budgets).attention_path
        fns[(backend, s)] = (lambda b=backend, budgets=budgets: model(ids, attention_backend=b, head_budgets=budgets))
        meta[(backend, s)] = {"achieved_sparsity": check.pop("block_sparsity"), "correctness": check,
                              "path": "/".join(sorted(set(paths)))}
    return fns, meta, {}


# -- rows ------------------------------------------------------------------------------------------------------------
def build_rows(args, c: Config, fns_meta, times, extended: bool, rounds: int) -> list[dict]:
    _, meta, _ = fns_meta
    t_sdpa = times["sdpa"]
    t_eager = times.get("eager")
    share = None
    if c.level == "model":
        share = statistics.median(1.0 - a / b for a, b in zip(times[NO_ATTENTION], t_sdpa, strict=True))
    rows = []
    for key, m in meta.items():
        backend, s = (key, 0.0) if isinstance(key, str) else key
        achieved = m.get("achieved_sparsity", 0.0)
        med, p90 = median_p90(times[key])
        ratio_sdpa = paired_ratio(times[key], t_sdpa)
        row = {
            "level": c.level, "backend": backend, "model": c.model, "n": c.n, "batch": c.batch, "dtype": "float32",
            "block_size": args.block_size if isinstance(key, tuple) else None,
            "target_sparsity": s, "achieved_sparsity": achieved,
            "median_ms": med * 1e3, "p90_ms": p90 * 1e3,
            "ratio_vs_sdpa": ratio_sdpa,
            "ratio_vs_eager": paired_ratio(times[key], t_eager) if t_eager else None,
            "amdahl_bound": None, "attention_share": None, "amdahl_fraction": None,
            "threads": torch.get_num_threads(), "positions_extended": extended if c.level != "kernel" else False,
            "rounds": rounds, "correctness": m.get("correctness"),
            "path": m.get("path", "dense" if isinstance(key, str) else backend),
            "ratio_vs_same_kernel_dense": (paired_ratio(times[key], times[("same_kernel_dense", backend)])
                                           if ("same_kernel_dense", backend) in times else None),
        }
        if c.level == "model" and 0.0 < share < 1.0:
            bound = 1.0 - achieved * share
            row.update(attention_share=share, amdahl_bound=bound,
                       amdahl_fraction=(1.0 - ratio_sdpa) / (1.0 - bound) if achieved * share > 0 else None)
        elif c.level == "model":  # timing noise (a loaded machine) made the share impossible: no bound from it
            row.update(attention_share_invalid=share)
        if c.level == "kernel":
            row["ideal_ms"] = (1.0 - achieved) * median_p90(t_sdpa)[0] * 1e3
        if c.level == "layer" and isinstance(key, tuple):
            row.update(policy_ms=median_p90(times[("policy", s)])[0] * 1e3,
                       mask_ms=median_p90(times[("mask", s)])[0] * 1e3,
                       kernel_ms=median_p90(times[("kernel", backend, s)])[0] * 1e3)
        rows.append(row)
    return rows


def n_candidates(args, c: Config) -> int:
    """How many functions one round of this configuration times (for the budget estimate)."""
    sparse, S = len(sparse_keys(args)), len(args.sparsities)
    if c.level == "kernel":
        return 2 + sparse + (S if c.n <= args.reference_max_n else 0)
    if c.level == "layer":
        return 2 + 2 * sparse + 2 * S  # + kernel-only calls, policy and mask per sparsity
    return 3 + sparse + len(args.backends)  # sdpa, eager, no-attention, the same kernels with nothing skipped


def describe(c: Config) -> dict:
    return {"level": c.level, "model": c.model, "n": c.n, "batch": c.batch}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = Budget(args.time_budget_s)
    configs = plan(args)
    payload = {
        "rows": [], "skipped": [],
        "provenance": {**provenance(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                       "threads": torch.get_num_threads(), "loadavg_start": load_average(),
                       "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "method": {
            "timing": "1 warm-up round + interleaved rounds (order rotated); median/p90 per backend; ratios per round",
            "attention_share": "1 - T(dense forward with attention core replaced by identity on V) / T(dense sdpa "
                               "forward), median over the same interleaved rounds",
            "weights": "random, shapes of the named checkpoint (weights do not change the work); dense baselines are "
                       "transformers.BertModel twins carrying the same weights",
            "achieved_sparsity": "model: output block_sparsity mean; layer: policy block_sparsity mean; kernel: "
                                 "random mask with floor (diagonal + block-0 column), 1 - kept/all blocks",
            "correctness": "each sparse configuration, once before timing: the forward (model, layer) or kernel call "
                           "vs the reference backend with the same masks (full batches, or the first sequence / the "
                           "heads that fit at large n)",
        },
    }
    # The accuracy-setting rows (level "glue", written by reproduce.bench.glue_latency) live in the same file: kept.
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        glue_rows = [r for r in previous.get("rows", []) if r.get("level") == "glue"]
        if glue_rows:
            payload["glue_provenance"] = previous.get("glue_provenance")
    else:
        glue_rows = []
    payload["rows"].extend(glue_rows)
    with torch.inference_mode():
        for i, c in enumerate(configs):
            preset = DendriticConfig.from_preset(MODELS[c.model])
            H, hidden, layers = preset.num_attention_heads, preset.hidden_size, preset.num_hidden_layers
            w = work(c, hidden, layers)
            n_calls = n_candidates(args, c)
            per_call = budget.per_call(c.level, w)
            if per_call is not None:
                rounds = max(args.min_rounds, min(args.rounds, int(args.config_target_s / (per_call * n_calls))))
                need = per_call * n_calls * (rounds + 2)  # + check and warm-up rounds
                if need > budget.remaining():
                    payload["skipped"].append({**describe(c), "reason": "time budget", "estimated_s": round(need, 1)})
                    continue
            else:
                rounds = args.rounds
            if not eager_fits(c.batch, H, c.n, args.eager_max_gib):
                payload["skipped"].append({**describe(c), "backend": "eager", "reason": "memory (--eager-max-gib)"})
            t0 = time.time()
            if c.level == "kernel":
                fm, extended = kernel_config(args, c, hidden, H), False
            else:
                model, twins, extended = get_model(c.model, c.n, args.block_size)
                fm = (layer_config if c.level == "layer" else model_config)(args, c, model, twins)
            times = interleaved(fm[0], rounds)
            mean_call = statistics.mean(t for ts in times.values() for t in ts)
            budget.observe(c.level, w, mean_call)
            rows = build_rows(args, c, fm, times, extended, rounds)
            payload["rows"].extend(rows)
            payload["provenance"].update(loadavg_end=load_average(), wall_s=round(time.time() - budget.t0, 1))
            atomic_write_json(args.out, payload)
            best = min((r for r in rows if r["backend"] in args.backends), key=lambda r: r["ratio_vs_sdpa"], default=None)
            print(f"[{i + 1}/{len(configs)}] {c.level} {c.model} n={c.n} B={c.batch}: sdpa "
                  f"{median_p90(times['sdpa'])[0] * 1e3:.1f} ms; best sparse x{best['ratio_vs_sdpa']:.2f} of sdpa "
                  f"at s={best['achieved_sparsity']:.2f} ({time.time() - t0:.0f} s, {rounds} rounds)"
                  if best else f"[{i + 1}/{len(configs)}] {c.level} done", flush=True)
    # Model rows: the policy's cost for all layers, from the layer rows of the same shape (the policy of one layer
    # timed alone, times the number of layers; the layers' policies do the same work on the same shapes).
    for r in payload["rows"]:
        if r["level"] == "model" and r["backend"] in args.backends:
            layer = [x for x in payload["rows"] if x["level"] == "layer" and x["backend"] == r["backend"]
                     and (x["model"], x["n"], x["batch"], x["target_sparsity"]) == (r["model"], r["n"], r["batch"],
                                                                                       r["target_sparsity"])]
            layers = DendriticConfig.from_preset(MODELS[r["model"]]).num_hidden_layers
            r["policy_ms"] = layer[0]["policy_ms"] * layers if layer and layer[0].get("policy_ms") else None
            r["policy_ms_source"] = "layer-level policy_ms x num_layers" if r["policy_ms"] else None
    payload["provenance"].update(loadavg_end=load_average(), wall_s=round(time.time() - budget.t0, 1))
    atomic_write_json(args.out, payload)  # again: skips after the last configuration that ran
    print(f"wrote {args.out}: {len(payload['rows'])} rows, {len(payload['skipped'])} skipped, "
          f"{time.time() - budget.t0:.0f} s")


if __name__ == "__main__":
    main()

"""What the learned policy costs at inference (issue #15, goal 1): scorer + gate + threshold + mask compaction of all
layers, against the dense model's whole forward and against its attention alone.

Per configuration (MiniLM-L6 shapes, random weights — they do not change the work —, fp32, eval mode, target
sparsity 0.5), timed INTERLEAVED in the same rounds (medians):

* ``policy`` — ``DendriticSelfAttention.block_policy`` of layer 0 (the call the model makes: the fused C++ policy
  with its Python wrapper) on hidden states of the configuration's shape, times the number of layers (every layer's
  policy does the same work on the same shapes);
* ``policy_python`` — the same with the fused path off (the Python modules: the specification and training path);
* ``dense_forward`` — the dense twin (a plain ``transformers.BertModel`` with the same weights) under SDPA;
* ``dense_attention`` — its attention core alone, ``F.scaled_dot_product_attention`` on (B, H, n, d) with the key
  padding mask, times the number of layers;
* ``dendritic_forward`` — the whole DendriticBERT forward as a user runs it (``attention_backend="auto"``: policy,
  then per layer the block-sparse kernel or masked SDPA, whichever the fitted cost model picks — ``attention_path``
  records which), same inputs: ``forward_ratio_vs_sdpa`` = dendritic_forward / dense_forward is issue #15's goal 3
  ("never slower than dense", ≤ 1.05) at these shapes, with random weights and a 0.5 budget (not a trained model).

Rows: ``policy_share_of_forward`` = policy / dense_forward and ``policy_share_of_attention`` = policy /
dense_attention, the quantities of the goal (≤ 5 % of the forward at n = 128, ≤ 5 % of attention at n ≥ 512).

Where the policy's time goes (per layer, µs, medians of the same number of rounds, timed apart from the rounds
above): ``layer_policy_us`` — ``policy`` as timed above, per layer; ``layer_policy_hot_us`` — the fused call back to
back (caches and worker threads warm: what the code itself costs); ``layer_policy_after_forward_us`` — each timed
call right after an untimed dense forward (the state a layer's policy meets inside a model: weights evicted,
threads just busy); ``layer_scorer_gemm_hot_us`` / ``layer_scorer_gemm_after_forward_us`` — its one GEMM alone
(``[fq | fk] = pooled · [W_q; W_k]ᵀ + b``, the block-pooled hidden states) in the same two states.
The load average at the start is recorded: time on idle cores.

    python -m reproduce.bench.policy_cost            # ~3 min on 2 idle cores
    python -m reproduce.bench.policy_cost --quick    # seconds (tests)
    python -m reproduce.bench.policy_cost --threads 2 --lengths 128 --blocks 4 --scorer-rank 4 \
        --out reproduce/results/latency/policy_cost_rank4.json   # what a rank-4 scorer would cost (no model has one)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dendritic.bench import dense_twin, interleaved, load_average, shaped_model, timed
from dendritic.provenance import atomic_write_json, provenance

from ..paths import RESULTS

OUT = RESULTS / "latency" / "policy_cost.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 64], help="block sizes (4: GLUE models; 64: long)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--max-n-block-4", type=int, default=1024, help="block 4 only up to this n (its nb² grows fast)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--scorer-rank", type=int, default=None, help="the scorer's rank (default: the small preset's)")
    p.add_argument("--quick", action="store_true", help="two small configurations (tests)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.blocks, args.batches, args.rounds = [64, 128], [16], [1], 3
    for name in ("lengths", "blocks", "batches"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} must be positive")
    if args.scorer_rank is not None and args.scorer_rank < 1:
        p.error("--scorer-rank must be positive")
    return args


def measure(n: int, block_size: int, batch: int, rounds: int, scorer_rank: int | None = None) -> dict:
    rank = {} if scorer_rank is None else {"scorer_rank": scorer_rank}
    model = shaped_model("small", n, block_size=block_size, attention_backend="auto", **rank)
    model.set_head_budgets(torch.full_like(model.head_budgets, 0.5))
    twin = dense_twin(model, "sdpa")
    layers = model.config.num_hidden_layers
    attn = model.encoder.layer[0].attention.self
    H, dh = attn.num_attention_heads, attn.attention_head_size
    g = torch.Generator().manual_seed(n * 7 + block_size)
    ids = torch.randint(1000, 20000, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[-1, n - n // 4:] = 0  # one padded sequence: the policy handles padding in every call
    x = torch.randn(batch, n, model.config.hidden_size, generator=g)
    pad = mask.bool()
    q, k, v = (torch.randn(batch, H, n, dh, generator=g) for _ in range(3))
    sdpa_mask = pad[:, None, None, :]

    calls = {}
    for fused in (True, False):  # one forward's controls, made once (the model makes them once per forward)
        model.set_fused_policy(fused)
        calls[fused] = model.policy_call()

    def policy(fused: bool):
        return attn.block_policy(x, q, k, pad, calls[fused])

    fns = {
        "policy": lambda: policy(True),
        "policy_python": lambda: policy(False),
        "dense_forward": lambda: twin(input_ids=ids, attention_mask=mask),
        "dense_attention": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask),
        "dendritic_forward": lambda: model(input_ids=ids, attention_mask=mask),
    }
    model.set_fused_policy(True)
    fused_out = policy(True)
    paths = sorted(set(model(input_ids=ids, attention_mask=mask).attention_path))
    if fused_out.impl == "python":  # "floor": the floor keeps every pair and no policy runs (what the model does)
        raise RuntimeError(f"the fused policy did not run at n={n}, block {block_size}")
    times = interleaved(fns, rounds)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    # where the policy's time goes: the fused call and its GEMM, warm vs right after a dense forward
    from dendritic.fused_policy import scorer_weights

    w_qk, b_qk = scorer_weights(attn.scorer)
    pooled = torch.randn(batch * -(-n // block_size), model.config.hidden_size, generator=g)

    def scorer_gemm():
        return torch.addmm(b_qk, pooled, w_qk)

    def after_forward(fn):
        def timed_after():
            twin(input_ids=ids, attention_mask=mask)
            return timed(fn)
        return [timed_after() for _ in range(rounds)]

    hot = interleaved({"policy": lambda: policy(True), "gemm": scorer_gemm}, rounds, warmup=3)
    breakdown = {"layer_policy_us": med["policy"] * 1e3,
                 "layer_policy_hot_us": statistics.median(hot["policy"]) * 1e6,
                 "layer_policy_after_forward_us": statistics.median(after_forward(lambda: policy(True))) * 1e6,
                 "layer_scorer_gemm_hot_us": statistics.median(hot["gemm"]) * 1e6,
                 "layer_scorer_gemm_after_forward_us": statistics.median(after_forward(scorer_gemm)) * 1e6}
    per_model = {name: med[name] * (layers if name in ("policy", "policy_python", "dense_attention") else 1)
                 for name in med}
    return {
        "model": "minilm-l6", "n": n, "block_size": block_size, "batch": batch, "layers": layers,
        "scorer_rank": model.config.scorer_rank,
        "achieved_sparsity": float(fused_out.block_sparsity.mean()), "rounds": rounds, "policy_impl": fused_out.impl,
        "policy_ms": per_model["policy"], "policy_python_ms": per_model["policy_python"],
        "dense_forward_ms": per_model["dense_forward"], "dense_attention_ms": per_model["dense_attention"],
        "policy_share_of_forward": per_model["policy"] / per_model["dense_forward"],
        "policy_share_of_attention": per_model["policy"] / per_model["dense_attention"],
        "python_over_fused": per_model["policy_python"] / per_model["policy"],
        "dendritic_forward_ms": per_model["dendritic_forward"], "attention_path": paths,
        "forward_ratio_vs_sdpa": per_model["dendritic_forward"] / per_model["dense_forward"],
        **breakdown,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    payload = {"rows": [], "provenance": {**provenance(), "loadavg_start": load_average(),
                                          "threads": torch.get_num_threads(),
                                          "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])},
               "goal": "policy <= 5 % of the dense forward at n = 128; <= 5 % of dense attention at n >= 512"}
    t0 = time.time()
    configs = [(n, b, B) for b in args.blocks for n in args.lengths for B in args.batches
               if b <= n and not (b <= 4 and n > args.max_n_block_4)]
    with torch.no_grad():  # not inference_mode: the models' budget buffers are set inside
        for i, (n, b, B) in enumerate(configs):
            row = measure(n, b, B, args.rounds, args.scorer_rank)
            payload["rows"].append(row)
            payload["provenance"].update(loadavg_end=load_average(), wall_s=round(time.time() - t0, 1))
            atomic_write_json(args.out, payload)
            print(f"[{i + 1}/{len(configs)}] n={n} block={b} B={B}: policy {row['policy_ms']:.2f} ms = "
                  f"{100 * row['policy_share_of_forward']:.1f} % of the dense forward, "
                  f"{100 * row['policy_share_of_attention']:.1f} % of dense attention "
                  f"(Python modules x{row['python_over_fused']:.1f}); whole forward x{row['forward_ratio_vs_sdpa']:.2f} "
                  f"of dense SDPA ({'/'.join(row['attention_path'])})", flush=True)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Phase-2 vs phase-1 training-step time on the small preset's shapes (MiniLM-L6, batch 32 × 64 tokens, fp32).

    python -m reproduce.bench.train_step [--repeats 5] [--out reproduce/results/train/step_time.json]

One optimizer step = forward + backward + AdamW update of a DendriticBertForMaskedLM.  Phase 1: dense attention
(``dendritic=False``, policy frozen).  Phase 2: the relaxed policy path (scorer, gate, Gumbel-sigmoid
straight-through mask on dense logits, sparsity loss).  Steps are interleaved phase1/phase2 pair by pair and the
median of the per-pair ratios is reported (this machine drifts over minutes).  The issue's target: ratio ≤ 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dendritic import DendriticBertForMaskedLM, DendriticConfig
from dendritic.bench import load_average
from dendritic.provenance import atomic_write_json, provenance
from dendritic.training.trainer import sparsity_loss

from ..paths import RESULTS


def make_step(dendritic: bool, batch: int, seq: int, seed: int = 0):
    torch.manual_seed(seed)
    model = DendriticBertForMaskedLM(DendriticConfig.from_preset("small", dendritic=dendritic)).train()
    if not dendritic:
        for p in model.bert.policy_parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, -100)

    def step() -> float:
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        loss = out.loss
        if dendritic:
            loss = loss + 10.0 * sparsity_loss(out.keep_fraction, out.keep_target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS / "train" / "step_time.json"))
    args = parser.parse_args(argv)
    loadavg_start = load_average()
    dense, sparse = make_step(False, args.batch, args.seq), make_step(True, args.batch, args.seq)
    dense(), sparse()  # warm-up
    pairs = [(dense(), sparse()) for _ in range(args.repeats)]
    ratios = [s / d for d, s in pairs]
    result = {
        "batch": args.batch, "seq_len": args.seq, "preset": "small", "dtype": "float32",
        "phase1_step_s_median": statistics.median(d for d, _ in pairs),
        "phase2_step_s_median": statistics.median(s for _, s in pairs),
        "ratio_median": statistics.median(ratios), "ratios": ratios, "pairs_s": pairs,
        "threads": torch.get_num_threads(), "provenance": {**provenance(), "loadavg_start": loadavg_start},
    }
    atomic_write_json(args.out, result)
    print(f"phase 1 {result['phase1_step_s_median']:.2f} s/step, phase 2 {result['phase2_step_s_median']:.2f} s/step, "
          f"ratio {result['ratio_median']:.2f} (median of {len(ratios)} interleaved pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

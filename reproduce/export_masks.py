"""Block masks a trained DendriticBERT chooses on real dev sentences, as data for the example-mask figure.

    python -m reproduce.export_masks --model runs/small/glue/sst2/dendritic-seed0 --task sst2

Writes ``reproduce/results/masks/examples.json``: for each example its tokens, block size and, per layer and
head, the hard 0/1 block mask computed at inference (the blocks the kernel actually computes).
"""

from __future__ import annotations

import argparse

import torch

from dendritic.modeling import DendriticBertForSequenceClassification
from dendritic.provenance import atomic_write_json, provenance
from dendritic.training.data import get_task, load_glue

from .paths import RESULTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a phase-3 dendritic model folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--examples", type=int, default=3, help="how many dev examples (the longest first)")
    parser.add_argument("--out", default=str(RESULTS / "masks" / "examples.json"))
    args = parser.parse_args(argv)

    from pathlib import Path

    from transformers import AutoTokenizer

    if not (Path(args.model) / "model.safetensors").exists():
        raise SystemExit(f"no fine-tuned model in {args.model}: run `python -m reproduce glue --tasks {args.task} "
                         "--seeds 0` first (it keeps the seed-0 DendriticBERT model)")
    model = DendriticBertForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    spec = get_task(args.task)
    dev = load_glue(spec.name, splits=("validation",))["validation"]
    texts = [tuple(row[c] for c in spec.text_columns) for row in dev]
    lengths = [len(tokenizer(*t)["input_ids"]) for t in texts]
    # Long-enough inputs to have several blocks, but readable: the longest under 48 tokens.
    order = sorted((i for i, n in enumerate(lengths) if n <= 48), key=lambda i: (-lengths[i], i))[: args.examples]
    examples = []
    for i in order:
        enc = tokenizer(*texts[i], return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_block_masks=True)
        examples.append({
            "task": spec.name, "index": i, "sentence": " ||| ".join(texts[i]),
            "tokens": tokenizer.convert_ids_to_tokens(enc["input_ids"][0]),
            "block_size": model.config.block_size,
            "block_sparsity": out.block_sparsity[:, 0].tolist(),
            "layers": {str(layer): {str(h): m[0, h].int().tolist() for h in range(m.shape[1])}
                       for layer, m in enumerate(out.block_masks)},
        })
    atomic_write_json(args.out, {"model": args.model, "examples": examples, "provenance": provenance()})
    print(f"wrote {len(examples)} examples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

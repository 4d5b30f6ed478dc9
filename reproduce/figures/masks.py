"""Example block masks of the trained model on real dev sentences.  Input: ``masks/examples.json`` =
{"examples": [{task, sentence, tokens, block_size, layers: {"<l>": {"<h>": [[0/1, ...], ...]}}}]}."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from .common import Output, load_json, require, task_label

MAX_EXAMPLES = 3
MAX_LABEL = 14  # characters of a block's token label


def _heads(layers: dict) -> list[tuple[str, str]]:
    """First and last layer × first and last head (deduplicated): a few heads that span the network."""
    ls = sorted(layers, key=int)
    picks = []
    for layer in (ls[0], ls[-1]):
        hs = sorted(layers[layer], key=int)
        for h in (hs[0], hs[-1]):
            if (layer, h) not in picks:
                picks.append((layer, h))
    return picks


def _block_labels(tokens: list[str], block: int, nb: int) -> list[str]:
    labels = []
    for i in range(nb):
        text = " ".join(tokens[i * block:(i + 1) * block]).replace(" ##", "")
        labels.append(text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…")
    return labels


def example_masks(out: Output) -> None:
    path = out.results / "masks" / "examples.json"
    if not require(out, "example masks (example_masks)", path):
        return
    examples = load_json(path).get("examples", [])[:MAX_EXAMPLES]
    if not examples:
        out.skip("example masks (example_masks)", "masks/examples.json has no examples")
        return
    picks = [_heads(ex["layers"]) for ex in examples]
    ncol = max(len(p) for p in picks)
    fig, axes = plt.subplots(len(examples), ncol, figsize=(3.6 * ncol, 4.4 * len(examples)), squeeze=False)
    cmap = ListedColormap(["#f0f0f0", "#dd8452"])
    for row, (ex, heads) in enumerate(zip(examples, picks)):
        block = ex["block_size"]
        for col in range(ncol):
            ax = axes[row][col]
            if col >= len(heads):
                ax.set_axis_off()
                continue
            layer, head = heads[col]
            m = np.asarray(ex["layers"][layer][head], dtype=float)  # (nb query blocks, nb key blocks)
            nb = m.shape[0]
            ax.imshow(m, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            labels = _block_labels(ex["tokens"], block, nb)
            ax.set_xticks(range(m.shape[1]), labels[:m.shape[1]], rotation=90, fontsize=5)
            ax.set_yticks(range(nb), labels, fontsize=5)
            ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
            ax.set_yticks(np.arange(-0.5, nb), minor=True)
            ax.grid(which="minor", color="white", linewidth=0.5)
            ax.grid(which="major", visible=False)
            ax.set_title(f"layer {layer}, head {head}: {100 * (1 - m.mean()):.0f}% of blocks skipped", fontsize=7)
            if col == 0:
                ax.set_ylabel("query block")
            if row == len(examples) - 1:
                ax.set_xlabel("key block")
        sentence = textwrap.shorten(ex.get("sentence", ""), 110, placeholder=" …")
        axes[row][0].annotate(f"{task_label(ex['task'])} (block size {block}, {len(ex['tokens'])} tokens): "
                              f"\"{sentence}\"", (0, 1.18), xycoords="axes fraction", fontsize=7, ha="left")
    fig.suptitle("DendriticBERT block masks on dev sentences (orange: computed, grey: skipped)", fontsize=9)
    # Fixed spacing (tight_layout cannot fit the long tick labels): room for each row's sentence line and x labels.
    fig.subplots_adjust(left=0.1, right=0.98, top=0.94, bottom=0.08, wspace=0.75, hspace=0.75)
    out.figure(fig, "example_masks", [path], "block masks of a few heads on real dev sentences, token labels on axes",
               formats=("png",))


FIGURES = [example_masks]

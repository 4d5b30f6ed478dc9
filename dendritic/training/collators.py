"""A masked-LM collator whose masks depend only on the batch's tokens and a seed.

`DataCollatorForLanguageModeling` draws its masks from torch's global RNG when the batch is collated.  The
Trainer's data loader (through accelerate) collates one batch ahead, so a checkpoint's saved RNG state already
includes the next batch's masking and a resumed run re-masks that batch differently.  Drawing each batch's masks
from a generator seeded by (seed, the batch's token ids) — inside ``fork_rng`` so the global stream is untouched —
makes masking a pure function of the data: resumed and uninterrupted runs see identical batches (static masking,
as in the original BERT's data generation).
"""

from __future__ import annotations

import hashlib

import torch
from transformers import DataCollatorForLanguageModeling


class SeededMLMCollator(DataCollatorForLanguageModeling):
    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0):
        super().__init__(tokenizer, mlm_probability=mlm_probability, return_tensors="pt")
        self.mask_seed = seed

    def __call__(self, examples, return_tensors=None):
        digest = hashlib.sha256(str(self.mask_seed).encode())
        for ex in examples:
            ids = ex["input_ids"]
            digest.update(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes())
        seed = int.from_bytes(digest.digest()[:8], "little") % (2**63 - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return super().__call__(examples, return_tensors)

"""DendriticBERT: a BERT that scores query–key blocks per input and skips the unimportant ones."""

"""VAR baseline (next-scale prediction of residual tokens, arXiv 2404.02905).

Empty for now: the VAR-baseline issue fills it (multi-scale residual VQ tokenizer in
methods/tokenizers, the VAR transformer, official checkpoints, ``official.py``)."""

"""FlexVAR baseline (ground-truth next-scale prediction, any steps/resolution, arXiv 2502.20313).

Empty for now: the FlexVAR issue fills it (its VQ tokenizer, the transformer, official
checkpoints, ``official.py``)."""

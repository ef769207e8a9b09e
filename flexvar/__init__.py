"""FlexVAR baseline (ground-truth next-scale prediction at any step count and resolution,
Jiao et al., arXiv 2502.20313).

``model.py``: the transformer; ``method.py``: loss on random scale lists and the any-scale
sampler (registered as ``flexvar``); ``official.py``: the official constructor names,
checkpoint loading and call conventions. Its tokenizer is ``flexvq`` (methods/tokenizers/flexvq.py)."""

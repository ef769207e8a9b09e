"""FlexVAR baseline (ground-truth next-scale prediction at any step count and resolution,
Jiao et al., arXiv 2502.20313).

``model.py``: the transformer; ``method.py``: loss on random scale lists and the any-scale
sampler (registered as ``flexvar``); ``weights.py``: suite and official checkpoints;
``official.py``: the official constructor names and call conventions (the parity tests' side).
Its tokenizer is ``flexvq`` (methods/tokenizers/flexvq.py), through the ground-truth-tokenizer
interface of methods/base.py."""

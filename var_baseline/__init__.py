"""VAR baseline (next-scale prediction of residual tokens, Tian et al., arXiv 2404.02905).

``model.py``: the transformer; ``method.py``: loss and sampler (registered as ``var``);
``weights.py``: suite and official checkpoints; ``official.py``: the official constructor names
and call conventions (the parity tests' side). Its tokenizer is ``msvq``
(methods/tokenizers/msvq.py), through the residual-tokenizer interface of methods/base.py."""

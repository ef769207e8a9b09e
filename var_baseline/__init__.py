"""VAR baseline (next-scale prediction of residual tokens, Tian et al., arXiv 2404.02905).

``model.py``: the transformer; ``method.py``: loss and sampler (registered as ``var``);
``official.py``: the official constructor names, checkpoint loading and call conventions. Its
tokenizer is ``msvq`` (methods/tokenizers/msvq.py)."""

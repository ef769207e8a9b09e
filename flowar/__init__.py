"""FlowAR (arXiv 2412.15205): ``model.py`` is the network (official parameter names),
``method.py`` the per-scale flow-matching loss and the scale-by-scale sampler (registered as
``flowar``), ``weights.py`` reads suite and official checkpoints, ``official.py`` speaks the
official code's names and call conventions (the parity tests' side)."""

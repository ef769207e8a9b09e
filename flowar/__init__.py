"""FlowAR (arXiv 2412.15205): model.py is the network (official parameter names), method.py
the per-scale flow-matching loss and the scale-by-scale sampler. The conformance module
``official.py`` (official constructor names, checkpoint loading, parity) comes with the
FlowAR-fidelity issue."""

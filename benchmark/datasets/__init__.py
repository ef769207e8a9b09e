"""Datasets (registry ``datasets``, benchmark/datasets/base.py): images in [-1, 1] (B, 3, H, W)
with integer labels, at any requested resolution, each knowing its number of classes.
Built-ins: ``shapes`` (embedded, rendered) and ``imagefolder`` (an ImageNet-style folder)."""

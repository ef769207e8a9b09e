"""Datasets (registry ``datasets``): images in [-1, 1] (B, 3, H, W) with integer labels,
at any requested resolution, each knowing its number of classes."""
from benchmark.datasets.imagefolder import ImageFolder
from benchmark.datasets.shapes import Shapes

__all__ = ["ImageFolder", "Shapes"]

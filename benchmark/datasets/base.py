"""The dataset contract and its registry (``datasets``): a class-conditional image source that
renders or reads any indices at any requested resolution."""
from __future__ import annotations

import torch

from methods.registry import TypedRegistry


# Training augmentations a dataset may implement (``data.augment``; imagefolder does all).
AUGMENTATIONS = ("none", "flowar", "var", "flexvar")


class Dataset(torch.utils.data.Dataset):
    """Images in [-1, 1] (B, 3, H, W) with integer labels. Subclasses set ``num_classes`` and
    ``class_names`` and implement ``from_config``, ``__len__`` and ``render``."""
    num_classes: int
    class_names: tuple[str, ...]

    @classmethod
    def from_config(cls, data, split: str, resolution: int) -> "Dataset":
        """The ``split`` (train | test | reference) of the run's ``data`` section (a DataConfig),
        rendered or read at ``resolution``; a bad section raises ConfigError naming the key."""
        raise NotImplementedError

    def render(self, indices, resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] and labels (B,) of ``indices`` (taken modulo the length)."""
        raise NotImplementedError

    def render_augmented(self, indices, seeds, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training views (``data.augment``: ``kind``) of ``indices``, view j drawn from
        ``seeds[j]``, at the training resolution. Datasets without augmentations refuse."""
        raise NotImplementedError(f"{type(self).__name__} has no training augmentations (data.augment={kind!r})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.render([index])
        return images[0], int(labels[0])


DATASETS = TypedRegistry("dataset", Dataset)

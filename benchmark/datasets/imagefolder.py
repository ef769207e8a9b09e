"""`imagefolder`: an ImageNet-style folder (one sub-folder per class) with the ADM centre crop,
and the official methods' training augmentations (``data.augment``)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmark.datasets.base import DATASETS, Dataset
from methods.config import ConfigError


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion image_datasets.py): halve with a box filter while
    the short side is at least twice the target, bicubic-resize the short side to ``size``,
    then crop the centre. Reference statistics use the same crop."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top: top + size, left: left + size])


# The official training augmentations (data.augment, base.AUGMENTATIONS), as the official pipelines:
#   flowar   main_flowar.py: Resize(1.125 x size) (bilinear), RandomCrop(size), RandomHorizontalFlip
#   var      utils/data.py: Resize(round(1.125 x size), LANCZOS), RandomCrop(size); hflip off by default
#   flexvar  dataset/imagenet.py: RandomHorizontalFlip, then ADM's random_crop_arr(size,
#            min_crop_frac=0.88): short side drawn in [size, ceil(size / 0.88)], box-halving,
#            bicubic resize, random crop
def augment(image: Image.Image, size: int, kind: str, rng: np.random.Generator) -> Image.Image:
    """One random training view of ``image`` (``kind`` in AUGMENTATIONS), drawn from ``rng``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    if kind == "none":
        return center_crop_arr(image, size)
    if kind == "flexvar":
        if rng.random() < 0.5:
            image = TF.hflip(image)
        short = int(rng.integers(size, math.ceil(size / 0.88) + 1))
        while min(*image.size) >= 2 * short:
            image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
        scale = short / min(*image.size)
        image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    else:
        mid = int(size * 1.125) if kind == "flowar" else round(size * 1.125)
        mode = InterpolationMode.BILINEAR if kind == "flowar" else InterpolationMode.LANCZOS
        image = TF.resize(image, mid, interpolation=mode)
    top = int(rng.integers(0, image.size[1] - size + 1))
    left = int(rng.integers(0, image.size[0] - size + 1))
    image = image.crop((left, top, left + size, top + size))
    if kind == "flowar" and rng.random() < 0.5:   # flowar flips after the crop (the order changes nothing)
        image = TF.hflip(image)
    return image


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")   # 16-bit greyscale: convert("RGB") would clip at 255
FULL_CHECK_LIMIT = 50_000                         # up to this many files every one is decoded in full


def read_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB: greyscale, palette and RGBA converted (alpha dropped), 16-bit
    greyscale scaled to 8 bits; a file that cannot be decoded is named in the error."""
    try:
        with Image.open(path) as img:
            if img.mode in HIGH_BIT_MODES:
                a = np.asarray(img, dtype=np.float64)
                return Image.fromarray((a * (255.0 / 65535.0)).round().clip(0, 255).astype(np.uint8)).convert("RGB")
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"imagefolder: cannot read {path} ({err}); remove or re-encode it") from None


def check_files(folder: "ImageFolder") -> dict[str, int]:
    """Every file opens as an image (each is decoded in full up to FULL_CHECK_LIMIT files, else
    its header is read); returns how many files have each mode. Bad files are named, five at most."""
    full = len(folder) <= FULL_CHECK_LIMIT
    modes, bad = {}, []
    for path, _ in folder.folder.samples:
        try:
            with Image.open(path) as img:
                if full:
                    img.load()
                modes[img.mode] = modes.get(img.mode, 0) + 1
        except (OSError, SyntaxError, ValueError) as err:
            bad.append(f"{path} ({err})")
    if bad:
        raise ConfigError(f"imagefolder: {len(bad)} file(s) cannot be read as images: {'; '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''}. Remove or re-encode them")
    return modes


@DATASETS.register_module("imagefolder")
class ImageFolder(Dataset):
    def __init__(self, root: str, resolution: int = 256, split: str = "train", **unused):
        path = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"imagefolder: {path} is not a folder; set data.root to a folder with one "
                                    "sub-folder of images per class (optionally under train/ and val/)")
        try:
            self.folder = torchvision.datasets.ImageFolder(str(path))
        except FileNotFoundError:   # torchvision: no class folders, or no image files in them
            raise FileNotFoundError(f"imagefolder: no images found under {path}: it needs one sub-folder of images "
                                    "per class (.png, .jpg, ...), optionally under train/ and val/") from None
        if len(self.folder) == 0:
            raise FileNotFoundError(f"imagefolder: no images found under {path}")
        self.resolution, self.split = resolution, split
        self.num_classes = len(self.folder.classes)
        self.class_names = tuple(self.folder.classes)

    @classmethod
    def from_config(cls, data, split: str, resolution: int) -> "ImageFolder":
        """``train`` reads ``root/train`` (or ``root``), the held-out splits ``root/val``."""
        if not data.root:
            raise ConfigError("data.root is not set; imagefolder needs data.root=/path/to/folder")
        folder = cls(root=data.root, resolution=resolution, split="train" if split == "train" else "val")
        if folder.num_classes != data.num_classes:
            raise ConfigError(f"data.num_classes={data.num_classes} but {data.root} has {folder.num_classes} class "
                              f"folders; set data.num_classes={folder.num_classes}")
        return folder

    def __len__(self) -> int:
        return len(self.folder)

    def load(self, index: int, resolution: int | None = None) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[index]
        img = center_crop_arr(read_rgb(path), resolution or self.resolution)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
        return x, label

    def render(self, indices, resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as shapes: a batch of images (B, 3, H, W) in [-1, 1] and labels."""
        items = [self.load(int(i) % len(self), resolution) for i in np.asarray(indices).reshape(-1)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def render_augmented(self, indices, seeds, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Training views: image ``indices[j]`` augmented (``kind``) with the draws of ``seeds[j]``."""
        xs, ys = [], []
        for i, seed in zip(np.asarray(indices).reshape(-1), seeds):
            path, label = self.folder.samples[int(i) % len(self)]
            img = augment(read_rgb(path), self.resolution, kind, np.random.default_rng(int(seed)))
            xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1)
            ys.append(label)
        return torch.stack(xs), torch.tensor(ys)

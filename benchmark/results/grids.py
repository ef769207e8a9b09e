"""Sample grids: one row per class, class names on the left."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from benchmark.io import atomic_write

GRID_PADDING = 2        # pixels between grid cells
MIN_CELL_PX = 64        # tiny samples are upscaled (nearest) to at least this size
LABEL_FONT_PX = 14
LABEL_MAX_CHARS = 24


def _label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=LABEL_FONT_PX)
    except (TypeError, ImportError):  # old Pillow or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _class_name(class_names: Sequence[str], label: int) -> str:
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    return name[:LABEL_MAX_CHARS]


def label_margin(names: Sequence[str]) -> int:
    """Width in pixels of the left margin that holds the row labels."""
    font = _label_font()
    return int(math.ceil(max((font.getlength(n) for n in names), default=0))) + 2 * 6


def _rows_by_class(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, list[int]]:
    """Cells in row-major order (blank = white) and the class of each row, in label order."""
    classes = sorted(int(c) for c in labels.unique())
    blank = torch.ones_like(images[0])
    cells = []
    for c in classes:
        chosen = list(images[labels == c][:per_class])
        cells += chosen + [blank] * (per_class - len(chosen))
    return torch.stack(cells), classes


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                     path: str | Path, per_class: int = 8) -> Path:
    """Save samples as a PNG grid: one row per class (label order), class names on the left.

    ``images`` are (B, 3, H, W) in [-1, 1]; rows with fewer than ``per_class`` samples are
    padded with blank cells, and cells smaller than 64 px are upscaled (nearest neighbour).
    """
    if images.ndim != 4 or images.shape[0] != labels.numel():
        raise ValueError(f"need images (B,3,H,W) and B labels, got {tuple(images.shape)} and {labels.numel()}")
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    labels = labels.detach().cpu().reshape(-1)
    scale = math.ceil(MIN_CELL_PX / min(images.shape[-2:]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    cells, classes = _rows_by_class(images, labels, per_class)
    grid = make_grid(cells, nrow=per_class, padding=GRID_PADDING, pad_value=1.0)
    grid_img = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())

    names = [_class_name(class_names, c) for c in classes]
    margin = label_margin(names)
    canvas = Image.new("RGB", (grid_img.width + margin, grid_img.height), "white")
    canvas.paste(grid_img, (margin, 0))
    draw, font = ImageDraw.Draw(canvas), _label_font()
    row_h = images.shape[-2] + GRID_PADDING
    text_top, text_bottom = font.getbbox("Ag")[1::2]
    for i, name in enumerate(names):
        centre = GRID_PADDING + i * row_h + (row_h - GRID_PADDING) // 2
        draw.text((6, centre - (text_top + text_bottom) // 2), name, fill="black", font=font)
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))

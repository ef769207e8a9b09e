"""Sample grids: one row per class, class names on the left."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
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
                     path: str | Path, per_class: int = 8, title: str | None = None) -> Path:
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
    margin, font = label_margin(names), _label_font()
    top = LABEL_FONT_PX + 10 if title else 0
    width = max(grid_img.width + margin, int(font.getlength(title)) + 12 if title else 0)
    canvas = Image.new("RGB", (width, grid_img.height + top), "white")
    canvas.paste(grid_img, (margin, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    row_h = images.shape[-2] + GRID_PADDING
    text_top, text_bottom = font.getbbox("Ag")[1::2]
    for i, name in enumerate(names):
        centre = top + GRID_PADDING + i * row_h + (row_h - GRID_PADDING) // 2
        draw.text((6, centre - (text_top + text_bottom) // 2), name, fill="black", font=font)
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


# --------------------------------------------------------------------------- side by side
COMPARE_PER_CLASS = 2   # cells per class in the side-by-side figure


def grid_cells(images: torch.Tensor, labels: torch.Tensor, per_class: int = COMPARE_PER_CLASS) -> dict:
    """The first ``per_class`` images of each class (label order) as uint8 (N, H, W, 3) with
    their labels: what a grid's npz keeps so that figures can be composed later."""
    images, labels = images.detach().float().cpu(), labels.detach().cpu().reshape(-1)
    keep = torch.cat([(labels == c).nonzero()[:per_class, 0] for c in sorted(labels.unique().tolist())])
    cells = ((images[keep].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return {"cells": cells.numpy(), "labels": labels[keep].numpy()}


def save_comparison(rows: Sequence[tuple[str, np.ndarray]], labels, class_names: Sequence[str], title: str,
                    path: str | Path) -> Path:
    """One figure, one row per image set (real images, each tokenizer's reconstructions, each
    method's samples), the same classes in the same columns (class names on top), a title."""
    font = _label_font()
    n, side = len(labels), max(MIN_CELL_PX, max(r[1].shape[1] for r in rows))
    margin = label_margin([name for name, _ in rows])
    top = 2 * (LABEL_FONT_PX + 8)
    width = max(margin + n * (side + GRID_PADDING), int(font.getlength(title)) + 12)
    height = top + len(rows) * (side + GRID_PADDING)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=font)
    for j, label in enumerate(labels):
        if j == 0 or labels[j - 1] != label:
            draw.text((margin + j * (side + GRID_PADDING), LABEL_FONT_PX + 10), _class_name(class_names, int(label)),
                      fill="black", font=font)
    for i, (name, cells) in enumerate(rows):
        y = top + i * (side + GRID_PADDING)
        draw.text((6, y + side // 2 - LABEL_FONT_PX // 2), name, fill="black", font=font)
        for j, cell in enumerate(np.asarray(cells)[:n]):
            img = Image.fromarray(cell).resize((side, side), Image.NEAREST)
            canvas.paste(img, (margin + j * (side + GRID_PADDING), y))
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def save_side_by_side(records: Sequence[dict], grids_dir: str | Path) -> list[Path]:
    """Per preset x resolution x seed: the configured rows of every method side by side, from
    the cells each evaluation kept (``grids/<record>.npz``), under the real images and each
    tokenizer's reconstructions of them."""
    import json
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("configured", True) and not r.get("note"):
            groups.setdefault((r.get("preset"), r.get("resolution"), r.get("seed")), []).append(r)
    paths = []
    for (preset, resolution, seed), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        found = []
        for r in sorted(rs, key=lambda r: r["method"]):
            npz = Path(grids_dir) / f"{r['preset']}_{r['method']}_{r['config_hash']}_seed{r['seed']}.npz"
            if npz.exists():
                found.append((r, np.load(npz)))
        if not found:
            continue
        labels = found[0][1]["labels"]
        rows = [("real", found[0][1]["real"])]
        for r, cells in found:   # one reconstruction row per distinct tokenizer
            name = f"{(r.get('tokenizer') or {}).get('name', '?')} recon"
            if name not in [n for n, _ in rows] and "recon" in cells:
                rows.append((name, cells["recon"]))
        rows += [(r["method"], cells["cells"]) for r, cells in found if np.array_equal(cells["labels"], labels)]
        names = json.loads(str(found[0][1]["class_names"])) if "class_names" in found[0][1] else []
        title = (f"{preset}, {resolution} px, seed {seed}: real images, tokenizer reconstructions, and each "
                 "method's samples at its configured settings (leaderboard.md)")
        paths.append(save_comparison(rows, labels, names, title,
                                     Path(grids_dir) / f"side_by_side_{preset}_{resolution}px_seed{seed}.png"))
    return paths

"""`shapes`: an embedded, class-conditional synthetic dataset rendered analytically.

Every image is a scene — one filled shape on a background — drawn from (seed, split, index)
alone, and rasterised from signed distance functions with exact-width anti-aliasing. The
same scene therefore renders at 32, 64, 128 or 256 px; only the sampling grid changes, which
is what resolution-extrapolation needs as its reference.

Classes differ only by shape. Colour, size, position and rotation are drawn independently
of the class, so neither colour nor layout gives the class away. The shapes were chosen to
stay distinguishable at 32 px (no pentagon/hexagon/circle triple, no square/diamond pair).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from benchmark.datasets.base import DATASETS, Dataset

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "bar")
SPLITS = {"train": 0, "test": 1, "reference": 2}
# The generating factors of every image (Shapes.render(..., factors=True)): class, the shape's
# hue (in turns, on the circle), saturation and value, its size (radius as a fraction of the
# half-width), its centre x, y in [-1, 1] and its rotation angle (radians).
FACTORS = ("label", "hue", "saturation", "value", "size", "x", "y", "angle")
VARIANTS = ("easy", "hard")


def _polygon(points: list[tuple[float, float]]) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32)


def _regular(n: int, radius: float, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


# Shapes live in a unit frame (radius about 1). Areas are roughly matched so that size
# does not leak the class either.
_POLYGONS = {
    "square": _polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": _polygon(_regular(3, 1.05)),
    "cross": _polygon([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                       (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "star": _polygon(_star(5, 1.05, 0.45)),
    "bar": _polygon([(-1, -0.4), (1, -0.4), (1, 0.4), (-1, 0.4)]),
}


def sdf_polygon(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance from points p (..., 2) to the closed polygon v (N, 2); negative inside.

    The exact polygon distance with the winding-parity sign test, after Inigo Quilez,
    https://iquilezles.org/articles/distfunctions2d/ (sdPolygon).
    """
    d = ((p - v[0]) ** 2).sum(-1)
    sign = torch.ones_like(d)
    n = len(v)
    for i in range(n):
        vi, vj = v[i], v[i - 1]
        e, w = vj - vi, p - vi
        b = w - e * ((w * e).sum(-1, keepdim=True) / (e * e).sum()).clamp(0, 1)
        d = torch.minimum(d, (b * b).sum(-1))
        c1, c2 = p[..., 1] >= vi[1], p[..., 1] < vj[1]
        c3 = e[0] * w[..., 1] > e[1] * w[..., 0]
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = torch.where(flip, -sign, sign)
    return sign * d.sqrt()


def shape_sdf(name: str, p: torch.Tensor) -> torch.Tensor:
    """Signed distance of the class shape `name` in its unit frame."""
    r = p.norm(dim=-1)
    if name == "circle":
        return r - 0.9
    if name == "ring":
        return (r - 0.75).abs() - 0.25
    if name == "crescent":  # a disc with an offset disc cut out
        return torch.maximum(r - 0.95, -((p - torch.tensor([0.45, 0.25])).norm(dim=-1) - 0.75))
    return sdf_polygon(p, _POLYGONS[name])


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0])[None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


class SceneParams(dict):
    """Per-image scene parameters, as numpy arrays keyed by name (batch first)."""


def draw_scenes(seed: int, split: str, indices: np.ndarray, num_classes: int, variant: str) -> SceneParams:
    """Scene parameters for each index; each image has its own generator seeded by
    (seed, split, index), so an image never depends on which batch it is drawn in."""
    rows = []
    for i in indices.tolist():
        g = np.random.default_rng([seed, SPLITS[split], int(i)])
        u = g.random(16)
        rows.append(u)
    u = np.stack(rows) if rows else np.zeros((0, 16))
    labels = (np.asarray(indices) % num_classes).astype(np.int64)  # balanced classes
    hue = u[:, 3]
    if variant == "easy":
        size = 0.55 + 0.25 * u[:, 0]            # shape radius as a fraction of the half-width
        saturation, value = 0.55 + 0.45 * u[:, 4], 0.8 + 0.2 * u[:, 5]
        bg0 = hsv_to_rgb(u[:, 6], 0.5 * u[:, 7], 0.05 + 0.2 * u[:, 8])
        bg1 = bg0
    else:
        size = 0.3 + 0.3 * u[:, 0]
        saturation, value = 0.3 + 0.7 * u[:, 4], 0.5 + 0.5 * u[:, 5]
        bg0 = hsv_to_rgb(u[:, 6], u[:, 7], 0.6 * u[:, 8])
        bg1 = hsv_to_rgb(u[:, 12], u[:, 13], 0.6 * u[:, 14])
    slack = 1 - size                          # keep the shape inside the frame
    center = np.stack([(2 * u[:, 1] - 1) * slack, (2 * u[:, 2] - 1) * slack], axis=1)
    return SceneParams(labels=labels, size=size, center=center, angle=2 * math.pi * u[:, 9],
                       hue=hue, saturation=saturation, value=value, fg=hsv_to_rgb(hue, saturation, value),
                       bg0=bg0, bg1=bg1, gradient_angle=2 * math.pi * u[:, 15])


def scene_factors(scenes: SceneParams) -> dict[str, np.ndarray]:
    """The generating factors (FACTORS) of scenes, each an array (B,)."""
    return {"label": scenes["labels"], "hue": scenes["hue"], "saturation": scenes["saturation"],
            "value": scenes["value"], "size": scenes["size"], "x": scenes["center"][:, 0],
            "y": scenes["center"][:, 1], "angle": scenes["angle"]}


def render_scenes(scenes: SceneParams, resolution: int) -> torch.Tensor:
    """Rasterise scenes to images in [-1, 1], (B, 3, H, W), with analytic anti-aliasing:
    pixel coverage is the signed distance measured in pixels, clamped to [0, 1]."""
    B = len(scenes["labels"])
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    yy, xx = torch.meshgrid(-coords, coords, indexing="ij")
    grid = torch.stack([xx, yy], -1).expand(B, resolution, resolution, 2)
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    size, angle = f(scenes["size"])[:, None, None], f(scenes["angle"])[:, None, None]
    p = grid - f(scenes["center"])[:, None, None]
    cos, sin = angle.cos(), angle.sin()
    p = torch.stack([cos * p[..., 0] + sin * p[..., 1], -sin * p[..., 0] + cos * p[..., 1]], -1) / size[..., None]
    sdf = torch.empty(B, resolution, resolution)
    labels = torch.as_tensor(scenes["labels"])
    for c in labels.unique().tolist():
        sel = labels == c
        sdf[sel] = shape_sdf(CLASS_NAMES[c], p[sel])
    coverage = (0.5 - sdf * size * resolution / 2).clamp(0, 1)[:, None]  # (B, 1, H, W)
    ga = f(scenes["gradient_angle"])[:, None, None]
    ramp = ((ga.cos() * xx + ga.sin() * yy) * 0.5 + 0.5).clamp(0, 1)[:, None]  # (B, 1, H, W)
    bg = f(scenes["bg0"])[..., None, None] * (1 - ramp) + f(scenes["bg1"])[..., None, None] * ramp
    img = bg * (1 - coverage) + f(scenes["fg"])[..., None, None] * coverage
    return img * 2 - 1


@DATASETS.register_module("shapes")
class Shapes(Dataset):
    """Class-conditional shapes; `size` images per split, rendered on demand (never stored)."""

    def __init__(self, resolution: int = 32, num_classes: int = 8, variant: str = "easy",
                 size: int = 20000, seed: int = 0, split: str = "train"):
        if not 2 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"shapes: num_classes={num_classes} is out of range; use 2..{len(CLASS_NAMES)}")
        if variant not in VARIANTS:
            raise ValueError(f"shapes: variant='{variant}' is unknown; use one of {', '.join(VARIANTS)}")
        if split not in SPLITS:
            raise ValueError(f"shapes: split='{split}' is unknown; use one of {', '.join(SPLITS)}")
        self.resolution, self.num_classes, self.variant = resolution, num_classes, variant
        self.size, self.seed, self.split = size, seed, split
        self.class_names = CLASS_NAMES[:num_classes]

    @classmethod
    def from_config(cls, data, split: str, resolution: int) -> "Shapes":
        # The data seed is fixed: every run seed trains and is scored on the same images.
        return cls(resolution=resolution, num_classes=data.num_classes, variant=data.variant, size=data.train_size,
                   seed=0, split=split)

    def __len__(self) -> int:
        return self.size

    def scenes(self, indices) -> SceneParams:
        """The scene parameters of the given indices (render them with ``render_scenes``)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return draw_scenes(self.seed, self.split, indices, self.num_classes, self.variant)

    def render(self, indices, resolution: int | None = None, factors: bool = False):
        """Images (B, 3, H, W) in [-1, 1] and labels (B,) for the given indices; with
        ``factors``, also every image's generating factors ({name in FACTORS: array (B,)})."""
        scenes = self.scenes(indices)
        images, labels = render_scenes(scenes, resolution or self.resolution), torch.as_tensor(scenes["labels"])
        return (images, labels, scene_factors(scenes)) if factors else (images, labels)

    def batches(self, batch_size: int, resolution: int | None = None):
        """All images in index order, rendered batch-wise."""
        for start in range(0, self.size, batch_size):
            idx = np.arange(start, min(start + batch_size, self.size))
            yield self.render(idx, resolution)

"""The evaluator checked against deliberately broken generators.

Each broken generator is built from real `shapes` renders, so exactly one thing is wrong with
it: the scenes of the held-out "test" split re-rendered with every shape in one of two hues,
at one size, centred, or two-toned (half the shape another hue); the real images with shuffled conditioning labels; blurred; noisy; or
16 training images repeated (memorisation). Every set is scored against the real reference
images like a generator's samples. A metric *catches* a breakage when it moves the bad way by
more than ``MARGIN`` times its real-vs-real spread (the range over ``repeats`` disjoint real
sets of the same size); ``CATCHES`` says which metric must catch which breakage, and
``KEEPS`` which must stay near their real-vs-real value for it.

    python -m benchmark validate-evaluator     # writes results/evaluator_validation.{csv,md}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.datasets.shapes import Shapes, hsv_to_rgb, render_scenes
from benchmark.generation import to_uint8
from benchmark.metrics import domain
from benchmark.metrics.factors import gaussian_blur

MARGIN = 5.0
SPREAD_FLOOR = 1e-3
# breakage -> {metric: the direction it must move (+1 up, -1 down)}
CATCHES = {
    "two hues": {"factor_hue_w1": +1, "factor_hue_coverage": -1},
    "one size": {"factor_size_w1": +1, "factor_size_coverage": -1},
    "always centred": {"factor_position_w1": +1, "factor_position_coverage": -1},
    "labels shuffled": {"class_consistency": -1},
    "blurred": {"domain_fd": +1, "domain_kid": +1},
    "noisy": {"roughness_w1": +1},
    "two-toned shapes": {"hue_spread_w1": +1},
    "16 images repeated": {"domain_recall": -1},
}
# breakage -> metrics that must stay within MARGIN spreads of the real-vs-real mean
KEEPS = {
    "two hues": ("class_consistency", "factor_size_w1", "factor_position_w1"),
    "one size": ("factor_hue_w1", "class_consistency"),
    "always centred": ("factor_hue_w1", "factor_size_w1", "class_consistency"),
    "labels shuffled": ("factor_hue_w1", "factor_size_w1", "factor_position_w1", "factor_class_tv", "domain_fd", "domain_recall"),
    "blurred": ("class_consistency", "factor_hue_w1"),
    "noisy": ("class_consistency", "factor_hue_w1", "factor_size_w1", "factor_position_w1"),
    "two-toned shapes": ("class_consistency", "factor_size_w1", "factor_position_w1", "roughness_w1"),
    "16 images repeated": (),
}


def broken_sets(data: Shapes, n: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (images in [-1, 1], conditioning labels)} of every broken generator, from the
    first ``n`` scenes of ``data`` (its "test" split)."""
    g = np.random.default_rng(seed)
    idx = np.arange(n)
    scenes = data.scenes(idx)
    real = render_scenes(scenes, data.resolution)
    labels = torch.as_tensor(scenes["labels"])

    def rerender(**changes) -> torch.Tensor:
        s = type(scenes)({**scenes, **changes})
        s["fg"] = hsv_to_rgb(s["hue"], s["saturation"], s["value"])
        return render_scenes(s, data.resolution)

    train = Shapes(resolution=data.resolution, num_classes=data.num_classes, variant=data.variant, size=16,
                   seed=data.seed, split="train")
    memory, memory_labels = train.render(np.arange(16))
    size = float(np.median(scenes["size"]))
    # half of each shape (split by a line through its centre, at a random angle) a third of the
    # hue circle away: the mottled, two-coloured shapes a generator can make
    other = rerender(hue=(scenes["hue"] + 1 / 3) % 1.0)
    coords = (torch.arange(data.resolution, dtype=torch.float32) + 0.5) / data.resolution * 2 - 1
    yy, xx = torch.meshgrid(-coords, coords, indexing="ij")
    centre = torch.as_tensor(scenes["center"], dtype=torch.float32)
    theta = torch.as_tensor(np.random.default_rng(seed + 1).uniform(0, 2 * np.pi, n), dtype=torch.float32)
    side = ((xx - centre[:, 0, None, None]) * theta.cos()[:, None, None]
            + (yy - centre[:, 1, None, None]) * theta.sin()[:, None, None]) > 0
    return {
        "two hues": (rerender(hue=np.where(idx % 2 == 0, 0.125, 0.625)), labels),   # two bin centres
        "one size": (rerender(size=np.full(n, size), center=scenes["center"] * (1 - size) / (1 - scenes["size"][:, None])),
                     labels),
        "always centred": (rerender(center=np.zeros_like(scenes["center"])), labels),
        "labels shuffled": (real, labels[torch.as_tensor(g.permutation(n))]),
        "blurred": (gaussian_blur(real, torch.full((n,), 1.0 * data.resolution / 32)), labels),
        "noisy": ((real + 0.1 * torch.as_tensor(g.standard_normal(real.shape), dtype=torch.float32)).clamp(-1, 1),
                  labels),
        "two-toned shapes": (torch.where(side[:, None], other, real), labels),
        "16 images repeated": (memory.repeat((n + 15) // 16, 1, 1, 1)[:n], memory_labels.repeat((n + 15) // 16)[:n]),
    }


def validate(weights: str | Path, n: int = 800, repeats: int = 5, reference_size: int = 1000, variant: str = "easy",
             num_classes: int = 8, resolution: int = 32) -> pd.DataFrame:
    """One row per image set: the real sets (``real 0`` .. ``real {repeats-1}``) and every broken
    generator, with every domain metric against the real reference images."""
    def data(split: str, size: int) -> Shapes:
        return Shapes(resolution=resolution, num_classes=num_classes, variant=variant, size=size, split=split)

    ref_images, _ = data("reference", reference_size).render(np.arange(reference_size))
    reference = domain.extract_features(to_uint8(ref_images), weights)

    def score(images: torch.Tensor, labels: torch.Tensor) -> dict:
        feats = domain.extract_features(to_uint8(images), weights)
        return domain.domain_metrics(feats, reference, labels, num_classes)

    test = data("test", n * repeats)
    rows = []
    for r in range(repeats):
        images, labels = test.render(np.arange(r * n, (r + 1) * n))
        rows.append({"set": f"real {r}", **score(images, labels)})
    for name, (images, labels) in broken_sets(data("test", n), n).items():
        rows.append({"set": name, **score(images, labels)})
    return pd.DataFrame(rows)


def judge(table: pd.DataFrame) -> pd.DataFrame:
    """Per broken set and metric: the real-vs-real mean and spread, the value, how many spreads
    it moved the bad way (``moved``), and whether it is caught / kept as CATCHES / KEEPS ask."""
    real = table[table.set.str.startswith("real ")]
    out = []
    for _, row in table[~table.set.str.startswith("real ")].iterrows():
        for metric in domain.METRICS:
            # a floor for metrics that do not vary between real sets (coverage 1, roughness 0)
            mean, spread = real[metric].mean(), max(real[metric].max() - real[metric].min(), SPREAD_FLOOR)
            worse = -1 if domain.HIGHER_IS_BETTER[metric] else 1
            moved = worse * (row[metric] - mean) / spread
            expected = CATCHES[row.set].get(metric)
            out.append({"set": row.set, "metric": metric, "real_mean": mean, "real_spread": spread,
                        "value": row[metric], "moved_spreads": moved, "must_catch": expected is not None,
                        "caught": bool(moved > MARGIN and (expected is None or np.sign(row[metric] - mean) == expected)),
                        "must_keep": metric in KEEPS[row.set], "kept": bool(abs(row[metric] - mean) <= MARGIN * spread)})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    """The broken generator x metric table: real sets as mean ± spread, each broken value in
    bold where the metric catches it (moves the bad way by > MARGIN spreads)."""
    verdict = judge(table)
    real = table[table.set.str.startswith("real ")]
    metrics = list(domain.METRICS)
    lines = ["| set | " + " | ".join(f"`{m}`" for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|",
             "| real vs real (mean ± range) | " + " | ".join(f"{real[m].mean():.3g} ± {real[m].max() - real[m].min():.2g}"
                                                          for m in metrics) + " |"]
    for name in CATCHES:
        v = verdict[verdict.set == name].set_index("metric")
        cells = []
        for m in metrics:
            text = f"{v.loc[m, 'value']:.3g}"
            if v.loc[m, "caught"]:
                text = f"**{text}**"
            if v.loc[m, "must_catch"]:
                text += " ✓" if v.loc[m, "caught"] else " ✗"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""The `shapes` factor evaluator: one small CNN that reads every generating factor of an image.

`shapes` knows what made each real image (benchmark/datasets/shapes.py: class, hue, saturation,
value, size, position). This network is trained once on real renders to predict them all, so
its judgement of a generated image is a judgement of colour and geometry as well as of class:

* ``head``    — class logits (class consistency, the class distribution);
* ``regress`` — the hue as a point on the circle (cos, sin), saturation, value, size, x, y;
* ``degrade`` — how degraded the image is: the blur and resampling applied to it in training
  (0 for a clean render; it also has a noise output, which training did not teach it to read:
  grain is measured on the pixels, domain.roughness);
* ``features`` — its penultimate layer, the space of the domain FD, KID and precision/recall
  (benchmark/metrics/domain.py). Because it must predict colour, position and degradation,
  these features encode them, unlike a classifier trained with colour augmentation (which
  made the old evaluator blind to VAR's two-hue samples).

Training sees no colour augmentation (colour is a factor to read, not a nuisance) and no
flips (position is a factor); it sees mild blur, down-up resampling and noise, so that a
slightly soft but correct sample is still read correctly, and learns to say how soft it is.

The weights for the `easy` variant ship with the suite (``weights/``, versioned by
``EVALUATOR_VERSION`` and checked by SHA-256), so that every user's scores are computed by
the same network and comparable; regenerate them with ``python -m benchmark.metrics.factors``.
Other variants train on first use and are cached under ``cache/evaluators/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from benchmark.datasets.shapes import CLASS_NAMES, Shapes
from benchmark.io import atomic_write, write_text

EVALUATOR_VERSION = 2          # bump when the network, its data or its recipe change
DATA_SEED = 1000               # the evaluator's own scenes: never a run's train/test/reference images
REGRESSED = ("hue_cos", "hue_sin", "saturation", "value", "size", "x", "y")
DEGRADATIONS = ("blur_sigma", "resampled", "noise")   # px at 32 px; 0/1; noise std / NOISE_MAX
NOISE_MAX = 0.02
SHIPPED = Path(__file__).resolve().parent / "weights"
RECIPE = dict(steps=3000, batch_size=128, lr=3e-3, seed=0)


# --------------------------------------------------------------------------- model
def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm: no running statistics, so a batch of odd samples cannot shift the normalisation.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.SiLU())


class FactorNet(nn.Module):
    """(B, 3, H, W) images in [-1, 1], resized (antialiased) to 32 px -> features, class
    logits and the regressed factors. No global pooling: the flattened 4 x 4 map keeps where
    things are, which the position factors need."""

    def __init__(self, num_classes: int = len(CLASS_NAMES), widths: tuple[int, ...] = (32, 64, 96),
                 feature_dim: int = 128, input_size: int = 32):
        super().__init__()
        self.input_size = input_size
        chans = (3, *widths)
        self.body = nn.Sequential(*(_conv(a, b, 2) for a, b in zip(chans[:-1], chans[1:])), _conv(widths[-1], widths[-1], 1))
        side = input_size // 2 ** len(widths)
        self.fc = nn.Linear(widths[-1] * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.regress = nn.Linear(feature_dim, len(REGRESSED))
        self.degrade = nn.Linear(feature_dim, len(DEGRADATIONS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return F.silu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), self.regress(f)


def factor_targets(factors: dict[str, np.ndarray]) -> torch.Tensor:
    """The regression targets (B, 7) of the dataset's factors, in REGRESSED order."""
    hue = 2 * math.pi * np.asarray(factors["hue"])
    cols = [np.cos(hue), np.sin(hue), *(np.asarray(factors[k]) for k in ("saturation", "value", "size", "x", "y"))]
    return torch.as_tensor(np.stack(cols, 1), dtype=torch.float32)


def read_factors(logits: torch.Tensor, regressed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predicted factors by name (the inverse of factor_targets): hue in turns [0, 1)."""
    out = {name: regressed[:, i] for i, name in enumerate(REGRESSED) if not name.startswith("hue")}
    out["hue"] = torch.atan2(regressed[:, 1], regressed[:, 0]).div(2 * math.pi).remainder(1.0)
    out["label"] = logits.argmax(1)
    return out


# --------------------------------------------------------------------------- augmentation
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian ``sigma`` (B,) in pixels (separable, reflect-padded)."""
    B, C, H, W = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), H - 1, W - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma.to(x).clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)
    y = F.pad(x.reshape(1, B * C, H, W), (radius,) * 4, mode="reflect")
    y = F.conv2d(F.conv2d(y, k[:, None, None, :], groups=B * C), k[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def augment(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mild degradations that keep every factor: down-up resampling on a quarter of the batch,
    blur (sigma up to 1 px) on half, additive noise up to 0.02 (about 2.5 grey levels: visible
    grain stays out of the training distribution, so the features move with it). Returns the
    images and what was done to each (B, 3), in DEGRADATIONS order."""
    B, _, H, W = x.shape
    down = torch.rand(B, generator=g) < 0.25
    if down.any():
        s = int(torch.randint(H // 4, 3 * H // 4, (1,), generator=g))
        lo = F.interpolate(x[down], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        x = x.clone()
        x[down] = F.interpolate(lo, size=(H, W), mode="bilinear", align_corners=False)
    sigma = torch.rand(B, generator=g) * (torch.rand(B, generator=g) < 0.5)
    noise = NOISE_MAX * torch.rand(B, generator=g) * (torch.rand(B, generator=g) < 0.5)
    x = gaussian_blur(x, sigma)
    x = (x + noise[:, None, None, None] * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, torch.stack([sigma, down.float(), noise / NOISE_MAX], 1)


# --------------------------------------------------------------------------- training
def train(variant: str = "easy", steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
          seed: int | None = None, progress: bool = True) -> FactorNet:
    """Train on fresh renders (every step new scenes from the evaluator's own seed): cross-entropy
    for the class plus 5 x the squared error of the regressed factors. Deterministic for a seed.
    Unset arguments come from RECIPE."""
    steps, batch_size, lr, seed = (RECIPE[k] if v is None else v for k, v in
                                   zip(("steps", "batch_size", "lr", "seed"), (steps, batch_size, lr, seed)))
    torch.manual_seed(seed)
    net, g = FactorNet(), torch.Generator().manual_seed(seed)
    data = Shapes(resolution=net.input_size, num_classes=len(CLASS_NAMES), variant=variant, size=steps * batch_size,
                  seed=DATA_SEED, split="train")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    quiet = not progress or os.environ.get("SCALEWISE_PROGRESS", "1") == "0"
    bar = tqdm(range(steps), desc=f"shapes factor evaluator ({variant})", disable=quiet)
    net.train()
    for step in bar:
        images, labels, factors = data.render(np.arange(step * batch_size, (step + 1) * batch_size), factors=True)
        x, degradation = augment(images, g)
        f = net.features(x)
        logits, regressed = net.head(f), net.regress(f)
        ce, mse = F.cross_entropy(logits, labels), F.mse_loss(regressed, factor_targets(factors))
        opt.zero_grad(set_to_none=True)
        (ce + 5 * mse + F.mse_loss(net.degrade(f), degradation)).backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(ce=f"{ce.item():.3f}", mse=f"{mse.item():.4f}", refresh=False)
    return net.eval()


@torch.no_grad()
def predict(net: FactorNet, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """{features, logits, and every predicted factor} of images (N, 3, H, W) in [-1, 1]."""
    out: dict[str, list] = {}
    for chunk in images.split(batch_size):
        f = net.features(chunk.float())
        logits, regressed = net.head(f), net.regress(f)
        out_k = {"features": f, "logits": logits, "degradation": net.degrade(f), **read_factors(logits, regressed)}
        for k, v in out_k.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def accuracy(net: FactorNet, variant: str = "easy", n: int = 2000) -> dict[str, float]:
    """How well the evaluator reads held-out real images (the run's "test" split): class
    accuracy and the median absolute error of each regressed factor (hue in turns)."""
    images, labels, factors = Shapes(variant=variant, size=n, split="test").render(np.arange(n), factors=True)
    pred = predict(net, images)
    out = {"class_accuracy": float((pred["label"] == labels).double().mean())}
    for name in ("hue", "saturation", "value", "size", "x", "y"):
        err = (pred[name] - torch.as_tensor(factors[name], dtype=torch.float32)).abs()
        if name == "hue":
            err = torch.minimum(err, 1 - err)   # on the circle
        out[f"{name}_median_abs_error"] = float(err.median())
    return out


# --------------------------------------------------------------------------- weights
def weights_name(variant: str) -> str:
    return f"shapes_factors_v{EVALUATOR_VERSION}_{variant}.safetensors"


def load(path: str | Path) -> FactorNet:
    """An evaluator weights file; one that cannot be loaded raises naming it and the fix."""
    try:
        net = FactorNet()
        net.load_state_dict(load_file(str(path)))
    except Exception as err:   # truncated file, wrong keys or shapes
        raise RuntimeError(f"the shapes factor evaluator '{path}' is corrupt or incompatible ({err}); delete it "
                           "to retrain it (or restore the shipped file with git checkout)") from err
    return net.eval()


def save(net: FactorNet, path: Path, variant: str, info: dict) -> None:
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"version": str(EVALUATOR_VERSION),
                                                                   "variant": variant}))
    write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluator_weights(variant: str, cache_dir: str | Path, progress: bool = True) -> Path:
    """The weights file of the evaluator for ``variant``: the shipped one (checked against the
    SHA-256 in its sidecar), else one trained here and cached in ``cache_dir``."""
    shipped = SHIPPED / weights_name(variant)
    if shipped.exists():
        expected = json.loads(shipped.with_suffix(".json").read_text())["sha256"]
        if sha256(shipped) != expected:
            raise RuntimeError(f"{shipped} does not match the SHA-256 in its sidecar ({expected[:12]}...): restore it "
                               f"with `git checkout {shipped}` or regenerate it with python -m benchmark.metrics.factors")
        return shipped
    cached = Path(cache_dir) / weights_name(variant)
    if not cached.exists():
        build(variant, cached, progress)
    return cached


def build(variant: str, path: Path, progress: bool = True) -> dict:
    """Train the evaluator for ``variant`` with RECIPE and write it to ``path`` with a sidecar
    (recipe, accuracy on held-out real images, training time, SHA-256)."""
    start = time.time()
    net = train(variant, progress=progress)
    info = {"version": EVALUATOR_VERSION, "variant": variant, "recipe": RECIPE, "data_seed": DATA_SEED,
            "train_seconds": round(time.time() - start, 1), "held_out": accuracy(net, variant)}
    save(net, path, variant, info)
    info["sha256"] = sha256(path)
    write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="(Re)train the shipped shapes factor evaluator.")
    parser.add_argument("--variant", default="easy", choices=["easy", "hard"])
    parser.add_argument("--out", type=Path, default=None, help=f"default: {SHIPPED}/{weights_name('<variant>')}")
    args = parser.parse_args()
    out = args.out or SHIPPED / weights_name(args.variant)
    print(json.dumps(build(args.variant, out), indent=2))

"""Domain evaluator for the `shapes` dataset: a small CNN that judges generated samples.

Inception features know nothing about eight flat shapes on a plain background, so for
`shapes` the benchmark trains its own classifier once on real renders, caches it on disk and
scores samples with it:

* `class_consistency` — the share of class-conditional samples that the classifier assigns
  to the class they were generated for;
* `classifier_fd`, `classifier_kid`, `classifier_precision`, `classifier_recall` and the
  IS-like `classifier_is` — torch-fidelity's FID / KID / precision-recall / ISC computed on this
  classifier's penultimate features and logits instead of Inception's (the classifier is
  registered as a torch-fidelity feature extractor in benchmark/metrics/domain.py). Values
  are in *this* classifier's feature space, not comparable with Inception FID / IS.

The classifier is trained with heavy blur, resampling, colour and noise augmentation so that it
judges *shape*: a slightly blurry but correct circle still counts as a circle, and the metrics
measure whether a generator got the class right, not how sharp its tokenizer is.

Accuracy on real held-out images is `accuracy_on_real(model, dataset)`, i.e. `predict` on the
dataset's "test" split followed by an argmax; `load_or_train_classifier` records it in the JSON
sidecar of every cached model.
"""
from __future__ import annotations

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

from benchmark.datasets.shapes import Shapes
from benchmark.io import atomic_write, write_text

# Bump whenever the architecture, augmentations or training recipe change, so that stale
# cached classifiers are never reused.
CLASSIFIER_VERSION = 2

KEY_CLASS_CONSISTENCY = "class_consistency"
KEY_CLASSIFIER_FD = "classifier_fd"


# --------------------------------------------------------------------------- model

def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm instead of BatchNorm: no running statistics, so train and eval behave the same
    # and a batch of odd generated samples cannot shift the normalisation.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.SiLU())


class ShapeClassifier(nn.Module):
    """Small CNN for (B, 3, H, W) images in [-1, 1].

    Inputs of any size are first resized (antialiased) to `input_size`: the classes differ by
    shape alone, which is fully visible at 32 px, so a fixed working size keeps the network
    cheap and its receptive field equal at every resolution.
    """

    def __init__(self, num_classes: int = 8, widths: tuple[int, ...] = (24, 48, 96, 128),
                 strides: tuple[int, ...] = (2, 2, 2, 1), feature_dim: int = 128, input_size: int = 32):
        super().__init__()
        self.num_classes, self.input_size = num_classes, input_size
        # Striding from the first layer keeps it cheap (32 -> 4 px): 3x3 kernels at stride 2
        # still see every pixel, and the shapes are 15-25 px wide.
        chans = (3, *widths)
        self.body = nn.Sequential(*(_conv_block(c_in, c_out, s) for c_in, c_out, s in zip(chans[:-1], chans[1:], strides)))
        self.fc = nn.Linear(widths[-1], feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): the space of the domain FD, KID and precision/recall."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return F.silu(self.fc(self.body(x).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- augmentation

def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian `sigma` (B,) in pixels (separable, reflect-padded)."""
    B, C, H, W = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), H - 1, W - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma.to(x).clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, K): one kernel per channel
    y = F.pad(x.reshape(1, B * C, H, W), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=B * C)
    y = F.conv2d(y, k[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def _rand(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Degrade real renders the way generated samples are degraded, so that only shape is
    left as a cue: blur, down-then-up resampling (a blurry autoencoder reconstruction),
    colour changes (permutation, jitter, inversion, greyscale), flips and additive noise."""
    B, _, H, W = x.shape
    scale = H / 32  # blur widths are specified at 32 px

    # Down-then-up resampling on ~25% of the batch, one random working size per step.
    down = _rand(g, B) < 0.25
    if down.any():
        s = int(torch.randint(max(4, H // 5), max(5, 3 * H // 4), (1,), generator=g))
        lo = F.interpolate(x[down], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        x = x.clone()
        x[down] = F.interpolate(lo, size=(H, W), mode="bilinear", align_corners=False)

    # Gaussian blur on half the batch, sigma up to 1.2 px at 32 px.
    sigma = _rand(g, B, hi=1.2 * scale) * (_rand(g, B) < 0.5)
    x = gaussian_blur(x, sigma)

    # Colour: random channel order, per-channel gain/offset, greyscale, brightness inversion.
    perm = torch.argsort(_rand(g, B, 3), dim=1)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    x = x * _rand(g, B, 3, 1, 1, lo=0.5, hi=1.2) + _rand(g, B, 3, 1, 1, lo=-0.3, hi=0.3)
    grey = (_rand(g, B) < 0.2)[:, None, None, None]
    x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    x = torch.where((_rand(g, B) < 0.3)[:, None, None, None], -x, x)

    # Flips keep the class (shapes are drawn at uniformly random rotation anyway).
    x = torch.where((_rand(g, B) < 0.5)[:, None, None, None], x.flip(-1), x)
    x = torch.where((_rand(g, B) < 0.5)[:, None, None, None], x.flip(-2), x)

    x = x + _rand(g, B, 1, 1, 1, hi=0.1) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


# --------------------------------------------------------------------------- training

class _TrainImages:
    """Batches of the dataset's "train" split, indices cycling through the dataset.

    Scenes are rendered at `resolution`, which may be below the dataset's: the model only
    sees its 32 px working size, and the scenes are analytic, so rendering a 256 px dataset
    at 64 px loses nothing it could use and is 16x cheaper. Rendering is the slowest part of
    training, so each scene is rendered once and kept as uint8 (8-bit steps are below the
    augmentation noise); past `max_bytes` it renders every time.
    """

    def __init__(self, dataset: Shapes, total: int, resolution: int, max_bytes: int = 1 << 30):
        self.data, self.resolution = _with_split(dataset, "train"), resolution
        self.n = min(len(self.data), total)
        self.cache = None
        if self.n * 3 * resolution ** 2 <= max_bytes:
            self.cache = torch.empty(self.n, 3, resolution, resolution, dtype=torch.uint8)
            self.labels = torch.empty(self.n, dtype=torch.int64)
            self.filled = 0

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = (np.arange(batch_size) + step * batch_size) % self.n
        if self.cache is None:
            return self.data.render(idx, self.resolution)
        todo = np.arange(self.filled, min(self.n, idx.max() + 1))  # first pass: fill in order
        if len(todo):
            imgs, labels = self.data.render(todo, self.resolution)
            self.cache[todo] = ((imgs + 1) * 127.5).round().to(torch.uint8)
            self.labels[todo] = labels
            self.filled = int(todo[-1]) + 1
        idx = torch.as_tensor(idx)
        return self.cache[idx].float() / 127.5 - 1, self.labels[idx]


def _with_split(dataset: Shapes, split: str) -> Shapes:
    return Shapes(resolution=dataset.resolution, num_classes=dataset.num_classes, variant=dataset.variant,
                  size=len(dataset), seed=dataset.seed, split=split)


def _cosine_with_warmup(steps: int, warmup: int):
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))


def train_classifier(dataset: Shapes, steps: int = 600, batch_size: int = 128, lr: float = 5e-3,
                     seed: int = 0, progress: bool = True) -> ShapeClassifier:
    """Train a `ShapeClassifier` on augmented renders of `dataset`'s "train" split.

    Deterministic for a given `seed`: initialisation and augmentations draw from their own
    seeded generators, and the training images are fixed by the dataset. The default `lr` is
    higher than usual because GroupNorm makes the conv weights scale-invariant, so their
    effective step shrinks as they grow; at 2e-3 the net had not converged after 600 steps.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ShapeClassifier(dataset.num_classes)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_with_warmup(steps, warmup=max(1, steps // 20)))
    images = _TrainImages(dataset, steps * batch_size, min(dataset.resolution, 2 * model.input_size))
    model.train()
    quiet = not progress or os.environ.get("SCALEWISE_PROGRESS", "1") == "0"  # the project-wide switch
    bar = tqdm(range(steps), desc="shapes classifier", disable=quiet)
    loss_ema = acc_ema = None
    for step in bar:
        x, y = images.batch(step, batch_size)
        logits = model(augment(x, g))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits.argmax(1) == y).float().mean().item()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        acc_ema = acc if acc_ema is None else 0.95 * acc_ema + 0.05 * acc
        bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.3f}", refresh=False)
    return model.eval()


# --------------------------------------------------------------------------- cache

def classifier_config(dataset: Shapes, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Everything that determines the trained weights; its hash names the cache file."""
    return dict(version=CLASSIFIER_VERSION, resolution=dataset.resolution, num_classes=dataset.num_classes,
                variant=dataset.variant, dataset_seed=dataset.seed, dataset_size=len(dataset),
                seed=seed, steps=steps, batch_size=batch_size, lr=lr)


def _cache_paths(cache_dir: Path, config: dict) -> tuple[Path, Path]:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    stem = cache_dir / f"shapes_classifier_{digest}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def load_classifier(path: str | Path) -> ShapeClassifier:
    """A cached classifier (its class count read from the file). A file that cannot be loaded
    raises a RuntimeError naming it."""
    try:
        state = load_file(str(path))
        model = ShapeClassifier(state["head.weight"].shape[0])
        model.load_state_dict(state)
    except Exception as e:  # safetensors header errors, truncation, wrong keys or shapes
        raise RuntimeError(f"The cached shapes classifier '{path}' is corrupt or incompatible ({e}). "
                           f"Delete it and run again to retrain it.") from e
    return model.eval()


def classifier_weights(dataset: Shapes, cache_dir: str | Path, steps: int = 600, batch_size: int = 128,
                       lr: float = 5e-3, seed: int = 0, progress: bool = True, eval_images: int = 2000) -> Path:
    """The cached weights file of the classifier for this dataset and recipe in `cache_dir`,
    trained first if absent (the JSON sidecar records the config and the accuracy on
    `eval_images` real "test"-split images). This file is what the torch-fidelity extractor
    (benchmark/metrics/domain.py) loads."""
    config = classifier_config(dataset, steps, batch_size, lr, seed)
    cache_dir = Path(cache_dir)
    weights, sidecar = _cache_paths(cache_dir, config)
    if weights.exists():
        return weights
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = train_classifier(dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    info = dict(config=config, train_seconds=round(time.perf_counter() - start, 1),
                test_accuracy=round(accuracy_on_real(model, dataset, n=eval_images), 4), test_images=eval_images)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"config": json.dumps(config)}))
    write_text(sidecar, json.dumps(info, indent=2) + "\n")
    return weights


def load_or_train_classifier(dataset: Shapes, cache_dir: str | Path, steps: int = 600, batch_size: int = 128,
                             lr: float = 5e-3, seed: int = 0, progress: bool = True,
                             eval_images: int = 2000) -> ShapeClassifier:
    """The classifier of `classifier_weights` (trained first if absent), loaded. A cache file
    that cannot be loaded raises a RuntimeError naming it (it is never silently overwritten)."""
    return load_classifier(classifier_weights(dataset, cache_dir, steps, batch_size, lr, seed, progress, eval_images))


# --------------------------------------------------------------------------- metrics

@torch.no_grad()
def predict(model: ShapeClassifier, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, num_classes) and features (N, D) for images (N, 3, H, W) in [-1, 1], on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, feats = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.to(device, torch.float32))
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def accuracy_on_real(model: ShapeClassifier, dataset: Shapes, n: int = 2000, split: str = "test") -> float:
    """Accuracy on the first `n` real images of `split` (held out from training by default)."""
    images, labels = _with_split(dataset, split).render(np.arange(n))
    logits, _ = predict(model, images)
    return (logits.argmax(1) == labels).float().mean().item()


def class_consistency(model: ShapeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` that the classifier assigns to their `labels` (the conditioning class)."""
    logits, _ = predict(model, images)
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()

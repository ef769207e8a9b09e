"""Checks across config sections that `run` makes before any job starts, in the order a user
would fix them: the machine (device, writable folders), the data (folder, classes, batch size),
then each method's tokenizer geometry. Each failure is a ConfigError naming the bad value and
the fix; nothing is trained, written or downloaded before they pass."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from benchmark.config import section
from benchmark.keys import shipped_dir
from methods.config import ConfigError
from methods.registry import TOKENIZERS, build


def check_device(cfg: DictConfig) -> None:
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but this machine has no CUDA GPU (torch.cuda.is_available() is "
                          "False); use device=auto (CUDA where there is one) or device=cpu")


def check_writable(cfg: DictConfig) -> None:
    """paths.runs / cache / results: the folder, or the nearest existing folder above it, is writable."""
    for name in ("runs", "cache", "results"):
        path = Path(cfg.paths[name]).resolve()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"paths.{name}={cfg.paths[name]} cannot be written ({existing} is "
                              f"{'not a folder' if not existing.is_dir() else 'read-only'}); give a writable "
                              f"folder with paths.{name}=/path/to/folder")


def check_shipped(cfg: DictConfig) -> None:
    """paths.shipped, when a folder rather than builtin or none, exists."""
    folder = shipped_dir(cfg)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"paths.shipped={cfg.paths.shipped} is not a folder; give a folder holding tokenizers/<key>/"
                          "tokenizer.safetensors, paths.shipped=builtin (the suite's own) or paths.shipped=none "
                          "(always train)")


def check_data(cfg: DictConfig) -> None:
    """The training set exists with the configured classes, and holds at least one batch."""
    from benchmark.build import build_dataset
    data = build_dataset(cfg)   # an image folder: missing, empty, too few classes fail here, naming it
    if cfg.data.name == "imagefolder":
        from benchmark.datasets.imagefolder import check_files
        converted = {m: k for m, k in check_files(data).items() if m != "RGB"}
        if converted:   # read_rgb converts them: say so once, before any work
            print(f"imagefolder: converted to 8-bit RGB when read: {', '.join(f'{k} {m}' for m, k in converted.items())} "
                  "image(s) (alpha dropped, 16-bit scaled)", file=sys.stderr)
    n, batch = len(data), cfg.train.batch_size
    if batch > n:
        raise ConfigError(f"train.batch_size={batch} is larger than the training set ({n} images); use "
                          f"train.batch_size<={n}" + (" or a larger data.train_size" if cfg.data.name == "shapes" else ""))


def check_tokenizer(cfg: DictConfig, method: str) -> None:
    """The resolution is a multiple of the tokenizer's stride and a multi-scale tokenizer's scale
    list ends at the latent side (built on the meta device: no memory, no weights read)."""
    name = cfg[method].tokenizer
    tcfg = section(cfg, name)
    res = cfg.data.resolution
    with torch.device("meta"):
        tok = build(TOKENIZERS, name, cfg=tcfg)
    stride = tok.stride
    if res % stride:
        ok = [r for r in (16, 32, 64, 128, 256, 512) if r % stride == 0]
        raise ConfigError(f"data.resolution={res} is not a multiple of the {name} tokenizer's stride {stride}; use "
                          f"data.resolution in {ok} or a tokenizer with another stride")
    side = res // stride
    scales = list(getattr(tcfg, "patch_nums", []) or [])
    if scales and scales[-1] != side:
        raise ConfigError(f"{name}.patch_nums={scales} must end at the latent side {side} ({res} px / stride {stride}); "
                          f"e.g. {name}.patch_nums={[p for p in scales if p < side] + [side]}")


def preflight(cfgs: list[DictConfig], methods: list[str], stages: tuple[str, ...]) -> None:
    seen = set()
    for cfg in cfgs:
        if cfg.jobs.executor != "slurm":   # Slurm jobs run on the cluster's nodes, not here
            check_device(cfg)
        check_writable(cfg)
        check_shipped(cfg)
        if "train" in stages or "tokenizer" in stages or "latents" in stages:
            key = (cfg.data.name, cfg.data.root, cfg.data.train_size, cfg.train.batch_size)
            if key not in seen:
                seen.add(key)
                check_data(cfg)
        for method in methods:
            check_tokenizer(cfg, method)

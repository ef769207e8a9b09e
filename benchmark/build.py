"""Datasets, tokenizers and methods built from a run's config through their registries."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from benchmark.config import section
from benchmark.datasets.base import DATASETS, Dataset
from benchmark.keys import RunKeys
from methods.base import Method, Tokenizer, TokenSpec
from methods.checkpoints import load_safetensors
from methods.registry import METHODS, TOKENIZERS, build, lookup


def build_dataset(cfg: DictConfig, split: str = "train", resolution: int | None = None) -> Dataset:
    data = section(cfg, "data")
    return lookup(DATASETS, data.name).from_config(data, split, resolution or data.resolution)


def build_tokenizer(cfg: DictConfig, method: str) -> Tokenizer:
    """The tokenizer ``method`` uses: its official weights if ``<tokenizer>.pretrained`` is set,
    else freshly initialised (the tokenizer stage trains it)."""
    name = cfg[method].tokenizer
    tcfg = section(cfg, name)
    if tcfg.pretrained:
        return lookup(TOKENIZERS, name).from_pretrained(tcfg.pretrained, tcfg)
    return build(TOKENIZERS, name, cfg=tcfg)


def load_tokenizer(cfg: DictConfig, method: str, device: torch.device, keys: RunKeys | None = None) -> Tokenizer:
    """The tokenizer this config's tokenizer stage wrote, else the configured official weights."""
    keys = keys or RunKeys.of(cfg, method)
    path = keys.tokenizer_dir / "tokenizer.safetensors"
    if path.exists():
        tok = build(TOKENIZERS, keys.tokenizer, cfg=section(cfg, keys.tokenizer))
        tok.load_state_dict(load_safetensors(path))
    elif section(cfg, keys.tokenizer).pretrained:
        tok = build_tokenizer(cfg, method)
    else:
        raise FileNotFoundError(f"no trained {keys.tokenizer} tokenizer for this config at {keys.tokenizer_dir}; run "
                                f"the tokenizer stage first (python -m benchmark run --methods {method} --stages "
                                f"tokenizer ...) or pass its official weights (--tokenizer-checkpoint PATH)")
    return tok.to(device).eval()


def build_method(cfg: DictConfig, method: str, tok: Tokenizer) -> Method:
    """``method`` around ``tok``, untrained (initialised from the torch seed in force)."""
    data = section(cfg, "data")
    spec = TokenSpec(channels=tok.channels, latent_size=data.resolution // tok.stride, num_classes=data.num_classes)
    return build(METHODS, method, cfg=section(cfg, method), spec=spec, tokenizer=tok)


def load_trained(cfg: DictConfig, method: str, tok: Tokenizer, device: torch.device, keys: RunKeys | None = None,
                 weights: str | Path | None = None, ema: bool | None = None) -> Method:
    """The trained method of this config (``eval.weights``: its EMA or raw weights), or the
    weights file given (a suite or official checkpoint; ``ema``: its EMA weights), in eval mode."""
    keys = keys or RunKeys.of(cfg, method)
    if weights is None:
        weights = keys.run_dir / f"{cfg.eval.weights}.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"{method} is not trained for this config ({keys.run_dir} has no {weights.name}); "
                                    f"run the train stage first (python -m benchmark run --methods {method} ...)")
    model = build_method(cfg, method, tok).to(device)
    model.load_weights(weights, ema=cfg.eval.weights == "ema" if ema is None else ema)
    return model.eval()

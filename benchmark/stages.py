"""The stages of a run, each a plain function of the resolved config and a method, cached by
the hashes in ``RunKeys``:

    tokenizer (train or load) -> latents (encode the training set once) -> train -> evaluate

A finished stage is found by its key and skipped; an interrupted training resumes from its
last checkpoint. Stages know nothing of how they are scheduled (see jobs/). Under
torch.distributed every rank runs the stage: training splits each batch, sampling splits the
image indices, and rank 0 alone writes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from benchmark import distributed, results
from benchmark.build import build_dataset, build_method, build_tokenizer, load_tokenizer
from benchmark.config import TrainConfig, section
from benchmark.evaluation import evaluate_method, tokenizer_metrics
from benchmark.io import atomic_write, save_tensors, write_text
from benchmark.keys import SHIPPED, RunKeys, shipped_dir
from benchmark.provenance import provenance
from benchmark.trainer import Trainer
from methods.checkpoints import load_safetensors

__all__ = ["STAGES", "train_tokenizer", "encode_latents", "train_method", "evaluate_method"]


def tokenizer_train_config(tcfg) -> TrainConfig:
    """The trainer's settings from a tokenizer section (methods.base.TokenizerConfig)."""
    return TrainConfig(steps=tcfg.steps, batch_size=tcfg.batch_size, lr=tcfg.lr, min_lr=tcfg.min_lr,
                       warmup_steps=tcfg.warmup_steps, weight_decay=tcfg.weight_decay, grad_clip=tcfg.grad_clip,
                       ema_rate=0.0, checkpoint_every=max(tcfg.steps // 4, 1), log_every=25, autocast="off")


def shipped_tokenizer(cfg: DictConfig, key: str) -> Path | None:
    """``<shipped>/tokenizers/<key>`` when it holds a tokenizer of exactly this key (the same
    data and tokenizer settings: what training here would produce, trained once by the suite)."""
    folder = shipped_dir(cfg)
    entry = folder / "tokenizers" / key if folder else None
    return entry if entry and (entry / "tokenizer.safetensors").exists() else None


def copy_tokenizer(src: Path, dst: Path, **info) -> Path:
    """A tokenizer folder's weights and json copied, ``info`` added to the json (weights first:
    the json marks the copy complete)."""
    data = (src / "tokenizer.safetensors").read_bytes()
    atomic_write(dst / "tokenizer.safetensors", lambda tmp: tmp.write_bytes(data))
    write_text(dst / "tokenizer.json", json.dumps({**json.loads((src / "tokenizer.json").read_text()), **info},
                                                  indent=2))
    return dst


def ship_tokenizer(trained: Path) -> Path:
    """A tokenizer trained here stored under ``benchmark/shipped/tokenizers/<key>`` with the
    code, packages, machine and command that made it (``train-tokenizer --ship``)."""
    if str(json.loads((trained / "tokenizer.json").read_text()).get("source", "")).startswith("shipped"):
        raise ValueError(f"{trained} holds a copy of a shipped tokenizer, not one trained here; train into a fresh "
                         "cache (paths.cache=/tmp/fresh) to ship it")
    return copy_tokenizer(trained, SHIPPED / "tokenizers" / trained.name, shipped=provenance())


def train_tokenizer(cfg: DictConfig, method: str) -> Path:
    """Train (or load) the tokenizer ``cfg[method].tokenizer`` on the run's data; cached. A
    tokenizer shipped with the suite under the same key is copied instead of trained."""
    keys = RunKeys.of(cfg, method)
    out = keys.tokenizer_dir
    if (out / "tokenizer.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    entry = shipped_tokenizer(cfg, keys.tokenizer_key)
    if entry is not None:
        if distributed.is_main():
            copy_tokenizer(entry, out, source=f"shipped: {entry}")
            print(f"tokenizer {keys.tokenizer_key}: the one shipped with the suite ({entry}); "
                  "paths.shipped=none trains it here instead", flush=True)
        distributed.barrier()
        return out
    tcfg, device = section(cfg, keys.tokenizer), distributed.resolve_device(cfg.device)
    torch.manual_seed(0)   # the tokenizer is a function of its config and the data alone (as its cache key)
    tok, data, start = build_tokenizer(cfg, method).to(device), build_dataset(cfg), time.time()
    if not tcfg.pretrained:
        def batch_loss(step: int, g: torch.Generator) -> torch.Tensor:
            idx = np.arange(step * tcfg.batch_size, (step + 1) * tcfg.batch_size) % len(data)
            return tok.loss(data.render(distributed.shard(idx))[0].to(device), g)

        Trainer(tok, batch_loss, tokenizer_train_config(tcfg), out / "train", seed=0, device=device,
                desc=f"tokenizer {keys.tokenizer}").fit()
    tok.eval()
    tok.calibrate(data.render(np.arange(min(1024, len(data))))[0].to(device))
    if not distributed.is_main():
        distributed.barrier()
        return out
    metrics = tokenizer_metrics(tok, cfg, device)
    save_tensors(tok.state_dict(), out / "tokenizer.safetensors")
    info = {"name": keys.tokenizer, "kind": tok.kind, "config": OmegaConf.to_container(cfg[keys.tokenizer]),
            **tok.info(), "seconds": time.time() - start, **metrics}
    write_text(out / "tokenizer.json", json.dumps(info, indent=2))
    distributed.barrier()
    return out


def view_seed(seed: int, image: int, view: int) -> int:
    """The augmentation draws of one training view: a function of (seed, image, view) alone."""
    return (int(seed) * 1_000_003 + int(image) * 7_919 + int(view) * 104_729 + 17) % (2 ** 63)


def on_the_fly(cfg: DictConfig) -> bool:
    """Augmented views encoded at every step (``data.augment_views: 0``) instead of cached."""
    return cfg.data.augment != "none" and cfg.data.augment_views == 0


@torch.no_grad()
def encode_latents(cfg: DictConfig, method: str) -> Path | None:
    """Every training image encoded once (``tok.to_cache``: a KL's posterior moments, a VQ's
    token indices), reused by every method and seed that shares the tokenizer and data; with
    ``data.augment`` and ``augment_views: N``, N augmented views of each (view v of image i at
    row v x len + i). None when views are encoded on the fly (``augment_views: 0``)."""
    if on_the_fly(cfg):
        return None
    keys = RunKeys.of(cfg, method)
    if keys.latents.exists():
        return keys.latents
    if not distributed.is_main():
        distributed.barrier()
        return keys.latents
    device = distributed.resolve_device(cfg.device)
    tok, data = load_tokenizer(cfg, method, device, keys), build_dataset(cfg)
    views = cfg.data.augment_views if cfg.data.augment != "none" else 1
    encoded, labels = [], []
    for view in range(views):
        for start in tqdm(range(0, len(data), 256), desc=f"latents (view {view + 1}/{views})", dynamic_ncols=True):
            idx = np.arange(start, min(start + 256, len(data)))
            x, y = (data.render(idx) if cfg.data.augment == "none" else
                    data.render_augmented(idx, [view_seed(cfg.seed, i, view) for i in idx], cfg.data.augment))
            encoded.append(tok.to_cache(x.to(device)).cpu())
            labels.append(y)
    save_tensors({"encoded": torch.cat(encoded), "labels": torch.cat(labels)}, keys.latents)
    distributed.barrier()
    return keys.latents


def batches(cfg: DictConfig, tok, model, encoded: torch.Tensor | None, labels: torch.Tensor | None,
            data=None):
    """``batch_loss(step, generator)`` over the training set: an epoch-wise permutation from
    (seed, epoch), so the data order is a function of the step (exact resume). Its inputs are
    the cached latents (one of the cached views of each image, drawn from the step), or, with
    ``encoded`` None, a fresh augmented view of each image encoded now (``data``)."""
    device = encoded.device if encoded is not None else next(model.parameters()).device
    views = 0 if encoded is None else cfg.data.augment_views if cfg.data.augment != "none" else 1   # cached per image
    n, batch_size = (len(data) if encoded is None else len(labels) // views), cfg.train.batch_size

    def batch_loss(step: int, g: torch.Generator) -> torch.Tensor:
        epoch, i = divmod(step, n // batch_size)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        idx = distributed.shard(perm[i * batch_size:(i + 1) * batch_size])
        if encoded is None:
            with torch.no_grad():
                x, y = data.render_augmented(idx, [view_seed(cfg.seed, int(j), step + 1) for j in idx], cfg.data.augment)
                cache, y = tok.to_cache(x.to(device)), y.to(device)
        else:
            if views > 1:   # one cached view per sample, drawn from the step (not from g: the loss's stream stays)
                pick = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
                idx = idx + n * torch.randint(views, idx.shape, generator=pick)
            idx = idx.to(device)
            cache, y = encoded[idx], labels[idx]
        inputs = tok.from_cache(cache, g)  # KL: a fresh posterior sample (as MAR/FlowAR); VQ: the tokens
        return model.loss(inputs, y, g)
    return batch_loss


def train_method(cfg: DictConfig, method: str) -> Path:
    """Train the method on cached latents; resumes an interrupted run; skipped when done."""
    keys = RunKeys.of(cfg, method)
    out = keys.run_dir
    if (out / "ema.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        OmegaConf.save(cfg, out / "config.yaml")
    device = distributed.resolve_device(cfg.device)
    tok = load_tokenizer(cfg, method, device, keys)
    latents = encode_latents(cfg, method)
    torch.manual_seed(cfg.seed)
    model = build_method(cfg, method, tok).to(device)
    if latents is None:   # augmented views encoded at every step
        batch_loss = batches(cfg, tok, model, None, None, data=build_dataset(cfg))
    else:
        cache = load_safetensors(latents)
        batch_loss = batches(cfg, tok, model, cache["encoded"].to(device), cache["labels"].to(device))
    start = time.time()
    history = Trainer(model, batch_loss, section(cfg, "train"), out, seed=cfg.seed, device=device,
                      desc=f"train {method}").fit()
    if distributed.is_main():
        save_weights(out, history, time.time() - start)
    distributed.barrier()
    return out


def save_weights(out: Path, history: list, seconds: float) -> None:
    """The final checkpoint's network weights (raw and EMA) as safetensors, the loss history."""
    state = torch.load(out / "checkpoint-last.pt", map_location="cpu", weights_only=True)
    network = lambda sd: {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    save_tensors(network(state["model"]), out / "model.safetensors")
    save_tensors(network(state["ema"]), out / "ema.safetensors")
    write_text(out / "train.json", json.dumps({"seconds": seconds, "history": history,
                                               "processes": distributed.world_size()}))
    results.save_loss_curve([s for s, _ in history], [loss for _, loss in history], out / "loss.png")


STAGES = {"tokenizer": train_tokenizer, "latents": encode_latents, "train": train_method, "evaluate": evaluate_method}

"""Sample a trained or released model to PNG files (and an ADM-style .npz), resumably.

    python -m benchmark sample --method flowar --preset imagenet256_flowar_s \\
        --checkpoint FlowAR-S.pth --tokenizer-checkpoint kl16.ckpt --out samples/flowar_s

Image i has class i // samples_per_class (the standard protocol: 50 per class x 1000
classes) and its own seed (a function of i alone), so a killed job resumes where it stopped
and any chunking or number of workers gives the same images.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from benchmark import stages
from benchmark.config import section
from methods.registry import TOKENIZERS, lookup


def load_tokenizer_for_sampling(cfg: DictConfig, method: str, device: torch.device):
    """The configured pretrained tokenizer (``<tokenizer>.pretrained``), else the one this
    config trained and cached."""
    name = cfg[method].tokenizer
    tcfg = section(cfg, name)
    if tcfg.pretrained:
        return lookup(TOKENIZERS, name).from_pretrained(tcfg.pretrained, tcfg).to(device).eval()
    path = Path(cfg.paths.cache) / "tokenizers" / stages.tokenizer_key(cfg, method)[1]
    if not (path / "tokenizer.safetensors").exists():
        raise FileNotFoundError(f"no tokenizer for this config at {path}; pass --tokenizer-checkpoint PATH "
                                f"or train it first: python -m benchmark train-tokenizer --preset {cfg.preset}")
    return stages.load_tokenizer(cfg, method, device)


def sample_to_folder(cfg: DictConfig, method: str, checkpoint: str | Path, out: str | Path,
                     num_classes: int, ema: bool = True) -> Path:
    """Write ``images/{i:06d}.png`` for every image not yet written, then ``samples.npz``."""
    out, device = Path(out), stages.resolve_device(cfg.device)
    ev = section(cfg, "eval")
    tok = load_tokenizer_for_sampling(cfg, method, device)
    model = stages.build_method(cfg, method, tok).to(device).eval()
    model.load_weights(checkpoint, ema=ema)
    labels = stages.balanced_labels(num_classes, ev.samples_per_class)
    (out / "images").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(labels)) if not (out / "images" / f"{i:06d}.png").exists()]
    manifest = {"method": method, "checkpoint": str(checkpoint), "weights": "ema" if ema else "model",
                "num_images": len(labels), "samples_per_class": ev.samples_per_class, "num_classes": num_classes,
                "labels": "image i has class i // samples_per_class", "seed": cfg.seed,
                "seed_scheme": "per global image index", "sampler": model.sampler_settings(),
                "quantization": "round((x+1)*127.5) to uint8, PNG", "config": OmegaConf.to_container(cfg)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    start = time.time()
    for b in tqdm(range(0, len(todo), ev.batch_size), desc=f"sample {method}", dynamic_ncols=True):
        idx = todo[b:b + ev.batch_size]
        images = stages.generate_batch(model, tok, labels[idx], idx, cfg.seed, device)
        for i, arr in zip(idx, stages.to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
            tmp = out / "images" / f"{i:06d}.tmp.png"
            Image.fromarray(arr).save(tmp)
            tmp.replace(out / "images" / f"{i:06d}.png")  # a killed job leaves no half-written PNG
    pack = np.stack([np.asarray(Image.open(out / "images" / f"{i:06d}.png")) for i in range(len(labels))])
    np.savez(out / "samples.npz", arr_0=pack)  # the ADM evaluator's layout
    print(f"{len(todo)} new image(s) in {time.time() - start:.0f}s; {len(labels)} in {out / 'samples.npz'}")
    return out / "samples.npz"

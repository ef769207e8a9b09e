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
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.build import load_tokenizer, load_trained
from benchmark.config import section
from benchmark.generation import balanced_labels, generate_batch, to_uint8


def sample_to_folder(cfg: DictConfig, method: str, checkpoint: str | Path, out: str | Path,
                     num_classes: int, ema: bool = True) -> Path:
    """Write ``images/{i:06d}.png`` for every image not yet written, then ``samples.npz``."""
    out, device = Path(out), distributed.resolve_device(cfg.device)
    ev = section(cfg, "eval")
    import argparse

    from methods.checkpoints import check_file
    check_file(checkpoint, f"a {method} checkpoint", [argparse.Namespace])   # first: it is what the user gave
    tok = load_tokenizer(cfg, method, device)
    model = load_trained(cfg, method, tok, device, weights=checkpoint, ema=ema)
    labels = balanced_labels(num_classes, ev.samples_per_class)
    (out / "images").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(labels)) if not (out / "images" / f"{i:06d}.png").exists()]
    manifest = {"method": method, "checkpoint": str(checkpoint), "weights": "ema" if ema else "model",
                "num_images": len(labels), "samples_per_class": ev.samples_per_class, "num_classes": num_classes,
                "labels": "image i has class i // samples_per_class", "seed": cfg.seed,
                "seed_scheme": "per global image index", "sampler": model.sampler_settings(),
                "quantization": "round((x+1)*127.5) to uint8, PNG",
                "autocast": ev.autocast if device.type == "cuda" else "off", "config": OmegaConf.to_container(cfg)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    start = time.time()
    for b in tqdm(range(0, len(todo), ev.batch_size), desc=f"sample {method}", dynamic_ncols=True):
        idx = todo[b:b + ev.batch_size]
        images = generate_batch(model, tok, labels[idx], idx, cfg.seed, device, ev.autocast)
        for i, arr in zip(idx, to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
            tmp = out / "images" / f"{i:06d}.tmp.png"
            Image.fromarray(arr).save(tmp)
            tmp.replace(out / "images" / f"{i:06d}.png")  # a killed job leaves no half-written PNG
    pack = np.stack([np.asarray(Image.open(out / "images" / f"{i:06d}.png")) for i in range(len(labels))])
    np.savez(out / "samples.npz", arr_0=pack)  # the ADM evaluator's layout
    print(f"{len(todo)} new image(s) in {time.time() - start:.0f}s; {len(labels)} in {out / 'samples.npz'}")
    return out / "samples.npz"

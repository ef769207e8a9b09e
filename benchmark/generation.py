"""Images from a method: per-image seeds, class-balanced labels, batched sampling (split over
ranks under torch.distributed) and the one float -> uint8 conversion every method's samples go
through, whether scored in memory or written to PNG."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from benchmark import distributed
from methods.base import Method, Tokenizer


def image_seed(seed: int, index: int) -> int:
    """The seed of generated image ``index``: a function of the global index alone, so the
    same images come out whatever the batch size or number of workers."""
    return (seed * 2_654_435_761 + index * 40_503 + 1) % (2 ** 63)


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Image i has class i // per_class (the standard protocol: 50 per class x 1000 classes)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


@torch.no_grad()
def generate_batch(model: Method, tok: Tokenizer, labels: torch.Tensor, indices, seed: int, device: torch.device,
                   autocast: str = "off", **settings) -> torch.Tensor:
    """Images in [-1, 1] for ``labels``; image i is drawn from its own seed ``image_seed(seed, i)``;
    ``settings`` override the method's sampler. ``autocast`` (eval.autocast: off | fp16 | bf16)
    applies on CUDA only, as the official samplers' fp16 autocast."""
    gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]
    use = autocast in ("fp16", "bf16") and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.float16 if autocast == "fp16" else torch.bfloat16, enabled=use):
        images = tok.decode(model.generate(labels.to(device), gens, **settings))
    return images.float().clamp(-1, 1)


@torch.no_grad()
def generate_images(model: Method, tok: Tokenizer, labels: torch.Tensor, seed: int, batch_size: int,
                    device: torch.device, desc: str = "sample", autocast: str = "off", **settings) -> torch.Tensor:
    """Images in [-1, 1] for ``labels``, image i seeded by its index (timing is
    ``benchmark.speed.sampling_cost``'s job). Distributed: each rank draws a contiguous part of
    the indices; all get every image."""
    model.eval()
    mine = distributed.shard(range(len(labels)), total=len(labels))
    out = []
    for start in tqdm(range(mine.start, mine.stop, batch_size), desc=desc, dynamic_ncols=True,
                      disable=not distributed.is_main()):
        idx = range(start, min(start + batch_size, mine.stop))
        out.append(generate_batch(model, tok, labels[idx.start:idx.stop], idx, seed, device, autocast,
                                  **settings).cpu())
    return distributed.gather_cat(torch.cat(out) if out else torch.empty(0))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """The one float -> uint8 conversion used for every method's samples (scored or written
    to PNG): round((x + 1) * 127.5), clamped to [0, 255]. (B, 3, H, W) stays (B, 3, H, W)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

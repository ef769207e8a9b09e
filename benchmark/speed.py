"""Sampling speed of a method at a preset's size, with random weights (speed does not depend
on the weights): images/s and latency at each batch size, peak memory, parameters.

    python -m benchmark.speed --method var --preset var_d16 --batch-sizes 1 64
    python -m benchmark.speed --method flowar --preset flowar_small --batch-sizes 1 64 --dtype bf16

Tokens and decoding are timed together, as in the evaluation. The first call at each batch
size is a warm-up; the figure is the median of ``--repeats`` timed calls.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from benchmark import stages
from benchmark.config import load_config, section
from methods.registry import TOKENIZERS, lookup


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


@torch.no_grad()
def measure(method: str, preset: str, batch_sizes: list[int], repeats: int, dtype: str, overrides: list[str]) -> list[dict]:
    cfg = load_config(preset, overrides)
    device = stages.resolve_device(cfg.device)
    name = cfg[method].tokenizer
    tcfg = section(cfg, name)
    tcfg.pretrained = None
    tok = lookup(TOKENIZERS, name)(tcfg).to(device).eval()
    model = stages.build_method(cfg, method, tok).to(device).eval()
    params = sum(p.numel() for p in model.network.parameters()) / 1e6
    rows = []
    for batch in batch_sizes:
        labels = torch.arange(batch) % cfg.data.num_classes
        times = []
        for r in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                stages.generate_batch(model, tok, labels, range(batch), seed=r, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:   # the first call warms up
                times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        rows.append({"method": method, "preset": preset, "batch_size": batch, "images_per_s": batch / seconds,
                     "latency_s_per_image": seconds / batch, "seconds_per_batch": seconds,
                     "peak_memory_mb": peak_memory_mb(device), "params_m": params, "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "dtype": dtype, "repeats": repeats, "sampler": model.sampler_settings(),
                     "resolution": cfg.data.resolution})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. device=cuda")
    args = p.parse_args(argv)
    measure(args.method, args.preset, args.batch_sizes, args.repeats, args.dtype, args.overrides)


if __name__ == "__main__":
    main()

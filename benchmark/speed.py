"""Sampling cost of a method: images/s and latency per image at batch size 1 and at a large
batch, peak memory, network evaluations (NFE), parameters and FLOPs per image.

``sampling_cost`` is the one measurement: the evaluate stage calls it for every leaderboard
row (trained weights, the row's sampler settings), and ``python -m benchmark bench``
(benchmark/bench.py) for a preset's size with random weights (speed does not depend on the
weights).

Tokens and decoding are timed together, as in the evaluation. The first call at each batch
size is a warm-up; the figure is the median of ``repeats`` timed calls. FLOPs are counted by
torch's ``FlopCounterMode`` on one image (tokens, then decoding), never estimated by hand.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmark.generation import generate_batch
from methods.base import Method

# On CPU, F.scaled_dot_product_attention runs aten._scaled_dot_product_flash_attention_for_cpu,
# which FlopCounterMode has no formula for (it would count attention as 0 FLOPs): count it
# with torch's own SDPA formula, as the CUDA kernels are.
CPU_SDPA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                  lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory torch allocated since the last reset; CPU: the process's peak RSS
    (its whole life, not this call alone: compare CPU figures within one process with care)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


@torch.no_grad()
def seconds_per_batch(model: Method, tok, batch_size: int, num_classes: int, device: torch.device, repeats: int,
                      dtype: str = "fp32", **settings) -> float:
    """Median wall time of ``repeats`` calls on one batch (tokens + decoding), after a warm-up call."""
    labels = torch.arange(batch_size) % num_classes
    times = []
    for r in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        with _autocast(device, dtype):
            generate_batch(model, tok, labels, range(r * batch_size, (r + 1) * batch_size), 0, device, **settings)
        _sync(device)
        if r > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def flops_per_image(model: Method, tok, device: torch.device, dtype: str = "fp32", **settings) -> tuple[int, int]:
    """FLOPs of generating one image's tokens and of decoding them, counted by FlopCounterMode
    (a guided sampler's doubled batch counts as what it runs)."""
    labels = torch.zeros(1, dtype=torch.long, device=device)
    with _autocast(device, dtype), FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as tokens:
        latents = model.generate(labels, [torch.Generator().manual_seed(0)], **settings)
    with _autocast(device, dtype), FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as decoding:
        tok.decode(latents)
    return tokens.get_total_flops(), decoding.get_total_flops()


def sampling_cost(model: Method, tok, num_classes: int, batch_size: int, device: torch.device, repeats: int = 3,
                  dtype: str = "fp32", **settings) -> tuple[dict, dict]:
    """(metrics, protocol) of sampling with these settings: images/s and ms per image at batch
    1 and at ``batch_size``, peak memory, NFE (``model.nfe``), parameters (millions) and
    GFLOPs per image (tokens + decoding, and decoding alone)."""
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    one = seconds_per_batch(model, tok, 1, num_classes, device, repeats, dtype, **settings)
    big = seconds_per_batch(model, tok, batch_size, num_classes, device, repeats, dtype, **settings)
    memory = peak_memory_mb(device)
    token_flops, decode_flops = flops_per_image(model, tok, device, dtype, **settings)
    metrics = {"throughput_img_s": batch_size / big, "latency_ms_per_image": 1000 * big / batch_size,
               "throughput_bs1_img_s": 1 / one, "latency_bs1_ms": 1000 * one, "peak_memory_mb": memory,
               "nfe": model.nfe(**settings), "params_m": sum(p.numel() for p in model.network.parameters()) / 1e6,
               "gflops_per_image": (token_flops + decode_flops) / 1e9, "gflops_decode_per_image": decode_flops / 1e9}
    protocol = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "dtype": dtype, "batch_sizes": [1, batch_size], "repeats": repeats, "warmup_calls": 1,
                "statistic": "median", "threads": torch.get_num_threads(),
                "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
                "flops": "torch.utils.flop_counter.FlopCounterMode, one image, tokens + decoding"}
    return metrics, protocol

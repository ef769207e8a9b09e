"""Scale schedules: which token grids a scale-wise model predicts, and in what order."""
from __future__ import annotations

import torch


def doubling_scales(latent_size: int) -> list[int]:
    """FlowAR's schedule: 1, 2, 4, ... up to the latent side (which must be a power of two)."""
    if latent_size < 1 or latent_size & (latent_size - 1):
        raise ValueError(f"latent side {latent_size} is not a power of two; FlowAR's doubling "
                         "scales need one (pick a resolution / tokenizer stride that gives 1, 2, 4, 8, 16, ...)")
    return [2 ** k for k in range(latent_size.bit_length())]


def token_offsets(scales: list[int], prefix: int = 0) -> list[tuple[int, int]]:
    """(begin, end) of each scale's tokens in the flattened sequence (after `prefix` tokens)."""
    out, start = [], prefix
    for s in scales:
        out.append((start, start + s * s))
        start += s * s
    return out


def block_causal_mask(scales: list[int], prefix: int = 0) -> torch.Tensor:
    """Additive mask (1, 1, L, L): a token sees every token of its own and earlier scales.
    The `prefix` tokens (if any) belong to the first scale's block."""
    sizes = [s * s for s in scales]
    sizes[0] += prefix
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes), output_size=sum(sizes))
    allowed = block[:, None] >= block[None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[None, None]

"""Token samplers shared by the discrete scale-wise methods (VAR, FlexVAR): top-k / top-p
filtering, seeded multinomial draws and a seeded Gumbel-softmax (guidance: methods/guidance.py).

Randomness comes from explicit ``torch.Generator``s only: one for the whole batch (then the
draws follow the official samplers' order exactly) or one per image (then image i's tokens
depend on its own generator alone, whatever batch it is sampled in; the harness's mode).
"""
from __future__ import annotations

import torch

from methods.base import Generators


def top_k_top_p_(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """In place, set to -inf the logits outside the top k, and outside the smallest set whose
    probability reaches top_p (the most likely token always stays). 0 disables either."""
    V = logits.shape[-1]
    if top_k > 0:
        kth = logits.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        ascending, order = logits.sort(dim=-1, descending=False)
        drop = ascending.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits.masked_fill_(drop.scatter(order.ndim - 1, order, drop), -torch.inf)
    return logits


def multinomial(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One draw per row of probs (B, l, V) -> (B, l).

    One generator (or None): ``torch.multinomial`` over the B * l rows, the official samplers'
    draw (on the generator's device). A list of generators, one per image: image b's uniforms
    come from generator b (l numbers, cheap to move) and pick the token by inverse CDF on the
    probabilities' device, so per-image seeding costs no host round trip of the logits.
    """
    B, l, V = probs.shape
    if isinstance(generator, (list, tuple)):
        if len(generator) != B:
            raise ValueError(f"{len(generator)} generators for a batch of {B}")
        u = torch.stack([torch.rand(l, generator=g, device=g.device) for g in generator]).to(probs.device)
        cdf = probs.float().cumsum(dim=-1)
        # First token whose cumulative probability exceeds u * total: never a zero-probability one.
        idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
        return idx.clamp_max(V - 1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.reshape(-1, V).cpu(), 1, replacement=True,
                                 generator=generator).view(B, l).to(probs.device)
    return torch.multinomial(probs.reshape(-1, V), 1, replacement=True, generator=generator).view(B, l)


def sample_tokens(logits: torch.Tensor, generator: Generators, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Filter (in place) and draw one token per position: logits (B, l, V) -> indices (B, l)."""
    return multinomial(top_k_top_p_(logits, top_k, top_p).softmax(dim=-1), generator)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: Generators) -> torch.Tensor:
    """Soft Gumbel-softmax softmax((logits + g) / tau), g = -log(Exponential(1)) drawn from the
    generator(s) (as VAR's ``more_smooth`` visualisation sampler)."""
    if isinstance(generator, (list, tuple)):
        e = torch.stack([torch.empty(logits.shape[1:], device=g.device).exponential_(generator=g)
                         for g in generator]).to(logits.device)
    elif generator is not None and generator.device != logits.device:
        e = torch.empty(logits.shape).exponential_(generator=generator).to(logits.device)
    else:
        e = torch.empty_like(logits).exponential_(generator=generator)
    return ((logits - e.log()) / tau).softmax(dim=-1)

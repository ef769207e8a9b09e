"""Classifier-free guidance (Ho & Salimans, 2022), the one home of its arithmetic.

Guided samplers run a [conditional; unconditional] batch (B' = 2B) and combine the two halves
of the network's output. Two spellings of the same rule exist in the official code, and each
method keeps its own so that its outputs match the official ones bit for bit:

* ``guide``: uncond + scale * (cond - uncond) (FlowAR's velocities, LlamaGen-style logits);
* ``guide_logits``: (1 + w) * cond - w * uncond (VAR's and FlexVAR's logits; ``guide`` with
  scale = 1 + w, rounded differently).
"""
from __future__ import annotations

import torch


def guide(out: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, ...) guided output from a [cond; uncond] batch (2B, ...)."""
    cond, uncond = out.chunk(2)
    return uncond + scale * (cond - uncond)


def guide_logits(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, ...) guided logits (1 + w) * cond - w * uncond from a [cond; uncond] batch (2B, ...)."""
    B = logits.shape[0] // 2
    return (1 + weight) * logits[:B] - weight * logits[B:]

"""FlexVAR: flexible visual autoregressive modelling without residual prediction (Jiao et al.,
arXiv 2502.20313).

The transformer is VAR's (adaLN blocks, block-causal attention over scales, a null class for
CFG; the blocks come from ``methods.layers``), with two changes that free it from one scale
list:

* each scale's tokens predict that scale's *ground-truth* tokens (flexvq quantizes every
  scale on its own), and scale k+1's input is scale k's code map bicubic-resized to the next
  side, so no residual chain ties the scales together;
* positions come from one learned 2-D map ``pos_1LC`` (C x 32 x 32, initialised with sin/cos
  of the row and column) area-resized to each scale's side, instead of per-token embeddings
  and level embeddings: any side gets positions, hence any step count and any resolution.

Parameter names follow the official code (models/flexvar.py) except ``attn.qkv`` (official
``attn.mat_qkv``); flexvar/official.py converts official checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from methods.adaln_ar import AdaLNARConfig, AdaLNARTransformer, TokenSamplerConfig
from methods.config import check_positive, check_scale_list
from methods.scales import block_causal_mask

# Sides the official sampler draws with top-k; any other side (or one above max_pn) is greedy.
OFFICIAL_TOPK_SIDES = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32]
POSITION_GRID = 32   # official pos_1LC is C x 32 x 32


@dataclass
class FlexVARSampler(TokenSamplerConfig):
    """The official evaluation settings: cfg 2.5, top_k 900, top_p 0.95, max_pn 16."""
    cfg: float = 2.5
    top_p: float = 0.95
    max_pn: int = 16                   # sides above it: full cfg and greedy tokens
    llamagen_cfg: bool = False         # uncond + cfg * (cond - uncond) instead of VAR's ramp
    topk_sides: List[int] = field(default_factory=lambda: list(OFFICIAL_TOPK_SIDES))
    infer_patch_nums: List[int] = field(default_factory=list)   # [] : the training list

    def check(self, key: str) -> None:
        super().check(key)
        check_positive(f"{key}.max_pn", self.max_pn)
        check_scale_list(f"{key}.infer_patch_nums", list(self.infer_patch_nums), allow_empty=True)


@dataclass
class FlexVARConfig(AdaLNARConfig):
    """FlexVAR model (``AdaLNARConfig``: depth alone gives the official width and heads) and sampler."""
    tokenizer: str = "flexvq"
    random_scale_lists: bool = True    # train on randomly drawn scale lists (official trainer)
    sampler: FlexVARSampler = field(default_factory=FlexVARSampler)


def sincos_grid(side: int, dim: int) -> torch.Tensor:
    """The official initial position map (1, dim, side, side): even channels sin(row * w_i),
    odd channels cos(column * w_i), w_i = 10000^(-2i / dim)."""
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    rows = torch.arange(side, dtype=torch.float32)[:, None, None] * freqs             # (side, 1, dim/2)
    cols = torch.arange(side, dtype=torch.float32)[None, :, None] * freqs             # (1, side, dim/2)
    grid = torch.zeros(side, side, dim)
    grid[..., 0::2] = torch.sin(rows).expand(side, side, -1)
    grid[..., 1::2] = torch.cos(cols).expand(side, side, -1)
    return grid.permute(2, 0, 1)[None]


class FlexVAR(AdaLNARTransformer):
    def __init__(self, cfg: FlexVARConfig, code_channels: int, vocab_size: int, patch_nums, num_classes: int):
        super().__init__(cfg, code_channels, vocab_size, patch_nums, num_classes, float_logits=False)
        self.pos_1LC = nn.Parameter(sincos_grid(POSITION_GRID, self.C))     # resized to every side
        self.init_weights()

    def positions(self, patch_nums) -> torch.Tensor:
        """Position embeddings (1, L, C): the position map area-resized to every side."""
        return torch.cat([F.interpolate(self.pos_1LC, size=(pn, pn), mode="area").reshape(1, self.C, -1).permute(0, 2, 1)
                          for pn in patch_nums], dim=1)

    def forward(self, labels: torch.Tensor, x_input: torch.Tensor, patch_nums=None) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for a scale list (default: the training list):
        ``x_input`` (B, L - 1, C_code) the resized code maps of scales 1..K-1. No class dropout
        here: the caller drops labels (``FlexVARMethod.loss``)."""
        patch_nums = tuple(patch_nums or self.patch_nums)
        class_embedding = self.class_emb(labels)
        sos = self.start_tokens(class_embedding)
        x = torch.cat((sos, self.word_embed(x_input.to(sos.dtype))), dim=1) + self.positions(patch_nums)
        mask = block_causal_mask(list(patch_nums)).to(x.device, x.dtype)
        return self.run_blocks(x, class_embedding, mask)

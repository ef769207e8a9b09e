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

from methods.layers import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin, init_adaln_transformer
from methods.scales import block_causal_mask

# Sides the official sampler draws with top-k; any other side (or one above max_pn) is greedy.
OFFICIAL_TOPK_SIDES = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32]
POSITION_GRID = 32   # official pos_1LC is C x 32 x 32


@dataclass
class FlexVARConfig:
    """FlexVAR model and sampler settings. As VAR: ``depth`` alone gives width 64 * depth and
    depth heads (the official factory) unless ``embed_dim`` / ``num_heads`` are set."""
    tokenizer: str = "flexvq"
    depth: int = 16
    embed_dim: int = 0
    num_heads: int = 0
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = -1.0       # < 0: 0.1 * depth / 24 (official factory)
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    random_scale_lists: bool = True    # train on randomly drawn scale lists (official trainer)
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1.0
    # sampler (official evaluation: cfg 2.5, top_k 900, top_p 0.95, max_pn 16)
    cfg: float = 2.5
    top_k: int = 900
    top_p: float = 0.95
    max_pn: int = 16                   # sides above it: full cfg and greedy tokens
    llamagen_cfg: bool = False         # uncond + cfg * (cond - uncond) instead of VAR's ramp
    topk_sides: List[int] = field(default_factory=lambda: list(OFFICIAL_TOPK_SIDES))
    infer_patch_nums: List[int] = field(default_factory=list)   # [] : the training list

    @property
    def width(self) -> int:
        return self.embed_dim or 64 * self.depth

    @property
    def heads(self) -> int:
        return self.num_heads or self.depth

    @property
    def drop_path(self) -> float:
        return self.drop_path_rate if self.drop_path_rate >= 0 else 0.1 * self.depth / 24

    def check(self, key: str) -> None:
        from benchmark.config import ConfigError, check_positive, check_range
        for name in ("depth", "mlp_ratio", "norm_eps", "max_pn"):
            check_positive(f"{key}.{name}", getattr(self, name))
        for name in ("embed_dim", "num_heads", "top_k", "cfg"):
            check_positive(f"{key}.{name}", getattr(self, name), allow_zero=True)
        if self.width % self.heads:
            raise ConfigError(f"{key}: width {self.width} is not divisible by {self.heads} heads; set "
                              f"{key}.embed_dim / {key}.num_heads (0 = official rule: 64 * depth, depth heads)")
        for name in ("drop_rate", "attn_drop_rate", "cond_drop_rate", "top_p"):
            check_range(f"{key}.{name}", getattr(self, name), 0.0, 1.0)
        check_scale_list(f"{key}.infer_patch_nums", list(self.infer_patch_nums), allow_empty=True)


def check_scale_list(key: str, sides: list, allow_empty: bool = False) -> None:
    from benchmark.config import ConfigError
    if not sides and allow_empty:
        return
    if len(sides) < 2 or sides[0] != 1 or any(b <= a for a, b in zip(sides, sides[1:])):
        raise ConfigError(f"{key}={sides}: a scale list starts at 1 and increases, e.g. [1, 2, 3, 4, 6, 8]")


FlexVAR_models = {f"flexvar_d{d}": dict(depth=d) for d in (16, 20, 24)}


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


class FlexVAR(nn.Module):
    def __init__(self, cfg: FlexVARConfig, code_channels: int, vocab_size: int, patch_nums, num_classes: int):
        super().__init__()
        C = cfg.width
        self.cfg, self.C, self.num_classes = cfg, C, num_classes
        self.code_channels, self.vocab_size = code_channels, vocab_size
        self.patch_nums = tuple(patch_nums)            # the training list (its mask is the official buffer)
        self.first_l = self.patch_nums[0] ** 2
        init_std = math.sqrt(1 / C / 3)

        self.word_embed = nn.Linear(code_channels, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)     # + the null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        for p in (self.class_emb.weight, self.pos_start):
            nn.init.trunc_normal_(p.data, mean=0, std=init_std)
        self.pos_1LC = nn.Parameter(sincos_grid(POSITION_GRID, C))

        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, C, cfg.heads, cfg.mlp_ratio, cfg.shared_aln, cfg.norm_eps, cfg.drop_rate,
                          cfg.attn_drop_rate, dpr[i], cfg.attn_l2_norm) for i in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, vocab_size)
        init_adaln_transformer(self, cfg.init_adaln, cfg.init_adaln_gamma, cfg.init_head, cfg.init_std)

    def enable_cache(self, on: bool = True) -> None:
        for block in self.blocks:
            block.attn.enable_cache(on)

    def positions(self, patch_nums) -> torch.Tensor:
        """Position embeddings (1, L, C): the position map area-resized to every side."""
        return torch.cat([F.interpolate(self.pos_1LC, size=(pn, pn), mode="area").reshape(1, self.C, -1).permute(0, 2, 1)
                          for pn in patch_nums], dim=1)

    def logits(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x, class_embedding))

    def forward(self, labels: torch.Tensor, x_input: torch.Tensor, patch_nums=None) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for a scale list (default: the training list):
        ``x_input`` (B, L - 1, C_code) the resized code maps of scales 1..K-1. No class dropout
        here: the caller drops labels (``FlexVARMethod.loss``)."""
        patch_nums = tuple(patch_nums or self.patch_nums)
        B, first_l = x_input.shape[0], patch_nums[0] ** 2
        class_embedding = self.class_emb(labels)
        sos = class_embedding[:, None].expand(B, first_l, -1) + self.pos_start.expand(B, first_l, -1)
        x = torch.cat((sos, self.word_embed(x_input.to(sos.dtype))), dim=1)
        x = x + self.positions(patch_nums)
        cond = self.shared_ada_lin(class_embedding)
        mask = block_causal_mask(list(patch_nums)).to(x.device, x.dtype)
        for block in self.blocks:
            x = block(x, cond, mask)
        return self.logits(x, class_embedding)

    def step(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """Inference: one scale's tokens (B', l, C) through the KV-cached blocks -> logits."""
        cond = self.shared_ada_lin(class_embedding)
        for block in self.blocks:
            x = block(x, cond)
        return self.logits(x, class_embedding)

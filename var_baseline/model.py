"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., arXiv 2404.02905).

A GPT-style transformer over the token maps r_1, ..., r_K of the multi-scale residual VQ
(methods/tokenizers/msvq.py). The sequence is [class token(s); scale-2 input; ...; scale-K
input], where scale k's input is the running f_hat after scales < k, area-downsampled to
scale k's side; a block-causal mask lets every token of scale k see all of scales <= k, and
the output at scale k's positions is the distribution of r_k. Every block is modulated by the
class embedding (adaLN; ``methods.layers.AdaLNSelfAttn``), the class id ``num_classes`` is the
null class of classifier-free guidance, and learned absolute position embeddings plus a
per-scale level embedding tell positions apart.

Parameter names follow the official code (models/var.py) except ``attn.qkv`` (official
``attn.mat_qkv``); var_baseline/official.py converts official checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.layers import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin, init_adaln_transformer
from methods.scales import block_causal_mask, token_offsets


@dataclass
class VARConfig:
    """VAR model and sampler settings. Size: ``depth`` alone fixes width = 64 * depth and
    heads = depth (the official rule) unless ``embed_dim`` / ``num_heads`` are given."""
    tokenizer: str = "msvq"
    depth: int = 16
    embed_dim: int = 0                 # 0: 64 * depth
    num_heads: int = 0                 # 0: depth
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = -1.0       # < 0: 0.1 * depth / 24 (official)
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1        # class dropout for classifier-free guidance
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1.0             # < 0: sqrt(1 / (3 * width))
    # sampler (official demo / FID settings: cfg 1.5, top_k 900, top_p 0.96)
    cfg: float = 1.5                   # guidance weight at the last scale, linear from 0 at the first
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False          # Gumbel-softmax code mixing (for visualisation, not FID)

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
        for name in ("depth", "mlp_ratio", "norm_eps"):
            check_positive(f"{key}.{name}", getattr(self, name))
        for name in ("embed_dim", "num_heads", "top_k", "cfg"):
            check_positive(f"{key}.{name}", getattr(self, name), allow_zero=True)
        if self.width % self.heads:
            raise ConfigError(f"{key}: width {self.width} is not divisible by {self.heads} heads; set "
                              f"{key}.embed_dim / {key}.num_heads (0 = official rule: 64 * depth, depth heads)")
        for name in ("drop_rate", "attn_drop_rate", "cond_drop_rate", "top_p"):
            check_range(f"{key}.{name}", getattr(self, name), 0.0, 1.0)
        check_range(f"{key}.drop_path_rate", self.drop_path_rate, -1.0, 1.0)


# Official sizes (models/__init__.py build_vae_var: width 64 * depth, depth heads); d16..d30
# are the released checkpoints var_d16.pth ... var_d30.pth.
VAR_models = {f"var_d{d}": dict(depth=d) for d in (16, 20, 24, 30)}


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig, code_channels: int, vocab_size: int, patch_nums, num_classes: int):
        super().__init__()
        C = cfg.width
        self.cfg, self.C, self.num_classes = cfg, C, num_classes
        self.code_channels, self.vocab_size = code_channels, vocab_size
        self.patch_nums = tuple(patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        init_std = math.sqrt(1 / C / 3)

        self.word_embed = nn.Linear(code_channels, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)     # + the null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        for p in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(p.data, mean=0, std=init_std)

        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]   # stochastic depth grows with depth
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, C, cfg.heads, cfg.mlp_ratio, cfg.shared_aln, cfg.norm_eps, cfg.drop_rate,
                          cfg.attn_drop_rate, dpr[i], cfg.attn_l2_norm) for i in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, vocab_size)

        level = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", level[None], persistent=False)
        self.register_buffer("attn_bias_for_masking", block_causal_mask(list(self.patch_nums)), persistent=False)
        self.init_weights(cfg.init_adaln, cfg.init_adaln_gamma, cfg.init_head, cfg.init_std)

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        return token_offsets(list(self.patch_nums))

    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        init_adaln_transformer(self, init_adaln, init_adaln_gamma, init_head, init_std)

    def enable_cache(self, on: bool = True) -> None:
        for block in self.blocks:
            block.attn.enable_cache(on)

    def level_position(self) -> torch.Tensor:
        """Level + absolute position embedding of every token (1, L, C)."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def logits(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x.float(), class_embedding).float()).float()

    def forward(self, labels: torch.Tensor, x_input: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V): ``labels`` (B,) (``num_classes`` = null class),
        ``x_input`` (B, L - first_l, code_channels) the next-scale inputs of the quantizer.
        No class dropout here: the caller drops labels (``VARMethod.loss``)."""
        B = x_input.shape[0]
        class_embedding = self.class_emb(labels)
        sos = class_embedding[:, None].expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x = torch.cat((sos, self.word_embed(x_input.float())), dim=1)
        x = x + (self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC)
        cond = self.shared_ada_lin(class_embedding)
        mask = self.attn_bias_for_masking.to(x.dtype)
        for block in self.blocks:
            x = block(x, cond, mask)
        return self.logits(x.float(), class_embedding)

    def step(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """Inference: one scale's tokens (B', l, C) through the KV-cached blocks -> logits."""
        cond = self.shared_ada_lin(class_embedding)
        for block in self.blocks:
            x = block(x, cond)
        return self.logits(x, class_embedding)

    def first_input(self, class_embedding: torch.Tensor) -> torch.Tensor:
        B = class_embedding.shape[0]
        return (class_embedding[:, None].expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
                + self.level_position()[:, :self.first_l])

    def next_input(self, token_map: torch.Tensor, k: int) -> torch.Tensor:
        """Scale k's input map (B, C_code, pn, pn) -> its embedded tokens (B, pn^2, C)."""
        begin, end = self.begin_ends[k]
        tokens = token_map.view(token_map.shape[0], self.code_channels, -1).transpose(1, 2)
        return self.word_embed(tokens) + self.level_position()[:, begin:end]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over all scales (the official per-token weight 1 / L)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

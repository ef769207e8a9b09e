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

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.adaln_ar import AdaLNARConfig, AdaLNARTransformer, TokenSamplerConfig
from methods.scales import block_causal_mask, token_offsets


@dataclass
class VARSampler(TokenSamplerConfig):
    """The official demo / FID settings: cfg 1.5 (the guidance weight at the last scale, linear
    from 0 at the first), top_k 900, top_p 0.96."""
    more_smooth: bool = False          # Gumbel-softmax code mixing (for visualisation, not FID)


@dataclass
class VARConfig(AdaLNARConfig):
    """VAR model (``AdaLNARConfig``: depth alone gives the official width and heads) and sampler."""
    tokenizer: str = "msvq"
    sampler: VARSampler = field(default_factory=VARSampler)


class VAR(AdaLNARTransformer):
    def __init__(self, cfg: VARConfig, code_channels: int, vocab_size: int, patch_nums, num_classes: int):
        super().__init__(cfg, code_channels, vocab_size, patch_nums, num_classes, float_logits=True)
        self.L = sum(p * p for p in self.patch_nums)
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))          # one learned position per token
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)          # and one per scale (level)
        for p in (self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(p.data, mean=0, std=(1 / self.C / 3) ** 0.5)
        level = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", level[None], persistent=False)
        self.register_buffer("attn_bias_for_masking", block_causal_mask(list(self.patch_nums)), persistent=False)
        self.init_weights()

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        return token_offsets(list(self.patch_nums))

    def level_position(self) -> torch.Tensor:
        """Level + absolute position embedding of every token (1, L, C)."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def forward(self, labels: torch.Tensor, x_input: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V): ``labels`` (B,) (``num_classes`` = null class),
        ``x_input`` (B, L - first_l, code_channels) the next-scale inputs of the quantizer.
        No class dropout here: the caller drops labels (``VARMethod.loss``)."""
        B = x_input.shape[0]
        class_embedding = self.class_emb(labels)
        x = torch.cat((self.start_tokens(class_embedding), self.word_embed(x_input.float())), dim=1)
        x = x + (self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC)
        return self.run_blocks(x, class_embedding, self.attn_bias_for_masking.to(x.dtype))

    def first_input(self, class_embedding: torch.Tensor) -> torch.Tensor:
        return self.start_tokens(class_embedding) + self.level_position()[:, :self.first_l]

    def next_input(self, token_map: torch.Tensor, k: int) -> torch.Tensor:
        """Scale k's input map (B, C_code, pn, pn) -> its embedded tokens (B, pn^2, C)."""
        begin, end = self.begin_ends[k]
        tokens = token_map.view(token_map.shape[0], self.code_channels, -1).transpose(1, 2)
        return self.word_embed(tokens) + self.level_position()[:, begin:end]

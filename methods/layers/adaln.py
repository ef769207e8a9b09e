"""The class-conditioned transformer block of the VAR family (VAR, FlexVAR): LayerNorm
without affine parameters, modulated per sample by the class embedding (adaLN, as DiT), with
gated residuals. Parameter names follow the official VAR code (models/basic_var.py) so that
its checkpoints load."""
from __future__ import annotations

import math

import torch
from torch import nn

from methods.layers.attention import Attention
from methods.layers.embed import gated_residual, modulate
from methods.layers.mlp import MLP


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al., 2016): drop a residual branch per sample with
    probability p, rescaling kept ones by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


class SharedAdaLin(nn.Linear):
    """One adaLN projection shared by every block (VAR's ``shared_aln``): cond -> (B, 1, 6, C)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.out_features // 6)


class AdaLNSelfAttn(nn.Module):
    """x + gamma1 * attn(LN(x) * (1 + scale1) + shift1), then the same around the MLP.

    The six modulation vectors come from the block's own ``ada_lin`` (SiLU, Linear), or, with
    ``shared_aln``, from the shared projection plus a learned per-block offset ``ada_gss``.
    """

    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float = 4.0, shared_aln: bool = False,
                 norm_eps: float = 1e-6, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 attn_l2_norm: bool = False):
        super().__init__()
        self.dim, self.shared_aln, self.drop_path = dim, shared_aln, drop_path
        # VAR's non-L2 attention uses a temperature of 0.25 / sqrt(head_dim).
        scale = None if attn_l2_norm else 0.25 / (dim // num_heads) ** 0.5
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, qv_bias=True,
                              l2_norm=attn_l2_norm, scale=scale)
        self.ffn = MLP(dim, round(dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cond``: the class embedding (B, D), or the shared projection (B, 1, 6, C) under ``shared_aln``."""
        ada = self.ada_gss + cond if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, self.dim)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        x = self.residual(x, self.attn(modulate(self.ln_wo_grad(x), shift1, scale1), mask), gamma1)
        return self.residual(x, self.ffn(modulate(self.ln_wo_grad(x), shift2, scale2)), gamma2)

    def residual(self, x: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        if self.drop_path and self.training:
            return x + drop_path(branch * gamma, self.drop_path, True)
        return gated_residual(x, branch, gamma)


class AdaLNBeforeHead(nn.Module):
    """The final adaLN before the output head: LN(x) * (1 + scale) + shift from the condition."""

    def __init__(self, dim: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return modulate(self.ln_wo_grad(x), shift, scale)


def init_adaln_transformer(model: nn.Module, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                           init_head: float = 0.02, init_std: float = -1.0) -> None:
    """VAR's initialisation for a transformer of ``AdaLNSelfAttn`` blocks (``model.blocks``,
    ``model.head_nm``, ``model.head``, width ``model.C``): truncated normals (std sqrt(1 / 3C)
    by default), a small head, residual projections shrunk by sqrt(2 depth), adaLN gates
    (gamma) near zero and scales/shifts damped."""
    C, depth = model.C, len(model.blocks)
    std = init_std if init_std >= 0 else (1 / C / 3) ** 0.5
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight.data, std=std)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight.data, std=std)
    model.head.weight.data.mul_(init_head)
    model.head.bias.data.zero_()
    model.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
    model.head_nm.ada_lin[-1].bias.data.zero_()
    for block in model.blocks:
        block.attn.proj.weight.data.div_(math.sqrt(2 * depth))
        block.ffn.fc2.weight.data.div_(math.sqrt(2 * depth))
        if block.shared_aln:
            block.ada_gss.data[:, :, 2:].mul_(init_adaln)
            block.ada_gss.data[:, :, :2].mul_(init_adaln_gamma)
        else:
            block.ada_lin[-1].weight.data[2 * C:].mul_(init_adaln)
            block.ada_lin[-1].weight.data[:2 * C].mul_(init_adaln_gamma)
            block.ada_lin[-1].bias.data.zero_()

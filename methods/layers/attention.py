from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.layers.rope import RoPE2d


class Attention(nn.Module):
    """Multi-head self-attention with optional 2-D RoPE, an optional additive mask and an
    optional KV cache for scale-by-scale generation.

    With the cache on (``enable_cache``), each call appends its keys/values and attends to
    everything cached so far: feeding one scale at a time then reproduces the block-causal
    mask of teacher-forced training without building it.

    VAR-family options: ``qv_bias`` gives q and v a bias and k none (VAR's ``q_bias``/``v_bias``);
    ``l2_norm`` L2-normalises q and k and multiplies q by a learned per-head scale, stored as a
    log, initialised to 4 and capped at 100 (VAR's ``scale_mul_1H11``); ``scale`` overrides the
    softmax temperature (default 1/sqrt(head_dim); 1 under ``l2_norm``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, rope: bool = False, rope_reference_size: int = 16,
                 qv_bias: bool = False, l2_norm: bool = False, scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and not qv_bias)
        if qv_bias:
            self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.qv_bias = qv_bias
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_log_scale = math.log(100.0)
        self.scale = scale if scale is not None else (1.0 if l2_norm else None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = RoPE2d(self.head_dim // 2, rope_reference_size) if rope else None
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.caching = False

    def enable_cache(self, on: bool = True) -> None:
        self.caching, self.cache = on, None

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        if not self.qv_bias:
            return self.qkv(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.project_qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                                   # (B, nh, N, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_log_scale).exp())
            k = F.normalize(k, dim=-1)
        if self.rope is not None:
            q, k = self.rope(q, segments), self.rope(k, segments)
        if self.caching:
            if self.cache is not None:
                k, v = torch.cat([self.cache[0], k], dim=2), torch.cat([self.cache[1], v], dim=2)
            self.cache = (k, v)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class CrossAttention(nn.Module):
    """Position-aligned cross-attention: queries from x, keys/values from a same-length
    context (FlowAR-L/H's flow head attends from noisy tokens to the scale's semantics)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, qkv_bias: bool = False,
                 proj_drop: float = 0.0, rope_reference_size: int = 16):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = RoPE2d(self.head_dim // 2, rope_reference_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)               # (B, nh, N, hd)
        k, v = self.kv(context).view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q), self.rope(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))

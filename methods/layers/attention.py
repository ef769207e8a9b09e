from __future__ import annotations

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
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, rope: bool = False, rope_reference_size: int = 16):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = RoPE2d(self.head_dim // 2, rope_reference_size) if rope else None
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.caching = False

    def enable_cache(self, on: bool = True) -> None:
        self.caching, self.cache = on, None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, N, hd)
        if self.rope is not None:
            q, k = self.rope(q, segments), self.rope(k, segments)
        if self.caching:
            if self.cache is not None:
                k, v = torch.cat([self.cache[0], k], dim=2), torch.cat([self.cache[1], v], dim=2)
            self.cache = (k, v)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, nh, N, hd)
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

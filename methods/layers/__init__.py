"""Transformer pieces shared by every method: norms, 2-D RoPE, attention with a KV cache,
gated MLPs, adaLN modulation and timestep embeddings. Written once, composed by the models."""
from methods.layers.attention import Attention, CrossAttention
from methods.layers.embed import TimestepEmbedder, modulate
from methods.layers.mlp import GatedMLP
from methods.layers.norm import RMSNorm
from methods.layers.rope import RoPE2d

__all__ = ["Attention", "CrossAttention", "GatedMLP", "RMSNorm", "RoPE2d", "TimestepEmbedder", "modulate"]

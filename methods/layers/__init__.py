"""Transformer pieces shared by every method: norms, 2-D RoPE, attention with a KV cache,
gated MLPs, adaLN modulation, the VAR-family adaLN block and timestep embeddings. Written once, composed by the models."""
from methods.layers.adaln import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin, init_adaln_transformer
from methods.layers.attention import Attention, CrossAttention
from methods.layers.embed import TimestepEmbedder, gated_residual, modulate
from methods.layers.mlp import MLP, GatedMLP
from methods.layers.norm import RMSNorm
from methods.layers.rope import RoPE2d

__all__ = ["AdaLNBeforeHead", "AdaLNSelfAttn", "SharedAdaLin", "init_adaln_transformer", "MLP", "Attention", "CrossAttention", "GatedMLP", "RMSNorm", "RoPE2d", "TimestepEmbedder", "gated_residual", "modulate"]

"""FlowAR: scale-wise autoregression meets flow matching (Ren et al., arXiv 2412.15205).

The network has two parts:
  * a scale-wise AR transformer (``encoder_blocks`` then ``decoder_blocks``, block-causal over
    scales 1, 2, 4, ...) that turns the class token and the upsampled previous scales into
    per-position *semantics* for every scale;
  * a small flow-matching transformer (``flownet``) that predicts the velocity of one scale's
    noisy latent, conditioned position by position on those semantics (Spatial-adaLN).

Parameter names and shapes follow the official release (models/flowar.py, flowmodel.py) so
its checkpoints load as they are. The training loss and the sampler live in flowar/method.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from methods.base import MethodConfig, SamplerConfig
from methods.config import ConfigError, check_positive, check_range
from methods.layers import Attention, CrossAttention, GatedMLP, RMSNorm, TimestepEmbedder, gated_residual, modulate
from methods.scales import block_causal_mask, doubling_scales, token_offsets


@dataclass
class FlowARSampler(SamplerConfig):
    num_flow_steps: int = 25        # Euler grid points per scale (official --num_step)
    cfg: float = 1.0                # CFG at the last scale; ramps linearly from 1 at the first
    guidance_low: float = 0.0       # CFG applies for t in [guidance_low, guidance_high]
    guidance_high: float = 0.9      # official --guidance

    def check(self, key: str) -> None:
        for name in ("guidance_low", "guidance_high"):
            check_range(f"{key}.{name}", getattr(self, name), 0.0, 1.0)
        check_positive(f"{key}.cfg", self.cfg)
        if self.num_flow_steps < 2:
            raise ConfigError(f"{key}.num_flow_steps={self.num_flow_steps} is out of range; it must be >= 2")


@dataclass
class FlowARConfig(MethodConfig):
    """FlowAR model and sampler settings. Defaults are FlowAR-S (official ``flowar_small``)."""
    tokenizer: str = "kl"
    encoder_embed_dim: int = 768
    encoder_depth: int = 6
    encoder_num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 6
    decoder_num_heads: int = 12
    mlp_ratio: float = 4.0
    flow_depth: int = 2             # official --diffloss_d
    flow_width: int = 1024          # official --diffloss_w
    flow_head_dim: int = 64         # flow head attention heads = flow_width // flow_head_dim
    flow_cross: bool = False        # Attn-CrossAttn-MLP flow blocks (official FlowAR-L/H)
    label_drop_prob: float = 0.1    # class dropout for classifier-free guidance
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    rope_reference_size: int = 16   # RoPE positions are normalised to this grid
    grad_checkpointing: bool = False
    sampler: FlowARSampler = field(default_factory=FlowARSampler)

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "decoder_embed_dim",
                     "decoder_depth", "decoder_num_heads", "flow_depth", "flow_width", "flow_head_dim", "mlp_ratio"):
            check_positive(f"{key}.{name}", getattr(self, name))
        head_widths = {"encoder": self.encoder_embed_dim / self.encoder_num_heads,
                       "decoder": self.decoder_embed_dim / self.decoder_num_heads, "flow": self.flow_head_dim}
        for part, width in head_widths.items():
            if width != int(width) or int(width) % 4:
                raise ConfigError(f"{key}: the {part} attention head width is {width}; it must be a whole "
                                  "multiple of 4 (2-D RoPE). Change the embed dim or the number of heads.")
        if self.decoder_embed_dim != self.encoder_embed_dim:
            raise ConfigError(f"{key}.decoder_embed_dim={self.decoder_embed_dim} must equal {key}.encoder_embed_dim="
                              f"{self.encoder_embed_dim}: the class embedding conditions the blocks of both")
        if self.flow_width % self.flow_head_dim:
            raise ConfigError(f"{key}.flow_width={self.flow_width} is not a multiple of "
                              f"{key}.flow_head_dim={self.flow_head_dim}")
        for name in ("label_drop_prob", "attn_dropout", "proj_dropout"):
            check_range(f"{key}.{name}", getattr(self, name), 0.0, 1.0)


def gated_hidden(dim: int, mlp_ratio: float) -> int:
    return int(dim * mlp_ratio * 2 / 3.0)  # GLU hidden width keeps the parameter count of a 4x MLP


class ARBlock(nn.Module):
    """AR transformer block: adaLN from the class embedding (one modulation per sample)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float, rope_size: int):
        super().__init__()
        self.dim = dim
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=proj_drop,
                              rope=True, rope_reference_size=rope_size)
        self.norm2 = RMSNorm(dim)
        self.mlp = GatedMLP(dim, gated_hidden(dim, mlp_ratio), act=nn.GELU, drop=proj_drop)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None, segments: list[int]) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)
        x = gated_residual(x, self.attn(modulate(self.norm1(x), shift1, scale1), mask, segments), gamma1)
        return gated_residual(x, self.mlp(modulate(self.norm2(x), shift2, scale2)), gamma2)


class FlowBlock(nn.Module):
    """Flow-head block with Spatial-adaLN: every position gets its own modulation from
    (semantics + time), so the semantics steer the velocity position by position."""

    def __init__(self, dim: int, num_heads: int, rope_size: int):
        super().__init__()
        self.dim = dim
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, rope=True, rope_reference_size=rope_size)
        self.norm2 = RMSNorm(dim)
        self.mlp = GatedMLP(dim, gated_hidden(dim, 4.0), act=nn.GELU)
        self.ada_lin = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        B, N, _ = c.shape
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(F.silu(t + c)).view(B, N, 6, self.dim).unbind(2)
        x = gated_residual(x, self.attn(modulate(self.norm1(x), shift1, scale1)), gamma1)
        return gated_residual(x, self.mlp(modulate(self.norm2(x), shift2, scale2)), gamma2)


class FlowCrossBlock(nn.Module):
    """Attn-CrossAttn-MLP flow block (official FlowAR-L/H): attention modulated by time only,
    cross-attention to the semantics, MLP with Spatial-adaLN from (semantics + time)."""

    def __init__(self, dim: int, num_heads: int, semantic_dim: int, rope_size: int):
        super().__init__()
        self.dim = dim
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, rope=True, rope_reference_size=rope_size)
        self.crossattn = CrossAttention(dim, semantic_dim, num_heads, rope_reference_size=rope_size)
        self.norm2_1 = RMSNorm(dim, weight=True)
        self.norm2_2 = RMSNorm(semantic_dim, weight=True)
        self.norm3 = RMSNorm(dim)
        self.mlp = GatedMLP(dim, gated_hidden(dim, 4.0), act=nn.GELU)
        self.ada_lin_attn = nn.Linear(dim, 3 * dim)
        self.ada_lin_mlp = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        B, N, _ = c.shape
        gamma1, scale1, shift1 = self.ada_lin_attn(F.silu(t)).view(B, 1, 3, self.dim).unbind(2)
        gamma2, scale2, shift2 = self.ada_lin_mlp(F.silu(c + t)).view(B, N, 3, self.dim).unbind(2)
        x = gated_residual(x, self.attn(modulate(self.norm1(x), shift1, scale1)), gamma1)
        x = x + self.crossattn(self.norm2_1(x), self.norm2_2(semantics))
        return gated_residual(x, self.mlp(modulate(self.norm3(x), shift2, scale2)), gamma2)


class FlowFinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class FlowHead(nn.Module):
    """Velocity network v(x_t, t | semantics) for one scale's tokens (official
    ``SimpleTransformerAdaLN``)."""

    def __init__(self, token_channels: int, width: int, semantic_dim: int, depth: int, head_dim: int,
                 cross: bool, rope_size: int):
        super().__init__()
        heads = width // head_dim
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(semantic_dim, width)
        self.input_proj = nn.Linear(token_channels, width)
        self.res_blocks = nn.ModuleList([
            FlowCrossBlock(width, heads, semantic_dim, rope_size) if cross else FlowBlock(width, heads, rope_size)
            for _ in range(depth)])
        self.final_layer = FlowFinalLayer(width, token_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) noisy tokens, t: (B,) in [0, 1], semantics: (B, N, D) -> velocity (B, N, C)."""
        t = (t * 1000).long()  # the official head embeds time on a 1/1000 grid (truncated)
        x = self.input_proj(x)
        t = self.time_embed(t).unsqueeze(1)  # (B, 1, W)
        c = self.cond_embed(semantics)       # (B, N, W)
        for block in self.res_blocks:
            x = block(x, t, c, semantics)
        return self.final_layer(x, c + t)


class FlowAR(nn.Module):
    def __init__(self, cfg: FlowARConfig, token_channels: int, latent_size: int, num_classes: int):
        super().__init__()
        self.cfg, self.token_channels, self.latent_size = cfg, token_channels, latent_size
        self.num_classes = num_classes
        self.scales = doubling_scales(latent_size)
        self.seq_len = sum(s * s for s in self.scales)
        E, D = cfg.encoder_embed_dim, cfg.decoder_embed_dim
        block = lambda dim, heads: ARBlock(dim, heads, cfg.mlp_ratio, cfg.attn_dropout, cfg.proj_dropout,
                                           cfg.rope_reference_size)

        self.class_emb = nn.Embedding(num_classes + 1, E)  # index num_classes = the null class (CFG)
        self.z_proj = nn.Linear(token_channels, E)
        self.z_proj_ln = RMSNorm(E, weight=True)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, E))
        self.encoder_blocks = nn.ModuleList([block(E, cfg.encoder_num_heads) for _ in range(cfg.encoder_depth)])
        self.encoder_norm = RMSNorm(E, weight=True)
        self.decoder_embed = nn.Linear(E, D)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, D))
        self.decoder_blocks = nn.ModuleList([block(D, cfg.decoder_num_heads) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = RMSNorm(D, weight=True)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, D))
        self.flownet = FlowHead(token_channels, cfg.flow_width, D, cfg.flow_depth, cfg.flow_head_dim,
                                cfg.flow_cross, cfg.rope_reference_size)
        self.register_buffer("mask", block_causal_mask(self.scales))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # As the official code: xavier-uniform linears with zero bias (this also overrides the
        # flow head's own zero-init of its output layer), N(0, 0.02) embeddings.
        for p in (self.class_emb.weight, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in (self.flownet.time_embed.mlp[0], self.flownet.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)

    # -- tokens <-> latents -------------------------------------------------------------
    @staticmethod
    def to_tokens(latent: torch.Tensor) -> torch.Tensor:
        return latent.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C), row-major

    @staticmethod
    def to_latent(tokens: torch.Tensor, side: int) -> torch.Tensor:
        return tokens.transpose(1, 2).unflatten(2, (side, side))  # (B, h*w, C) -> (B, C, h, w)

    def next_scale_input(self, latent: torch.Tensor, next_side: int) -> torch.Tensor:
        """A scale's latent as the next scale's input: bicubic up to the full latent size,
        then area down to the next side (the official teacher-forcing and sampling rule)."""
        up = F.interpolate(latent, (self.latent_size, self.latent_size), mode="bicubic")
        return F.interpolate(up, (next_side, next_side), mode="area")

    def scale_targets(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Ground-truth latent of every scale: the full latent area-downsampled. (B, C, s, s) each."""
        return [F.interpolate(latent, (s, s), mode="area") if s != self.latent_size else latent for s in self.scales]

    def teacher_forcing_input(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """Inputs for scales 2..K made from scales 1..K-1: (B, L - 1, C) tokens."""
        return torch.cat([self.to_tokens(self.next_scale_input(t, s)) for t, s in zip(targets, self.scales[1:])], 1)

    # -- the AR transformer -----------------------------------------------------------
    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cfg.label_drop_prob == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.cfg.label_drop_prob
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor, cond: torch.Tensor, mask, segments) -> torch.Tensor:
        for blk in blocks:
            if self.cfg.grad_checkpointing and self.training:
                x = checkpoint(blk, x, cond, mask, segments, use_reentrant=False)
            else:
                x = blk(x, cond, mask, segments)
        return x

    def transformer(self, x: torch.Tensor, cond: torch.Tensor, begin: int, end: int, mask) -> torch.Tensor:
        """Embedded tokens for sequence positions [begin, end) -> semantics (B, end - begin, D)."""
        segments = [e - b for b, e in token_offsets(self.scales) if begin <= b < end]  # scales in the window
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned[:, begin:end])
        x = self.encoder_norm(self.run_blocks(self.encoder_blocks, x, cond, mask, segments))
        x = self.decoder_embed(x) + self.decoder_pos_embed_learned[:, begin:end]
        x = self.decoder_norm(self.run_blocks(self.decoder_blocks, x, cond, mask, segments))
        return x + self.diffusion_pos_embed_learned[:, begin:end]

    def semantics(self, x_input: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: class token + (B, L - 1, C) scale inputs -> semantics (B, L, D)."""
        class_embedding = self.class_emb(labels)                                       # (B, E)
        x = torch.cat([class_embedding[:, None], self.z_proj(x_input)], dim=1)        # (B, L, E)
        return self.transformer(x, class_embedding, 0, self.seq_len, self.mask)

    def forward(self, latent: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latent (B, C, h, w) -> semantics of every scale (B, L, D) and per-scale targets."""
        targets = self.scale_targets(latent)
        return self.semantics(self.teacher_forcing_input(targets), self.drop_labels(labels)), targets

    def semantics_step(self, x: torch.Tensor, class_embedding: torch.Tensor, step: int) -> torch.Tensor:
        """One scale at generation time, attending through the KV cache to earlier scales."""
        begin, end = token_offsets(self.scales)[step]
        return self.transformer(x, class_embedding, begin, end, None)

    def enable_cache(self, on: bool = True) -> None:
        for blk in list(self.encoder_blocks) + list(self.decoder_blocks):
            blk.attn.enable_cache(on)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        return self.flownet(x_t, t, semantics)

"""Conformance with the official FlowAR release (wangqiang9/FlowAR, models/flowar.py).

Translates between the official code's world — constructor keyword names, checkpoint keys
and layout, token tensors — and the suite's ``FlowARMethod``. The parity tests
(tests/test_flowar_parity.py) check every function here against tensors produced by the
official code (tests/fixtures/flowar/).

Conventions: token tensors (per-scale latents, ``noise``, ``x_t``, velocities) use the
official layout (B, s*s, C), raster order, channels last; ``t`` is (B,) in [0, 1] with t = 1
noise and t = 0 data; ``semantics`` is the flow head's condition, (B, L, D) over all scales
(``scale_slice`` cuts one scale out).

Where the official code cannot run, the suite does the right thing instead:
  * its sampler crashes for cfg = 1.0 (``z_sample`` is never set); here cfg = 1 samples unguided;
  * its teacher-forced pass only exists inside the training forward; ``semantics`` runs it in
    eval mode (identical when dropout is off, which eval mode guarantees);
  * its class table always has 1001 rows with the null class at 1000, whatever ``class_num``;
    ``build`` keeps that table so official checkpoints load.
Not reproduced: ``buffer_size > 0`` (the official training forward fails for it: the RoPE
segments do not cover the buffer tokens) and ``patch_size > 1`` (unused by every release).
"""
from __future__ import annotations

import torch

from flowar.method import FlowARMethod
from flowar.model import FlowARConfig
from flowar.weights import load, read_checkpoint   # the suite's own loading, under the official names
from methods.base import TokenSpec
from methods.scales import doubling_scales, token_offsets

__all__ = ["build", "load", "read_checkpoint", "scale_slice", "semantics", "velocity", "loss", "sample"]

OFFICIAL_CLASS_TABLE = 1000  # nn.Embedding(1000 + 1, ...) in the official code, null class 1000

# The official constructor's defaults (models/flowar.py: FlowAR.__init__).
DEFAULTS = dict(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=1024, encoder_depth=16,
                encoder_num_heads=16, decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16, mlp_ratio=4.0,
                norm_layer=None, vae_embed_dim=16, label_drop_prob=0.1, class_num=1000, attn_dropout=0.0,
                proj_dropout=0.0, buffer_size=0, diffloss_d=3, diffloss_w=1024, scale=(1, 2, 4, 8, 16), cross=False,
                use_checkpoint=False)

# Official factories: flowar_small / flowar_large / flowar_huge.
FACTORIES = {
    "flowar_small": dict(encoder_embed_dim=768, encoder_depth=6, encoder_num_heads=12, decoder_embed_dim=768,
                         decoder_depth=6, decoder_num_heads=12),
    "flowar_large": dict(encoder_embed_dim=1024, encoder_depth=8, encoder_num_heads=16, decoder_embed_dim=1024,
                         decoder_depth=8, decoder_num_heads=16, cross=True),
    "flowar_huge": dict(encoder_embed_dim=1536, encoder_depth=15, encoder_num_heads=16, decoder_embed_dim=1536,
                        decoder_depth=15, decoder_num_heads=16, cross=True, use_checkpoint=True),
}


def build(model: str | None = None, **kwargs) -> FlowARMethod:
    """The suite's FlowAR from the official constructor's keyword arguments (and, optionally,
    an official factory name such as ``"flowar_small"``, whose sizes the kwargs complete)."""
    if model is not None and model not in FACTORIES:
        raise ValueError(f"unknown official FlowAR factory {model!r}; choose one of {', '.join(FACTORIES)}")
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown official FlowAR argument(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    a = {**DEFAULTS, **(FACTORIES[model] if model else {}), **kwargs}
    if a["patch_size"] != 1:
        raise ValueError(f"patch_size={a['patch_size']} is not supported (every official model uses 1)")
    if a["buffer_size"] != 0:
        raise ValueError(f"buffer_size={a['buffer_size']} is not supported (the official training forward fails with it)")
    latent_size = a["img_size"] // a["vae_stride"]
    if "scale" not in kwargs:  # the official default (1, 2, 4, 8, 16) assumes a 16 x 16 latent
        a["scale"] = doubling_scales(latent_size)
    if list(a["scale"]) != doubling_scales(latent_size):
        raise ValueError(f"scale={tuple(a['scale'])} differs from the doubling schedule {tuple(doubling_scales(latent_size))} "
                         f"of a {latent_size}x{latent_size} latent")
    cfg = FlowARConfig(
        encoder_embed_dim=a["encoder_embed_dim"], encoder_depth=a["encoder_depth"], encoder_num_heads=a["encoder_num_heads"],
        decoder_embed_dim=a["decoder_embed_dim"], decoder_depth=a["decoder_depth"], decoder_num_heads=a["decoder_num_heads"],
        mlp_ratio=a["mlp_ratio"], flow_depth=a["diffloss_d"], flow_width=a["diffloss_w"], flow_cross=a["cross"],
        label_drop_prob=a["label_drop_prob"], attn_dropout=a["attn_dropout"], proj_dropout=a["proj_dropout"],
        grad_checkpointing=a["use_checkpoint"])
    return FlowARMethod(cfg, TokenSpec(a["vae_embed_dim"], latent_size, OFFICIAL_CLASS_TABLE))


def scale_slice(model: FlowARMethod, scale: int) -> slice:
    """The positions of scale index ``scale`` in the (B, L, ...) sequence."""
    begin, end = token_offsets(model.network.scales)[scale]
    return slice(begin, end)


@torch.no_grad()
def semantics(model: FlowARMethod, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced conditions of every scale, (B, L, D), eval mode (no label drop)."""
    net = model.network
    was = net.training
    net.eval()
    z, _ = net(latent, labels)
    net.train(was)
    return z


@torch.no_grad()
def velocity(model: FlowARMethod, x_t: torch.Tensor, t: torch.Tensor, semantics: torch.Tensor,
             scale: int | None = None) -> torch.Tensor:
    """The flow head's velocity for tokens x_t (B, N, C) at times t (B,); ``semantics`` is
    either one scale's (B, N, D) or all scales' (B, L, D) with ``scale`` picking one."""
    z = semantics[:, scale_slice(model, scale)] if scale is not None else semantics
    return model.network.velocity(x_t, t, z)


def loss(model: FlowARMethod, latent: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor],
         t: list[torch.Tensor]) -> torch.Tensor:
    """The official training loss with given per-scale noise (B, s*s, C) and times (B,):
    sum_k (s_k^2 / s_K^2) * mean squared velocity error; no label dropout, no dropout."""
    net = model.network
    was = net.training
    net.eval()
    out = model.loss(latent, labels, noise=noise, t=t)
    net.train(was)
    return out


@torch.no_grad()
def sample(model: FlowARMethod, labels: torch.Tensor, noise: list[torch.Tensor], num_steps: int = 25,
           cfg: float = 1.0, guidance_high: float = 0.9, guidance_low: float = 0.0) -> torch.Tensor:
    """The final latent (B, C, H, W) from explicit per-scale noise (B, s*s, C), B conditional
    rows: the official Euler grid, linear CFG ramp over scales, guidance interval, float64
    integration. (The official sampler also draws noise for the unconditional half; it
    never reaches the output, so the conditional noise stands in for it.)"""
    net = model.network
    was = net.training
    net.eval()
    doubled = [torch.cat([n, n]) for n in noise] if cfg != 1.0 else list(noise)
    out = model.generate(labels, noise=doubled, num_flow_steps=num_steps, cfg=cfg,
                         guidance_high=guidance_high, guidance_low=guidance_low)
    net.train(was)
    return out

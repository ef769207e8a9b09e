"""`kl`: a continuous KL-regularised autoencoder on diffusers' ``AutoencoderKL``.

Latents handed to methods are ``scaling_factor * z`` with z the posterior mean or a sample.
The scaling factor is measured on the training data (1 / std of the latents) unless given,
so that every method sees unit-variance latents, as with MAR's fixed 0.2325 for KL-16.

Two kinds of architecture are described by ``KLConfig``:

* trained here (``official: ""``, the default): small autoencoders trained by the suite, where
  ``check()`` enforces at least 8 channels per GroupNorm group;
* an official pretrained layout (``official: mar``): the LDM/MAR KL-VAE that FlowAR uses
  (``MAR_KL16`` below), whose weights come from the official checkpoint
  (``kl.pretrained=/path/to/kl16.ckpt``). Its GroupNorm has 32 groups as in the official code
  (4 channels per group at 128 channels); the weights were trained that way, so the
  grey-reconstruction rule of thumb for training here does not apply, and such a config is
  refused for training (``loss``).

MAR's KL-16 (LTH14/mar ``kl16.ckpt``; FlowAR ships the same ``models/vae.py``) is a dict whose
``"model"`` holds the state dict of the official ``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2,
2, 4))``: LDM's KL-VAE with ch=128, two resnets per level, GroupNorm(32, eps 1e-6),
self-attention after each encoder resnet of the 16 x 16 level (``attn_resolutions=(16,)`` at 256
px; the last level, without a downsample), a mid block with attention on both sides, no
attention in the decoder's up levels, and 1 x 1 ``quant_conv`` (32 -> 32) / ``post_quant_conv``
(16 -> 16). FlowAR scales latents by 0.2325. That is diffusers' ``AutoencoderKL`` with
``AttnDownEncoderBlock2D`` at encoder level 4; its LDM key names convert through
methods/tokenizers/ldm.py, strictly: every official key used once, the result matching the
model's keys and shapes exactly, or a ``RuntimeError`` naming the file and the offending keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from methods.base import Tokenizer, TokenizerConfig
from methods.checkpoints import check_keys, read_checkpoint, tensor_dict
from methods.config import ConfigError, check_choice, check_positive
from methods.registry import TOKENIZERS
from methods.tokenizers.ldm import convert_ldm

OFFICIAL_LAYOUTS = ("", "mar")
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt")   # kl.pretrained: an official checkpoint file, else a folder


@dataclass
class KLConfig(TokenizerConfig):
    latent_channels: int = 8
    # One entry per resolution level; the stride is 2 ** (levels - 1).
    block_out_channels: List[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 1
    # Keep >= 8 channels per group: with 1-4 channels per GroupNorm group the autoencoder
    # loses each image's absolute colour and reconstructs grey images (measured).
    norm_num_groups: int = 8
    mid_block_attention: bool = False
    # Encoder levels (0-based, as block_out_channels) built as AttnDownEncoderBlock2D: a
    # self-attention after every resnet (LDM/MAR's attn_resolutions; MAR KL-16: [4], 16 x 16).
    attention_levels: List[int] = field(default_factory=list)
    # "" : trained here. "mar": the LDM/MAR KL-VAE layout, weights from an official checkpoint
    # (GroupNorm(32) as in the official code; not trained here). See the module docstring.
    official: str = ""
    # pretrained: a diffusers AutoencoderKL folder, or an official MAR checkpoint file
    # (.ckpt/.pth/.pt, with official: mar), to load instead of training.
    scaling_factor: float = 0.0        # 0: measure on the training data
    kl_weight: float = 1e-6

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("latent_channels", "layers_per_block", "norm_num_groups"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.kl_weight", self.kl_weight, allow_zero=True)
        check_positive(f"{key}.scaling_factor", self.scaling_factor, allow_zero=True)
        check_choice(f"{key}.official", self.official, OFFICIAL_LAYOUTS)
        levels = len(self.block_out_channels)
        for level in self.attention_levels:
            check_choice(f"{key}.attention_levels", level, range(levels))
        if len(set(self.attention_levels)) != len(self.attention_levels):
            raise ConfigError(f"{key}.attention_levels={list(self.attention_levels)} repeats a level")
        if self.official == "mar":
            # The official Normalize() is GroupNorm(32, eps=1e-6) everywhere, with a mid-block attention.
            if self.norm_num_groups != 32 or not self.mid_block_attention:
                raise ConfigError(f"{key}.official=mar needs {key}.norm_num_groups=32 and {key}.mid_block_attention=true "
                                  f"(the official KL-VAE); got {self.norm_num_groups} and {self.mid_block_attention}")
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ConfigError(f"{key}.block_out_channels={list(self.block_out_channels)}: {width} is not divisible "
                                  f"by {key}.norm_num_groups={self.norm_num_groups}")
            # Trained here only: an official layout keeps the groups its weights were trained with.
            if not self.official and width // self.norm_num_groups < 8:
                raise ConfigError(f"{key}: {width} channels in {self.norm_num_groups} groups is {width // self.norm_num_groups} "
                                  "channels per GroupNorm group; use at least 8 (fewer loses colour: grey reconstructions). "
                                  f"Lower {key}.norm_num_groups or widen {key}.block_out_channels.")
        self.check_pretrained(key)

    def check_pretrained(self, key: str) -> None:
        if self.pretrained:
            path = Path(self.pretrained)
            if not path.exists():
                raise ConfigError(f"{key}.pretrained={self.pretrained!r} does not exist; give a local diffusers "
                                  "AutoencoderKL folder (with config.json and weights) or an official MAR checkpoint "
                                  "file (kl16.ckpt)")
            if path.is_file():
                if path.suffix not in CHECKPOINT_SUFFIXES:
                    raise ConfigError(f"{key}.pretrained={self.pretrained!r} is a file but not a checkpoint "
                                      f"({', '.join(CHECKPOINT_SUFFIXES)}); give kl16.ckpt or a diffusers folder")
                if self.official != "mar":
                    raise ConfigError(f"{key}.pretrained={self.pretrained!r} is an official MAR checkpoint file; set the "
                                      f"{key}: section to its architecture ({key}.official=mar, as in the "
                                      "imagenet256_flowar_* presets; methods/tokenizers/kl.py MAR_KL16)")


@TOKENIZERS.register_module("kl")
class KLTokenizer(Tokenizer):
    Config = KLConfig
    kind = "continuous"

    def __init__(self, cfg: KLConfig, vae: AutoencoderKL | None = None):
        super().__init__(cfg)
        levels = len(cfg.block_out_channels)
        down = tuple("AttnDownEncoderBlock2D" if i in cfg.attention_levels else "DownEncoderBlock2D" for i in range(levels))
        self.vae = vae or AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
            down_block_types=down, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups, mid_block_add_attention=cfg.mid_block_attention)
        self.register_buffer("scaling_factor", torch.tensor(cfg.scaling_factor or 1.0))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: KLConfig | None = None) -> "KLTokenizer":
        """Load a diffusers AutoencoderKL folder, or an official MAR checkpoint file
        (``kl16.ckpt``: .ckpt/.pth/.pt, converted strictly by ``load_mar_kl16``, with
        ``cfg`` describing its architecture, default ``MAR_KL16``). Local; nothing is downloaded."""
        path = Path(path)
        if path.suffix in CHECKPOINT_SUFFIXES or path.is_file():
            return load_mar_kl16(path, cfg)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a diffusers AutoencoderKL folder (no config.json)")
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        attention = [i for i, kind in enumerate(vae.config.down_block_types) if kind.startswith("Attn")]
        cfg = cfg or KLConfig(latent_channels=vae.config.latent_channels,
                              block_out_channels=list(vae.config.block_out_channels),
                              layers_per_block=vae.config.layers_per_block, norm_num_groups=vae.config.norm_num_groups,
                              mid_block_attention=getattr(vae.config, "mid_block_add_attention", True),
                              attention_levels=attention)
        tok = cls(cfg, vae)
        tok.scaling_factor.fill_(cfg.scaling_factor or vae.config.scaling_factor)
        return tok

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def stride(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior parameters (B, 2C, h, w): mean and log-variance, unscaled."""
        return self.vae.encode(images).latent_dist.parameters

    def latents_from_moments(self, moments: torch.Tensor, generator: torch.Generator | None = None,
                             sample: bool = True) -> torch.Tensor:
        mean, logvar = moments.chunk(2, dim=1)
        if not sample:
            return mean * self.scaling_factor
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps) * self.scaling_factor

    def to_cache(self, images: torch.Tensor) -> torch.Tensor:
        """What the training cache stores: the posterior moments (a fresh sample per step)."""
        return self.moments(images)

    def from_cache(self, cached: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents_from_moments(cached, generator)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (B, C, h, w); the posterior mean unless ``sample``."""
        return self.latents_from_moments(self.moments(images), generator, sample)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Unit-variance latents for the methods: the scaling factor is 1 / std of the training
        images' latents, unless the config gives one."""
        if not self.cfg.scaling_factor:
            self.scaling_factor.fill_(1.0 / self.encode(images).float().std().item() * float(self.scaling_factor))

    def info(self) -> dict:
        return {"scaling_factor": float(self.scaling_factor)}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped)."""
        return self.vae.decode(latents / self.scaling_factor).sample

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: L1 + L2 reconstruction of a posterior sample, plus a small KL term."""
        if self.cfg.official:
            raise RuntimeError(f"kl.official={self.cfg.official} describes an official pretrained architecture; it is "
                               "loaded, not trained here: set kl.pretrained=/path/to/kl16.ckpt")
        dist = self.vae.encode(images).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator, device=images.device)
        recon = self.vae.decode(z).sample
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        return rec + self.cfg.kl_weight * dist.kl().mean()


# -- MAR's KL-16 (the official checkpoint FlowAR uses) -------------------------------------
MAR_SCALING_FACTOR = 0.2325


def mar_config(*, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,), resolution: int = 256, embed_dim: int = 16,
               scaling_factor: float = MAR_SCALING_FACTOR) -> KLConfig:
    """The ``KLConfig`` of the official encoder/decoder built with these arguments (the official
    ``Encoder``/``Decoder`` constructor names; the decoder has no up-level attention). Level i of
    the encoder works at ``resolution / 2**i`` and has attention when that is in ``attn_resolutions``."""
    levels = len(ch_mult)
    if ch_mult[0] != 1:   # official conv_in outputs ch channels, diffusers' block_out_channels[0]
        raise ValueError(f"ch_mult={tuple(ch_mult)}: diffusers' AutoencoderKL can hold the official KL-VAE only with "
                         "ch_mult[0] == 1")
    return KLConfig(latent_channels=embed_dim, block_out_channels=[ch * m for m in ch_mult],
                    layers_per_block=num_res_blocks, norm_num_groups=32, mid_block_attention=True,
                    attention_levels=[i for i in range(levels) if resolution // 2 ** i in attn_resolutions],
                    official="mar", scaling_factor=scaling_factor)


# models/vae.py:AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)) (Encoder/Decoder defaults).
MAR_KL16 = mar_config()


def convert_mar_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official MAR/LDM KL-VAE state dict -> diffusers ``AutoencoderKL`` state dict (names and
    1 x 1 conv -> linear attention weights). Every official key is used exactly once; shapes are
    checked against a model by ``check_against`` (``load_mar_kl16`` does both)."""
    return convert_ldm(sd)[1]


def check_against(target: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """Convert ``sd`` and check it against a diffusers state dict ``target`` (names and shapes;
    tensors may be on the meta device). Returns the converted dict; raises ``RuntimeError``
    naming ``source`` and the first offending keys (official names in brackets)."""
    try:
        mapping, converted = convert_ldm(sd)
    except RuntimeError as err:
        raise RuntimeError(f"{source}: {err}") from None
    check_keys(target, converted, source, "does not match the kl tokenizer's architecture (MAR KL-16 is "
               "methods/tokenizers/kl.py MAR_KL16)", official_names=mapping)
    return converted


def read_mar_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an official checkpoint file: ``{"model": state_dict}`` (the official
    format) or a bare state dict. Clear errors for a missing, unreadable or foreign file."""
    what = "a MAR KL-16 checkpoint"
    return tensor_dict(read_checkpoint(path, f"{what} (LTH14/mar's kl16.ckpt)"), str(path), what, nested=("model",))


def load_mar_kl16(path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                  cfg: KLConfig | None = None) -> KLTokenizer:
    """A ``KLTokenizer`` with the official MAR KL-16 weights (``cfg``: the architecture,
    default ``MAR_KL16``; its ``scaling_factor`` or else 0.2325). Strict: see the module docstring."""
    cfg = cfg or MAR_KL16
    if isinstance(path_or_state_dict, Mapping):
        sd, source = path_or_state_dict, "state dict"
    else:
        sd, source = read_mar_checkpoint(path_or_state_dict), str(path_or_state_dict)
    tok = KLTokenizer(cfg)
    converted = check_against(tok.vae.state_dict(), sd, source)
    tok.vae.load_state_dict(converted, strict=True)
    tok.scaling_factor.fill_(cfg.scaling_factor or MAR_SCALING_FACTOR)
    return tok.eval()

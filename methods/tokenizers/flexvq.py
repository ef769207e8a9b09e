"""`flexvq`: FlexVAR's tokenizer (FlexVAE; Jiao et al., arXiv 2502.20313), a LlamaGen-style VQ
whose every scale is quantized on its own.

The encoder's continuous features f (B, z, h, w) go through a 1 x 1 ``quant_conv`` to the code
width C. For a scale list (any list, any final size), scale k's *ground-truth* tokens are the
nearest codes (L2-normalised vectors and codebook, i.e. cosine) of f area-downsampled to
pn_k x pn_k: unlike VAR's residual VQ, no scale depends on another, so a model can be trained
and sampled on lists it never saw. Any code map (B, C, pn, pn) decodes through a 1 x 1
``post_quant_conv`` and the decoder to a (pn * stride)-pixel image, which is how FlexVAR
generates at resolutions beyond its training one.

The encoder/decoder are diffusers' (LDM VQ layout, as msvq); the official LlamaGen-named
checkpoint converts strictly through ``FlexVQTokenizer.convert_official``. Trained here with the
reconstruction of several scales (each decoded image against the image area-resized to its
size, as FlexVAE's multi-scale objective), the commitment and codebook terms, and dead-code
restarts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import GroundTruthTokenizer
from methods.config import check_positive
from methods.registry import TOKENIZERS
from methods.tokenizers.msvq import convert_ldm_autoencoder
from methods.tokenizers.vq import VQConfig, VQTokenizer, restart_dead_codes


@dataclass
class FlexVQConfig(VQConfig):
    """Defaults are the official FlexVAR tokenizer's architecture (LlamaGen ``VQ_16(codebook_size,
    codebook_embed_dim=32)``: ch 128, z 256, stride 16). The released FlexVAE.pth has 8,912 codes
    (``build_vae_var(V=8912)`` in the official scripts): the imagenet256_flexvar_* presets set
    ``vocab_size: 8912``."""
    code_dim: int = 32                   # official codebook_embed_dim (Cvae)
    z_channels: int = 256                # encoder output / decoder input width
    codebook_l2_norm: bool = True
    recon_scales: int = 2                # scales reconstructed per training step (the last + random others)

    official_file: ClassVar[str] = ("the official FlexVAR tokenizer checkpoint (FlexVAE.pth from "
                                    "huggingface.co/jiaosiyu1999/FlexVAR)")

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("code_dim", "z_channels", "recon_scales"):
            check_positive(f"{key}.{name}", getattr(self, name))


@TOKENIZERS.register_module("flexvq")
class FlexVQTokenizer(GroundTruthTokenizer, VQTokenizer):
    """encoder -> quant_conv -> per-scale cosine VQ -> post_quant_conv -> decoder."""
    Config = FlexVQConfig
    kind = "multiscale_groundtruth"
    name = "flexvq"
    official_what = "the FlexVAR tokenizer (a LlamaGen VQ checkpoint with 'model')"
    monitor_buffers = ("ema_hits", "train_steps")   # ours only: usage monitor and the restart clock

    def __init__(self, cfg: FlexVQConfig):
        super().__init__(cfg)
        self.build_autoencoder(cfg.z_channels)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.code_dim)
        self.embedding.weight.data.uniform_(-1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        if cfg.codebook_l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        self.register_buffer("ema_hits", torch.zeros(cfg.vocab_size))                   # usage monitor
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))          # restart clock

    # -- geometry ----------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.cfg.code_dim

    # -- quantization ------------------------------------------------------------------
    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.cfg.codebook_l2_norm else w

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous features f = quant_conv(encoder(x)) (official ``encode_conti``)."""
        return self.quant_conv(self.encoder(images))

    def quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_q with a straight-through gradient, indices (B, h*w), normalised z) of a map f."""
        B, C, H, W = f.shape
        z = f.permute(0, 2, 3, 1).reshape(-1, C)
        codebook = self.codebook()
        if self.cfg.codebook_l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        dist = torch.sum(z ** 2, dim=1, keepdim=True) + torch.sum(codebook ** 2, dim=1) - 2 * (z @ codebook.T)
        idx = torch.argmin(dist, dim=1)
        z_q = z + (codebook[idx] - z).detach()
        return z_q.view(B, H, W, C).permute(0, 3, 1, 2), idx.view(B, H * W), z.view(B, H, W, C).permute(0, 3, 1, 2)

    def scale_maps(self, f: torch.Tensor, patch_nums: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(code map z_q (B, C, pn, pn), indices (B, pn^2))] of f area-downsampled to every scale."""
        return [self.quantize(F.interpolate(f, size=(pn, pn), mode="area"))[:2] for pn in patch_nums]

    @torch.no_grad()
    def img_to_indices(self, images: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        return [idx for _, idx in self.scale_maps(self.features(images), patch_nums or self.patch_nums)]

    def code_map(self, indices: torch.Tensor, side: int) -> torch.Tensor:
        """Indices (B, side^2) -> their (normalised) codes as a map (B, C, side, side)."""
        return self.codebook()[indices].reshape(indices.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def next_scale_input(code_map: torch.Tensor, side: int) -> torch.Tensor:
        """A scale's code map, bicubic-resized to the next scale's side, as tokens (B, side^2, C)."""
        up = F.interpolate(code_map, size=(side, side), mode="bicubic")
        return up.reshape(up.shape[0], up.shape[1], -1).permute(0, 2, 1)

    def teacher_forcing(self, f: torch.Tensor, patch_nums: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, L - pn_1^2, C), targets (B, L)) for features f and a scale list, as the
        official trainer builds them: scale k+1's input is scale k's quantized map, resized."""
        maps = self.scale_maps(f, patch_nums)
        inputs = [self.next_scale_input(z_q, nxt) for (z_q, _), nxt in zip(maps[:-1], patch_nums[1:])]
        return torch.cat(inputs, dim=1), torch.cat([idx for _, idx in maps], dim=1)

    # -- the harness's tokenizer protocol ----------------------------------------------
    def to_cache(self, images: torch.Tensor) -> torch.Tensor:
        """The continuous features: scale lists are drawn per training step, so tokens are
        computed from these on the fly."""
        return self.features(images)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images -> the quantized code map of the final scale (B, C, h, w)."""
        f = self.features(images)
        return self.quantize(f)[0]

    def decode(self, code_map: torch.Tensor) -> torch.Tensor:
        """A code map (B, C, pn, pn) of any side -> images (B, 3, pn * stride, ...), not clamped."""
        return self.decoder(self.post_quant_conv(code_map))

    def decode_indices(self, indices: torch.Tensor, side: int) -> torch.Tensor:
        """Official ``decode_code``: the final scale's indices -> image (not clamped)."""
        return self.decode(self.code_map(indices, side))

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction (L1 + L2) of the last scale and ``recon_scales - 1`` random others,
        each against the image area-resized to its size, plus the VQ terms."""
        if self.cfg.pretrained:
            raise RuntimeError("flexvq.pretrained is set: the official tokenizer is loaded, not trained here")
        f = self.features(images)
        if self.warming_up(self.train_steps, f, self.embedding.weight, self.ema_hits, generator):
            recon = self.decode(F.normalize(f, dim=1) if self.cfg.codebook_l2_norm else f)   # what z_q will be near
            return F.l1_loss(recon, images) + F.mse_loss(recon, images)
        pn = list(self.patch_nums)
        device = generator.device if generator is not None else "cpu"
        others = torch.randperm(len(pn) - 1, generator=generator, device=device)[:self.cfg.recon_scales - 1].tolist()
        loss, hits, zs = 0.0, torch.zeros_like(self.ema_hits), []
        for side in [pn[-1]] + [pn[i] for i in sorted(others)]:
            fs = F.interpolate(f, size=(side, side), mode="area")
            z_q, idx, z = self.quantize(fs)
            codes = self.codebook()[idx.flatten()].view(z.shape[0], side, side, -1).permute(0, 3, 1, 2)
            vq = F.mse_loss(codes, z.detach()) + self.cfg.beta * F.mse_loss(codes.detach(), z)
            target = images if side == pn[-1] else F.interpolate(images, size=(side * self.stride,) * 2, mode="area")
            recon = self.decode(z_q)
            loss = loss + F.l1_loss(recon, target) + F.mse_loss(recon, target) + vq
            hits += idx.flatten().bincount(minlength=self.cfg.vocab_size).float()
            zs.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).detach())
        if self.training:
            self.ema_hits.mul_(0.9).add_(hits, alpha=0.1)
            self.train_steps += 1
            if self.cfg.restart_every and int(self.train_steps) % self.cfg.restart_every == 0:
                restart_dead_codes(self.embedding.weight, self.ema_hits, self.cfg.restart_threshold, torch.cat(zs), generator)
        return loss / self.cfg.recon_scales

    @torch.no_grad()
    def usage(self, features: torch.Tensor) -> dict:
        """Codebook usage over the training scales of cached features (B, C, h, w)."""
        per_scale = [idx for _, idx in self.scale_maps(features, self.patch_nums)]
        used = torch.unique(torch.cat([i.flatten() for i in per_scale])).numel()
        return {"codebook_usage_pct": 100.0 * used / self.vocab_size, "dead_codes": self.vocab_size - used,
                "codebook_usage_per_scale_pct": [100.0 * torch.unique(i).numel() / self.vocab_size for i in per_scale]}

    @classmethod
    def convert_official(cls, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official FlexVAE / LlamaGen VQModel state dict -> this tokenizer's. The usage buffer
        ``quantize.codebook_used`` (a training log) is dropped; every other key is used once."""
        autoencoder, out = {}, {}
        for key, value in sd.items():
            if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
                autoencoder[key] = value
            elif key == "quantize.embedding.weight":
                out["embedding.weight"] = value
            elif key != "quantize.codebook_used":
                raise RuntimeError(f"unexpected key {key!r} in a FlexVAR tokenizer state dict")
        return {**out, **convert_ldm_autoencoder(llamagen_to_ldm(autoencoder))}


# -- the official checkpoint (LlamaGen VQModel names) -----------------------------------------
_LEVEL = re.compile(r"^(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)(\..*)$")
_MID = re.compile(r"^(encoder|decoder)\.mid\.(\d)(\..*)$")
_MID_NAMES = {"0": "block_1", "1": "attn_1", "2": "block_2"}


def llamagen_to_ldm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LlamaGen's encoder/decoder names -> LDM's: ``conv_blocks.i.res.j`` -> ``down.i.block.j``
    (decoder: ``up.{n-1-i}``, LlamaGen lists its up levels from the lowest resolution),
    ``mid.{0,1,2}`` -> ``mid.{block_1,attn_1,block_2}``."""
    n_up = 1 + max((int(m.group(2)) for k in sd if (m := _LEVEL.match(k)) and m.group(1) == "decoder"), default=-1)
    out = {}
    for key, value in sd.items():
        m, mid = _LEVEL.match(key), _MID.match(key)
        if m:
            part, level, kind, rest = m.groups()
            level = int(level) if part == "encoder" else n_up - 1 - int(level)
            kind = {"res": "block"}.get(kind, kind)
            key = f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{kind}{rest}"
        elif mid:
            key = f"{mid.group(1)}.mid.{_MID_NAMES[mid.group(2)]}{mid.group(3)}"
        out[key] = value
    return out

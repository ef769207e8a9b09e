"""`msvq`: VAR's multi-scale residual VQ tokenizer (Tian et al., arXiv 2404.02905, Alg. 1-2).

An image's feature map f (B, C, h, w) is quantized coarse to fine over the scales
``patch_nums`` = (1, 2, 3, ..., h): at scale k the residual left so far is area-downsampled to
pn_k x pn_k, each vector is replaced by its nearest codebook entry (index r_k), the code map is
bicubic-upsampled back to h x w, refined by a 3 x 3 convolution phi_k (mixed half-and-half
with its input) and subtracted from the residual. The sum of the upsampled, refined code maps
is f_hat, which the decoder turns into the image. A few phi convolutions are shared across the
scales (``share_quant_resi``): scale k uses the phi whose "tick" is nearest to k / (K - 1).

The encoder and decoder are diffusers' ``Encoder``/``Decoder`` (LDM's VQ-f16 layout: resnets,
self-attention at the lowest resolution and in the middle); the official VAR checkpoint
``vae_ch160v4096z32.pth`` loads strictly through ``from_pretrained`` (LDM names converted with
the same machinery as MAR's KL-16, methods/tokenizers/ldm.py; fused q/k/v convolutions split).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import ResidualTokenizer
from methods.config import ConfigError, check_positive
from methods.registry import TOKENIZERS
from methods.tokenizers.ldm import convert_ldm, split_fused_qkv
from methods.tokenizers.vq import VQConfig, VQTokenizer, restart_dead_codes


@dataclass
class MSVQConfig(VQConfig):
    """Defaults are the official VAR tokenizer (``vae_ch160v4096z32.pth``)."""
    z_channels: int = 32                 # code width (official Cvae)
    ch: int = 160
    using_sa: bool = True                # attention at the lowest resolution level
    using_mid_sa: bool = True
    using_znorm: bool = False            # cosine instead of L2 nearest neighbour
    quant_conv_ks: int = 3
    quant_resi: float = 0.5              # phi(h) = (1 - q) h + q conv(h)
    share_quant_resi: int = 4            # 0: one phi per scale; 1: one phi; n: n shared phis
    default_qresi_counts: int = 0        # with share_quant_resi=0: number of phis (0: one per scale)

    official_file: ClassVar[str] = "the official VAR tokenizer (vae_ch160v4096z32.pth from huggingface.co/FoundationVision/var)"

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("z_channels", "quant_conv_ks"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.share_quant_resi", self.share_quant_resi, allow_zero=True)
        check_positive(f"{key}.default_qresi_counts", self.default_qresi_counts, allow_zero=True)
        if self.quant_conv_ks % 2 == 0:
            raise ConfigError(f"{key}.quant_conv_ks={self.quant_conv_ks} must be odd (same-size convolution)")


def phi_ticks(count: int) -> np.ndarray:
    """Where the shared phis sit on [0, 1] (scale k of K sits at k / (K - 1))."""
    margin = 1 / 3 / count if count == 4 else 1 / 2 / count
    return np.linspace(margin, 1 - margin, count)


class Phi(nn.Conv2d):
    """phi(h) = (1 - q) h + q conv3x3(h): the residual refinement after upsampling a code map."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class MultiScaleQuantizer(nn.Module):
    """The residual quantizer over ``patch_nums`` (``quantize`` in the official VQVAE)."""

    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[int], beta: float = 0.25,
                 using_znorm: bool = False, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 default_qresi_counts: int = 0, restart_every: int = 0, restart_threshold: float = 0.03):
        super().__init__()
        self.restart_every, self.restart_threshold = restart_every, restart_threshold
        self.vocab_size, self.channels, self.patch_nums = vocab_size, channels, tuple(patch_nums)
        self.beta, self.using_znorm = beta, using_znorm
        count = (default_qresi_counts or len(self.patch_nums)) if share_quant_resi == 0 else share_quant_resi
        self.phi = nn.ModuleList([Phi(channels, quant_resi) for _ in range(count)]) if abs(quant_resi) > 1e-6 else None
        self.ticks = phi_ticks(count)
        self.embedding = nn.Embedding(vocab_size, channels)
        # Per-scale codebook hits (EMA), for usage / dead-code monitoring during training.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))   # restart clock (resumable)

    def refine(self, h: torch.Tensor, k: int, num_scales: int) -> torch.Tensor:
        """phi for scale k of num_scales (the phi whose tick is nearest to k / (K - 1))."""
        if self.phi is None:
            return h
        return self.phi[int(np.argmin(np.abs(self.ticks - k / (num_scales - 1))))](h)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook indices (N,) of the vectors z (N, C): L2 nearest, or cosine with znorm."""
        codebook = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(codebook.T, dim=0), dim=1)
        dist = torch.sum(z.square(), dim=1, keepdim=True) + torch.sum(codebook.square(), dim=1, keepdim=False)
        dist.addmm_(z, codebook.T, alpha=-2, beta=1)              # |z|^2 + |e|^2 - 2 z.e
        return torch.argmin(dist, dim=1)

    def code_map(self, idx: torch.Tensor, side: tuple[int, int], size: tuple[int, int], last: bool) -> torch.Tensor:
        """Embed indices (B, h*w) as a (B, C, h, w) map, bicubic-upsampled to ``size`` unless last."""
        h = self.embedding(idx.view(-1, *side)).permute(0, 3, 1, 2)
        return h.contiguous() if last else F.interpolate(h, size=size, mode="bicubic").contiguous()

    @torch.no_grad()
    def quantize(self, f: torch.Tensor, patch_nums: Sequence | None = None, to_fhat: bool = False) -> list[torch.Tensor]:
        """Alg. 1: per-scale indices (B, pn^2), or the running f_hat after each scale."""
        B, C, H, W = f.shape
        sides = [(p, p) if isinstance(p, int) else tuple(p) for p in (patch_nums or self.patch_nums)]
        if sides[-1] != (H, W):
            raise ValueError(f"the last scale {sides[-1]} must be the feature map's size {(H, W)}")
        rest, f_hat, out = f.detach().clone(), torch.zeros_like(f), []
        K = len(sides)
        for k, side in enumerate(sides):
            last = k == K - 1
            z = rest if last else F.interpolate(rest, size=side, mode="area")
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.refine(self.code_map(idx, side, (H, W), last), k, K)
            f_hat.add_(h)
            rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx.reshape(B, side[0] * side[1]))
        return out

    def forward(self, f: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (f_hat with a straight-through gradient to f, VQ loss, hits (K, V)).

        The VQ loss averages over scales the commitment term beta |sg(f_hat_k) - f|^2 and the
        codebook term |f_hat_k - sg(f)|^2 of the running reconstruction f_hat_k."""
        f = f.float()
        B, C, H, W = f.shape
        f_no_grad = f.detach()
        rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        loss, hits, residuals, K = 0.0, [], [], len(self.patch_nums)
        for k, pn in enumerate(self.patch_nums):
            last = k == K - 1
            z = rest if last else F.interpolate(rest, size=(pn, pn), mode="area")
            residuals.append(z.permute(0, 2, 3, 1).reshape(-1, C))
            idx = self.nearest(residuals[-1])
            hits.append(idx.bincount(minlength=self.vocab_size).float())
            h = self.refine(self.code_map(idx, (pn, pn), (H, W), last), k, K)
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        hits = torch.stack(hits)
        if self.training:
            self.ema_vocab_hit_SV.mul_(0.9).add_(hits, alpha=0.1)
            self.train_steps += 1
            if self.restart_every and int(self.train_steps) % self.restart_every == 0:
                self.restart_dead_codes(torch.cat(residuals), generator)
        return (f_hat.detach() - f_no_grad) + f, loss / K, hits

    def restart_dead_codes(self, residuals: torch.Tensor, generator: torch.Generator | None) -> int:
        return restart_dead_codes(self.embedding.weight, self.ema_vocab_hit_SV, self.restart_threshold, residuals, generator)

    def indices_to_fhat(self, indices: Sequence[torch.Tensor], last_one: bool = True):
        """Alg. 2: f_hat from per-scale indices (B, pn^2), every code map taken to the last scale."""
        B, C, K = indices[0].shape[0], self.channels, len(indices)
        H = W = round(indices[-1].shape[1] ** 0.5)
        f_hat, out = indices[0].new_zeros(B, C, H, W, dtype=torch.float32), []
        for k, idx in enumerate(indices):
            pn = round(idx.shape[1] ** 0.5)
            h = self.embedding(idx).transpose(1, 2).view(B, C, pn, pn)
            if k < K - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            f_hat.add_(self.refine(h, k, K))
            out.append(f_hat if last_one else f_hat.clone())
        return out[-1] if last_one else out

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """The transformer's input for scales 2..K: after each scale k < K, the running f_hat
        area-downsampled to scale k+1's side, as tokens. (B, L - pn_1^2, C)."""
        B, C, K = indices[0].shape[0], self.channels, len(self.patch_nums)
        H = W = self.patch_nums[-1]
        f_hat, inputs = indices[0].new_zeros(B, C, H, W, dtype=torch.float32), []
        for k in range(K - 1):
            pn, nxt = self.patch_nums[k], self.patch_nums[k + 1]
            h = F.interpolate(self.embedding(indices[k]).transpose(1, 2).view(B, C, pn, pn), size=(H, W), mode="bicubic")
            f_hat.add_(self.refine(h, k, K))
            inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def next_input(self, k: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: add scale k's code map h (B, C, pn, pn) to f_hat (in place); return f_hat
        and the next scale's input map (f_hat area-downsampled; f_hat itself after the last)."""
        K, H = len(self.patch_nums), self.patch_nums[-1]
        if k == K - 1:
            f_hat.add_(self.refine(h, k, K))
            return f_hat, f_hat
        f_hat.add_(self.refine(F.interpolate(h, size=(H, H), mode="bicubic"), k, K))
        nxt = self.patch_nums[k + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")


def convert_ldm_autoencoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM-named encoder/decoder/quant-conv keys (VAR's fused q/k/v split first) -> diffusers names."""
    return convert_ldm(split_fused_qkv(sd))[1]


@TOKENIZERS.register_module("msvq")
class MSVQTokenizer(ResidualTokenizer, VQTokenizer):
    """VAR's VQVAE: encoder -> quant_conv -> multi-scale residual quantizer -> post_quant_conv -> decoder."""
    Config = MSVQConfig
    kind = "multiscale_residual"
    name = "msvq"
    official_what = "the VAR tokenizer (vae_ch160v4096z32.pth)"
    monitor_buffers = ("quantize.ema_vocab_hit_SV", "quantize.train_steps")   # a training log and the restart clock

    def __init__(self, cfg: MSVQConfig):
        super().__init__(cfg)
        self.build_autoencoder(cfg.z_channels, cfg.using_sa, cfg.using_mid_sa)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.z_channels, cfg.patch_nums, cfg.beta, cfg.using_znorm,
                                            cfg.quant_resi, cfg.share_quant_resi, cfg.default_qresi_counts,
                                            cfg.restart_every, cfg.restart_threshold)

    # -- the residual-tokenizer interface (methods.base.ResidualTokenizer) -----------------
    @property
    def channels(self) -> int:
        return self.cfg.z_channels

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.quantize.teacher_forcing_input(indices)

    def next_input(self, k: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantize.next_input(k, f_hat, h)

    # -- images <-> tokens ------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))

    def check_size(self, images: torch.Tensor) -> None:
        side = images.shape[-1] // self.stride
        if images.shape[-2] // self.stride != side or side != self.patch_nums[-1]:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px give {images.shape[-2] // self.stride} x {side} "
                             f"features, but the last scale of patch_nums={list(self.patch_nums)} is "
                             f"{self.patch_nums[-1]}; use {self.patch_nums[-1] * self.stride} px images")

    @torch.no_grad()
    def img_to_indices(self, images: torch.Tensor, patch_nums: Sequence | None = None) -> list[torch.Tensor]:
        """Images in [-1, 1] -> per-scale indices [(B, pn^2)]."""
        if patch_nums is None:
            self.check_size(images)
        return self.quantize.quantize(self.features(images), patch_nums)

    def to_cache(self, images: torch.Tensor) -> torch.Tensor:
        """What the training cache stores: all scales' indices, concatenated (B, L)."""
        return torch.cat(self.img_to_indices(images), dim=1)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> per-scale [(B, pn^2)]."""
        return list(tokens.split([p * p for p in self.patch_nums], dim=1))

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images -> f_hat (B, C, h, w), the sum of all scales' refined code maps."""
        self.check_size(images)
        return self.quantize.quantize(self.features(images), to_fhat=True)[-1]

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(f_hat))

    def indices_to_img(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decode(self.quantize.indices_to_fhat(indices)).clamp(-1, 1)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L1 + L2 reconstruction through the straight-through f_hat, plus the VQ loss."""
        if self.cfg.pretrained:
            raise RuntimeError("msvq.pretrained is set: the official tokenizer is loaded, not trained here")
        self.check_size(images)
        f, q = self.features(images), self.quantize
        if self.warming_up(q.train_steps, f, q.embedding.weight, q.ema_vocab_hit_SV, generator):
            recon = self.decode(f)
            return F.l1_loss(recon, images) + F.mse_loss(recon, images)
        f_hat, vq_loss, _ = q(f, generator)
        recon = self.decode(f_hat)
        return F.l1_loss(recon, images) + F.mse_loss(recon, images) + vq_loss

    @torch.no_grad()
    def usage(self, tokens: torch.Tensor) -> dict:
        """Codebook usage of cached tokens (B, L): % of codes used per scale and overall, and
        the number of codes never used (dead)."""
        per_scale = [100.0 * torch.unique(t).numel() / self.cfg.vocab_size for t in self.split(tokens)]
        used = torch.unique(tokens).numel()
        return {"codebook_usage_pct": 100.0 * used / self.cfg.vocab_size, "dead_codes": self.cfg.vocab_size - used,
                "codebook_usage_per_scale_pct": per_scale}

    # -- the official checkpoint -------------------------------------------------------
    @classmethod
    def convert_official(cls, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official VQVAE state dict -> this tokenizer's (encoder/decoder: LDM -> diffusers names;
        phis: ``quant_resi.{qresi_ls.i | qresi | i}`` -> ``phi.i``). Every official key is used once."""
        autoencoder, out = {}, {}
        for key, value in sd.items():
            m_phi = _PHI.match(key)
            if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
                autoencoder[key] = value
            elif m_phi:
                out[f"quantize.phi.{m_phi.group(1) or m_phi.group(2) or 0}.{m_phi.group(3)}"] = value
            elif key in ("quantize.embedding.weight", "quantize.ema_vocab_hit_SV"):
                out[key] = value
            else:
                raise RuntimeError(f"unexpected key {key!r} in a VAR tokenizer state dict")
        return {**out, **convert_ldm_autoencoder(autoencoder)}


_PHI = re.compile(r"^quantize\.quant_resi\.(?:qresi_ls\.(\d+)|qresi|(\d+))\.(weight|bias)$")

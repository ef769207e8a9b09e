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
``vae_ch160v4096z32.pth`` loads strictly through ``load_official`` (LDM names converted with
the same machinery as MAR's KL-16, fused q/k/v convolutions split).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from methods.registry import TOKENIZERS

VAR_PATCH_NUMS = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


@dataclass
class MSVQConfig:
    """Defaults are the official VAR tokenizer (``vae_ch160v4096z32.pth``)."""
    vocab_size: int = 4096
    z_channels: int = 32                 # code width (official Cvae)
    ch: int = 160
    ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])   # stride 2 ** (len - 1)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    using_sa: bool = True                # attention at the lowest resolution level
    using_mid_sa: bool = True
    beta: float = 0.25                   # commitment weight
    using_znorm: bool = False            # cosine instead of L2 nearest neighbour
    quant_conv_ks: int = 3
    quant_resi: float = 0.5              # phi(h) = (1 - q) h + q conv(h)
    share_quant_resi: int = 4            # 0: one phi per scale; 1: one phi; n: n shared phis
    default_qresi_counts: int = 0        # with share_quant_resi=0: number of phis (0: one per scale)
    # Training here: every `restart_every` steps, codes that went unused (EMA hits below
    # `restart_threshold` per step) restart at residual vectors drawn from the batch. Without
    # it a small codebook trained from scratch collapses to a few percent of its codes (measured).
    restart_every: int = 25
    restart_threshold: float = 0.03
    patch_nums: List[int] = field(default_factory=lambda: list(VAR_PATCH_NUMS))
    # An official VAR tokenizer checkpoint (vae_ch160v4096z32.pth) to load instead of training.
    pretrained: Optional[str] = None
    steps: int = 1500                    # training steps (when not pretrained)
    batch_size: int = 64
    lr: float = 1e-3

    def check(self, key: str) -> None:
        from benchmark.config import ConfigError, check_positive
        for name in ("vocab_size", "z_channels", "ch", "num_res_blocks", "norm_num_groups", "steps", "batch_size",
                     "lr", "quant_conv_ks"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.share_quant_resi", self.share_quant_resi, allow_zero=True)
        check_positive(f"{key}.default_qresi_counts", self.default_qresi_counts, allow_zero=True)
        pn = list(self.patch_nums)
        if len(pn) < 2 or any(b <= a for a, b in zip(pn, pn[1:])) or pn[0] < 1:
            raise ConfigError(f"{key}.patch_nums={pn} must be at least two increasing positive sides, e.g. [1, 2, 4, 8]")
        if self.quant_conv_ks % 2 == 0:
            raise ConfigError(f"{key}.quant_conv_ks={self.quant_conv_ks} must be odd (same-size convolution)")
        for width in (self.ch * m for m in self.ch_mult):
            if width % self.norm_num_groups:
                raise ConfigError(f"{key}: width {width} (ch * ch_mult) is not divisible by "
                                  f"{key}.norm_num_groups={self.norm_num_groups}")
        if self.pretrained and not Path(self.pretrained).is_file():
            raise ConfigError(f"{key}.pretrained={self.pretrained!r} is not a file; give the local path of the "
                              "official VAR tokenizer (vae_ch160v4096z32.pth from huggingface.co/FoundationVision/var)")


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


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, hits: torch.Tensor, threshold: float, candidates: torch.Tensor,
                       generator: torch.Generator | None) -> int:
    """Move codes whose EMA hits (summed over scales, hits (..., V)) fell below ``threshold``
    onto vectors drawn from ``candidates`` (N, C) (Dhariwal et al. 2020, Jukebox's codebook
    restarts); their hit counts restart at 1 to give them time to be used."""
    dead = (hits.reshape(-1, hits.shape[-1]).sum(0) < threshold).nonzero()[:, 0]
    if len(dead):
        pick = torch.randint(len(candidates), (len(dead),), generator=generator, device=candidates.device)
        codebook.data[dead] = candidates[pick].to(codebook.dtype)
        hits[..., dead] = 1.0
    return len(dead)


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


def ldm_encoder_decoder(z_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, norm_num_groups: int,
                        using_sa: bool = True, using_mid_sa: bool = True) -> tuple[Encoder, Decoder]:
    """diffusers' Encoder/Decoder in the LDM VQ layout (VQGAN, VAR, LlamaGen): ``ch * ch_mult``
    widths, self-attention after every resnet of the lowest-resolution level (``using_sa``)
    and in the middle (``using_mid_sa``), GroupNorm eps 1e-6, no double z."""
    levels = len(ch_mult)
    widths = tuple(ch * m for m in ch_mult)
    down = tuple("AttnDownEncoderBlock2D" if using_sa and i == levels - 1 else "DownEncoderBlock2D" for i in range(levels))
    up = tuple("AttnUpDecoderBlock2D" if using_sa and i == 0 else "UpDecoderBlock2D" for i in range(levels))
    encoder = Encoder(in_channels=3, out_channels=z_channels, down_block_types=down, block_out_channels=widths,
                      layers_per_block=num_res_blocks, norm_num_groups=norm_num_groups, double_z=False,
                      mid_block_add_attention=using_mid_sa)
    decoder = Decoder(in_channels=z_channels, out_channels=3, up_block_types=up, block_out_channels=widths,
                      layers_per_block=num_res_blocks, norm_num_groups=norm_num_groups, mid_block_add_attention=using_mid_sa)
    return encoder, decoder


def convert_ldm_autoencoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM-named encoder/decoder/quant-conv keys -> diffusers names (fused 1 x 1 q/k/v
    convolutions split first); every key used exactly once (methods/tokenizers/mar.py)."""
    from methods.tokenizers.mar import _converted, mar_key_map
    ldm = {}
    for key, value in sd.items():
        m_qkv = _FUSED_QKV.match(key)
        if m_qkv:   # AttnBlock's qkv conv (3C, C, 1, 1) -> LDM's q, k, v
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                ldm[f"{m_qkv.group(1)}.{name}.{m_qkv.group(2)}"] = part
        else:
            ldm[key] = value
    mapping = mar_key_map({k: tuple(v.shape) for k, v in ldm.items()})
    return {new: _converted(ldm[old], new) for new, old in mapping.items()}


@TOKENIZERS.register_module("msvq")
class MSVQTokenizer(nn.Module):
    """VAR's VQVAE: encoder -> quant_conv -> multi-scale residual quantizer -> post_quant_conv -> decoder."""
    Config = MSVQConfig
    kind = "multiscale_residual"

    def __init__(self, cfg: MSVQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = ldm_encoder_decoder(cfg.z_channels, cfg.ch, cfg.ch_mult, cfg.num_res_blocks,
                                                         cfg.norm_num_groups, cfg.using_sa, cfg.using_mid_sa)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.z_channels, cfg.patch_nums, cfg.beta, cfg.using_znorm,
                                            cfg.quant_resi, cfg.share_quant_resi, cfg.default_qresi_counts,
                                            cfg.restart_every, cfg.restart_threshold)

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: MSVQConfig | None = None) -> "MSVQTokenizer":
        """The official VAR tokenizer (``vae_ch160v4096z32.pth``), ``cfg`` its architecture."""
        tok = cls(cfg or MSVQConfig())
        return load_official(tok, read_official(path), str(path))

    # -- what the harness uses ---------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.cfg.z_channels

    @property
    def stride(self) -> int:
        return 2 ** (len(self.cfg.ch_mult) - 1)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

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

    def from_cache(self, cached: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return cached

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
        f_hat, vq_loss, _ = self.quantize(self.features(images), generator)
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


# -- the official checkpoint ------------------------------------------------------------
_FUSED_QKV = re.compile(r"^(.*)\.qkv\.(weight|bias)$")
_PHI = re.compile(r"^quantize\.quant_resi\.(?:qresi_ls\.(\d+)|qresi|(\d+))\.(weight|bias)$")


def convert_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    out.update(convert_ldm_autoencoder(autoencoder))
    return out


def load_official(tok: MSVQTokenizer, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> MSVQTokenizer:
    """Load an official VQVAE state dict strictly (names, shapes), with errors naming ``source``."""
    from methods.checkpoints import check_keys
    try:
        converted = convert_official(sd)
    except RuntimeError as err:
        raise RuntimeError(f"{source}: {err}") from None
    target = tok.state_dict()
    converted.setdefault("quantize.train_steps", target["quantize.train_steps"])   # ours only: the restart clock
    hits = converted.get("quantize.ema_vocab_hit_SV")
    if hits is not None and hits.shape != target["quantize.ema_vocab_hit_SV"].shape:
        converted["quantize.ema_vocab_hit_SV"] = target["quantize.ema_vocab_hit_SV"]  # another scale list: monitor only
    check_keys(target, converted, source, "the msvq tokenizer built here (check msvq.vocab_size, z_channels, ch, "
               "ch_mult, share_quant_resi against the checkpoint)")
    tok.load_state_dict(converted, strict=True)
    return tok.eval()


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    from methods.checkpoints import read_checkpoint, tensor_dict
    what = "the VAR tokenizer (vae_ch160v4096z32.pth)"
    return tensor_dict(read_checkpoint(path, what), str(path), what)

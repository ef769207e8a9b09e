"""Conformance with the official VAR code (FoundationVision/VAR), used by the parity tests and
by anyone porting results: the official constructor / factory keyword names, the official
checkpoint formats, and the official call conventions.

    tok = build_vqvae(vocab_size=4096, z_channels=32, ch=160, v_patch_nums=(1, 2, ..., 16))
    var = build(vae_local=tok, depth=16, embed_dim=1024, num_heads=16, shared_aln=False, ...)
    load(var, "var_d16.pth"); tok = load_vqvae(tok, "vae_ch160v4096z32.pth")
    indices = img_to_indices(tok, img)            # per-scale (B, pn^2), img in [-1, 1]
    img = indices_to_img(tok, indices)            # in [-1, 1]
    x = teacher_forcing_input(tok, indices)       # (B, L - first_l, Cvae)
    logits(var, labels, x)                        # (B, L, V), eval mode, no label dropout
    sample(var, tok, labels, seed=0, cfg=1.5, top_k=900, top_p=0.96)   # images in [0, 1]

Conventions as in the official code: the label ``num_classes`` is the unconditional (null)
class; ``labels=None`` draws random labels from the seeded generator; ``seed`` seeds one CPU
generator used, in the official order, for the random labels, the token draws of every scale
and the Gumbel noise of ``more_smooth``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from methods.adaln_ar import official_labels
from methods.base import TokenSpec
from methods.tokenizers.msvq import MSVQConfig, MSVQTokenizer
from methods.tokenizers.vq import VAR_PATCH_NUMS
from var_baseline.method import VARMethod
from var_baseline.model import VARConfig
from var_baseline.weights import convert, load as load_var   # the suite's own loading, under the official names

__all__ = ["build_vqvae", "build", "build_vae_var", "load", "load_vqvae", "convert", "img_to_indices",
           "indices_to_img", "teacher_forcing_input", "logits", "sample"]


def build_vqvae(vocab_size: int = 4096, z_channels: int = 32, ch: int = 128, dropout: float = 0.0, beta: float = 0.25,
                using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5, share_quant_resi: int = 4,
                default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = tuple(VAR_PATCH_NUMS), test_mode: bool = True,
                ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, norm_num_groups: int = 32) -> MSVQTokenizer:
    """The official ``VQVAE(...)`` (models/vqvae.py), same keyword names and defaults; ``ch_mult``,
    ``num_res_blocks`` and ``norm_num_groups`` (hard-coded there) are arguments here."""
    if dropout:
        raise ValueError(f"dropout={dropout}: the VAR tokenizer is used with dropout 0 (diffusers' encoder has none)")
    cfg = MSVQConfig(vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks,
                     norm_num_groups=norm_num_groups, beta=beta, using_znorm=using_znorm, quant_conv_ks=quant_conv_ks,
                     quant_resi=quant_resi, share_quant_resi=share_quant_resi, default_qresi_counts=default_qresi_counts,
                     patch_nums=list(v_patch_nums))
    tok = MSVQTokenizer(cfg)
    if test_mode:
        tok.eval().requires_grad_(False)
    return tok


def build(vae_local: MSVQTokenizer | None = None, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
          num_heads: int = 16, mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
          drop_path_rate: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False, cond_drop_rate: float = 0.1,
          attn_l2_norm: bool = False, patch_nums: Sequence[int] | None = None, flash_if_available: bool = True,
          fused_if_available: bool = True, V: int | None = None, Cvae: int | None = None, ch: int = 160,
          share_quant_resi: int = 4, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
          init_std: float = -1.0) -> VARMethod:
    """The official ``VAR(vae_local, ...)`` constructor (models/var.py), same keyword names and
    defaults, initialised as ``build_vae_var`` does. Without ``vae_local`` a tokenizer is built
    from the factory's names (``V``, ``Cvae``, ``ch``, ``share_quant_resi``, ``patch_nums``).
    ``flash_if_available`` / ``fused_if_available`` are accepted and ignored (same maths)."""
    if vae_local is None:
        if V is None or Cvae is None:
            raise ValueError("build() needs vae_local (the tokenizer) or the factory's V and Cvae")
        vae_local = build_vqvae(vocab_size=V, z_channels=Cvae, ch=ch, share_quant_resi=share_quant_resi,
                                v_patch_nums=tuple(patch_nums or VAR_PATCH_NUMS))
    tok = vae_local
    if (V is not None and V != tok.vocab_size) or (Cvae is not None and Cvae != tok.channels):
        raise ValueError(f"V={V}, Cvae={Cvae} differ from vae_local's {tok.vocab_size}, {tok.channels}")
    if patch_nums is not None and tuple(patch_nums) != tok.patch_nums:
        raise ValueError(f"patch_nums={tuple(patch_nums)} differ from vae_local's v_patch_nums={tok.patch_nums}")
    cfg = VARConfig(depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_eps=norm_eps, shared_aln=shared_aln,
                    attn_l2_norm=attn_l2_norm, cond_drop_rate=cond_drop_rate, init_adaln=init_adaln,
                    init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std)
    return VARMethod(cfg, TokenSpec(tok.channels, tok.patch_nums[-1], num_classes), tok)


def build_vae_var(device="cpu", patch_nums: Sequence[int] = tuple(VAR_PATCH_NUMS), V: int = 4096, Cvae: int = 32,
                  ch: int = 160, share_quant_resi: int = 4, num_classes: int = 1000, depth: int = 16,
                  shared_aln: bool = False, attn_l2_norm: bool = True, flash_if_available: bool = True,
                  fused_if_available: bool = True, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                  init_head: float = 0.02, init_std: float = -1.0) -> tuple[MSVQTokenizer, VARMethod]:
    """The official factory (models/__init__.py): width 64 * depth, depth heads, drop path 0.1 * depth / 24."""
    tok = build_vqvae(vocab_size=V, z_channels=Cvae, ch=ch, share_quant_resi=share_quant_resi,
                      v_patch_nums=tuple(patch_nums)).to(device)
    var = build(tok, num_classes=num_classes, depth=depth, embed_dim=64 * depth, num_heads=depth,
                drop_path_rate=0.1 * depth / 24, shared_aln=shared_aln, attn_l2_norm=attn_l2_norm,
                init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std)
    return tok, var.to(device)


def load_vqvae(tok: MSVQTokenizer, state_dict_or_path) -> MSVQTokenizer:
    """The official tokenizer weights (``vae_ch160v4096z32.pth`` or its state dict), strictly."""
    if isinstance(state_dict_or_path, (str, Path)):
        return tok.load_official(tok.read_official(state_dict_or_path), str(state_dict_or_path))
    return tok.load_official(state_dict_or_path)


def load(model: VARMethod | MSVQTokenizer, state_dict_or_path, name: str | None = None):
    """Load a VAR checkpoint strictly (var_baseline/weights.py: official ``var_d*.pth``, a training
    checkpoint's ``trainer.var_wo_ddp``, a suite ``.safetensors``, a state dict); a tokenizer
    given as ``model`` gets its VQVAE weights."""
    if isinstance(model, MSVQTokenizer):   # load(vqvae, "vae_ch160v4096z32.pth") works too
        return load_vqvae(model, state_dict_or_path)
    return load_var(model, state_dict_or_path, name)


def img_to_indices(vqvae: MSVQTokenizer, img: torch.Tensor) -> list[torch.Tensor]:
    """Images in [-1, 1] -> per-scale indices [(B, pn^2)] (official ``img_to_idxBl``)."""
    return vqvae.img_to_indices(img)


@torch.no_grad()
def indices_to_img(vqvae: MSVQTokenizer, indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-scale indices -> image in [-1, 1] (official ``idxBl_to_img(same_shape=True, last_one=True)``)."""
    return vqvae.indices_to_img(indices)


@torch.no_grad()
def teacher_forcing_input(vqvae: MSVQTokenizer, indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, L - first_l, Cvae): the official ``idxBl_to_var_input``."""
    return vqvae.teacher_forcing_input(indices)


@torch.no_grad()
def logits(model: VARMethod, labels: torch.Tensor, x_input: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits (B, L, V) in eval mode, without label dropout."""
    model.eval()
    return model.network(labels, x_input)


@torch.no_grad()
def sample(model: VARMethod, vqvae: MSVQTokenizer, labels: torch.Tensor | int | None, seed: int, cfg: float = 1.5,
           top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False, batch_size: int | None = None,
           return_all: bool = False, B: int | None = None):
    """The official ``autoregressive_infer_cfg`` → images (B, 3, H, W) in [0, 1]; with
    ``return_all`` a dict of the images, the labels used, the tokens drawn per scale and f_hat.
    ``labels``: a tensor, an int for the whole batch (negative: unconditional), or None for
    random labels (then ``batch_size``, or the official name ``B``, is needed)."""
    model.eval()
    device = next(model.network.parameters()).device
    labels, generator = official_labels(labels, model.network.num_classes, seed, batch_size or B)
    f_hat, tokens = model.generate(labels.to(device), generator, return_tokens=True, cfg=cfg, top_k=top_k, top_p=top_p,
                                   more_smooth=more_smooth)
    images = vqvae.decode(f_hat).clamp(-1, 1).add(1).mul(0.5)
    return dict(images=images, labels=labels, tokens=tokens, f_hat=f_hat) if return_all else images

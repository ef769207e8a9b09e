"""Conformance with the official FlexVAR code (jiaosiyu1999/FlexVAR), used by the parity tests:
the official constructor names, checkpoint formats and call conventions.

    tok = build_tokenizer(codebook_size=8912, codebook_embed_dim=32, z_channels=256)   # FlexVAE.pth
    var = build(vae_local=tok, depth=16, embed_dim=1024, num_heads=16, patch_nums=(1, 2, ..., 16))
    load(var, "FlexVARd16-epo179.pth"); load_tokenizer(tok, "FlexVAE.pth")
    indices = img_to_indices(tok, img, patch_nums)          # per-scale ground truth (B, pn^2)
    img = indices_to_img(tok, indices)                      # decoded from the last scale, not clamped
    x, targets = teacher_forcing_input(tok, img, patch_nums)
    logits(var, labels, x, patch_nums)                      # eval mode, no label dropout
    sample(var, tok, labels, seed=0, cfg=2.5, top_k=900, top_p=0.95,
           infer_patch_nums=(1, 2, 3, 4, 5, 7, 10, 13, 16), max_pn=16)   # images in [0, 1]

As in the official code: the label ``num_classes`` is the null class; ``labels=None`` draws
random labels from the seeded generator; ``seed`` seeds one CPU generator used, in the
official order, for the labels and every scale's token draws. The official forward drops
labels even in eval mode (``torch.rand``); ``logits`` does not. The official sampler returns
the decoder's raw output; ``sample`` clamps it to [-1, 1] and maps it to [0, 1] (as the
official evaluation's ``save_image(..., value_range=(-1, 1))`` does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from flexvar.method import FlexVARMethod
from flexvar.model import FlexVARConfig
from flexvar.weights import convert, load as load_flexvar   # the suite's own loading, under the official names
from methods.adaln_ar import official_labels
from methods.base import TokenSpec
from methods.tokenizers.flexvq import FlexVQConfig, FlexVQTokenizer
from methods.tokenizers.vq import VAR_PATCH_NUMS

__all__ = ["build_tokenizer", "build", "load", "load_tokenizer", "convert", "img_to_indices", "indices_to_img",
           "teacher_forcing_input", "logits", "sample"]


def build_tokenizer(codebook_size: int = 16384, codebook_embed_dim: int = 8, z_channels: int = 256, ch: int = 128,
                    ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, codebook_l2_norm: bool = True,
                    commit_loss_beta: float = 0.25, norm_num_groups: int = 32,
                    patch_nums: Sequence[int] = tuple(VAR_PATCH_NUMS), **ignored) -> FlexVQTokenizer:
    """The official ``VQModel(ModelArgs(...))`` (models/vq_llama.py) with its argument names;
    ``ch``, ``num_res_blocks`` and ``norm_num_groups`` (hard-coded there) are arguments here,
    ``ch_mult`` is the official ``encoder_ch_mult`` (= ``decoder_ch_mult``). Accepted and
    ignored: ``codebook_show_usage``, ``entropy_loss_ratio``, ``dropout_p`` (training logs /
    terms of the official VQ training, not part of the model's computation here)."""
    unknown = set(ignored) - {"codebook_show_usage", "entropy_loss_ratio", "dropout_p", "encoder_ch_mult", "decoder_ch_mult"}
    if unknown:
        raise TypeError(f"unknown official VQModel argument(s) {sorted(unknown)}")
    mults = {tuple(ignored.get(k, ch_mult)) for k in ("encoder_ch_mult", "decoder_ch_mult")}
    if len(mults) != 1:
        raise ValueError(f"encoder_ch_mult and decoder_ch_mult differ ({sorted(mults)}); the tokenizer uses one list")
    cfg = FlexVQConfig(vocab_size=codebook_size, code_dim=codebook_embed_dim, z_channels=z_channels, ch=ch,
                       ch_mult=list(mults.pop()), num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups,
                       codebook_l2_norm=codebook_l2_norm, beta=commit_loss_beta, patch_nums=list(patch_nums))
    return FlexVQTokenizer(cfg).eval()


def build(vae_local: FlexVQTokenizer | None = None, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
          num_heads: int = 16, mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
          drop_path_rate: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False, cond_drop_rate: float = 0.1,
          token_dropout_p: float = 0.05, attn_l2_norm: bool = False, patch_nums: Sequence[int] | None = None,
          flash_if_available: bool = True, fused_if_available: bool = True, V: int | None = None,
          Cvae: int | None = None, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
          init_std: float = -1.0) -> FlexVARMethod:
    """The official ``FlexVAR(vae_local, ...)`` constructor (models/flexvar.py), same names and
    defaults, initialised as ``build_vae_var``. Without ``vae_local`` a tokenizer is built from
    the factory's ``V`` and ``Cvae`` (LlamaGen VQ-16). ``token_dropout_p`` is accepted and has no
    effect, as in the official model (its dropout module is never applied); ``flash_`` /
    ``fused_if_available`` are accepted and ignored (same maths)."""
    patch_nums = tuple(patch_nums or VAR_PATCH_NUMS)
    if vae_local is None:
        if V is None or Cvae is None:
            raise ValueError("build() needs vae_local (the tokenizer) or the factory's V and Cvae")
        vae_local = build_tokenizer(codebook_size=V, codebook_embed_dim=Cvae, patch_nums=patch_nums)
    if (V is not None and V != vae_local.vocab_size) or (Cvae is not None and Cvae != vae_local.channels):
        raise ValueError(f"V={V}, Cvae={Cvae} differ from vae_local's {vae_local.vocab_size}, {vae_local.channels}")
    vae_local.cfg.patch_nums = list(patch_nums)
    cfg = FlexVARConfig(depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_rate=drop_rate,
                        attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_eps=norm_eps,
                        shared_aln=shared_aln, attn_l2_norm=attn_l2_norm, cond_drop_rate=cond_drop_rate,
                        init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std)
    return FlexVARMethod(cfg, TokenSpec(vae_local.channels, patch_nums[-1], num_classes), vae_local)


def load_tokenizer(tok: FlexVQTokenizer, state_dict_or_path) -> FlexVQTokenizer:
    """The official tokenizer weights (a checkpoint with ``model``, or its state dict), strictly."""
    if isinstance(state_dict_or_path, (str, Path)):
        return tok.load_official(tok.read_official(state_dict_or_path), str(state_dict_or_path))
    return tok.load_official(state_dict_or_path)


def load(model: FlexVARMethod | FlexVQTokenizer, state_dict_or_path, name: str | None = None):
    """Load a FlexVAR checkpoint strictly (flexvar/weights.py: official, bare or
    ``trainer.var_wo_ddp``; a suite ``.safetensors``; a state dict); a tokenizer given as
    ``model`` gets its FlexVAE weights."""
    if isinstance(model, FlexVQTokenizer):   # load(tok, "FlexVAE.pth") works too
        return load_tokenizer(model, state_dict_or_path)
    return load_flexvar(model, state_dict_or_path, name)


@torch.no_grad()
def img_to_indices(tok: FlexVQTokenizer, img: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Per-scale ground-truth indices [(B, pn^2)] (the features area-resized to each side)."""
    return tok.img_to_indices(img, list(patch_nums))


@torch.no_grad()
def indices_to_img(tok: FlexVQTokenizer, indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """The image of the last scale's indices (official ``decode_code``; not clamped)."""
    last = indices[-1]
    return tok.decode_indices(last, round(last.shape[1] ** 0.5))


@torch.no_grad()
def teacher_forcing_input(tok: FlexVQTokenizer, img: torch.Tensor, patch_nums: Sequence[int]):
    """(inputs (B, L - first_l, C), targets (B, L)) as the official trainer builds them."""
    return tok.teacher_forcing(tok.features(img), list(patch_nums))


@torch.no_grad()
def logits(model: FlexVARMethod, labels: torch.Tensor, x_input: torch.Tensor, patch_nums: Sequence[int]) -> torch.Tensor:
    model.eval()
    return model.network(labels, x_input, tuple(patch_nums))


@torch.no_grad()
def sample(model: FlexVARMethod, tok: FlexVQTokenizer, labels: torch.Tensor | None, seed: int, cfg: float = 1.5,
           top_k: int = 0, top_p: float = 0.0, infer_patch_nums: Sequence[int] = tuple(VAR_PATCH_NUMS), max_pn: int = 16,
           llamagen_cfg: bool = False, batch_size: int | None = None, return_all: bool = False, B: int | None = None,
           used_llamagen_cfg: bool | None = None):
    """The official ``autoregressive_infer_cfg`` -> images in [0, 1] (a dict of images, labels,
    tokens per scale and the final code map with ``return_all``); ``B`` / ``batch_size`` for
    random labels; ``used_llamagen_cfg`` is the official name of ``llamagen_cfg``."""
    batch_size = batch_size or B
    llamagen_cfg = llamagen_cfg if used_llamagen_cfg is None else used_llamagen_cfg
    model.eval()
    device = next(model.network.parameters()).device
    labels, generator = official_labels(labels, model.network.num_classes, seed, batch_size)
    code_map, tokens = model.generate(labels.to(device), generator, return_tokens=True, cfg=cfg, top_k=top_k, top_p=top_p,
                                      max_pn=max_pn, llamagen_cfg=llamagen_cfg, infer_patch_nums=list(infer_patch_nums))
    raw = tok.decode(code_map)
    images = raw.clamp(-1, 1).add(1).mul(0.5)
    return dict(images=images, raw=raw, labels=labels, tokens=tokens, code_map=code_map) if return_all else images

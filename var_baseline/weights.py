"""VAR weights from files: a suite run's ``.safetensors`` or an official checkpoint (the bare
``var_d16.pth`` ... ``var_d30.pth``, or a training checkpoint's ``trainer.var_wo_ddp``), loaded
strictly into a ``VARMethod``'s network. What ``VARMethod.load_weights`` uses; official.py
re-exports it under the official names."""
from __future__ import annotations

from typing import Mapping

import torch

from methods.adaln_ar import check_size, read_official_state, rename_official
from methods.checkpoints import check_keys

_DERIVED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")   # recomputed from patch_nums here


def convert(state: Mapping[str, torch.Tensor], model, source: str) -> dict[str, torch.Tensor]:
    """Official VAR state dict -> the network's of ``model`` (a VARMethod): ``mat_qkv`` -> ``qkv``;
    the derived buffers (``lvl_1L``, ``attn_bias_for_masking``, the zero ``zero_k_bias``) are
    checked and dropped."""
    mask, L = state.get("attn_bias_for_masking"), model.network.L
    if mask is not None and mask.shape[-1] != L:
        raise RuntimeError(f"{source} was trained with {mask.shape[-1]} tokens per image (its patch_nums), the model "
                           f"here has L={L} (patch_nums={list(model.network.patch_nums)}); build it with the "
                           "checkpoint's patch_nums")
    return rename_official(state, source, derived=_DERIVED_BUFFERS)


def load(model, state_dict_or_path, name: str | None = None):
    """Load a VAR checkpoint into ``model`` (a VARMethod) strictly: an official ``var_d*.pth`` (a
    bare state dict), an official training checkpoint's ``trainer.var_wo_ddp``, a suite
    ``.safetensors``, or a state dict in either naming. Errors name the file and what to change."""
    what = "a VAR checkpoint (var_d16.pth ... var_d30.pth, or a suite model.safetensors)"
    source, state = read_official_state(state_dict_or_path, what, name)
    net = model.network
    state = convert(state, model, source)
    check_size(state, net, source, "var", (16, 20, 24, 30))
    check_keys(net.state_dict(), state, source, f"does not fit the VAR built here (depth {len(net.blocks)}, width "
               f"{net.C}, shared_aln={net.cfg.shared_aln}, attn_l2_norm={net.cfg.attn_l2_norm}, vocabulary "
               f"{net.vocab_size}, {net.num_classes} classes, patch_nums={list(net.patch_nums)})")
    net.load_state_dict(state, strict=True)
    return model

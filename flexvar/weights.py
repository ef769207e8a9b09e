"""FlexVAR weights from files: a suite run's ``.safetensors`` or an official checkpoint (bare, or
``trainer.var_wo_ddp`` as the released ``FlexVARd16/d20/d24-epo*.pth``), loaded strictly into a
``FlexVARMethod``'s network. What ``FlexVARMethod.load_weights`` uses; official.py re-exports it."""
from __future__ import annotations

from typing import Mapping

import torch

from methods.adaln_ar import check_size, read_official_state, rename_official
from methods.checkpoints import check_keys


def convert(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Official state dict -> this model's: ``mat_qkv`` -> ``qkv``; ``attn_bias_for_masking``
    (a function of the scale list; the official evaluation replaces it too) and the zero
    ``zero_k_bias`` are dropped."""
    return rename_official(state, source, derived=("attn_bias_for_masking",))


def load(model, state_dict_or_path, name: str | None = None):
    """Load a FlexVAR checkpoint into ``model`` (a FlexVARMethod) strictly; errors name the file."""
    what = "a FlexVAR checkpoint (FlexVARd16/d20/d24-epo*.pth, or a suite model.safetensors)"
    source, state = read_official_state(state_dict_or_path, what, name)
    state, net = convert(state, source), model.network
    check_size(state, net, source, "flexvar", (16, 20, 24))
    check_keys(net.state_dict(), state, source, f"does not fit the FlexVAR built here (depth {len(net.blocks)}, "
               f"width {net.C}, shared_aln={net.cfg.shared_aln}, vocabulary {net.vocab_size}, {net.num_classes} classes)")
    net.load_state_dict(state, strict=True)
    return model

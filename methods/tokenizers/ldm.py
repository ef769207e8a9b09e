"""The LDM (taming-transformers / latent-diffusion) autoencoder layout in diffusers' modules, and
the key converter from LDM names to diffusers names that all three tokenizers load through:
MAR's KL-16 (mar.py), VAR's VQVAE (msvq.py) and FlexVAR's LlamaGen VQ (flexvq.py, after
renaming LlamaGen's levels to LDM's).

Names are converted by diffusers' own LDM-VAE converter
(``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint``: resnets, down/upsamplers,
mid blocks, conv_in/out, quant convs; 1 x 1 conv attention weights -> linear). That converter
does not know attention inside the encoder's down levels (it would file those keys under the
resnets), so those are mapped here explicitly. The conversion is strict: every official key is
used exactly once, checked by running the converter on index-tagged placeholders.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder

SHOW = 8   # offending keys named in an error

_LEVEL_ATTN = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$")
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_FUSED_QKV = re.compile(r"^(.*)\.qkv\.(weight|bias)$")


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


def _diffusers_names(ndims: Mapping[str, int]) -> dict[str, str]:
    """Official key -> ndim  =>  diffusers key -> official key, through diffusers' converter run
    on placeholders that carry each key's index, so that the origin of every output is known
    exactly (the converter only renames, and drops the 1 x 1 dims of attention weights)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    keys = list(ndims)
    placeholders = {k: torch.full((1,) * ndims[k], float(i), dtype=torch.float64, device="cpu")   # even under a meta default
                    for i, k in enumerate(keys)}
    n_down = 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"encoder\.down\.(\d+)\.", k))), default=-1)
    n_up = 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up\.(\d+)\.", k))), default=-1)
    try:
        out = convert_ldm_vae_checkpoint(placeholders, {"down_block_types": [None] * n_down,
                                                        "up_block_types": [None] * n_up})
    except KeyError as err:   # a weight without its bias (or the like): the converter looks the pair up
        raise RuntimeError(f"official key missing: {err.args[0]!r}") from None
    result = {}
    for new, value in out.items():
        if value is None:     # the converter's .get() of an absent key: reported as missing later
            continue
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise RuntimeError(f"diffusers' converter produced an unexpected entry {new!r}")
        result[new] = keys[int(value.reshape(-1)[0].item())]
    return result


def ldm_key_map(shapes: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """diffusers key -> official key for an LDM state dict's key names (values: shapes).
    Raises ``RuntimeError`` if an official key is left unused or used twice."""
    mapping, rest = {}, {}
    n_up = 1 + max((int(m.group(1)) for k in shapes if (m := re.match(r"decoder\.up\.(\d+)\.", k))), default=-1)
    for key, shape in shapes.items():
        m = _LEVEL_ATTN.match(key)
        if m:   # attention inside a level: Attn{Down,Up}{En,De}coderBlock2D.attentions[j]
            part, level, j, name, kind = m.groups()
            block = f"encoder.down_blocks.{level}" if part == "encoder.down" else f"decoder.up_blocks.{n_up - 1 - int(level)}"
            mapping[f"{block}.attentions.{j}.{_ATTN_NAMES[name]}.{kind}"] = key
        else:
            rest[key] = len(shape)
    for new, old in _diffusers_names(rest).items():
        if new in mapping:
            raise RuntimeError(f"two official keys map to {new!r}: {mapping[new]!r} and {old!r}")
        mapping[new] = old
    used = Counter(mapping.values())
    twice = sorted(k for k, n in used.items() if n > 1)
    unused = [k for k in shapes if k not in used]
    if twice or unused:
        raise RuntimeError(f"official keys not converted to diffusers' encoder/decoder: unused {unused[:SHOW]}"
                           f"{' ...' if len(unused) > SHOW else ''}, used twice {twice[:SHOW]} "
                           f"({len(unused)} unused, {len(twice)} twice)")
    return mapping


def convert_tensor(old: torch.Tensor, key: str) -> torch.Tensor:
    """1 x 1 conv attention weights (out, in, 1, 1) -> linear (out, in); everything else as is."""
    if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and old.ndim == 4:
        if tuple(old.shape[2:]) != (1, 1):
            raise RuntimeError(f"{key}: expected a 1 x 1 conv weight, got shape {tuple(old.shape)}")
        return old[:, :, 0, 0]
    return old


def split_fused_qkv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VAR's AttnBlock keeps q, k, v in one 1 x 1 conv ``qkv`` (3C, C, 1, 1): split it into LDM's."""
    out = {}
    for key, value in sd.items():
        m = _FUSED_QKV.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = part
        else:
            out[key] = value
    return out


def convert_ldm(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(diffusers key -> official key, converted state dict) of an LDM-named state dict."""
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise RuntimeError("not a state dict: expected a mapping of parameter names to tensors")
    mapping = ldm_key_map({k: tuple(v.shape) for k, v in sd.items()})
    return mapping, {new: convert_tensor(sd[old], new) for new, old in mapping.items()}

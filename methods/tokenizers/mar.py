"""MAR's KL-16 tokenizer (the VAE FlowAR uses) in the suite's ``kl`` tokenizer.

The official checkpoint (LTH14/mar ``kl16.ckpt``; FlowAR ships the same ``models/vae.py``) is
a dict whose ``"model"`` holds the state dict of the official
``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``: LDM's KL-VAE with ch=128, two
resnets per level, GroupNorm(32, eps 1e-6), self-attention after each encoder resnet of the
16 x 16 level (``attn_resolutions=(16,)`` at 256 px; the last level, without a downsample), a
mid block with attention on both sides, no attention in the decoder's up levels, and 1 x 1
``quant_conv`` (32 -> 32) / ``post_quant_conv`` (16 -> 16). FlowAR scales latents by 0.2325.

That is diffusers' ``AutoencoderKL`` with ``AttnDownEncoderBlock2D`` at encoder level 4
(``MAR_KL16`` below). Key names are converted with diffusers' own LDM-VAE converter
(``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint``: resnets, down/upsamplers,
mid blocks, conv_in/out, quant convs; 1 x 1 conv attention weights -> linear). That converter
does not know attention inside the encoder's down levels (it would file those keys under the
resnets), so they are mapped here explicitly. The conversion is strict: every official key is
used exactly once (checked by running the converter on index-tagged placeholders), and the
result must match the target model's keys and shapes exactly; anything else raises a
``RuntimeError`` naming the file and the first offending keys.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import torch

from methods.tokenizers.kl import KLConfig, KLTokenizer

MAR_SCALING_FACTOR = 0.2325
_SHOW = 8   # offending keys named in an error


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

_LEVEL_ATTN = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$")
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _diffusers_names(ndims: Mapping[str, int]) -> dict[str, str]:
    """Official key -> ndim  =>  diffusers key -> official key, through diffusers' converter run
    on placeholders that carry each key's index, so that the origin of every output is known
    exactly (the converter only renames, and drops the 1 x 1 dims of attention weights)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    keys = list(ndims)
    placeholders = {k: torch.full((1,) * ndims[k], float(i), dtype=torch.float64) for i, k in enumerate(keys)}
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


def mar_key_map(shapes: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """diffusers key -> official key for an official state dict's key names (values: shapes).
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
        raise RuntimeError(f"official keys not converted to diffusers' encoder/decoder: unused {unused[:_SHOW]}"
                           f"{' ...' if len(unused) > _SHOW else ''}, used twice {twice[:_SHOW]} "
                           f"({len(unused)} unused, {len(twice)} twice)")
    return mapping


def _converted(old: torch.Tensor, key: str) -> torch.Tensor:
    """1 x 1 conv attention weights (out, in, 1, 1) -> linear (out, in); everything else as is."""
    if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and old.ndim == 4:
        if tuple(old.shape[2:]) != (1, 1):
            raise RuntimeError(f"{key}: expected a 1 x 1 conv weight, got shape {tuple(old.shape)}")
        return old[:, :, 0, 0]
    return old


def _convert(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise RuntimeError("not a state dict: expected a mapping of parameter names to tensors")
    mapping = mar_key_map({k: tuple(v.shape) for k, v in sd.items()})
    return mapping, {new: _converted(sd[old], new) for new, old in mapping.items()}


def convert_mar_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official MAR/LDM KL-VAE state dict -> diffusers ``AutoencoderKL`` state dict (names and
    1 x 1 conv -> linear attention weights). Every official key is used exactly once; shapes are
    checked against a model by ``check_against`` (``load_mar_kl16`` does both)."""
    return _convert(sd)[1]


def check_against(target: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """Convert ``sd`` and check it against a diffusers state dict ``target`` (names and shapes;
    tensors may be on the meta device). Returns the converted dict; raises ``RuntimeError``
    naming ``source`` and the first offending keys (official names in brackets)."""
    try:
        mapping, converted = _convert(sd)
    except RuntimeError as err:
        raise RuntimeError(f"{source}: {err}") from None
    missing = [k for k in target if k not in converted]
    unexpected = [f"{k} [{mapping[k]}]" for k in converted if k not in target]
    shapes = [f"{k} [{mapping[k]}]: checkpoint {tuple(converted[k].shape)} vs model {tuple(target[k].shape)}"
              for k in converted if k in target and converted[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(items)}): {items[:_SHOW]}{' ...' if len(items) > _SHOW else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if items]
        raise RuntimeError(f"{source} does not match the kl tokenizer's architecture (MAR KL-16 is "
                           f"methods/tokenizers/mar.py MAR_KL16): " + "; ".join(parts))
    return converted


def read_mar_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an official checkpoint file: ``{"model": state_dict}`` (the official
    format) or a bare state dict. Clear errors for a missing, unreadable or foreign file."""
    from methods.checkpoints import read_checkpoint, tensor_dict
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

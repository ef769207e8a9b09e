"""FlowAR weights from files: a suite run's ``.safetensors`` or an official checkpoint (FlowAR-S/L/H
``.pth``: ``model`` and ``model_ema``, pickled with the training script's argparse Namespace),
loaded strictly into a ``FlowARMethod``'s network. What ``FlowARMethod.load_weights`` uses;
official.py re-exports it under the official names."""
from __future__ import annotations

import argparse
from pathlib import Path

from methods.checkpoints import check_keys, load_safetensors, read_checkpoint as read_file


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True; the official training script also pickles its
    argparse Namespace, which is allowed here and nothing else."""
    if str(path).endswith(".safetensors"):
        return load_safetensors(path)
    state = read_file(path, "a FlowAR checkpoint (FlowAR-S/L/H .pth, or a suite model.safetensors)", [argparse.Namespace])
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} holds a {type(state).__name__}, not a FlowAR checkpoint dict")
    return state


def load(model, state_dict_or_path, ema: bool = True, name: str | None = None):
    """Load weights into ``model`` (a FlowARMethod) strictly: a state dict, or a checkpoint (path
    or dict) holding ``model`` and ``model_ema``; ``ema`` picks which. Every key must match in
    name and shape."""
    source = str(state_dict_or_path) if isinstance(state_dict_or_path, (str, Path)) else (name or "the state dict")
    state = read_checkpoint(state_dict_or_path) if isinstance(state_dict_or_path, (str, Path)) else state_dict_or_path
    if "model" in state or "model_ema" in state:
        key = "model_ema" if ema else "model"
        if key not in state:
            raise KeyError(f"{source} has no '{key}' entry (it has {sorted(state)}); pass ema={not ema}")
        state = state[key]
    c = model.cfg
    preset = (f"encoder {c.encoder_embed_dim}x{c.encoder_depth}, decoder {c.decoder_embed_dim}x{c.decoder_depth}, "
              f"flow head {c.flow_width}x{c.flow_depth}{' cross' if c.flow_cross else ''}, latent {model.spec.latent_size}")
    check_keys(model.network.state_dict(), state, source,
               f"does not fit the FlowAR built here ({preset}); build it with the preset the checkpoint was trained "
               "with (flowar_small/large/huge)")
    model.network.load_state_dict(state, strict=True)
    return model

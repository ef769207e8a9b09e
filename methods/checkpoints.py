"""Safe reading and strict checking of official checkpoints, shared by every method's loader.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): nothing in a checkpoint
runs code. Errors name the file, what it should have been and the first offending keys.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

SHOW = 8   # offending keys named in an error


def read_checkpoint(path: str | Path, what: str, allowed_globals: Iterable = ()) -> object:
    """Load a torch or safetensors file safely. ``what`` names the expected file in errors;
    ``allowed_globals`` are the non-tensor classes the official format pickles (if any)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file (expected {what}; give its local path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:
            raise RuntimeError(f"{path} is not a readable safetensors file ({err}); expected {what}") from None
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle garbage, not a torch file at all
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))   # torch's messages carry terminal colours
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if pickled:
            raise RuntimeError(f"{path} holds Python objects besides tensors ({pickled.group(1)}), which "
                               "torch.load(weights_only=True) refuses; re-save just its state dict with "
                               "torch.save(state_dict, ...)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {reason}); it may be "
                           f"truncated or corrupt (expected {what}): download it again") from None


def tensor_dict(obj: object, source: str, what: str, nested: Iterable[str] = ("model",)) -> dict[str, torch.Tensor]:
    """The state dict in ``obj``: a mapping of tensors, or one under a ``nested`` key."""
    if isinstance(obj, Mapping):
        for key in nested:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in obj.items())):
        found = list(obj)[:SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise RuntimeError(f"{source} is not {what}: expected a state dict of tensors"
                           f"{' (or one under ' + ', '.join(map(repr, nested)) + ')' if nested else ''}; found {found}")
    return dict(obj)


def check_keys(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, hint: str,
               official_names: Mapping[str, str] | None = None) -> None:
    """The one key-mismatch report: raise if ``state`` differs from ``expected`` in key names or
    shapes, as "``source`` ``hint``: missing (n): [...]; unexpected ...; shape mismatch ...".
    ``hint`` says what does not fit and what to change; ``official_names`` (converted key ->
    official key) adds the official name of each offending key in brackets."""
    named = lambda k: f"{k} [{official_names[k]}]" if official_names and k in official_names else k
    missing = [k for k in expected if k not in state]
    unexpected = [named(k) for k in state if k not in expected]
    shapes = [f"{named(k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(items)}): {items[:SHOW]}{' ...' if len(items) > SHOW else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if items]
        raise RuntimeError(f"{source} {hint}: " + "; ".join(parts))
    check_finite(state, source)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Weights with NaN (a diverged run saved anyway) are refused, naming them: sampling them
    gives blank images, not an error. (Inf is legitimate: attention masks hold -inf.)"""
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.is_meta and bool(torch.isnan(v).any())]
    if bad:
        raise RuntimeError(f"{source} holds NaN weights in {len(bad)} tensor(s): {bad[:SHOW]}; it is from a "
                           "diverged run: use an earlier checkpoint")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file the suite wrote (weights, caches); a broken one names the file and the fix."""
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:
        raise RuntimeError(f"{path} is not a readable safetensors file ({err}); delete it and rerun to rebuild it") from err


def check_file(path: str | Path, what: str, allowed_globals: Iterable = ()) -> None:
    """A checkpoint file before any other work: it exists, reads safely, and holds no NaN/Inf
    (in any nested state dict: ``model``, ``model_ema``, ``trainer.var_wo_ddp`` ...)."""
    obj = read_checkpoint(path, what, allowed_globals)
    tensors, stack = {}, [("", obj)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, torch.Tensor):
            tensors[prefix] = node
        elif isinstance(node, Mapping):
            stack += [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items()]
    check_finite(tensors, str(path))


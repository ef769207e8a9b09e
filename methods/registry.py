"""Registries for everything a run can name: methods, tokenizers, datasets.

Built on mmengine's ``Registry``; built-ins register exactly as a user's plug-in would::

    from methods.registry import METHODS

    @METHODS.register_module("mymethod")
    class MyMethod(Method): ...

``lookup`` is the one place that turns a name into a class and fails with the list of
valid names, so every registry reports unknown names the same way.
"""
from __future__ import annotations

import difflib
import importlib

from mmengine.registry import Registry

METHODS = Registry("method")
TOKENIZERS = Registry("tokenizer")
DATASETS = Registry("dataset")

# Modules whose import registers the built-ins. Kept here so that `lookup` and
# `python -m benchmark list` see everything without the caller importing it first.
_BUILTIN_MODULES = (
    "benchmark.datasets",
    "methods.tokenizers",
    "flowar.method",
    "var_baseline.method",
    "flexvar.method",
)


class UnknownNameError(KeyError):
    """Raised for a name that no registry entry matches; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def names(registry: Registry) -> list[str]:
    load_builtins()
    return sorted(registry.module_dict)


def lookup(registry: Registry, name: str) -> type:
    """The class registered under ``name``; an unknown name raises with the valid ones."""
    valid = names(registry)
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(
            f"unknown {registry.name} '{name}'. Valid {registry.name}s: {', '.join(valid)}.{hint}"
        )
    return registry.module_dict[name]

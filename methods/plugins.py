"""Where registered names come from, without importing them (so `list` and `--help` stay fast
and torch-free): entry points declared by installed packages, and a config's custom imports.

A package declares ``[project.entry-points."scalewise_bench.methods"]`` ``mymethod =
"mypackage.method"``: the module whose import registers the class (groups
``scalewise_bench.methods``, ``scalewise_bench.tokenizers``, ``scalewise_bench.datasets``). The
suite's own methods, tokenizers and datasets are declared the same way in its pyproject.toml.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "scalewise_bench.{}s"     # scalewise_bench.methods, .tokenizers, .datasets


class UnknownNameError(KeyError):
    """Raised for a name that no registry entry matches; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginImportError(ImportError):
    """A custom import that fails; the message names the module and what to do."""


def declared(kind: str) -> dict[str, str]:
    """{name: module} of the entry points of ``kind`` (method, tokenizer, dataset); nothing imported."""
    return {ep.name: ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP.format(kind))}


def import_plugins(modules) -> None:
    """Import the modules that register plug-ins (a config's ``custom_imports``)."""
    for module in modules or []:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise PluginImportError(f"custom_imports: cannot import {module!r} ({err}); put its package on "
                                    "PYTHONPATH or install it") from None

"""Registries for everything a run can name: methods and tokenizers here, datasets in the harness.

Built on mmengine's ``Registry`` as intended: classes register by name with a decorator and are
built from config (``METHODS.build(dict(type="flowar", cfg=..., spec=..., tokenizer=...))``).
Each registry is typed: registration rejects a duplicate name and a class that breaks its base
class's contract.

How the suite finds what is registered, built-ins exactly as plug-ins:

* **entry points** (methods/plugins.py): a package declares the module whose import registers
  a name; the suite's own methods, tokenizers and datasets are declared so in pyproject.toml;
* **custom imports**: ``custom_imports=[mypackage.method]`` in a preset or on the command line
  imports those modules first (as mmengine's ``custom_imports``), for code not installed.
"""
from __future__ import annotations

import difflib
import importlib

from mmengine.registry import Registry

from methods.base import TOKENIZER_BASES, TOKENIZER_KINDS, Method, MethodConfig, Tokenizer, TokenizerConfig
from methods.plugins import ENTRY_POINT_GROUP, UnknownNameError, declared as declared_names


class TypedRegistry(Registry):
    """An mmengine ``Registry`` whose entries must subclass ``base`` and pass ``contract(cls)``
    (which returns what is wrong, or None)."""

    def __init__(self, name: str, base: type, contract=lambda cls: None):
        super().__init__(name, scope="scalewise")
        self.base, self.contract = base, contract

    @property
    def group(self) -> str:
        return ENTRY_POINT_GROUP.format(self.name)

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        if not (isinstance(module, type) and issubclass(module, self.base)):
            raise TypeError(f"{getattr(module, '__name__', module)!r} cannot register as a {self.name}: it must "
                            f"subclass {self.base.__module__}.{self.base.__name__}")
        problem = self.contract(module)
        if problem:
            raise TypeError(f"{module.__name__} cannot register as a {self.name}: {problem}")
        super()._register_module(module, module_name, force)


def declared(registry: TypedRegistry) -> dict[str, str]:
    """{name: module} of the entry points declared for ``registry`` (nothing is imported)."""
    return declared_names(registry.name)


def load(registry: TypedRegistry, name: str | None = None) -> None:
    """Import the declared module of ``name`` (or of every declared name) so that it registers."""
    for entry, module in declared(registry).items():
        if (name is None or entry == name) and entry not in registry.module_dict:
            importlib.import_module(module)
            if entry not in registry.module_dict:
                raise TypeError(f"entry point {registry.group}:{entry} imports {module}, which registers no "
                                f"{registry.name} named {entry!r}")


def names(registry: TypedRegistry) -> list[str]:
    """Every registered name (declared ones imported first)."""
    load(registry)
    return sorted(registry.module_dict)


def lookup(registry: TypedRegistry, name: str) -> type:
    """The class registered under ``name``; an unknown name raises with the valid ones."""
    if name not in registry.module_dict:
        load(registry, name)
    if name not in registry.module_dict:
        valid = sorted(set(registry.module_dict) | set(declared(registry)))
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(f"unknown {registry.name} '{name}'. Valid {registry.name}s: {', '.join(valid)}.{hint}")
    return registry.module_dict[name]


def build(registry: TypedRegistry, name: str, **kwargs):
    """An instance of the class registered under ``name`` (mmengine's build from config)."""
    lookup(registry, name)
    return registry.build(dict(type=name, **kwargs))


def _has_config(cls) -> str | None:
    config = getattr(cls, "Config", None)
    return None if isinstance(config, type) and hasattr(config, "check") else \
        "it needs a Config dataclass with check(key) (its config section)"


def _method_contract(cls) -> str | None:
    if _has_config(cls) or not issubclass(cls.Config, MethodConfig):
        return "its Config must subclass methods.base.MethodConfig (model fields, `tokenizer`, a nested `sampler`)"
    if getattr(cls, "tokenizer_kind", None) not in TOKENIZER_KINDS:
        return f"tokenizer_kind must be one of {TOKENIZER_KINDS}"
    return None


def _tokenizer_contract(cls) -> str | None:
    if _has_config(cls) or not issubclass(cls.Config, TokenizerConfig):
        return "its Config must subclass methods.base.TokenizerConfig"
    base = TOKENIZER_BASES.get(getattr(cls, "kind", None))
    if base is None:
        return f"kind must be one of {sorted(TOKENIZER_BASES)}"
    return None if issubclass(cls, base) else f"a {cls.kind} tokenizer must subclass methods.base.{base.__name__}"


METHODS = TypedRegistry("method", Method, _method_contract)
TOKENIZERS = TypedRegistry("tokenizer", Tokenizer, _tokenizer_contract)

"""The method interface: what the harness needs from FlowAR, VAR, FlexVAR or a new method.

A method owns its network, its training loss on tokenized batches and its sampler. It
does not know about jobs, files or metrics. To add one: write a ``Config`` dataclass (its
section in the run config, named after the method), subclass ``Method``, and register it::

    @METHODS.register_module("mymethod")
    class MyMethod(Method):
        Config = MyConfig
        tokenizer_kind = "continuous"
        ...

then add its module to ``methods.registry._BUILTIN_MODULES`` (or import it before use).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn


class NotSupportedByDesign(ValueError):
    """An evaluation setting the method cannot take by construction (not a bug, not a fallback)."""


@dataclass
class TokenSpec:
    """What a method needs to know of its tokenizer's output."""
    channels: int        # latent channels (continuous) or code width
    latent_size: int     # side of the final latent grid
    num_classes: int     # dataset classes (the null class for CFG is added by the method)


class Method(nn.Module):
    Config: ClassVar[type]
    tokenizer_kind: ClassVar[str]  # continuous | multiscale_residual | multiscale_groundtruth
    sampler_keys: ClassVar[tuple[str, ...]] = ()  # Config fields that only affect sampling

    def __init__(self, cfg, spec: TokenSpec, tokenizer: nn.Module | None = None):
        """``tokenizer``: the trained tokenizer, for methods whose inputs or sampler use its
        parts (VAR's teacher-forcing inputs and next-scale maps come from its quantizer)."""
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self._tokenizer = (tokenizer,)   # a tuple: not a submodule, so checkpoints hold the network only

    @property
    def tokenizer(self) -> nn.Module | None:
        return self._tokenizer[0]

    @property
    def network(self) -> nn.Module:
        """The module whose state dict is the checkpoint (official key names): ``self.model``."""
        return self.model

    def load_weights(self, state_dict_or_path, ema: bool = True) -> "Method":
        """Load network weights (a suite run's ``ema/model.safetensors`` or the method's
        official checkpoint format); strict."""
        from benchmark.stages import load_weights
        state = load_weights(Path(state_dict_or_path)) if isinstance(state_dict_or_path, (str, Path)) \
            else state_dict_or_path
        self.network.load_state_dict(state, strict=True)
        return self

    def loss(self, latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss for a batch of tokenized images."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None, **settings) -> torch.Tensor:
        """Latents (B, C, h, w) for the class labels; ``settings`` override the sampler config."""
        raise NotImplementedError

    def evaluation_settings(self, side: int | None = None, patch_nums: list[int] | None = None) -> dict:
        """Sampler overrides that generate a final latent of ``side`` x ``side`` (None: as
        trained) over ``patch_nums`` (None/[]: the method's own list). A method without
        any-scale inference refuses anything else (``NotSupportedByDesign``)."""
        if patch_nums or (side and side != self.spec.latent_size):
            raise NotSupportedByDesign(f"{type(self).__name__} generates only its training scale list and resolution "
                                       f"(latent side {self.spec.latent_size}); asked for side {side}, scales {patch_nums}")
        return {}

    def generated_scales(self, **settings) -> list[int]:
        """The sides of the scales the sampler generates with these settings."""
        raise NotImplementedError

    def nfe(self, **settings) -> int:
        """Network evaluations per image with these sampler settings; a guided sampler's
        [conditional; unconditional] batch counts twice (it costs twice)."""
        raise NotImplementedError

    def sampler_settings(self, **overrides) -> dict:
        """The sampler settings in force (recorded with every result), with ``overrides``."""
        settings = {k: getattr(self.cfg, k) for k in self.sampler_keys}
        unknown = set(overrides) - set(self.sampler_keys)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} sampler setting(s) {sorted(unknown)}; "
                             f"valid: {', '.join(self.sampler_keys)}")
        settings.update(overrides)
        return settings

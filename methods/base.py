"""The contracts between the harness and what it benchmarks: tokenizers and methods.

A **tokenizer** turns images into what a method models and back; a **method** owns its
network, its training loss on tokenized batches and its sampler. Neither knows about jobs,
files or metrics. Each is a class with a ``Config`` dataclass (its section of the run config,
named after its registry name) and registers itself::

    @TOKENIZERS.register_module("mytok")
    class MyTokenizer(Tokenizer):
        Config = MyTokenizerConfig
        kind = "continuous"

    @METHODS.register_module("mymethod")
    class MyMethod(Method):
        Config = MyConfig                  # a MethodConfig: model fields + a nested sampler
        tokenizer_kind = "continuous"

A plug-in in another package registers the same way (see methods/registry.py for how the
suite finds it). The hooks below are the whole contract; the registries check it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Sequence, Union

import torch
from torch import nn

from methods.config import check_positive

Generators = Union[torch.Generator, Sequence[torch.Generator], None]
TOKENIZER_KINDS = ("continuous", "multiscale_residual", "multiscale_groundtruth")


class NotSupportedByDesign(ValueError):
    """An evaluation setting the method cannot take by construction (not a bug, not a fallback)."""


@dataclass
class TokenSpec:
    """What a method needs to know of its tokenizer's output."""
    channels: int        # latent channels (continuous) or code width
    latent_size: int     # side of the final latent grid
    num_classes: int     # dataset classes (the null class for CFG is added by the method)


# -- tokenizers ---------------------------------------------------------------------------
@dataclass
class TokenizerConfig:
    """Fields every tokenizer config has: where official weights come from, and how it is
    trained here (AdamW, linear warm-up then cosine to ``min_lr``, gradient clipping)."""
    pretrained: str | None = None      # a local file / folder of official weights: loaded, not trained
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def check(self, key: str) -> None:
        for name in ("steps", "batch_size", "lr"):
            check_positive(f"{key}.{name}", getattr(self, name))
        for name in ("min_lr", "warmup_steps", "weight_decay", "grad_clip"):
            check_positive(f"{key}.{name}", getattr(self, name), allow_zero=True)


class Tokenizer(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) <-> what a method models.

    ``encode`` gives what ``decode`` takes (a latent, f_hat, or a code map); ``to_cache`` what
    the harness stores once per training image and ``from_cache`` turns into a method's
    training inputs (a KL posterior's moments -> a fresh latent sample; VQ indices as they are)."""
    Config: ClassVar[type[TokenizerConfig]]
    kind: ClassVar[str]                 # one of TOKENIZER_KINDS: what methods can pair with it

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: TokenizerConfig | None = None) -> "Tokenizer":
        """Official weights from a local path, strictly (errors name the file and the keys)."""
        raise NotImplementedError(f"{cls.__name__} has no official weights to load")

    @property
    def channels(self) -> int:
        """Latent channels (continuous) or code width (VQ)."""
        raise NotImplementedError

    @property
    def stride(self) -> int:
        """Pixels per latent position."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """What ``encode`` / a method's sampler gives -> images in [-1, 1], not clamped."""
        raise NotImplementedError

    def to_cache(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_cache(self, cached: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return cached

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss on a batch of images (refused for loaded official weights)."""
        raise NotImplementedError

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """After training, on training images: set data-dependent constants (a latent scale)."""

    @torch.no_grad()
    def usage(self, cached: torch.Tensor) -> dict:
        """Statistics of cached training inputs worth recording (codebook usage)."""
        return {}

    def info(self) -> dict:
        """Constants recorded with the trained tokenizer (e.g. its latent scaling factor)."""
        return {}


class MultiScaleTokenizer(Tokenizer):
    """A VQ tokenizer with a scale list: per-scale token maps of a codebook."""

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.cfg.patch_nums)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def codebook(self) -> torch.Tensor:
        """The code vectors (V, C) the sampler embeds drawn indices with."""
        raise NotImplementedError


class ResidualTokenizer(MultiScaleTokenizer):
    """``multiscale_residual`` (VAR): scale k quantizes what scales < k left over; f_hat is the
    sum of the refined, upsampled code maps."""

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale indices -> the transformer's inputs for scales 2..K (B, L - pn_1^2, C)."""
        raise NotImplementedError

    def next_input(self, k: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling: add scale k's code map h (B, C, pn, pn) to f_hat; (f_hat, next scale's input map)."""
        raise NotImplementedError


class GroundTruthTokenizer(MultiScaleTokenizer):
    """``multiscale_groundtruth`` (FlexVAR): every scale quantized on its own, any scale list,
    any code map decodable."""

    def teacher_forcing(self, cached: torch.Tensor, patch_nums: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features and a scale list -> (inputs (B, L - 1, C), target indices (B, L))."""
        raise NotImplementedError

    def code_map(self, indices: torch.Tensor, side: int) -> torch.Tensor:
        """Indices (B, side^2) -> code map (B, C, side, side) (what ``decode`` takes)."""
        raise NotImplementedError

    def next_scale_input(self, code_map: torch.Tensor, side: int) -> torch.Tensor:
        """A code map resized to the next scale's side, as tokens (B, side^2, C)."""
        raise NotImplementedError


TOKENIZER_BASES = {"continuous": Tokenizer, "multiscale_residual": ResidualTokenizer,
                   "multiscale_groundtruth": GroundTruthTokenizer}


# -- methods ------------------------------------------------------------------------------
@dataclass
class SamplerConfig:
    """Sampler settings: they change what is generated, not what is trained, so they are left
    out of the training hash and are what ``eval.sweep`` varies."""

    def check(self, key: str) -> None:
        pass


@dataclass
class MethodConfig:
    """Fields every method config has: the tokenizer it pairs with (a registry name, whose
    section configures it) and its sampler; subclasses add the model's fields."""
    tokenizer: str = ""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def check(self, key: str) -> None:
        self.sampler.check(f"{key}.sampler")

    @classmethod
    def flat(cls, **kwargs) -> "MethodConfig":
        """A config from flat keyword arguments, sampler settings among them:
        ``VARConfig.flat(depth=2, cfg=1.5)`` is ``VARConfig(depth=2, sampler=VARSampler(cfg=1.5))``."""
        sampler_class = type(cls().sampler)
        names = {f.name for f in fields(sampler_class)}
        sampler = sampler_class(**{k: v for k, v in kwargs.items() if k in names})
        return cls(**{k: v for k, v in kwargs.items() if k not in names}, sampler=sampler)


def sampler_fields(config_class: type[MethodConfig]) -> tuple[str, ...]:
    """The sampler setting names of a method config class, in declaration order."""
    sampler = next(f for f in fields(config_class) if f.name == "sampler")
    return tuple(f.name for f in fields(sampler.default_factory()))


class Method(nn.Module):
    """A scale-wise generator around one network (``self.model``, whose state dict is the
    checkpoint, with official key names).

    Hooks: ``loss`` (training), ``generate`` (sampling), ``generated_scales`` and ``nfe``
    (what a setting costs), ``load_weights`` (a suite or official checkpoint) and, for
    methods with any-scale inference, ``evaluation_settings``."""
    Config: ClassVar[type[MethodConfig]]
    tokenizer_kind: ClassVar[str]       # one of TOKENIZER_KINDS

    def __init__(self, cfg: MethodConfig, spec: TokenSpec, tokenizer: Tokenizer | None = None):
        """``tokenizer``: the trained tokenizer, for methods whose inputs or sampler use its
        parts (VAR's teacher-forcing inputs and next-scale maps come from its quantizer)."""
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self._tokenizer = (tokenizer,)   # a tuple: not a submodule, so checkpoints hold the network only

    @classmethod
    def sampler_keys(cls) -> tuple[str, ...]:
        return sampler_fields(cls.Config)

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self._tokenizer[0]

    @property
    def network(self) -> nn.Module:
        """The module whose state dict is the checkpoint (official key names): ``self.model``."""
        return self.model

    def load_weights(self, state_dict_or_path, ema: bool = True) -> "Method":
        """Network weights from a state dict or a file: a suite run's ``.safetensors``, or the
        method's official checkpoint format (``ema``: its EMA weights where it has both); strict."""
        raise NotImplementedError

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss; ``inputs`` is what the tokenizer's ``from_cache`` gives."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: Generators = None, **settings) -> torch.Tensor:
        """What the tokenizer's ``decode`` takes, for the class labels (B,). ``generator``: one
        for the batch, or a list with one per image (the harness's mode: image i's randomness
        is its own, whatever batch it is drawn in). ``settings`` override the sampler config."""
        raise NotImplementedError

    def generated_scales(self, **settings) -> list[int]:
        """The sides of the scales the sampler generates with these settings."""
        raise NotImplementedError

    def nfe(self, **settings) -> int:
        """Network evaluations per image with these sampler settings; a guided sampler's
        [conditional; unconditional] batch counts twice (it costs twice)."""
        raise NotImplementedError

    def evaluation_settings(self, side: int | None = None, patch_nums: list[int] | None = None) -> dict:
        """Sampler overrides that generate a final latent of ``side`` x ``side`` (None: as
        trained) over ``patch_nums`` (None/[]: the method's own list). A method without
        any-scale inference refuses anything else (``NotSupportedByDesign``)."""
        if patch_nums or (side and side != self.spec.latent_size):
            raise NotSupportedByDesign(f"{type(self).__name__} generates only its training scale list and resolution "
                                       f"(latent side {self.spec.latent_size}); asked for side {side}, scales {patch_nums}")
        return {}

    def sampler_settings(self, **overrides) -> dict:
        """The sampler settings in force (recorded with every result), with ``overrides``."""
        keys = self.sampler_keys()
        unknown = set(overrides) - set(keys)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} sampler setting(s) {sorted(unknown)}; "
                             f"valid: {', '.join(keys)}")
        return {**{k: getattr(self.cfg.sampler, k) for k in keys}, **overrides}

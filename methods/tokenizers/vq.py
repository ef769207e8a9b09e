"""What VAR's multi-scale residual VQ (msvq.py) and FlexVAR's ground-truth VQ (flexvq.py) share:
the config fields and their checks, the LDM encoder/decoder, dead-code restarts while training
here, and strict loading of official weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping

import torch

from methods.base import MultiScaleTokenizer, TokenizerConfig
from methods.checkpoints import check_keys, read_checkpoint, tensor_dict
from methods.config import ConfigError, check_group_widths, check_positive, check_range, check_scale_list
from methods.tokenizers.ldm import ldm_encoder_decoder

VAR_PATCH_NUMS = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


@dataclass
class VQConfig(TokenizerConfig):
    vocab_size: int = 4096
    ch: int = 128
    ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])   # stride 2 ** (len - 1)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    beta: float = 0.25                   # commitment weight
    patch_nums: List[int] = field(default_factory=lambda: list(VAR_PATCH_NUMS))
    # Training here: every `restart_every` steps, codes that went unused (EMA hits below
    # `restart_threshold` per step) restart at vectors drawn from the batch. Without it a small
    # codebook trained from scratch collapses to a few percent of its codes (measured).
    restart_every: int = 25
    restart_threshold: float = 0.03
    # Training here: for the first `quantize_after` steps the decoder reconstructs from the
    # continuous features (an autoencoder warm-up); then every code restarts at a feature vector
    # drawn from the batch and quantization begins. Without it a small codebook trained from
    # scratch settles on the colours of a few codes: on `tiny` 99% of the reconstructions'
    # hues fell in 2 of 12 bins (measured).
    quantize_after: int = 0

    official_file: ClassVar[str] = "the official tokenizer checkpoint"

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("vocab_size", "ch", "num_res_blocks", "norm_num_groups"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.restart_every", self.restart_every, allow_zero=True)
        check_positive(f"{key}.quantize_after", self.quantize_after, allow_zero=True)
        if self.steps and self.quantize_after >= self.steps:
            raise ConfigError(f"{key}.quantize_after={self.quantize_after} must be below {key}.steps={self.steps}: "
                              "the codebook would never be trained")
        check_range(f"{key}.beta", self.beta, 0.0, 10.0)
        check_scale_list(f"{key}.patch_nums", list(self.patch_nums))
        check_group_widths(key, [self.ch * m for m in self.ch_mult], self.norm_num_groups)
        if self.pretrained and not Path(self.pretrained).is_file():
            raise ConfigError(f"{key}.pretrained={self.pretrained!r} is not a file; give the local path of "
                              f"{self.official_file}")


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, hits: torch.Tensor, threshold: float, candidates: torch.Tensor,
                       generator: torch.Generator | None) -> int:
    """Move codes whose EMA hits (summed over scales, hits (..., V)) fell below ``threshold``
    onto vectors drawn from ``candidates`` (N, C) (Dhariwal et al. 2020, Jukebox's codebook
    restarts); their hit counts restart at 1 to give them time to be used."""
    dead = (hits.reshape(-1, hits.shape[-1]).sum(0) < threshold).nonzero()[:, 0]
    if len(dead):
        pick = torch.randint(len(candidates), (len(dead),), generator=generator, device=candidates.device)
        codebook.data[dead] = candidates[pick].to(codebook.dtype)
        hits[..., dead] = 1.0
    return len(dead)


def scale_vectors(f: torch.Tensor, patch_nums) -> torch.Tensor:
    """Every scale's vectors of a feature map f (B, C, H, W), area-downsampled, as (N, C)."""
    import torch.nn.functional as F
    maps = [F.interpolate(f, size=(pn, pn), mode="area") for pn in patch_nums]
    return torch.cat([m.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for m in maps])


class VQTokenizer(MultiScaleTokenizer):
    """encoder (LDM layout) -> quantizer -> decoder, with official weights loaded strictly.
    Subclasses say how an official state dict converts (``convert_official``) and which of
    their buffers only monitor training (``monitor_buffers``: kept from the model when absent)."""
    name: ClassVar[str]                                # its registry name and config section
    official_what: ClassVar[str] = "an official tokenizer checkpoint"
    monitor_buffers: ClassVar[tuple[str, ...]] = ()

    def warming_up(self, steps: torch.Tensor, f: torch.Tensor, codebook: torch.Tensor, hits: torch.Tensor,
                   generator: torch.Generator | None) -> bool:
        """True while training reconstructs from continuous features (``quantize_after``). The
        step that ends the warm-up moves every code onto a vector of ``f`` drawn at random."""
        if not (self.training and int(steps) < self.cfg.quantize_after):
            return False
        steps += 1
        if int(steps) == self.cfg.quantize_after:
            restart_dead_codes(codebook, hits, float("inf"), scale_vectors(f.detach().float(), self.patch_nums),
                               generator)
        return True

    def build_autoencoder(self, z_channels: int, using_sa: bool = True, using_mid_sa: bool = True) -> None:
        c = self.cfg
        self.encoder, self.decoder = ldm_encoder_decoder(z_channels, c.ch, c.ch_mult, c.num_res_blocks,
                                                         c.norm_num_groups, using_sa, using_mid_sa)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.cfg.ch_mult) - 1)

    @classmethod
    def convert_official(cls, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def read_official(cls, path: str | Path) -> dict[str, torch.Tensor]:
        """The state dict in an official file (bare, or under ``model``), read safely."""
        return tensor_dict(read_checkpoint(path, cls.official_what), str(path), cls.official_what, nested=("model",))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: VQConfig | None = None) -> "VQTokenizer":
        """The official weights at ``path``, ``cfg`` the architecture."""
        return cls(cfg or cls.Config()).load_official(cls.read_official(path), str(path))

    def load_official(self, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> "VQTokenizer":
        """Load an official state dict strictly (names, shapes), with errors naming ``source``."""
        try:
            converted = self.convert_official(sd)
        except RuntimeError as err:
            raise RuntimeError(f"{source}: {err}") from None
        target = self.state_dict()
        for key in self.monitor_buffers:   # ours only, or a training log of another shape: keep ours
            if key not in converted or converted[key].shape != target[key].shape:
                converted[key] = target[key]
        check_keys(target, converted, source, f"does not fit the {self.name} tokenizer built here (check "
                   f"{self.name}.vocab_size, the code width, ch and ch_mult against the checkpoint)")
        self.load_state_dict(converted, strict=True)
        return self.eval()

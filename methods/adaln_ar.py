"""What VAR and FlexVAR share beyond the layers: the class-conditional scale-wise transformer
skeleton (token and class embeddings, adaLN blocks, the adaLN head, KV-cached steps), its
config fields, label dropout, and the official checkpoint conventions of the VAR code family
(``mat_qkv``, ``zero_k_bias``, ``trainer.var_wo_ddp``, the official seeded label draw).

Each method adds only its own: VAR its per-token positions and level embeddings, FlexVAR its
resizable position map.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import MethodConfig, SamplerConfig
from methods.checkpoints import read_checkpoint, tensor_dict
from methods.config import ConfigError, check_positive, check_range
from methods.layers import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin, init_adaln_transformer


@dataclass
class TokenSamplerConfig(SamplerConfig):
    """Sampler settings of the VAR family: guidance weight at the last scale, top-k / top-p."""
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96

    def check(self, key: str) -> None:
        check_positive(f"{key}.cfg", self.cfg, allow_zero=True)
        check_positive(f"{key}.top_k", self.top_k, allow_zero=True)
        check_range(f"{key}.top_p", self.top_p, 0.0, 1.0)


@dataclass
class AdaLNARConfig(MethodConfig):
    """Model fields of the VAR family. ``depth`` alone gives width 64 * depth and depth heads
    (the official factories) unless ``embed_dim`` / ``num_heads`` are set."""
    depth: int = 16
    embed_dim: int = 0                 # 0: 64 * depth
    num_heads: int = 0                 # 0: depth
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = -1.0       # < 0: 0.1 * depth / 24 (official factories)
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1        # class dropout for classifier-free guidance
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1.0             # < 0: sqrt(1 / (3 * width))

    @property
    def width(self) -> int:
        return self.embed_dim or 64 * self.depth

    @property
    def heads(self) -> int:
        return self.num_heads or self.depth

    @property
    def drop_path(self) -> float:
        return self.drop_path_rate if self.drop_path_rate >= 0 else 0.1 * self.depth / 24

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("depth", "mlp_ratio", "norm_eps"):
            check_positive(f"{key}.{name}", getattr(self, name))
        for name in ("embed_dim", "num_heads"):
            check_positive(f"{key}.{name}", getattr(self, name), allow_zero=True)
        if self.width % self.heads:
            raise ConfigError(f"{key}: width {self.width} is not divisible by {self.heads} heads; set "
                              f"{key}.embed_dim / {key}.num_heads (0 = official rule: 64 * depth, depth heads)")
        for name in ("drop_rate", "attn_drop_rate", "cond_drop_rate"):
            check_range(f"{key}.{name}", getattr(self, name), 0.0, 1.0)
        check_range(f"{key}.drop_path_rate", self.drop_path_rate, -1.0, 1.0)


class AdaLNARTransformer(nn.Module):
    """Embeddings, adaLN blocks and head; subclasses add positions and call ``init_weights``.
    ``float_logits`` computes the head in float32 (VAR does, FlexVAR does not)."""

    def __init__(self, cfg: AdaLNARConfig, code_channels: int, vocab_size: int, patch_nums, num_classes: int,
                 float_logits: bool):
        super().__init__()
        C = cfg.width
        self.cfg, self.C, self.num_classes, self.float_logits = cfg, C, num_classes, float_logits
        self.code_channels, self.vocab_size = code_channels, vocab_size
        self.patch_nums = tuple(patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.word_embed = nn.Linear(code_channels, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)     # + the null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        for p in (self.class_emb.weight, self.pos_start):
            nn.init.trunc_normal_(p.data, mean=0, std=(1 / C / 3) ** 0.5)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]   # stochastic depth grows with depth
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, C, cfg.heads, cfg.mlp_ratio, cfg.shared_aln, cfg.norm_eps, cfg.drop_rate,
                          cfg.attn_drop_rate, dpr[i], cfg.attn_l2_norm) for i in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, vocab_size)

    def init_weights(self) -> None:
        c = self.cfg
        init_adaln_transformer(self, c.init_adaln, c.init_adaln_gamma, c.init_head, c.init_std)

    def enable_cache(self, on: bool = True) -> None:
        for block in self.blocks:
            block.attn.enable_cache(on)

    def logits(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        if self.float_logits:
            return self.head(self.head_nm(x.float(), class_embedding).float()).float()
        return self.head(self.head_nm(x, class_embedding))

    def run_blocks(self, x: torch.Tensor, class_embedding: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """All blocks then the head: logits for the tokens x (B', l, C). With ``mask`` None and
        the cache on, x is one scale's tokens and attends to every cached earlier scale."""
        cond = self.shared_ada_lin(class_embedding)
        for block in self.blocks:
            x = block(x, cond, mask)
        return self.logits(x.float() if self.float_logits else x, class_embedding)

    def step(self, x: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """Inference: one scale's tokens (B', l, C) through the KV-cached blocks -> logits."""
        return self.run_blocks(x, class_embedding, None)

    def start_tokens(self, class_embedding: torch.Tensor) -> torch.Tensor:
        """The first scale's tokens before positions: class embedding + ``pos_start``."""
        B = class_embedding.shape[0]
        return class_embedding[:, None].expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over all scales (the official per-token weight 1 / L)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def drop_labels(labels: torch.Tensor, rate: float, null_class: int, generator: torch.Generator | None) -> torch.Tensor:
    """Classifier-free guidance training: each label becomes the null class with probability ``rate``."""
    drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < rate
    return torch.where(drop, null_class, labels)


def check_tokenizer(tokenizer, kind: str, method: str, section: str, latent_size: int) -> None:
    """A method's tokenizer must be of its kind and end at the data's latent side."""
    if tokenizer is None or getattr(tokenizer, "kind", None) != kind:
        raise ValueError(f"{method} needs a {kind} tokenizer ({method.lower()}.tokenizer={section}); "
                         f"got {getattr(tokenizer, 'kind', None)!r}")
    if tokenizer.patch_nums[-1] != latent_size:
        raise ValueError(f"the tokenizer's last scale {tokenizer.patch_nums[-1]} differs from the latent side "
                         f"{latent_size}: set {section}.patch_nums to end at data.resolution / stride")


# -- the official checkpoint conventions of the VAR code family --------------------------------
_MAT_QKV = re.compile(r"^(blocks\.\d+\.attn\.)mat_qkv\.weight$")


def read_official_state(state_dict_or_path, what: str, name: str | None = None) -> tuple[str, dict]:
    """(source, state dict) from a path (bare, ``model``, or a training checkpoint's
    ``trainer.var_wo_ddp``) or a state dict."""
    if isinstance(state_dict_or_path, (str, Path)):
        source = str(state_dict_or_path)
        obj = read_checkpoint(state_dict_or_path, what)
    else:
        source, obj = name or "the state dict", state_dict_or_path
    if isinstance(obj, Mapping) and isinstance(obj.get("trainer"), Mapping):   # read or already in memory
        obj = obj["trainer"]
    return source, tensor_dict(obj, source, what, nested=("var_wo_ddp", "model"))


def rename_official(state: Mapping[str, torch.Tensor], source: str, derived: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``mat_qkv`` -> ``qkv``; the zero ``zero_k_bias`` buffers and the ``derived`` buffers
    (recomputed here from the scale list) are dropped."""
    out = {}
    for key, value in state.items():
        if key in derived:
            continue
        if key.endswith(".attn.zero_k_bias"):
            if value.abs().max() != 0:
                raise RuntimeError(f"{source}: {key} is not zero; not an official checkpoint of the VAR family")
            continue
        m = _MAT_QKV.match(key)
        out[f"{m.group(1)}qkv.weight" if m else key] = value
    return out


def depth_of(state: Mapping[str, torch.Tensor]) -> int:
    return 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)


def check_size(state: Mapping[str, torch.Tensor], net: AdaLNARTransformer, source: str, section: str, presets) -> None:
    """A checkpoint of another depth or width fails naming both and the preset to use."""
    depth = depth_of(state)
    width = state["word_embed.weight"].shape[0] if "word_embed.weight" in state else None
    if depth == 0 or width is None:
        raise RuntimeError(f"{source} is not a {section} checkpoint: it has no blocks.N.* / word_embed keys (it holds "
                           f"{sorted(state)[:4]} ...); is it another method's? Give it to that method's --method")
    if depth != len(net.blocks) or (width is not None and width != net.C):
        preset = f" (preset {section}_d{depth})" if depth in presets else ""
        raise RuntimeError(f"{source} is a {section} model of depth {depth}, width {width}; the model here has depth "
                           f"{len(net.blocks)}, width {net.C}. Build it with {section}.depth={depth}{preset} or the "
                           "checkpoint's own sizes")


def official_labels(labels, num_classes: int, seed: int, batch_size: int | None) -> tuple[torch.Tensor, torch.Generator]:
    """The official samplers' seeded generator (one CPU generator per call) and labels: a
    tensor as given, an int for the whole batch (negative: the null class), or None for labels
    drawn uniformly from that generator first."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        if not batch_size:
            raise ValueError("labels=None draws random labels: give batch_size (official name B)")
        uniform = torch.full((1, num_classes), 1.0 / num_classes)
        labels = torch.multinomial(uniform, num_samples=batch_size, replacement=True, generator=generator).reshape(batch_size)
    elif isinstance(labels, int):
        labels = torch.full((batch_size or 1,), num_classes if labels < 0 else labels)
    return labels, generator

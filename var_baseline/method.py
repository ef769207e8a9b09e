"""VAR as a benchmark method: next-scale cross-entropy on teacher-forced token maps, and the
scale-by-scale sampler (KV cache, CFG growing linearly over scales, top-k / top-p, optional
Gumbel smoothing), around the network in var_baseline/model.py and the msvq quantizer."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.adaln_ar import check_tokenizer, cross_entropy, drop_labels
from methods.base import Generators, Method, ResidualTokenizer, TokenSpec
from methods.guidance import guide_logits
from methods.registry import METHODS
from methods.sampling import gumbel_softmax, sample_tokens
from var_baseline import weights
from var_baseline.model import VAR, VARConfig


@METHODS.register_module("var")
class VARMethod(Method):
    """VAR on a residual tokenizer (msvq): trained on cached token indices, sampled over the
    training scales."""
    Config = VARConfig
    tokenizer_kind = "multiscale_residual"

    def __init__(self, cfg: VARConfig, spec: TokenSpec, tokenizer: ResidualTokenizer | None = None):
        super().__init__(cfg, spec, tokenizer)
        check_tokenizer(tokenizer, self.tokenizer_kind, "VAR", "msvq", spec.latent_size)
        self.model = VAR(cfg, tokenizer.channels, tokenizer.vocab_size, tokenizer.patch_nums, spec.num_classes)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return list(tokens.split([p * p for p in self.model.patch_nums], dim=1))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of every scale's tokens given the coarser scales (teacher forcing);
        the class is replaced by the null class with probability ``cond_drop_rate``."""
        with torch.no_grad():
            x_input = self.tokenizer.teacher_forcing_input(self.split(tokens))
        labels = drop_labels(labels, self.cfg.cond_drop_rate, self.model.num_classes, generator)
        return cross_entropy(self.model(labels, x_input), tokens)

    def generated_scales(self, **settings) -> list[int]:
        return list(self.model.patch_nums)

    def nfe(self, **settings) -> int:
        """One transformer pass per scale on the [cond; uncond] batch (the official sampler
        doubles it at every cfg, 1 included)."""
        return 2 * len(self.generated_scales(**settings))

    def load_weights(self, state_dict_or_path, ema: bool = True) -> "VARMethod":
        """A suite run's ``.safetensors`` or an official checkpoint (``var_d16.pth`` ...); strict."""
        return weights.load(self, state_dict_or_path)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: Generators = None, return_tokens: bool = False,
                 **settings):
        """Sample scale by scale and return f_hat (B, C, h, w) (the tokenizer decodes it).

        At scale k of K the logits are guided with weight cfg * k / (K - 1) (no guidance at
        the first scale), filtered by top-k / top-p and sampled; with ``more_smooth`` the code
        map mixes the codebook with Gumbel-softmax weights instead (sharper visualisations,
        not for FID). ``generator``: one for the batch (the official draw order) or one per
        image. ``return_tokens`` also returns the tokens drawn at every scale."""
        s = self.sampler_settings(**settings)
        model, tok = self.model, self.tokenizer
        B, K, C = labels.shape[0], len(model.patch_nums), tok.channels
        class_embedding = model.class_emb(torch.cat((labels, torch.full_like(labels, model.num_classes))))
        x = model.first_input(class_embedding)                                     # (2B, first_l, width)
        f_hat = class_embedding.new_zeros(B, C, model.patch_nums[-1], model.patch_nums[-1])
        drawn = []
        model.enable_cache(True)
        try:
            for k, pn in enumerate(model.patch_nums):
                ratio = k / (K - 1)
                logits = guide_logits(model.step(x, class_embedding), s["cfg"] * ratio)
                idx = sample_tokens(logits, generator, s["top_k"], s["top_p"])      # filters logits in place
                drawn.append(idx)
                if s["more_smooth"]:   # temperature annealed over scales, as MaskGIT
                    mix = gumbel_softmax(logits.mul(1 + ratio), max(0.27 * (1 - ratio * 0.95), 0.005), generator)
                    h = mix @ tok.codebook().unsqueeze(0)
                else:
                    h = F.embedding(idx, tok.codebook())
                h = h.transpose_(1, 2).reshape(B, C, pn, pn)
                f_hat, next_map = tok.next_input(k, f_hat, h)
                if k < K - 1:
                    x = model.next_input(next_map, k + 1).repeat(2, 1, 1)             # [cond; uncond]
        finally:
            model.enable_cache(False)
        return (f_hat, drawn) if return_tokens else f_hat

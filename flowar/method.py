"""FlowAR as a benchmark method: the per-scale flow-matching loss and the scale-by-scale
sampler, around the network in flowar/model.py."""
from __future__ import annotations

import torch

from flowar import weights
from flowar.model import FlowAR, FlowARConfig
from methods.base import Generators, Method, TokenSpec, Tokenizer
from methods.flow import euler_sample, flow_matching_loss, flowar_time_grid
from methods.registry import METHODS
from methods.scales import token_offsets


def draw_noise(batch: int, shape: tuple, generator, device) -> torch.Tensor:
    """Gaussian noise (batch, *shape): one generator for the batch, or a list with one per
    image (then image j's noise comes from generator j alone, whatever batch it is in)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generator]).to(device)
    return torch.randn((batch, *shape), generator=generator, device=device)


@METHODS.register_module("flowar")
class FlowARMethod(Method):
    Config = FlowARConfig
    tokenizer_kind = "continuous"

    def __init__(self, cfg: FlowARConfig, spec: TokenSpec, tokenizer: Tokenizer | None = None):
        super().__init__(cfg, spec, tokenizer)
        self.model = FlowAR(cfg, spec.channels, spec.latent_size, spec.num_classes)

    def loss(self, latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
             noise: list[torch.Tensor] | None = None, t: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Sum over scales of the flow-matching loss, scale k weighted by its share of the last
        scale's tokens (s_k^2 / s_K^2, as the official code). ``noise``/``t`` per scale may be
        given; otherwise they are drawn from ``generator``."""
        semantics, targets = self.model(latents, labels)
        total, last = 0.0, self.model.scales[-1] ** 2
        for k, ((begin, end), target) in enumerate(zip(self._offsets(), targets)):
            x0 = FlowAR.to_tokens(target)                                                   # (B, s^2, C)
            eps = noise[k] if noise is not None else torch.randn(x0.shape, generator=generator, device=x0.device)
            tk = t[k] if t is not None else torch.rand(x0.shape[0], generator=generator, device=x0.device)
            z = semantics[:, begin:end]
            per_sample = flow_matching_loss(lambda x, tt: self.model.velocity(x, tt, z), x0, eps.to(x0), tk.to(x0))
            total = total + per_sample.mean() * x0.shape[1] / last
        return total

    def load_weights(self, state_dict_or_path, ema: bool = True) -> "FlowARMethod":
        """A suite run's ``.safetensors`` or an official FlowAR checkpoint (``model`` /
        ``model_ema``); strict, with errors that name the file and the mismatching keys."""
        return weights.load(self, state_dict_or_path, ema=ema)

    def generated_scales(self, **settings) -> list[int]:
        return list(self.model.scales)

    def nfe(self, **settings) -> int:
        """AR steps x Euler steps of the flow head per scale, doubled under guidance (cfg != 1
        runs the [cond; uncond] batch at every step). Each scale's one transformer pass, which
        all its flow steps share, is not counted separately."""
        s = self.sampler_settings(**settings)
        flow_steps = len(flowar_time_grid(s["num_flow_steps"])) - 1
        return len(self.model.scales) * flow_steps * (2 if s["cfg"] != 1.0 else 1)

    def _offsets(self) -> list[tuple[int, int]]:
        return token_offsets(self.model.scales)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: Generators = None,
                 noise: list[torch.Tensor] | None = None, **settings) -> torch.Tensor:
        """Sample scale by scale: semantics from the AR transformer (KV-cached), then the
        scale's latent by Euler integration of the flow head from noise. CFG ramps linearly
        over scales from 1 to ``cfg``. Returns latents (B, C, h, w).

        ``generator`` is one generator for the batch, or one per image (then every image's
        noise is its own, whatever batch it is drawn in); ``noise`` gives each scale's noise
        (B', s^2, C) explicitly, B' = 2B under guidance ([conditional; unconditional])."""
        s = self.sampler_settings(**settings)
        model, scales = self.model, self.model.scales
        guided = s["cfg"] != 1.0  # the official sampler doubles the batch whenever cfg != 1
        B = labels.shape[0]
        class_embedding = model.class_emb(labels)
        if guided:
            null = torch.full_like(labels, model.num_classes)
            class_embedding = torch.cat([class_embedding, model.class_emb(null)])
        grid = flowar_time_grid(s["num_flow_steps"])
        x = class_embedding[:, None]                                                     # (B', 1, E)
        model.enable_cache(True)
        try:
            for k, side in enumerate(scales):
                z = model.semantics_step(x, class_embedding, k)                          # (B', s^2, D)
                ramp = 1 + (s["cfg"] - 1) * k / max(len(scales) - 1, 1)
                if noise is not None:
                    eps = noise[k]
                else:  # the unconditional half's noise never reaches the output: reuse the conditional one,
                    eps = draw_noise(B, (side * side, model.token_channels), generator, z.device)
                    eps = torch.cat([eps, eps]) if guided else eps  # so one seed gives one image at any cfg
                tokens = euler_sample(lambda xt, t: model.velocity(xt, t, z), eps.to(z.device, z.dtype), grid,
                                      ramp, s["guidance_low"], s["guidance_high"]).float()
                tokens = tokens[:B]                                                      # drop the null-class half
                if k == len(scales) - 1:
                    break
                nxt = model.to_tokens(model.next_scale_input(model.to_latent(tokens, side), scales[k + 1]))
                x = model.z_proj(torch.cat([nxt, nxt]) if guided else nxt)
        finally:
            model.enable_cache(False)
        return model.to_latent(tokens, scales[-1])

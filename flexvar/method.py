"""FlexVAR as a benchmark method: next-scale cross-entropy on ground-truth tokens over randomly
drawn scale lists, and a sampler that takes any scale list (any step count, any final size)."""
from __future__ import annotations

import torch

from flexvar import weights
from flexvar.model import FlexVAR, FlexVARConfig
from methods.adaln_ar import check_tokenizer, cross_entropy, drop_labels
from methods.base import Generators, GroundTruthTokenizer, Method, TokenSpec
from methods.config import check_scale_list
from methods.guidance import guide, guide_logits
from methods.registry import METHODS
from methods.sampling import sample_tokens


def draw_scale_list(train: list[int], generator: torch.Generator | None) -> list[int]:
    """A random training list, the official trainer's distribution (``gen_curr_patch_nums``)
    generalised from its 1..16 list: 5% the full list; else [1, 2], 5/8 of the sides in [3, b)
    and 2/5 of those in [b, last) (b = 11/16 of the last side: five from 3..10 and two from
    11..15 at 16), and the last; then 0-4 inner sides dropped (10%, 5%, 2%, 1%), and sides
    among the last four dropped until the list has no more tokens than the full one."""
    device = generator.device if generator is not None else "cpu"   # the trainer's generator may live on the GPU
    rand = lambda: float(torch.rand((), generator=generator, device=device))
    randint = lambda n: int(torch.randint(n, (), generator=generator, device=device))
    pick = lambda lo, hi, k: sorted((lo + torch.randperm(max(hi - lo, 0), generator=generator, device=device)[:k]).tolist())
    last = train[-1]
    if rand() < 0.05 or last < 4:
        return list(train)
    b = max(4, round(last * 11 / 16))
    sides = [1, 2] + pick(3, b, round((b - 3) * 5 / 8)) + pick(b, last, round((last - b) * 2 / 5)) + [last]
    x = rand()
    for threshold in (0.9, 0.95, 0.98, 0.99):
        if x > threshold and len(sides) > 3:
            sides.pop(2 + randint(len(sides) - 3))
    budget = sum(p * p for p in train)
    while sum(p * p for p in sides) > budget:
        start = max(len(sides) - 4, 1)
        sides.pop(start + randint(len(sides) - start))
    return sides


def extend_scale_list(train: list[int], side: int) -> list[int]:
    """The training list up to ``side`` (truncated), then x1.45 steps up to ``side``."""
    sides = [p for p in train if p < side]
    while sides[-1] < side:
        sides.append(min(side, max(sides[-1] + 1, round(sides[-1] * 1.45))))
    return sides


@METHODS.register_module("flexvar")
class FlexVARMethod(Method):
    """FlexVAR on the flexvq tokenizer: trained on the continuous features the tokenizer caches
    (each step quantizes them at a freshly drawn scale list), sampled over any scale list; the
    code map it returns decodes at pn * stride pixels."""
    Config = FlexVARConfig
    tokenizer_kind = "multiscale_groundtruth"

    def __init__(self, cfg: FlexVARConfig, spec: TokenSpec, tokenizer: GroundTruthTokenizer | None = None):
        super().__init__(cfg, spec, tokenizer)
        check_tokenizer(tokenizer, self.tokenizer_kind, "FlexVAR", "flexvq", spec.latent_size)
        self.model = FlexVAR(cfg, tokenizer.channels, tokenizer.vocab_size, tokenizer.patch_nums, spec.num_classes)

    def loss(self, features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of every scale's ground-truth tokens given the coarser scales, on a
        scale list drawn for this step; classes dropped with probability ``cond_drop_rate``."""
        train = list(self.model.patch_nums)
        sides = draw_scale_list(train, generator) if self.cfg.random_scale_lists and self.training else train
        with torch.no_grad():
            x_input, targets = self.tokenizer.teacher_forcing(features, sides)
        labels = drop_labels(labels, self.cfg.cond_drop_rate, self.model.num_classes, generator)
        return cross_entropy(self.model(labels, x_input, sides), targets)

    def evaluation_settings(self, side: int | None = None, patch_nums: list[int] | None = None) -> dict:
        """Any scale list, any final side: ``patch_nums`` as given (its last side must be
        ``side`` if both are set), else the training list extended by x1.45 steps to ``side``
        (as the official 512 px list 1..16, 23, 32)."""
        if patch_nums:
            if side and patch_nums[-1] != side:
                raise ValueError(f"eval.patch_nums ends at {patch_nums[-1]} but eval.resolution asks for a final side {side}")
            return {"infer_patch_nums": list(self.scale_list(patch_nums))}
        if side and side != self.model.patch_nums[-1]:
            return {"infer_patch_nums": extend_scale_list(list(self.model.patch_nums), side)}
        return {}

    def generated_scales(self, **settings) -> list[int]:
        return self.scale_list(self.sampler_settings(**settings)["infer_patch_nums"])

    def nfe(self, **settings) -> int:
        """One transformer pass per scale of the sampled list on the [cond; uncond] batch (the
        official sampler doubles it at every cfg, 1 included)."""
        return 2 * len(self.generated_scales(**settings))

    def load_weights(self, state_dict_or_path, ema: bool = True) -> "FlexVARMethod":
        """A suite run's ``.safetensors`` or an official checkpoint (``FlexVARd16-epo179.pth`` ...); strict."""
        return weights.load(self, state_dict_or_path)

    def scale_list(self, infer_patch_nums=None) -> list[int]:
        sides = list(infer_patch_nums or self.model.patch_nums)
        check_scale_list("infer_patch_nums", sides)
        if sides[0] != self.model.patch_nums[0]:
            raise ValueError(f"infer_patch_nums={sides} must start at the training list's first side "
                             f"{self.model.patch_nums[0]} (the class token)")
        return sides

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: Generators = None, return_tokens: bool = False,
                 invalid_ids: torch.Tensor | None = None, **settings):
        """Sample scale by scale over ``infer_patch_nums`` and return the last scale's code map
        (B, C, pn, pn) (the tokenizer decodes it to pn * stride pixels).

        Guidance weight at scale k: cfg * k / min(K - 1, 9), or cfg itself for sides above
        ``max_pn``; with ``llamagen_cfg``, uncond + cfg * (cond - uncond) everywhere. Sides in
        ``topk_sides`` and <= ``max_pn`` are drawn with top-k / top-p, the others greedily
        (top-1). ``generator``: one for the batch (the official draw order) or one per image."""
        s = self.sampler_settings(**settings)
        sides = self.scale_list(s["infer_patch_nums"])
        model, tok = self.model, self.tokenizer
        B, K = labels.shape[0], len(sides)
        class_embedding = model.class_emb(torch.cat((labels, torch.full_like(labels, model.num_classes))))
        positions = model.positions(sides)
        first_l = sides[0] ** 2
        x = model.start_tokens(class_embedding) + positions[:, :first_l]
        codebook = tok.codebook()
        drawn, begin = [], first_l
        model.enable_cache(True)
        try:
            for k, pn in enumerate(sides):
                ratio = k / min(K - 1, 9)
                logits = model.step(x, class_embedding)
                if invalid_ids is not None:
                    logits[:, :, invalid_ids] = -100.0
                if s["llamagen_cfg"]:
                    logits = guide(logits, s["cfg"])
                else:
                    logits = guide_logits(logits, s["cfg"] * ratio if pn <= s["max_pn"] else s["cfg"])
                greedy = pn > s["max_pn"] or pn not in s["topk_sides"]
                idx = sample_tokens(logits, generator, 1 if greedy else s["top_k"], s["top_p"])
                drawn.append(idx)
                if k < K - 1:
                    nxt = sides[k + 1]
                    code_map = codebook[idx].reshape(B, pn, pn, -1).permute(0, 3, 1, 2)
                    x = model.word_embed(tok.next_scale_input(code_map, nxt)) + positions[:, begin:begin + nxt * nxt]
                    x = x.repeat(2, 1, 1)                                              # [cond; uncond]
                    begin += nxt * nxt
        finally:
            model.enable_cache(False)
        code_map = tok.code_map(idx, sides[-1])
        return (code_map, drawn) if return_tokens else code_map

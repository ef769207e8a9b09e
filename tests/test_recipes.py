"""The paper presets carry the official training recipes. Each expected value below is read off
the official code (VAR 78b9539 utils/lr_control.py, utils/arg_util.py, README; FlexVAR 04462cb
scripts/train.sh, train.py; FlowAR 5745a96 util/lr_sched.py, util/misc.py, engine.py, README),
computed by hand from the official formula, never from the suite's own functions."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.build import build_method
from benchmark.config import load_config, section
from benchmark.trainer import Trainer, exempt_from_weight_decay, lr_at, weight_decay_at
from methods.registry import TOKENIZERS, lookup

LAYOUTS = Path(__file__).parent / "fixtures" / "releases"
# VAR's filter_params nowd_keys (train.py), also FlexVAR's
NOWD_KEYS = {"cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start", "start_pos",
             "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul"}


def official_lin0(it, max_it, wp_it, tlr, wpe, wp0=0.005, T=0.05):
    """VAR utils/lr_control.py lr_wd_annealing, sche_type 'lin0', transcribed."""
    if it < wp_it:
        return tlr * (wp0 + (1 - wp0) * it / wp_it)
    pasd = (it - wp_it) / (max_it - 1 - wp_it)
    return tlr * (1 if pasd < T else wpe + (1 - wpe) * (1 - pasd) / (1 - T))


# preset -> (epochs, global batch, tblr, wpe, twde or None, alng): README / scripts/train.sh
VAR_FAMILY = {"var_d16": (200, 768, 1e-4, 0.1, None, 1e-3), "var_d20": (250, 768, 1e-4, 0.1, None, 1e-3),
              "var_d24": (350, 768, 8e-5, 0.01, None, 1e-4), "var_d30": (350, 1024, 8e-5, 0.01, 0.08, 1e-5),
              "var_d36": (350, 768, 8e-5, 0.01, 0.08, 5e-6),
              "flexvar_d16": (180, 768, 1e-4, 0.1, None, 1e-3), "flexvar_d20": (250, 768, 1e-4, 0.1, None, 1e-3),
              "flexvar_d24": (350, 768, 8e-5, 0.01, None, 1e-4)}


@pytest.mark.parametrize("preset", sorted(VAR_FAMILY))
def test_var_family_schedule_matches_lr_wd_annealing(preset):
    ep, bs, tblr, wpe, twde, alng = VAR_FAMILY[preset]
    cfg = load_config(preset)
    t, method = cfg.train, preset.split("_")[0]
    iters = math.ceil(1_281_167 / bs)                       # the official sampler fills the last batch
    max_it, tlr = ep * iters, tblr * bs / 256
    wp_it = round(max_it / 50)                              # wp = ep / 50 epochs
    assert (t.steps, t.warmup_steps, t.batch_size, t.schedule) == (max_it, wp_it, bs, "lin0")
    for it in (0, 1, wp_it - 1, wp_it, wp_it + (max_it - wp_it) // 20, max_it // 2, (9 * max_it) // 10, max_it - 1):
        assert lr_at(it, t) == pytest.approx(official_lin0(it, max_it, wp_it, tlr, wpe), rel=1e-9), it
    assert lr_at(0, t) == pytest.approx(0.005 * tlr) and lr_at(max_it - 1, t) == pytest.approx(wpe * tlr)
    end = twde or 0.05                                      # args.twde = args.twde or args.twd
    for it in (0, max_it // 2, max_it - 1):
        official = end + (0.05 - end) * (0.5 + 0.5 * math.cos(math.pi * it / (max_it - 1)))
        assert weight_decay_at(it, t) == pytest.approx(official, rel=1e-9)
    assert cfg[method].init_adaln_gamma == alng
    assert (t.beta1, t.beta2, t.grad_clip, t.ema_rate, t.autocast, t.tf32) == (0.9, 0.95, 2.0, 0.0, "fp16", True)
    assert cfg.eval.autocast == "fp16" and cfg.eval.weights == "model"


def test_spot_values_of_the_official_schedules():
    """A few values by hand: VAR-d16 at half way 1.75e-4, VAR-d30's weight decay 0.065 half way."""
    d16, d30 = load_config("var_d16").train, load_config("var_d30").train
    assert lr_at(166_900, d16) == pytest.approx(1.75e-4, rel=1e-3)
    assert weight_decay_at(219_100, d30) == pytest.approx(0.065, rel=1e-4)
    assert weight_decay_at(438_199, d30) == pytest.approx(0.08)
    assert load_config("flexvar_d24").train.lr == pytest.approx(2.4e-4)
    assert load_config("flexvar_d16").train.min_lr == pytest.approx(3e-5)


@pytest.mark.parametrize("preset", ["flowar_small", "flowar_large", "flowar_huge"])
def test_flowar_schedule_matches_lr_sched(preset):
    """util/lr_sched.py with the README's --epochs 400 --warmup_epochs 100 --blr 5e-5 at a global
    batch of 2048 (625 iterations an epoch): lr = 4e-4 * epoch / 100 in warm-up, then a
    half-cosine to min_lr 1e-5; weight decay 0.02 constant; EMA 0.9999 from the first step."""
    t = load_config(preset).train
    assert (t.steps, t.warmup_steps, t.batch_size, t.schedule) == (250_000, 62_500, 2048, "cosine")
    assert lr_at(62_500, t) == pytest.approx(4e-4) and lr_at(249_999, t) == pytest.approx(1e-5, rel=1e-3)
    assert lr_at(125_000, t) == pytest.approx(1e-5 + 3.9e-4 * 0.5 * (1 + math.cos(math.pi * 100 / 300)))
    assert lr_at(31_249, t) == pytest.approx(4e-4 * 31_250 / 62_500)   # the suite counts step s as s + 1
    assert weight_decay_at(200_000, t) == 0.02 and list(t.no_weight_decay) == []
    assert (t.grad_clip, t.ema_rate, t.ema_warmup, t.autocast, t.tf32) == (3.0, 0.9999, False, "off", True)
    assert load_config(preset).eval.autocast == "fp16"


@pytest.mark.parametrize("preset,release", [("var_d16", "var_d16"), ("var_d36", "var_d36"),
                                            ("flexvar_d16", "flexvar_d16"), ("flowar_small", "flowar_s")])
def test_weight_decay_exemptions_are_the_official_ones_by_name(preset, release):
    """The official rule (VAR: ndim == 1, a name ending in bias, or containing a nowd key;
    FlowAR: 1-D or bias, its 'diffloss' key matching nothing) applied to the official parameter
    names and shapes gives exactly the suite's exempt parameters."""
    cfg = load_config(preset)
    method = preset.split("_")[0]
    layout = json.loads((LAYOUTS / f"{release}.json").read_text())
    params = {k: shape for k, (shape, _) in layout["keys"].items() if k not in set(layout["buffers"])}
    keys = NOWD_KEYS if method != "flowar" else {"diffloss"}
    official = {k.replace("mat_qkv", "qkv") for k, s in params.items()
                if len(s) == 1 or k.endswith("bias") or any(n in k for n in keys)}
    with torch.device("meta"):
        tok = lookup(TOKENIZERS, cfg[method].tokenizer)(section(cfg, cfg[method].tokenizer))
        net = build_method(cfg, method, tok).network
    ours = {n for n, p in net.named_parameters() if exempt_from_weight_decay(n, p, tuple(cfg.train.no_weight_decay))}
    assert ours == official
    assert set(cfg.train.no_weight_decay) == (NOWD_KEYS if method != "flowar" else set())
    if method != "flowar":   # the positions and the attention temperature are exempt by name only
        assert {"pos_start", "pos_1LC"} <= ours and any(n.endswith("scale_mul_1H11") for n in ours)


class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((4, 4), 2.0))
        self.bias = nn.Parameter(torch.zeros(4))
        self.pos_start = nn.Parameter(torch.ones(1, 1, 4))


def test_trainer_applies_weight_decay_schedule_fp16_scaler_and_plain_ema(tmp_path):
    model = _Quadratic()
    cfg = load_config("tiny", ["train.steps=6", "train.warmup_steps=1", "train.schedule=lin0", "train.lr=1e-2",
                               "train.min_lr=1e-3", "train.weight_decay=0.1", "train.weight_decay_end=0.3",
                               "train.no_weight_decay=[pos_start]", "train.autocast=fp16", "train.ema_rate=0.5",
                               "train.ema_warmup=false", "train.checkpoint_every=3"]).train
    trainer = Trainer(model, lambda step, g: (model.w ** 2).mean() + model.bias.sum() + model.pos_start.sum(), cfg,
                      tmp_path, device="cpu")
    first = model.w.detach().clone()
    trainer.train_step()
    groups = {len(g["params"]): g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert groups == {1: pytest.approx(0.1), 2: 0.0}          # w decays; bias and pos_start do not
    assert trainer.scaler is not None and trainer.scaler.get_scale() <= 32768
    assert torch.allclose(trainer.ema["w"], 0.5 * first + 0.5 * model.w.detach())   # no EMA warm-up
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert "scaler" in state and state["step"] == 6
    assert trainer.optimizer.param_groups[0]["weight_decay"] == pytest.approx(weight_decay_at(5, cfg))

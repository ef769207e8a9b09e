"""Every released checkpoint loads at its preset. The layouts (key, shape, dtype, container) are
those of the official classes built at full size by tests/fixtures/releases/make_layouts.py; each
is loaded through the loader a user's `sample --preset ... --checkpoint ...` reaches, strictly.
The smallest model of each family then samples an image through the documented `sample`
command from random tensors saved in the official file layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.build import build_method
from benchmark.config import load_config, section
from methods.registry import TOKENIZERS, lookup

LAYOUTS = Path(__file__).parent / "fixtures" / "releases"

# release -> (preset, "tokenizer" or the method, parameters (M) the official README / paper give)
RELEASES = {
    "var_vqvae": ("var_d16", "tokenizer", 109), "var_d16": ("var_d16", "var", 310), "var_d20": ("var_d20", "var", 600),
    "var_d24": ("var_d24", "var", 1000), "var_d30": ("var_d30", "var", 2000), "var_d36": ("var_d36", "var", 2300),
    "mar_kl16": ("flowar_small", "tokenizer", 66), "flowar_s": ("flowar_small", "flowar", 170),
    "flowar_l": ("flowar_large", "flowar", 589), "flowar_h": ("flowar_huge", "flowar", 1900),
    "flexvae": ("flexvar_d16", "tokenizer", 72), "flexvar_d16": ("flexvar_d16", "flexvar", 310),
    "flexvar_d20": ("flexvar_d20", "flexvar", 600), "flexvar_d24": ("flexvar_d24", "flexvar", 1000),
}
METHOD_OF = {"var_vqvae": "var", "mar_kl16": "flowar", "flexvae": "flexvar"}


def layout(release: str) -> dict:
    return json.loads((LAYOUTS / f"{release}.json").read_text())


def tensors(release: str, device: str = "meta", dtype=None) -> dict[str, torch.Tensor]:
    """A state dict in the release's layout: meta tensors, or seeded small random values. The
    official derived buffers get the values the official constructor gives them (zero k bias)."""
    out, gen = {}, torch.Generator().manual_seed(0)
    for key, (shape, dt) in layout(release)["keys"].items():
        dt = getattr(torch, dt)
        if device == "meta":
            out[key] = torch.zeros(shape) if key.endswith("zero_k_bias") else torch.empty(shape, dtype=dt, device="meta")
        elif not dt.is_floating_point or key.endswith("zero_k_bias"):
            out[key] = torch.zeros(shape, dtype=dt)
        else:
            out[key] = (0.02 * torch.randn(shape, generator=gen)).to(dtype or dt)
    return out


def contained(release: str, state: dict) -> dict:
    """The state dict wrapped as the released file holds it."""
    return {"model": state} if layout(release)["container"] == "model" else state


def test_every_release_has_a_layout_with_provenance():
    assert sorted(p.stem for p in LAYOUTS.glob("*.json")) == sorted(RELEASES)
    commits = {"FoundationVision/VAR": "78b95394fc5896192e3a003e4b295f8ea743c48f",
               "wangqiang9/FlowAR": "5745a964df1d7320e56f0879c75e4f73e88d960f",
               "jiaosiyu1999/FlexVAR": "04462cb6e1bbb4524bfcafcd5c5701894a3ac7d1",
               "LTH14/mar": "fe470ac24afbee924668d8c5c83e9fec60af3a73"}
    for release, (_, _, published_m) in RELEASES.items():
        info = layout(release)
        assert commits[info["repository"]] == info["commit"] and info["call"] and info["file"]
        assert abs(info["parameters"] / 1e6 - published_m) / published_m < 0.06, (release, info["parameters"])
    assert layout("flexvae")["keys"]["quantize.embedding.weight"][0] == [8912, 32]   # build_vae_var(V=8912)
    assert layout("var_d36")["patch_nums"] == [1, 2, 3, 4, 6, 9, 13, 18, 24, 32]


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_release_layout_loads_strictly_at_its_preset(release):
    """Meta tensors in the official layout (full size, no memory) through the preset's loader;
    the suite's model has exactly the official parameter count."""
    preset, role, _ = RELEASES[release]
    method = METHOD_OF.get(release, role)
    cfg = load_config(preset, ["device=cpu"])
    name = cfg[method].tokenizer
    state = tensors(release)
    with torch.device("meta"):
        if role == "tokenizer":
            tok = load_official_tokenizer(name, section(cfg, name), contained(release, state), release)
            module = tok.vae if name == "kl" else tok
        else:
            tok = lookup(TOKENIZERS, name)(section(cfg, name))
            model = build_method(cfg, method, tok)
            model.load_weights(contained(release, state))
            module = model.network
    params = sum(p.numel() for p in module.parameters())
    assert params == layout(release)["parameters"], (release, params)


def load_official_tokenizer(name, tcfg, obj, source):
    """What ``<tokenizer>.pretrained=FILE`` does once the file is read."""
    from methods.checkpoints import tensor_dict
    from methods.tokenizers.kl import load_mar_kl16
    if name == "kl":
        return load_mar_kl16(tensor_dict(obj, source, "kl16", nested=("model",)), tcfg)
    cls = lookup(TOKENIZERS, name)
    return cls(tcfg).load_official(tensor_dict(obj, source, cls.official_what, nested=("model",)), source)


@pytest.mark.parametrize("release", ["var_d16", "flexvar_d16"])
def test_training_checkpoint_container_loads(release):
    """The official trainers save {'trainer': {'var_wo_ddp': ...}, 'args': ...}: it loads too."""
    preset, method, _ = RELEASES[release]
    cfg, state = load_config(preset, ["device=cpu"]), tensors(release)
    with torch.device("meta"):
        tok = lookup(TOKENIZERS, cfg[method].tokenizer)(section(cfg, cfg[method].tokenizer))
        model = build_method(cfg, method, tok)
        model.load_weights({"epoch": 3, "iter": 0, "trainer": {"var_wo_ddp": state, "config": {}},
                            "args": {"depth": 16}})


def test_flowar_training_checkpoint_picks_the_ema_weights():
    cfg, state = load_config("flowar_small", ["device=cpu"]), tensors("flowar_s")
    with torch.device("meta"):
        tok = lookup(TOKENIZERS, "kl")(section(cfg, "kl"))
        model = build_method(cfg, "flowar", tok)
        model.load_weights({"model": state, "model_ema": state, "epoch": 399})


def test_wrong_size_release_names_the_preset_to_use():
    cfg, state = load_config("var_d20", ["device=cpu"]), tensors("var_d16")
    with torch.device("meta"):
        tok = lookup(TOKENIZERS, "msvq")(section(cfg, "msvq"))
        model = build_method(cfg, "var", tok)
        with pytest.raises(RuntimeError, match="d16|depth 16|var_d16"):
            model.load_weights(state)


# (method, preset, generator release, file, tokenizer release, file)
FAMILIES = [("var", "var_d16", "var_d16", "var_d16.pth", "var_vqvae", "vae_ch160v4096z32.pth"),
            ("flowar", "flowar_small", "flowar_s", "FlowAR-S.pth", "mar_kl16", "kl16.ckpt"),
            ("flexvar", "flexvar_d16", "flexvar_d16", "FlexVARd16-epo179.pth", "flexvae", "FlexVAE.pth")]


@pytest.mark.parametrize("family", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_smallest_release_samples_through_the_sample_command(family, tmp_path):
    """Random full-size weights saved as the official files are, then the README's command."""
    from benchmark.cli import main
    method, preset, gen, gen_file, tok, tok_file = family
    torch.save(contained(gen, tensors(gen, device="cpu")), tmp_path / gen_file)
    torch.save(contained(tok, tensors(tok, device="cpu")), tmp_path / tok_file)
    out = tmp_path / "samples"
    settings = {"flowar": ["flowar.sampler.num_flow_steps=2"], "var": [], "flexvar": []}[method]
    assert main(["sample", "--method", method, "--preset", preset, "--checkpoint", str(tmp_path / gen_file),
                 "--tokenizer-checkpoint", str(tmp_path / tok_file), "--out", str(out), "--num-classes", "1",
                 "device=cpu", "eval.samples_per_class=1", "eval.batch_size=1", *settings]) == 0
    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (1, 256, 256, 3) and images.dtype == np.uint8

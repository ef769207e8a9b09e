"""The tokenizers shipped with the suite (benchmark/shipped/tokenizers/<key>): they are what the
`tiny` preset's tokenizer stage would train, they load, they reconstruct as their record says,
and the tokenizer stage uses them instead of training (unless told not to)."""
import json

import pytest
import torch

from benchmark import stages
from benchmark.build import load_tokenizer
from benchmark.config import load_config
from benchmark.evaluation import tokenizer_metrics
from benchmark.keys import RunKeys
from benchmark.preflight import check_shipped
from methods.config import ConfigError

TINY_METHODS = ("flowar", "var", "flexvar")   # kl, msvq, flexvq


def shipped_keys() -> set[str]:
    return {p.name for p in (stages.SHIPPED / "tokenizers").iterdir() if (p / "tokenizer.safetensors").exists()}


def test_every_tiny_tokenizer_is_shipped_under_its_current_key():
    """A change to the tiny tokenizers' settings (or to the key) must come with retrained,
    re-shipped weights (`python -m benchmark train-tokenizer --method M --ship`)."""
    cfg = load_config("tiny")
    keys = {RunKeys.of(cfg, m).tokenizer_key for m in TINY_METHODS}
    assert keys == shipped_keys(), f"shipped {sorted(shipped_keys())}, the tiny preset uses {sorted(keys)}"


@pytest.mark.parametrize("method", TINY_METHODS)
def test_shipped_tokenizer_reconstructs_as_recorded(tmp_path, method):
    cfg = load_config("tiny", [f"paths.cache={tmp_path}"])
    keys = RunKeys.of(cfg, method)
    entry = stages.SHIPPED / "tokenizers" / keys.tokenizer_key
    info = json.loads((entry / "tokenizer.json").read_text())
    assert info["shipped"]["commit"] and info["shipped"]["command"]   # provenance
    assert not list(tmp_path.iterdir())
    out = stages.train_tokenizer(cfg, method)   # the copy, no training
    assert not (out / "train").exists()
    assert json.loads((out / "tokenizer.json").read_text())["source"].startswith("shipped")
    tok = load_tokenizer(cfg, method, torch.device("cpu"), keys)   # strict load into the configured build
    metrics = tokenizer_metrics(tok, cfg, torch.device("cpu"))
    assert metrics["psnr"] == pytest.approx(info["psnr"], abs=0.01)
    assert metrics["psnr"] > 22   # a trained tokenizer, not an initialisation (about 10 dB)


def test_shipped_off_and_bad_folder(tmp_path):
    key = RunKeys.of(load_config("tiny"), "flowar").tokenizer_key
    assert stages.shipped_tokenizer(load_config("tiny"), key) is not None
    assert stages.shipped_tokenizer(load_config("tiny", ["paths.shipped=none"]), key) is None
    custom = tmp_path / "mine"
    (custom / "tokenizers" / key).mkdir(parents=True)
    assert stages.shipped_tokenizer(load_config("tiny", [f"paths.shipped={custom}"]), key) is None   # no weights
    with pytest.raises(ConfigError, match=r"paths.shipped=.*nowhere is not a folder"):
        check_shipped(load_config("tiny", [f"paths.shipped={tmp_path}/nowhere"]))


def test_a_shipped_copy_is_not_reshipped(tmp_path):
    cfg = load_config("tiny", [f"paths.cache={tmp_path}"])
    out = stages.train_tokenizer(cfg, "flowar")
    with pytest.raises(ValueError, match="copy of a shipped tokenizer"):
        stages.ship_tokenizer(out)

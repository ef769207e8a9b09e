"""A fourth method and tokenizer from a package outside the suite (tests/fixtures/toy_plugin,
copied to a temporary folder) train, sample and evaluate on `smoke` through the CLI, with no
edit to any file of the suite: registration through ``custom_imports`` and the registries."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent


def git_status() -> str:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True)
    return out.stdout if out.returncode == 0 else ""


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "tests" / "fixtures" / "toy_plugin" / "toyplugin", tmp_path / "plugins" / "toyplugin")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))                 # this process
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "plugins"))            # the jobs' processes
    paths = [f"paths.runs={tmp_path}/runs", f"paths.cache={tmp_path}/cache", f"paths.results={tmp_path}/results"]
    yield tmp_path, ["custom_imports=[toyplugin]", "toytok.steps=10", "toytok.warmup_steps=1", *paths]
    unregister_plugin()


def unregister_plugin():
    """Forget the toy plug-in: every later config of this process would otherwise carry its
    sections (the schema covers every registered name) and fail to unpickle in a job that
    cannot import it."""
    from benchmark.datasets.base import DATASETS
    from methods.registry import METHODS, TOKENIZERS
    for registry in (METHODS, TOKENIZERS, DATASETS):
        for name, cls in list(registry.module_dict.items()):
            if cls.__module__.startswith("toyplugin"):
                del registry.module_dict[name]
    for module in [m for m in sys.modules if m == "toyplugin" or m.startswith("toyplugin.")]:
        del sys.modules[module]


def test_a_plugin_method_trains_samples_and_evaluates_through_the_cli(plugin):
    root, overrides = plugin
    before = git_status()
    assert main(["run", "--methods", "toy", "--preset", "smoke", *overrides]) == 0
    board = pd.read_csv(root / "results" / "leaderboard.csv")
    assert list(board.method) == ["toy"]
    toy = board[board.method == "toy"].iloc[0]
    assert toy.nfe == 1 and toy.sampler == "noise=0.1" and 0 <= toy.class_consistency <= 1
    run = next((root / "runs" / "smoke").glob("toy-*/seed0"))
    assert main(["sample", "--method", "toy", "--preset", "smoke", "--checkpoint", str(run / "ema.safetensors"),
                 "--out", str(root / "samples"), "eval.samples_per_class=2", *overrides]) == 0
    assert np.load(root / "samples" / "samples.npz")["arr_0"].shape == (8, 16, 16, 3)
    record = next((root / "results" / "records").glob("smoke_toy_*.json"))
    before_metric = json.loads(record.read_text())["metrics"]["class_consistency"]
    assert main(["evaluate", "--run", str(run)]) == 0        # its config.yaml names the plug-in
    assert json.loads(record.read_text())["metrics"]["class_consistency"] == before_metric
    assert git_status() == before                            # no file of the suite was touched


def test_a_missing_plugin_is_a_clear_error(plugin, capsys):
    root, overrides = plugin
    assert main(["run", "--methods", "toy", "--preset", "smoke", "custom_imports=[nosuchplugin]"]) == 2
    assert "custom_imports: cannot import 'nosuchplugin'" in capsys.readouterr().err


def test_registration_checks_the_contract():
    from methods.base import Method
    from methods.registry import METHODS, TOKENIZERS, lookup

    class NoConfig(Method):
        tokenizer_kind = "continuous"

    with pytest.raises(TypeError, match="needs a Config dataclass|Config must subclass"):
        METHODS.register_module("broken", module=NoConfig)
    with pytest.raises(TypeError, match="must subclass methods.base.Tokenizer"):
        TOKENIZERS.register_module("broken", module=dict)
    with pytest.raises(KeyError, match="already registered"):
        METHODS.register_module("var", module=lookup(METHODS, "var"))

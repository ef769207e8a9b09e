"""Sampler sweeps (eval.sweep): one evaluation row per value, keys checked against the
method, step counts through the scale list where a method can change it."""
import pytest
import torch

from benchmark import evaluation as stages
from benchmark.build import build_method
from benchmark.config import ConfigError, load_config, section
from benchmark.keys import RunKeys, evaluation_key
from methods.base import NotSupportedByDesign
from methods.registry import TOKENIZERS, lookup


def build(cfg, method):
    tok = lookup(TOKENIZERS, cfg[method].tokenizer)(section(cfg, cfg[method].tokenizer)).eval()
    torch.manual_seed(0)
    return build_method(cfg, method, tok).eval()


def test_rows_vary_one_setting_at_a_time_and_have_their_own_keys():
    cfg = load_config("smoke", ["eval.sweep.cfg=[1,1.5,4]", "eval.sweep.num_flow_steps=[8]"])
    rows = stages.sweep_rows(cfg, "flowar")
    # as configured (cfg 1.5), cfg 1, cfg 4 (1.5 is the configured value: not twice), 8 flow steps
    assert [(r.flowar.sampler.cfg, r.flowar.sampler.num_flow_steps) for r, _ in rows] == [(1.5, 4), (1.0, 4), (4.0, 4), (1.5, 8)]
    assert all(reason is None and not any(r.eval.sweep.values()) for r, reason in rows)
    keys = [evaluation_key(r, "flowar") for r, _ in rows]
    assert len(set(keys)) == 4 and keys[0] == evaluation_key(load_config("smoke"), "flowar")
    assert RunKeys.of(rows[3][0], "flowar").run_dir == RunKeys.of(cfg, "flowar").run_dir   # the same trained model


def test_a_setting_the_method_lacks_gives_one_not_supported_row():
    cfg = load_config("smoke", ["eval.sweep.num_flow_steps=[2,8]"])
    rows = stages.sweep_rows(cfg, "var")
    assert len(rows) == 2 and rows[0][1] is None
    assert "VARMethod has no sampler setting 'num_flow_steps'" in rows[1][1]
    assert evaluation_key(rows[1][0], "var") != evaluation_key(rows[0][0], "var")


def test_step_counts_through_scale_lists_flexvar_only():
    cfg = load_config("smoke", ["eval.sweep.patch_nums=[[1,2,4],[1,2,3,4]]"])
    flexvar = build(cfg, "flexvar")
    rows = stages.sweep_rows(cfg, "flexvar")
    settings = [stages.row_settings(r, "flexvar", flexvar, side=4) for r, _ in rows]
    assert [flexvar.generated_scales(**s) for s in settings] == [[1, 2, 4], [1, 2, 4], [1, 2, 3, 4]]
    assert [flexvar.nfe(**s) for s in settings] == [6, 6, 8]
    var = build(cfg, "var")
    (base, _), (row, _), _ = stages.sweep_rows(cfg, "var")
    assert stages.row_settings(base, "var", var, side=4)["cfg"] == 1.5
    with pytest.raises(NotSupportedByDesign, match="training scale list"):
        stages.row_settings(row, "var", var, side=4)
    bad = load_config("smoke", ["eval.patch_nums=[1,2,8]"])
    with pytest.raises(ConfigError, match="ends at 8"):   # another final side needs eval.resolution too
        stages.row_settings(bad, "flexvar", flexvar, side=4)


def test_bad_sweep_values_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"eval.sweep.top_k: 1.5 is not a valid value for var"):
        stages.sweep_rows(load_config("smoke", ["eval.sweep.top_k=[1.5]"]), "var")
    with pytest.raises(ConfigError, match=r"eval.sweep.num_flow_steps: -2 is not a valid value for flowar"):
        stages.sweep_rows(load_config("smoke", ["eval.sweep.num_flow_steps=[-2]"]), "flowar")
    with pytest.raises(ConfigError, match=r"unknown config key 'eval.sweep.cgf'.*Did you mean 'eval.sweep.cfg'"):
        load_config("smoke", ["eval.sweep.cgf=[1]"])
    with pytest.raises(ConfigError, match=r"a sweep is a list of values, e.g. eval.sweep.cfg=\[1.5,2,4\]"):
        load_config("smoke", ["eval.sweep.cfg=2"])
    with pytest.raises(ConfigError, match=r"eval.sweep.patch_nums=\[2, 4\]: a scale list starts at 1"):
        load_config("smoke", ["eval.sweep.patch_nums=[[2,4]]"])

import pytest

from benchmark.cli import main
from benchmark.config import ConfigError, config_hash, load_config


def test_presets_load_and_overrides_apply():
    cfg = load_config("tiny", ["train.steps=500", "data.resolution=64", "flowar.encoder_depth=3"])
    assert cfg.train.steps == 500 and cfg.data.resolution == 64 and cfg.flowar.encoder_depth == 3
    for preset in ("smoke", "tiny"):
        load_config(preset)


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.stpes.*Did you mean 'train\.steps'"):
        load_config("tiny", ["train.stpes=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        load_config("tiny", ["nonsense=1"])


@pytest.mark.parametrize("override, message", [
    ("data.variant=medium", r"data.variant='medium' is not allowed; choose one of: easy, hard"),
    ("data.name=cifar", r"data.name='cifar' is not allowed; choose one of: imagefolder, shapes"),
    ("train.steps=abc", r"train.steps"),
    ("train.lr=-1", r"train.lr=-1.0 is out of range"),
    ("flowar.encoder_num_heads=5", r"head width"),
    ("kl.norm_num_groups=4", r"channels per GroupNorm group"),
    ("device=tpu", r"device='tpu'"),
    ("train.steps", r"not of the form key=value"),
])
def test_bad_values_fail_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="smoke.*tiny"):
        load_config("gigantic")


def test_imagenet_presets_need_a_data_root_to_run(capsys):
    assert main(["run", "--methods", "flowar", "--preset", "imagenet256_flowar_s"]) == 2
    assert "data.root is not set" in capsys.readouterr().err
    cfg = load_config("imagenet256_flowar_l", ["data.root=/data/imagenet"])
    assert cfg.flowar.flow_cross and cfg.flowar.flow_depth == 12


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config("tiny"), load_config("tiny")
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config("tiny", ["seed=1"]))


def test_cli_unknown_method_lists_valid_methods(capsys):
    assert main(["run", "--methods", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nonexistent'" in err and "flowar" in err


def test_cli_typo_key_fails_naming_it(capsys):
    assert main(["run", "--methods", "flowar", "train.stpes=3"]) == 2
    assert "train.stpes" in capsys.readouterr().err


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    methods = next(line for line in out.splitlines() if line.startswith("methods:"))
    assert all(m in methods for m in ("flowar", "var", "flexvar"))
    assert "shapes" in out and "msvq" in out and "flexvq" in out and "tiny" in out and "var_d16" in out


def test_cli_rejects_unknown_stage_and_unscorable_data(capsys):
    assert main(["run", "--methods", "flowar", "--stages", "train", "sample"]) == 2
    assert "unknown stage(s) ['sample']" in capsys.readouterr().err
    assert main(["run", "--methods", "flowar", "--preset", "imagenet256_flowar_s", "data.root=/nonexistent",
                 "device=cpu"]) == 2
    assert "imagefolder: /nonexistent" in capsys.readouterr().err   # the data first, long before any scoring


def test_official_model_names_are_preset_aliases():
    cfg = load_config("flowar_huge", ["data.root=/data"])
    assert cfg.flowar.flow_width == 1536 and cfg.flowar.sampler.num_flow_steps == 50 and cfg.flowar.sampler.guidance_high == 0.7

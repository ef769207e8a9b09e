"""Where presets live: run presets in benchmark/configs (or a user's YAML file), cluster presets
in jobs/clusters (or a user's YAML file). Reading them needs no torch, so `list` and `--help`
stay fast."""
from __future__ import annotations

from pathlib import Path

from methods.config import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"
CLUSTER_DIR = Path(__file__).resolve().parent.parent / "jobs" / "clusters"

# The official model names, as aliases of the ImageNet presets.
PRESET_ALIASES = {"flowar_small": "imagenet256_flowar_s", "flowar_large": "imagenet256_flowar_l",
                  "flowar_huge": "imagenet256_flowar_h",
                  **{f"var_d{d}": f"imagenet256_var_d{d}" for d in (16, 20, 24, 30)}, "var_d36": "imagenet512_var_d36",
                  **{f"flexvar_d{d}": f"imagenet256_flexvar_d{d}" for d in (16, 20, 24)}}


def preset_path(preset: str) -> Path:
    """A preset: a name in benchmark/configs (or an official model name), or a path to a user's
    YAML file (ending in .yaml / .yml)."""
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"preset={preset!r}: no such file; give a YAML file with the sections to change "
                              "(see benchmark/configs/tiny.yaml) or a preset name")
        return path
    path = PRESET_DIR / f"{PRESET_ALIASES.get(preset, preset)}.yaml"
    if not path.exists():
        raise ConfigError(f"preset={preset!r} is unknown; choose one of: {', '.join(preset_names())}, or a path to a "
                          "YAML file")
    return path


def preset_name(preset: str) -> str:
    """What runs, records and grids are named after: the preset's name, or a YAML file's stem."""
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


def cluster_path(cluster: str) -> Path:
    """A cluster preset: a name in jobs/clusters/ or a path to a YAML file."""
    path = Path(cluster) if cluster.endswith((".yaml", ".yml")) else CLUSTER_DIR / f"{cluster}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise ConfigError(f"cluster={cluster!r} is unknown; choose one of: {', '.join(available)}, or give a "
                          "path to a YAML file with a `jobs:` section")
    return path


def preset_names() -> list[str]:
    """The presets in benchmark/configs and the official model names that alias them."""
    return sorted([p.stem for p in PRESET_DIR.glob("*.yaml")] + list(PRESET_ALIASES))
